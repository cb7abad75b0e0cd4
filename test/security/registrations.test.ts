import assert from 'node:assert/strict';
import { expectStatus, grpc } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { limits, MODES, modeName, releaseInterpreters, runsInFlight, stateName, succeeded } from '../helpers/proto';
import { assertNoLeaks, type TestServer } from '../helpers/server';
import { assertRun, assertServing } from './harness';

/**
 * Registration floods and reference-count attacks: ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER must
 * fail the run clearly and leave no partial state, and whatever a script does while its
 * interpreter is released under it, the counts stay exact.
 */

const CAP = 50;
const OVER_CAP = {
  outcome: 'OUTCOME_FAILED',
  name: 'RangeError',
  message: `gears.register: this interpreter already holds ${CAP} registrations, the most one interpreter may hold`,
} as const;

/** The interpreter's reference counts, and the registrations the server lists for it. */
async function counts(t: TestServer, interpreterId: string): Promise<{ state: string; registrations: number; executions: number; listed: number }> {
  const info = await t.client.getInterpreter({ interpreterId });
  const listed = await t.client.listRegistrations({ interpreterId, pageSize: 1000 });
  return {
    state: stateName(info.interpreter?.state),
    registrations: info.interpreter?.registrationReferences ?? -1,
    executions: info.interpreter?.executionReferences ?? -1,
    listed: listed.registrations.length,
  };
}

