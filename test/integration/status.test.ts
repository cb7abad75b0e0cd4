import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { assertNoHostPaths, ISOLATE, limits, MODES, modeName, outcomeName, releaseInterpreters, runsInFlight, SHARED, stateName, succeeded } from '../helpers/proto';
import { assertNoLeaks, startTestServer, waitIdle } from '../helpers/server';

const MEMORY_BOMB = 'const hoard = []; for (;;) hoard.push(new Array(10000).fill(Math.random()));';

/** Beyond host paths, status messages and stacks must not name the tools the server is built on. */
const TOOL_NAMES = ['isolated-vm'];

describe('status codes', () => {
  const server = useTestServer({
    ISOGEAR_MAX_SOURCE_BYTES: '4096',
    ISOGEAR_MAX_VALUE_BYTES: '1024',
    ISOGEAR_MAX_TIMEOUT_MS: '10000',
    ISOGEAR_MAX_MEMORY_MB: '256',
  });

  /** A live interpreter holding one registration. */
  async function liveInterpreter(mode = SHARED, trigger = 'live.t'): Promise<pb.ExecuteResponse> {
    const res = await server().client.execute({ source: `gears.register(${JSON.stringify(trigger)}, () => "live");`, mode });
    succeeded(res);
    return res;
  }

  describe('INVALID_ARGUMENT: malformed requests', () => {
    it('empty source (Execute, Register)', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: '' }), grpc.status.INVALID_ARGUMENT, /source/);
      await expectStatus(t.client.execute({ source: '  \n ' }), grpc.status.INVALID_ARGUMENT, /source/);
      await expectStatus(t.client.register({ trigger: 'a.t', source: '' }), grpc.status.INVALID_ARGUMENT, /source/);
    });

    it('empty or malformed trigger (Register, Trigger)', async () => {
      const t = server();
      await expectStatus(t.client.register({ trigger: '', source: 'export default () => 1;' }), grpc.status.INVALID_ARGUMENT, /trigger/);
      await expectStatus(t.client.trigger({ trigger: '' }), grpc.status.INVALID_ARGUMENT, /trigger/);
      await expectStatus(t.client.register({ trigger: 'has space', source: 'export default () => 1;' }), grpc.status.INVALID_ARGUMENT, /trigger/);
      await expectStatus(t.client.trigger({ trigger: '.leading.dot' }), grpc.status.INVALID_ARGUMENT, /trigger/);
      await expectStatus(t.client.trigger({ trigger: 'x'.repeat(257) }), grpc.status.INVALID_ARGUMENT, /trigger/);
    });

    it('unknown enum value for mode (Execute, Register, ListInterpreters)', async () => {
      const t = server();
      const seven = 7 as pb.IsolationMode;
      await expectStatus(t.client.execute({ source: 'export default 1;', mode: seven }), grpc.status.INVALID_ARGUMENT, /mode/);
      await expectStatus(t.client.register({ trigger: 'a.t', source: 'export default () => 1;', mode: seven }), grpc.status.INVALID_ARGUMENT, /mode/);
      await expectStatus(t.client.listInterpreters({ mode: seven }), grpc.status.INVALID_ARGUMENT, /mode/);
    });

    it('both mode and interpreter_id (Execute, Register)', async () => {
      const t = server();
      const live = await liveInterpreter();
      for (const mode of MODES) {
        const err = await expectStatus(
          t.client.execute({ source: 'export default 1;', mode, interpreterId: live.interpreterId }),
          grpc.status.INVALID_ARGUMENT,
          /mode/,
        );
        assert.match(err.details, /interpreter_id/);
        await expectStatus(
          t.client.register({ trigger: 'b.t', source: 'export default () => 1;', mode, interpreterId: live.interpreterId }),
          grpc.status.INVALID_ARGUMENT,
          /interpreter_id/,
        );
      }
      const info = await t.client.getInterpreter({ interpreterId: live.interpreterId });
      assert.equal(info.interpreter?.registrationReferences, 1, 'nothing was attached');
      assert.deepEqual(await releaseInterpreters(t.client, live.interpreterId), [live.registrations[0].id]);
    });

    it('name or replace together with interpreter_id, replace without name, a malformed name', async () => {
      const t = server();
      const live = await liveInterpreter();
      await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: live.interpreterId, name: 'svc' }), grpc.status.INVALID_ARGUMENT, /name/);
      await expectStatus(
        t.client.execute({ source: 'export default 1;', interpreterId: live.interpreterId, name: 'svc', replace: true }),
        grpc.status.INVALID_ARGUMENT,
      );
      await expectStatus(t.client.execute({ source: 'export default 1;', replace: true }), grpc.status.INVALID_ARGUMENT, /name/);
      await expectStatus(t.client.execute({ source: 'export default 1;', name: 'has space' }), grpc.status.INVALID_ARGUMENT, /name/);
      await expectStatus(t.client.execute({ source: 'export default 1;', name: 'n'.repeat(129) }), grpc.status.INVALID_ARGUMENT, /name/);
      assert.deepEqual(await releaseInterpreters(t.client, live.interpreterId), [live.registrations[0].id], 'nothing was attached');
    });

    it('sizes over a limit: source plus modules, args, payload, description', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: 'export default 1; //' + 'x'.repeat(4096) }), grpc.status.INVALID_ARGUMENT, /4096|ISOGEAR_MAX_SOURCE_BYTES/);
      await expectStatus(
        t.client.register({ trigger: 'big.t', source: 'export default () => 1;', modules: { m: 'x'.repeat(5000) } }),
        grpc.status.INVALID_ARGUMENT,
        /4096|ISOGEAR_MAX_SOURCE_BYTES/,
      );
      await expectStatus(t.client.execute({ source: 'export default (a) => a;', args: { blob: 'x'.repeat(2000) } }), grpc.status.INVALID_ARGUMENT, /args/);
      const payloadTarget = await liveInterpreter(SHARED, 'big.payload');
      await expectStatus(t.client.trigger({ trigger: 'big.payload', payload: ['x'.repeat(2000)] }), grpc.status.INVALID_ARGUMENT, /payload/);
      await expectStatus(
        t.client.register({ trigger: 'big.t', source: 'export default () => 1;', description: 'd'.repeat(1025) }),
        grpc.status.INVALID_ARGUMENT,
        /description/,
      );
      await releaseInterpreters(t.client, payloadTarget.interpreterId);
    });

    it('limits over the server maximum', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(10_001) }), grpc.status.INVALID_ARGUMENT, /timeout_ms/);
      await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(0, 257) }), grpc.status.INVALID_ARGUMENT, /memory_limit_mb/);
      await expectStatus(
        t.client.register({ trigger: 'a.t', source: 'export default () => 1;', limits: limits(10_001) }),
        grpc.status.INVALID_ARGUMENT,
        /timeout_ms/,
      );
      const target = await liveInterpreter(SHARED, 'lim.t');
      await expectStatus(t.client.trigger({ trigger: 'lim.t', limits: limits(0, 257) }), grpc.status.INVALID_ARGUMENT, /memory_limit_mb/);
      await releaseInterpreters(t.client, target.interpreterId);
    });

    const NOT_A_HANDLER: { what: string; source: string; modules?: Record<string, string>; why: RegExp[] }[] = [
      { what: 'has no default export', source: 'export const handler = () => 1;', why: [/default export/, /no default export/] },
      { what: 'default-exports a number', source: 'export default 42;', why: [/default export/, /number/] },
      { what: 'default-exports null', source: 'export default null;', why: [/default export/, /null/] },
      { what: 'has a syntax error', source: 'export default (payload) => {', why: [/SyntaxError/] },
      { what: 'throws while loading', source: 'throw new RangeError("kaboom"); export default () => 1;', why: [/RangeError/, /kaboom/] },
      { what: 'rejects while loading', source: 'await Promise.reject(new Error("later")); export default () => 1;', why: [/later/] },
      { what: 'imports an unknown module', source: 'import x from "nowhere"; export default () => x;', why: [/nowhere/] },
    ];
    for (const c of NOT_A_HANDLER) {
      it(`Register whose source ${c.what} is INVALID_ARGUMENT saying why, and creates nothing`, async () => {
        const t = server();
        for (const mode of MODES) {
          const err = await expectStatus(
            t.client.register({ trigger: 'not.handler', source: c.source, modules: c.modules, mode }),
            grpc.status.INVALID_ARGUMENT,
          );
          for (const re of c.why) assert.match(err.details, re, `${modeName(mode)}: ${err.details}`);
          assertNoHostPaths(err.details, 'the status message', TOOL_NAMES);
        }
        assert.equal(t.manager.counters().interpreters, 0, 'the new interpreter was disposed');
        await expectStatus(t.client.trigger({ trigger: 'not.handler' }), grpc.status.NOT_FOUND);

        const live = await liveInterpreter();
        await expectStatus(
          t.client.register({ trigger: 'not.handler', source: c.source, modules: c.modules, interpreterId: live.interpreterId }),
          grpc.status.INVALID_ARGUMENT,
        );
        const info = await t.client.getInterpreter({ interpreterId: live.interpreterId });
        assert.equal(stateName(info.interpreter?.state), 'INTERPRETER_STATE_READY');
        assert.equal(info.interpreter?.registrationReferences, 1, 'nothing was attached');
        assert.deepEqual(await releaseInterpreters(t.client, live.interpreterId), [live.registrations[0].id]);
      });
    }

    it('ReleaseRequest with no target, or an empty one', async () => {
      const t = server();
      await expectStatus(t.client.release({}), grpc.status.INVALID_ARGUMENT);
      await expectStatus(t.client.release({ registrationId: '' }), grpc.status.INVALID_ARGUMENT, /registration_id/);
      await expectStatus(t.client.release({ interpreterId: '' }), grpc.status.INVALID_ARGUMENT, /interpreter_id/);
    });

    it('GetInterpreter with an empty id', async () => {
      const t = server();
      await expectStatus(t.client.getInterpreter({ interpreterId: '' }), grpc.status.INVALID_ARGUMENT, /interpreter_id/);
    });

    it('invalid page_size or page_token (ListInterpreters, ListRegistrations)', async () => {
      const t = server();
      await expectStatus(t.client.listInterpreters({ pageSize: -1 }), grpc.status.INVALID_ARGUMENT, /page_size/);
      await expectStatus(t.client.listInterpreters({ pageSize: 1001 }), grpc.status.INVALID_ARGUMENT, /page_size/);
      await expectStatus(t.client.listInterpreters({ pageToken: 'not-a-token' }), grpc.status.INVALID_ARGUMENT, /page_token/);
      await expectStatus(t.client.listRegistrations({ pageSize: -5 }), grpc.status.INVALID_ARGUMENT, /page_size/);
      await expectStatus(t.client.listRegistrations({ pageSize: 100_000 }), grpc.status.INVALID_ARGUMENT, /page_size/);
      await expectStatus(t.client.listRegistrations({ pageToken: '!!!' }), grpc.status.INVALID_ARGUMENT, /page_token/);
      const ok = await t.client.listInterpreters({ pageSize: 1000 });
      assert.deepEqual(ok.interpreters, []);
    });
  });

  describe('NOT_FOUND: unknown registration, interpreter or trigger', () => {
    it('Release of an unknown registration or interpreter', async () => {
      const t = server();
      await expectStatus(t.client.release({ registrationId: 'reg_doesnotexist' }), grpc.status.NOT_FOUND, /reg_doesnotexist/);
      await expectStatus(t.client.release({ interpreterId: 'itp_doesnotexist' }), grpc.status.NOT_FOUND, /itp_doesnotexist/);
    });

    it('releasing twice is NOT_FOUND and never drives a count negative', async () => {
      const t = server();
      const live = await liveInterpreter();
      const regId = live.registrations[0].id;
      const first = await t.client.release({ registrationId: regId });
      assert.deepEqual(first.releasedRegistrationIds, [regId]);
      assert.equal(stateName(first.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
      await expectStatus(t.client.release({ registrationId: regId }), grpc.status.NOT_FOUND, new RegExp(regId));
      await expectStatus(t.client.release({ interpreterId: live.interpreterId }), grpc.status.NOT_FOUND);

      const two = await t.client.execute({ source: 'gears.register("x.a", () => 1); gears.register("x.b", () => 2);' });
      const all = await t.client.release({ interpreterId: two.interpreterId });
      assert.equal(all.releasedRegistrationIds.length, 2);
      await expectStatus(t.client.release({ interpreterId: two.interpreterId }), grpc.status.NOT_FOUND);
      await expectStatus(t.client.release({ registrationId: two.registrations[1].id }), grpc.status.NOT_FOUND);
      const c = t.manager.counters();
      assert.deepEqual(c.references, { registration: 0, execution: 0 });
    });

    it('GetInterpreter of an unknown interpreter', async () => {
      const t = server();
      await expectStatus(t.client.getInterpreter({ interpreterId: 'itp_doesnotexist' }), grpc.status.NOT_FOUND, /itp_doesnotexist/);
    });

    it('Execute and Register with an unknown interpreter_id', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: 'itp_doesnotexist' }), grpc.status.NOT_FOUND, /itp_doesnotexist/);
      await expectStatus(
        t.client.register({ trigger: 'a.t', source: 'export default () => 1;', interpreterId: 'itp_doesnotexist' }),
        grpc.status.NOT_FOUND,
        /itp_doesnotexist/,
      );
    });

    it('Trigger with no registration bound', async () => {
      const t = server();
      await expectStatus(t.client.trigger({ trigger: 'orders.none' }), grpc.status.NOT_FOUND, /orders\.none/);
      const live = await liveInterpreter(SHARED, 'orders.once');
      const ok = await t.client.trigger({ trigger: 'orders.once' });
      assert.equal(ok.results.length, 1);
      await t.client.release({ interpreterId: live.interpreterId });
      await expectStatus(t.client.trigger({ trigger: 'orders.once' }), grpc.status.NOT_FOUND, /orders\.once/);
    });
  });

  describe('ALREADY_EXISTS: name taken', () => {
    it('a second Execute with a live name and no replace', async () => {
      const t = server();
      const first = await t.client.execute({ source: 'gears.register("named.t", () => 1);', name: 'billing' });
      assert.equal(first.interpreter?.name, 'billing');
      await expectStatus(t.client.execute({ source: 'export default 1;', name: 'billing' }), grpc.status.ALREADY_EXISTS, /billing/);
      await expectStatus(t.client.execute({ source: 'export default 1;', name: 'billing', mode: ISOLATE }), grpc.status.ALREADY_EXISTS, /billing/);
      assert.equal(t.manager.counters().interpreters, 1, 'the refused Execute created nothing');

      await t.client.release({ interpreterId: first.interpreterId });
      const again = await t.client.execute({ source: 'export default 1;', name: 'billing' });
      assert.equal(outcomeName(again.outcome), 'OUTCOME_SUCCEEDED', 'the name is free once its interpreter is disposed');
    });
  });

  describe('FAILED_PRECONDITION: the interpreter cannot take the request', () => {
    for (const mode of MODES) {
      it(`interpreter_id of a DISPOSED interpreter (${modeName(mode)})`, async () => {
        const t = server();
        const done = await t.client.execute({ source: 'export default 1;', mode });
        assert.equal(stateName(done.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
        await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: done.interpreterId }), grpc.status.FAILED_PRECONDITION, /DISPOSED/);
        await expectStatus(
          t.client.register({ trigger: 'a.t', source: 'export default () => 1;', interpreterId: done.interpreterId }),
          grpc.status.FAILED_PRECONDITION,
          /DISPOSED/,
        );

        const released = await liveInterpreter(mode);
        await t.client.release({ interpreterId: released.interpreterId });
        await expectStatus(
          t.client.execute({ source: 'export default 1;', interpreterId: released.interpreterId }),
          grpc.status.FAILED_PRECONDITION,
          /DISPOSED/,
        );
      });
    }

    it('interpreter_id of a FAILED interpreter, with and without registrations', async () => {
      const t = server();
      const bombed = await t.client.execute({ source: MEMORY_BOMB, mode: ISOLATE, limits: limits(10_000, 16) });
      assert.equal(outcomeName(bombed.outcome), 'OUTCOME_MEMORY_EXCEEDED');
      assert.equal(stateName(bombed.interpreter?.state), 'INTERPRETER_STATE_FAILED');
      await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: bombed.interpreterId }), grpc.status.FAILED_PRECONDITION, /FAILED/);

      const holder = await t.client.execute({
        source: `gears.register("fail.bomb", () => { ${MEMORY_BOMB} });`,
        mode: ISOLATE,
        limits: limits(0, 16),
      });
      const boom = await t.client.trigger({ trigger: 'fail.bomb', limits: limits(10_000) });
      assert.equal(outcomeName(boom.results[0].outcome), 'OUTCOME_MEMORY_EXCEEDED');
      await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: holder.interpreterId }), grpc.status.FAILED_PRECONDITION, /FAILED/);
      await expectStatus(
        t.client.register({ trigger: 'a.t', source: 'export default () => 1;', interpreterId: holder.interpreterId }),
        grpc.status.FAILED_PRECONDITION,
        /FAILED/,
      );
      const info = await t.client.getInterpreter({ interpreterId: holder.interpreterId });
      assert.equal(info.interpreter?.registrationReferences, 1, 'a refused attach adds no owner');
      assert.deepEqual(await releaseInterpreters(t.client, holder.interpreterId), [holder.registrations[0].id], 'a FAILED interpreter goes with its last registration');
    });

    it('interpreter_id of a DRAINING interpreter', async () => {
      const t = server();
      const live = await t.client.execute({ source: 'gears.register("drain.t", () => new Promise(() => {}));' });
      const run = t.client.trigger({ trigger: 'drain.t', limits: limits(1500) });
      await runsInFlight(t);
      const rel = await t.client.release({ interpreterId: live.interpreterId });
      assert.equal(stateName(rel.interpreter?.state), 'INTERPRETER_STATE_DRAINING');
      await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: live.interpreterId }), grpc.status.FAILED_PRECONDITION, /DRAINING/);
      await expectStatus(
        t.client.register({ trigger: 'a.t', source: 'export default () => 1;', interpreterId: live.interpreterId }),
        grpc.status.FAILED_PRECONDITION,
        /DRAINING/,
      );
      const done = await run;
      assert.equal(outcomeName(done.results[0].outcome), 'OUTCOME_TIMED_OUT', 'the run in progress was not disturbed');
    });
  });

  describe('script failures are outcomes with status OK', () => {
    const FAILURES: { what: string; source: string; name: string; message: RegExp }[] = [
      { what: 'a throw at top level', source: 'throw new Error("boom");', name: 'Error', message: /^boom$/ },
      { what: 'a throw in the default function', source: 'export default () => { throw new TypeError("bad type"); };', name: 'TypeError', message: /bad type/ },
      { what: 'a TypeError from the engine', source: 'export default () => null.x;', name: 'TypeError', message: /null/ },
      { what: 'a rejection', source: 'export default async () => { throw new RangeError("out of range"); };', name: 'RangeError', message: /out of range/ },
      { what: 'a thrown non-Error', source: 'throw 42;', name: 'Error', message: /42/ },
      { what: 'a syntax error', source: 'export default (', name: 'SyntaxError', message: /./ },
      { what: 'a syntax error in an imported module', source: 'import m from "m"; export default m;', name: 'SyntaxError', message: /./ },
      { what: 'a throw in an imported module', source: 'import m from "thrower"; export default m;', name: 'Error', message: /from thrower/ },
      { what: 'an unknown import', source: 'import x from "nowhere"; export default x;', name: 'ModuleNotFoundError', message: /nowhere/ },
    ];
    const MODULES = { m: 'export default {', thrower: 'function deep() { throw new Error("from thrower"); } deep(); export default 1;' };

    for (const mode of MODES) {
      for (const c of FAILURES) {
        it(`${c.what} → OUTCOME_FAILED with error.name ${c.name}, no host paths in the stack (${modeName(mode)})`, async () => {
          const t = server();
          const res = await t.client.execute({ source: c.source, modules: MODULES, mode });
          assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED', JSON.stringify(res));
          assert.ok(res.error);
          assert.equal(res.error.name, c.name, JSON.stringify(res.error));
          assert.match(res.error.message, c.message);
          assert.equal(res.result, undefined);
          assertNoHostPaths(res.error.stack, 'error.stack', TOOL_NAMES);
          assertNoHostPaths(res.error.message, 'error.message', TOOL_NAMES);
          assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
        });
      }
    }

    it('a failing handler → its TriggerResult is OUTCOME_FAILED, the others succeed, status OK', async () => {
      const t = server();
      const setup = await t.client.execute({
        source: `
          function inner(p) { throw new SyntaxError("bad payload " + p.n); }
          gears.register("mixed", (p) => inner(p));
          gears.register("mixed", (p) => p.n + 1);
          gears.register("mixed", () => gears.register("??", () => 1));`,
      });
      succeeded(setup);
      const res = await t.client.trigger({ trigger: 'mixed', payload: { n: 1 } });
      assert.deepEqual(
        res.results.map((r) => outcomeName(r.outcome)),
        ['OUTCOME_FAILED', 'OUTCOME_SUCCEEDED', 'OUTCOME_FAILED'],
      );
      assert.equal(res.results[0].error?.name, 'SyntaxError');
      assert.equal(res.results[0].error?.message, 'bad payload 1');
      assert.match(res.results[0].error?.stack ?? '', /inner/);
      assert.equal(res.results[1].result, 2);
      assert.equal(res.results[2].error?.name, 'TypeError', 'gears.register rejects a malformed trigger');
      for (const r of res.results) assertNoHostPaths(r.error?.stack, 'TriggerResult.error.stack', TOOL_NAMES);
      assert.deepEqual(await releaseInterpreters(t.client, setup.interpreterId), setup.registrations.map((r) => r.id), 'the failed runs registered nothing');
    });
  });

  describe('CANCELLED / DEADLINE_EXCEEDED: the run is aborted and its reference dropped', () => {
    for (const mode of MODES) {
      for (const source of ['for (;;) {}', 'await new Promise(() => {});']) {
        it(`client deadline 300 ms on \`${source}\` with timeout 5000 → DEADLINE_EXCEEDED, nothing left behind (${modeName(mode)})`, async () => {
          const t = server();
          await expectStatus(t.client.execute({ source, mode, limits: limits(5000) }, { deadlineMs: 300 }), grpc.status.DEADLINE_EXCEEDED);
          // well before the run's own 5 s timeout
          await assertNoLeaks(t.manager, 2500);
        });
      }

      it(`client cancel → CANCELLED, nothing left behind (${modeName(mode)})`, async () => {
        const t = server();
        const outcome = new Promise<grpc.ServiceError | null>((resolve) => {
          const call = t.client.raw.execute(
            pb.ExecuteRequest.fromPartial({ source: 'await new Promise(() => {});', mode, limits: limits(5000) }),
            new grpc.Metadata(),
            {},
            (err) => resolve(err),
          );
          void runsInFlight(t).then(() => call.cancel());
        });
        const err = await outcome;
        assert.equal(err?.code, grpc.status.CANCELLED);
        await assertNoLeaks(t.manager, 2500);
      });

      it(`a cancelled Trigger drops its execution reference; the registration and interpreter stay usable (${modeName(mode)})`, async () => {
        const t = server();
        const setup = await t.client.execute({
          source: 'gears.register("slow", () => new Promise(() => {})); gears.register("fast", () => "fast");',
          mode,
        });
        const err = await new Promise<grpc.ServiceError | null>((resolve) => {
          const call = t.client.raw.trigger(
            pb.TriggerRequest.fromPartial({ trigger: 'slow', limits: limits(5000) }),
            new grpc.Metadata(),
            {},
            (e) => resolve(e),
          );
          void runsInFlight(t).then(() => call.cancel());
        });
        assert.equal(err?.code, grpc.status.CANCELLED);
        await waitIdle(t.manager, 2500);
        const c = t.manager.counters();
        assert.equal(c.executionsInFlight, 0);
        assert.deepEqual(c.references, { registration: 2, execution: 0 });
        const info = await t.client.getInterpreter({ interpreterId: setup.interpreterId });
        assert.equal(stateName(info.interpreter?.state), 'INTERPRETER_STATE_READY');
        const fast = await t.client.trigger({ trigger: 'fast', limits: limits(2000) });
        succeeded(fast.results[0]);
        assert.deepEqual(await releaseInterpreters(t.client, setup.interpreterId), setup.registrations.map((r) => r.id));
      });
    }
  });
});

describe('status codes: RESOURCE_EXHAUSTED', () => {
  const server = useTestServer({ ISOGEAR_MAX_INTERPRETERS: '2' });

  it('ISOGEAR_MAX_INTERPRETERS=2: a third interpreter is refused with a message naming the limit, and allowed again after a release', async () => {
    const t = server();
    const a = await t.client.register({ trigger: 'cap.a', source: 'export default () => "a";', mode: SHARED });
    const b = await t.client.register({ trigger: 'cap.b', source: 'export default () => "b";', mode: ISOLATE });

    for (const mode of MODES) {
      const err = await expectStatus(t.client.execute({ source: 'export default 1;', mode }), grpc.status.RESOURCE_EXHAUSTED, /ISOGEAR_MAX_INTERPRETERS/);
      assert.match(err.details, /\b2\b/, 'the message names the limit value');
      await expectStatus(t.client.register({ trigger: 'cap.c', source: 'export default () => 1;', mode }), grpc.status.RESOURCE_EXHAUSTED, /ISOGEAR_MAX_INTERPRETERS/);
    }
    const c = t.manager.counters();
    assert.equal(c.interpreters, 2, 'refused requests created nothing');

    // running code in an existing interpreter needs no new one
    const inside = await t.client.execute({ source: 'export default "inside";', interpreterId: a.interpreter?.id });
    assert.equal(inside.result, 'inside');

    await t.client.release({ registrationId: b.registration?.id });
    const ok = await t.client.execute({ source: 'export default "room again";' });
    succeeded(ok);
    assert.equal(ok.result, 'room again');
    await releaseInterpreters(t.client, a.interpreter?.id);
  });
});