describe('security: registration floods and reference counts', () => {
  const server = useTestServer({ ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER: String(CAP) });

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      it('registering past the cap fails the run naming the limit, and none of its registrations exist', async () => {
        const t = server();
        const res = await t.client.execute({ mode, source: `for (let i = 0; i < ${CAP + 1}; i++) gears.register('flood.t', () => i);` });
        assertRun(res, OVER_CAP);
        assert.deepEqual(res.registrations, []);
        assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
        assert.equal(t.manager.counters().registrations, 0);
        await expectStatus(t.client.trigger({ trigger: 'flood.t' }), grpc.status.NOT_FOUND);
        await assertServing(t);
      });

      it('a script that catches the limit keeps exactly the cap; releasing them all leaves nothing', async () => {
        const t = server();
        const res = await t.client.execute({
          mode,
          source: `let refused; try { for (let i = 0; i < 10000; i++) gears.register('flood.t', () => i); } catch (e) { refused = e.message; } export default refused;`,
        });
        succeeded(res);
        assert.equal(res.result, OVER_CAP.message);
        assert.equal(res.registrations.length, CAP);
        assert.deepEqual(await counts(t, res.interpreterId), { state: 'INTERPRETER_STATE_READY', registrations: CAP, executions: 0, listed: CAP });
        const trig = await t.client.trigger({ trigger: 'flood.t' });
        assert.deepEqual(
          trig.results.map((r) => r.result),
          Array.from({ length: CAP }, (_, i) => i),
        );
        const released = await t.client.release({ interpreterId: res.interpreterId });
        assert.equal(released.releasedRegistrationIds.length, CAP);
        assert.equal(stateName(released.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
        await assertNoLeaks(t.manager);
        await assertServing(t);
      });

      it('an attached Execute or a handler that overflows the cap adds nothing; the interpreter keeps its exact count', async () => {
        const t = server();
        const base = await t.client.execute({
          mode,
          source: `
            for (let i = 0; i < ${CAP - 10}; i++) gears.register('base.t', () => i);
            gears.register('grow.t', (n) => { for (let i = 0; i < n; i++) gears.register('grown.t', () => i); return n; });`,
        });
        succeeded(base);
        const id = base.interpreterId;
        const start = CAP - 9;
        assert.deepEqual(await counts(t, id), { state: 'INTERPRETER_STATE_READY', registrations: start, executions: 0, listed: start });

        assertRun(await t.client.execute({ interpreterId: id, source: "for (let i = 0; i < 20; i++) gears.register('attached.t', () => i);" }), OVER_CAP);
        assert.deepEqual(await counts(t, id), { state: 'INTERPRETER_STATE_READY', registrations: start, executions: 0, listed: start });

        const grow = await t.client.trigger({ trigger: 'grow.t', payload: 20 });
        assertRun(grow.results[0], OVER_CAP);
        assert.deepEqual(await counts(t, id), { state: 'INTERPRETER_STATE_READY', registrations: start, executions: 0, listed: start });
        await expectStatus(t.client.trigger({ trigger: 'grown.t' }), grpc.status.NOT_FOUND);

        const fits = await t.client.trigger({ trigger: 'grow.t', payload: 9 });
        succeeded(fits.results[0]);
        assert.deepEqual(await counts(t, id), { state: 'INTERPRETER_STATE_READY', registrations: CAP, executions: 0, listed: CAP });
        assert.equal((await releaseInterpreters(t.client, id)).length, CAP, 'releasing gives back exactly the cap');
        await assertServing(t);
      });

      it('a handler that registers and then throws, times out or returns an uncopyable value leaves no registration behind', async () => {
        const t = server();
        const base = await t.client.execute({
          mode,
          source: `
            gears.register('partial.throw', () => { gears.register('ghost.t', () => 1); throw new Error('after registering'); });
            gears.register('partial.spin', () => { gears.register('ghost.t', () => 1); for (;;) {} });
            gears.register('partial.value', () => { gears.register('ghost.t', () => 1); return { f() {} }; });`,
        });
        succeeded(base);
        const expectations = {
          'partial.throw': { outcome: 'OUTCOME_FAILED', name: 'Error', message: 'after registering' },
          'partial.spin': { outcome: 'OUTCOME_TIMED_OUT', name: 'TimeoutError', message: 'script execution timed out after 300 ms' },
          'partial.value': { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: 'result.f is a function, which JSON cannot represent' },
        } as const;
        for (const [trigger, expected] of Object.entries(expectations)) {
          const trig = await t.client.trigger({ trigger, limits: limits(300) });
          assertRun(trig.results[0], expected, trigger);
          assert.deepEqual(await counts(t, base.interpreterId), { state: 'INTERPRETER_STATE_READY', registrations: 3, executions: 0, listed: 3 }, trigger);
        }
        await expectStatus(t.client.trigger({ trigger: 'ghost.t' }), grpc.status.NOT_FOUND);
        await assertServing(t);
        assert.deepEqual(await releaseInterpreters(t.client, base.interpreterId), base.registrations.map((r) => r.id), 'no ghost registration is released either');
      });

      it('scripts cannot release registrations (gears has no unregister); a Release while the handler runs and registers more drains the interpreter with exact counts', async () => {
        const t = server();
        const probe = await t.client.execute({ mode, source: 'export default [Object.getOwnPropertyNames(gears).sort(), typeof gears.unregister, typeof gears.release];' });
        succeeded(probe);
        assert.deepEqual(probe.result, [['consume', 'executionId', 'interpreterId', 'register', 'schedule'], 'undefined', 'undefined']);

        const base = await t.client.execute({
          mode,
          source: `
            gears.register('self.release', () => {
              // long enough for the client's Release to arrive while this run still holds its reference
              const until = Date.now() + 1500;
              while (Date.now() < until) {}
              for (let i = 0; i < 5; i++) gears.register('zombie.t', () => 'should not exist');
              return 'finished';
            });
            gears.register('self.other', () => 'other');`,
        });
        succeeded(base);
        const id = base.interpreterId;
        const running = t.client.trigger({ trigger: 'self.release', limits: limits(5000) });
        await runsInFlight(t);
        const released = await t.client.release({ interpreterId: id });
        assert.equal(released.releasedRegistrationIds.length, 2);
        assert.equal(stateName(released.interpreter?.state), 'INTERPRETER_STATE_DRAINING');
        assert.equal(released.interpreter?.registrationReferences, 0);
        assert.equal(released.interpreter?.executionReferences, 1);

        const done = await running;
        succeeded(done.results[0]);
        assert.equal(done.results[0].result, 'finished');
        const after = await t.client.getInterpreter({ interpreterId: id });
        assert.equal(stateName(after.interpreter?.state), 'INTERPRETER_STATE_DISPOSED', 'the run ended, the last reference went');
        assert.deepEqual(after.registrations, []);
        await expectStatus(t.client.trigger({ trigger: 'zombie.t' }), grpc.status.NOT_FOUND);
        await expectStatus(t.client.release({ interpreterId: id }), grpc.status.NOT_FOUND);
        await assertNoLeaks(t.manager);
        await assertServing(t);
      });

      /**
       * A Register attached to an interpreter that already holds the cap is a full capacity limit,
       * not a bad request: RESOURCE_EXHAUSTED naming ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER,
       * before any code runs.
       */
      it('Register attached to an interpreter at the cap is RESOURCE_EXHAUSTED naming the limit', async () => {
        const t = server();
        const full = await t.client.execute({ mode, source: `for (let i = 0; i < ${CAP}; i++) gears.register('full.t', () => i);` });
        succeeded(full);
        await expectStatus(
          t.client.register({ interpreterId: full.interpreterId, trigger: 'one.more', source: 'export default () => 1;' }),
          grpc.status.RESOURCE_EXHAUSTED,
          /ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER|50 registrations/,
        );
        assert.deepEqual(await counts(t, full.interpreterId), { state: 'INTERPRETER_STATE_READY', registrations: CAP, executions: 0, listed: CAP });
        await assertServing(t);
        assert.deepEqual(await releaseInterpreters(t.client, full.interpreterId), full.registrations.map((r) => r.id));
      });
    });
  }
});

describe('security: thousands of registrations under the default cap', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    it(`one run registering 3000 handlers is listed, triggered and released exactly (${modeName(mode)})`, async () => {
      const t = server();
      const n = 3000;
      const res = await t.client.execute({ mode, limits: limits(10_000), source: `for (let i = 0; i < ${n}; i++) gears.register('many.t', () => i % 7); export default 'ok';` });
      succeeded(res);
      assert.equal(res.registrations.length, n);
      assert.equal(new Set(res.registrations.map((r) => r.id)).size, n, 'ids are unique');
      assert.equal(t.manager.counters().references.registration, n);
      let listed = 0;
      let pageToken = '';
      do {
        const page = await t.client.listRegistrations({ interpreterId: res.interpreterId, pageSize: 1000, pageToken });
        listed += page.registrations.length;
        pageToken = page.nextPageToken;
      } while (pageToken);
      assert.equal(listed, n);
      const trig = await t.client.trigger({ trigger: 'many.t', limits: limits(20_000) });
      assert.equal(trig.results.length, n);
      trig.results.forEach((r, i) => {
        succeeded(r);
        assert.equal(r.result, i % 7);
      });
      const released = await t.client.release({ interpreterId: res.interpreterId });
      assert.equal(released.releasedRegistrationIds.length, n);
      await assertNoLeaks(t.manager);
      await assertServing(t);
    });
  }
});