describe('status codes: UNAVAILABLE while the server shuts down', () => {
  it('new calls fail UNAVAILABLE once shutdown began, and nothing leaks', async () => {
    const s = await startTestServer();
    try {
      const held = await s.client.execute({ source: 'gears.register("held", () => 1);' });
      succeeded(held);

      const stopping = s.server.shutdown(300);
      await expectStatus(s.client.execute({ source: 'export default 1;' }), grpc.status.UNAVAILABLE);
      await expectStatus(s.client.register({ trigger: 'late', source: 'export default () => 1;' }), grpc.status.UNAVAILABLE);
      await expectStatus(s.client.trigger({ trigger: 'held' }), grpc.status.UNAVAILABLE);
      await expectStatus(s.client.release({ interpreterId: held.interpreterId }), grpc.status.UNAVAILABLE);
      await expectStatus(s.client.listInterpreters({}), grpc.status.UNAVAILABLE);
      await stopping;
    } finally {
      await s.server.shutdown(300);
      await s.close();
    }
  });

  it('a run in flight when shutdown begins ends OUTCOME_ABORTED (or UNAVAILABLE), not CANCELLED', async () => {
    const s = await startTestServer();
    try {
      const inFlight = s.client.execute({ source: 'await new Promise(() => {});', limits: limits(5000) }).then(
        (res) => ({ res, err: undefined }),
        (err: grpc.ServiceError) => ({ res: undefined, err }),
      );
      await runsInFlight(s);
      const stopping = s.server.shutdown(300);
      const { res, err } = await inFlight;
      await stopping;
      if (res) {
        assert.equal(outcomeName(res.outcome), 'OUTCOME_ABORTED', JSON.stringify(res.error));
      } else {
        assert.equal(
          grpc.status[err?.code ?? grpc.status.OK],
          'UNAVAILABLE',
          `the client did not cancel, yet the call ended ${grpc.status[err?.code ?? grpc.status.OK]}: ${err?.details}`,
        );
      }
    } finally {
      await s.server.shutdown(300);
      await s.close();
    }
  });
});
