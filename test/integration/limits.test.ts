import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, MODES, modeName, outcomeName, releaseInterpreters, SHARED, stateName, succeeded } from '../helpers/proto';

const TIMEOUT_MS = 250;

/** Modules that never finish on their own, each a different way of not finishing. */
const RUNAWAY_MODULES: { what: string; source: string }[] = [
  { what: 'a synchronous loop at top level', source: 'for (;;) {}' },
  { what: 'a synchronous loop in the default function', source: 'export default () => { for (;;) {} };' },
  { what: 'a top-level await on a promise that never settles', source: 'await new Promise(() => {});' },
  { what: 'a default function awaiting a promise that never settles', source: 'export default async () => { await new Promise(() => {}); };' },
  { what: 'an endless microtask chain', source: 'function f() { Promise.resolve().then(f); } f(); await new Promise(() => {});' },
  { what: 'an async loop of `await null`', source: 'export default async () => { for (;;) await null; };' },
];

/** Handlers that never finish on their own. */
const RUNAWAY_HANDLERS: { what: string; trigger: string; handler: string }[] = [
  { what: 'a synchronous loop', trigger: 'run.sync', handler: '() => { for (;;) {} }' },
  { what: 'a promise that never settles', trigger: 'run.never', handler: '() => new Promise(() => {})' },
  { what: 'an await on a promise that never settles', trigger: 'run.awaitNever', handler: 'async () => { await new Promise(() => {}); }' },
  {
    what: 'an endless microtask chain',
    trigger: 'run.microtasks',
    handler: '() => { function f() { Promise.resolve().then(f); } f(); return new Promise(() => {}); }',
  },
  { what: 'an async loop of `await null`', trigger: 'run.awaitNull', handler: 'async () => { for (;;) await null; }' },
];

/** Allocates without bound: V8 must kill the isolate at its heap limit. */
const MEMORY_BOMB = 'const hoard = []; for (;;) hoard.push(new Array(10000).fill(Math.random()));';
/** About 30 MiB of live arrays (30 × 131072 small integers), then returns how many. */
const ALLOCATE_30_MB = 'const a = []; for (let i = 0; i < 30; i++) a.push(new Array(131072).fill(i)); export default a.length;';

function assertTimedOut(outcome: pb.Outcome, error: pb.ScriptError | undefined, timeoutMs: number): void {
  assert.equal(outcomeName(outcome), 'OUTCOME_TIMED_OUT', `expected a timeout, got ${outcomeName(outcome)}: ${JSON.stringify(error)}`);
  assert.ok(error, 'a timed-out run carries an error');
  assert.equal(error.name, 'TimeoutError');
  assert.match(error.message, /timed out|did not finish/);
  assert.match(error.message, new RegExp(`\\b${timeoutMs} ms\\b`), 'the message names the limit that was hit');
}

function logBytes(logs: pb.LogEntry[]): number {
  return logs.reduce((n, e) => n + Buffer.byteLength(e.message, 'utf8'), 0);
}

describe('limits: timeout_ms stops runaway scripts', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      for (const c of RUNAWAY_MODULES) {
        it(`Execute: ${c.what} ends OUTCOME_TIMED_OUT and the new interpreter is disposed`, async () => {
          const t = server();
          const res = await t.client.execute({ source: c.source, mode, limits: limits(TIMEOUT_MS) });
          assertTimedOut(res.outcome, res.error, TIMEOUT_MS);
          assert.equal(res.result, undefined, 'no result is set when the run did not succeed');
          assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
          assert.equal(res.interpreter?.references, 0);
          assert.deepEqual(res.registrations, []);
        });
      }

      it('Execute in an existing interpreter: every runaway times out, the interpreter and its registration survive', async () => {
        const t = server();
        const setup = await t.client.execute({
          source: 'globalThis.count = 0; gears.register("keep.alive", () => ++globalThis.count);',
          mode,
        });
        succeeded(setup);
        const id = setup.interpreterId;

        let expected = 0;
        for (const c of RUNAWAY_MODULES) {
          const res = await t.client.execute({ source: c.source, interpreterId: id, limits: limits(TIMEOUT_MS) });
          assertTimedOut(res.outcome, res.error, TIMEOUT_MS);
          assert.equal(res.interpreterId, id);
          assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_READY', `after ${c.what}`);
          assert.equal(res.interpreter?.registrationReferences, 1, `after ${c.what}`);
          assert.equal(res.interpreter?.executionReferences, 0, `after ${c.what}`);

          const trig = await t.client.trigger({ trigger: 'keep.alive', limits: limits(2000) });
          assert.equal(trig.results.length, 1);
          assert.equal(outcomeName(trig.results[0].outcome), 'OUTCOME_SUCCEEDED', `after ${c.what}: ${JSON.stringify(trig.results[0].error)}`);
          expected += 1;
          assert.equal(trig.results[0].result, expected, 'the same interpreter (with its globals) kept serving');
        }

        const again = await t.client.execute({ source: 'export default globalThis.count;', interpreterId: id });
        succeeded(again);
        assert.equal(again.result, expected);
        assert.deepEqual(await releaseInterpreters(t.client, id), [setup.registrations[0].id]);
      });

      it('Trigger: each runaway handler run ends OUTCOME_TIMED_OUT; the other handlers of its interpreter keep working', async () => {
        const t = server();
        const source =
          RUNAWAY_HANDLERS.map((h) => `gears.register(${JSON.stringify(h.trigger)}, ${h.handler});`).join('\n') +
          '\nlet n = 0; gears.register("run.ok", (p) => ({ n: ++n, echo: p }));';
        const setup = await t.client.execute({ source, mode });
        succeeded(setup);
        const id = setup.interpreterId;
        const total = RUNAWAY_HANDLERS.length + 1;
        assert.equal(setup.registrations.length, total);

        let n = 0;
        for (const h of RUNAWAY_HANDLERS) {
          const trig = await t.client.trigger({ trigger: h.trigger, payload: { x: 1 }, limits: limits(TIMEOUT_MS) });
          assert.equal(trig.results.length, 1);
          const [r] = trig.results;
          assertTimedOut(r.outcome, r.error, TIMEOUT_MS);
          assert.equal(r.interpreterId, id);

          const ok = await t.client.trigger({ trigger: 'run.ok', payload: h.trigger, limits: limits(2000) });
          assert.equal(outcomeName(ok.results[0].outcome), 'OUTCOME_SUCCEEDED', `after ${h.what}: ${JSON.stringify(ok.results[0].error)}`);
          n += 1;
          assert.deepEqual(ok.results[0].result, { n, echo: h.trigger });
        }

        const info = await t.client.getInterpreter({ interpreterId: id });
        assert.equal(stateName(info.interpreter?.state), 'INTERPRETER_STATE_READY');
        assert.equal(info.interpreter?.registrationReferences, total, 'no registration was lost');
        assert.equal(info.interpreter?.executionReferences, 0, 'no run is left holding a reference');
        for (const reg of info.registrations) {
          assert.equal(reg.broken, false);
          if (reg.trigger === 'run.ok') {
            assert.equal(Number(reg.stats?.runs), RUNAWAY_HANDLERS.length);
            assert.equal(Number(reg.stats?.failures), 0);
          } else {
            assert.equal(Number(reg.stats?.runs), 1, reg.trigger);
            assert.equal(Number(reg.stats?.failures), 1, reg.trigger);
            assert.equal(reg.stats?.lastError?.name, 'TimeoutError', reg.trigger);
          }
        }
        assert.deepEqual(await releaseInterpreters(t.client, id), setup.registrations.map((r) => r.id));
      });
    });
  }
});

describe('limits: memory_limit_mb', () => {
  const server = useTestServer();

  it('isolate mode: a memory bomb ends OUTCOME_MEMORY_EXCEEDED, the interpreter is FAILED, and the server is unharmed', async () => {
    const t = server();
    const res = await t.client.execute({ source: MEMORY_BOMB, mode: ISOLATE, limits: limits(15_000, 16) });
    assert.equal(outcomeName(res.outcome), 'OUTCOME_MEMORY_EXCEEDED', JSON.stringify(res.error));
    assert.ok(res.error, 'a memory kill carries an error');
    assert.match(res.error.message, /memory/i);
    assert.equal(res.result, undefined);
    assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_FAILED');
    assert.equal(res.interpreter?.references, 0);
    assert.notEqual(res.interpreter?.failureReason, '', 'a FAILED interpreter says why');

    for (const mode of MODES) {
      const fresh = await t.client.execute({ source: 'export default (a) => a.n * 2;', args: { n: 21 }, mode });
      assert.equal(outcomeName(fresh.outcome), 'OUTCOME_SUCCEEDED', `${modeName(mode)}: ${JSON.stringify(fresh.error)}`);
      assert.equal(fresh.result, 42);
    }
  });

  it('isolate mode: the limit is per interpreter (30 MiB fails under 16 MiB, succeeds under 128 MiB)', async () => {
    const t = server();
    const small = await t.client.execute({ source: ALLOCATE_30_MB, mode: ISOLATE, limits: limits(15_000, 16) });
    assert.equal(outcomeName(small.outcome), 'OUTCOME_MEMORY_EXCEEDED', JSON.stringify(small.error));
    const large = await t.client.execute({ source: ALLOCATE_30_MB, mode: ISOLATE, limits: limits(15_000, 128) });
    succeeded(large);
    assert.equal(large.result, 30);
  });

  it('shared mode: memory_limit_mb has no effect (the interpreter shares its isolate limit)', async () => {
    const t = server();
    const res = await t.client.execute({ source: ALLOCATE_30_MB, mode: SHARED, limits: limits(15_000, 16) });
    succeeded(res);
    assert.equal(res.result, 30);
  });

  it('isolate mode: a handler that bombs memory breaks its interpreter; its registrations are listed broken, fail when triggered, and release cleanly', async () => {
    const t = server();
    const setup = await t.client.execute({
      source: `gears.register("mem.bomb", () => { ${MEMORY_BOMB} }); gears.register("mem.ok", () => "ok");`,
      mode: ISOLATE,
      limits: limits(5000, 16),
    });
    succeeded(setup);
    const id = setup.interpreterId;
    const [bomb, ok] = setup.registrations;
    assert.equal(bomb.trigger, 'mem.bomb');
    assert.equal(ok.trigger, 'mem.ok');

    const before = await t.client.trigger({ trigger: 'mem.ok' });
    succeeded(before.results[0]);

    const boom = await t.client.trigger({ trigger: 'mem.bomb', limits: limits(15_000) });
    assert.equal(boom.results.length, 1);
    assert.equal(outcomeName(boom.results[0].outcome), 'OUTCOME_MEMORY_EXCEEDED', JSON.stringify(boom.results[0].error));
    assert.match(boom.results[0].error?.message ?? '', /memory/i);

    const listed = await t.client.listRegistrations({ interpreterId: id });
    assert.deepEqual(
      listed.registrations.map((r) => [r.id, r.broken]),
      [
        [bomb.id, true],
        [ok.id, true],
      ],
      'both registrations stay listed, marked broken',
    );

    for (const trigger of ['mem.ok', 'mem.bomb']) {
      const again = await t.client.trigger({ trigger });
      assert.equal(again.results.length, 1);
      assert.equal(outcomeName(again.results[0].outcome), 'OUTCOME_FAILED', `${trigger}: a broken registration fails without running`);
      assert.ok(again.results[0].error, 'with an error saying why');
      assert.match(again.results[0].error.message, /FAILED|failed|broken/);
    }

    const info = await t.client.getInterpreter({ interpreterId: id });
    assert.equal(stateName(info.interpreter?.state), 'INTERPRETER_STATE_FAILED');
    assert.notEqual(info.interpreter?.failureReason, '');
    assert.equal(info.interpreter?.heapUsedBytes, 0);
    assert.equal(info.interpreter?.registrationReferences, 2);
    assert.deepEqual(
      info.registrations.map((r) => r.broken),
      [true, true],
    );

    const first = await t.client.release({ registrationId: bomb.id });
    assert.deepEqual(first.releasedRegistrationIds, [bomb.id]);
    assert.equal(first.interpreter?.registrationReferences, 1);
    const rest = await t.client.release({ interpreterId: id });
    assert.deepEqual(rest.releasedRegistrationIds, [ok.id]);
    assert.equal(rest.interpreter?.references, 0);
    assert.ok(
      [pb.InterpreterState.INTERPRETER_STATE_FAILED, pb.InterpreterState.INTERPRETER_STATE_DISPOSED].includes(rest.interpreter?.state as pb.InterpreterState),
      `a fully released FAILED interpreter is gone, got ${stateName(rest.interpreter?.state)}`,
    );
    await expectStatus(t.client.trigger({ trigger: 'mem.ok' }), grpc.status.NOT_FOUND);

    const c = t.manager.counters();
    assert.equal(c.interpreters, 0);
    assert.equal(c.registrations, 0);
    assert.equal(c.dedicatedIsolates, 0);

    const fresh = await t.client.execute({ source: 'export default "fine";', mode: ISOLATE });
    succeeded(fresh);
  });
});

describe('limits: server defaults and maxima from the configuration', () => {
  const server = useTestServer({
    ISOGEAR_DEFAULT_TIMEOUT_MS: '200',
    ISOGEAR_MAX_TIMEOUT_MS: '1000',
    ISOGEAR_MAX_MEMORY_MB: '128',
    ISOGEAR_MAX_SOURCE_BYTES: '2048',
  });

  for (const mode of MODES) {
    it(`ISOGEAR_DEFAULT_TIMEOUT_MS applies when limits are unset or 0 (${modeName(mode)})`, async () => {
      const t = server();
      for (const source of ['for (;;) {}', 'await new Promise(() => {});']) {
        const unset = await t.client.execute({ source, mode });
        assertTimedOut(unset.outcome, unset.error, 200);
        assert.ok(Number(unset.wallTime?.seconds ?? 0) < 4, 'stopped long before the built-in 5 s default');
        const zero = await t.client.execute({ source, mode, limits: limits(0) });
        assertTimedOut(zero.outcome, zero.error, 200);
      }

      const setup = await t.client.execute({ source: 'gears.register("dflt.loop", () => { for (;;) {} });', mode });
      succeeded(setup);
      const trig = await t.client.trigger({ trigger: 'dflt.loop' });
      assertTimedOut(trig.results[0].outcome, trig.results[0].error, 200);
      await releaseInterpreters(t.client, setup.interpreterId);
    });
  }

  it('a module that does not finish loading within the default timeout is not a handler (Register → INVALID_ARGUMENT)', async () => {
    const t = server();
    await expectStatus(
      t.client.register({ trigger: 'slow.load', source: 'await new Promise(() => {}); export default () => 1;' }),
      grpc.status.INVALID_ARGUMENT,
      /timed out|did not finish/,
    );
  });

  it('timeout_ms equal to ISOGEAR_MAX_TIMEOUT_MS is accepted; above it is INVALID_ARGUMENT on every RPC that takes limits', async () => {
    const t = server();
    const ok = await t.client.execute({ source: 'export default 1;', limits: limits(1000) });
    succeeded(ok);
    const reg = await t.client.register({ trigger: 'max.t', source: 'export default () => 2;', limits: limits(1000) });
    const trig = await t.client.trigger({ trigger: 'max.t', limits: limits(1000) });
    assert.equal(trig.results[0].result, 2);

    const over = /timeout_ms/;
    await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(1001) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(t.client.register({ trigger: 'max.u', source: 'export default () => 1;', limits: limits(1001) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(t.client.trigger({ trigger: 'max.t', limits: limits(60_000) }), grpc.status.INVALID_ARGUMENT, over);
    const err = await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(5000) }), grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /1000/, 'the message names the maximum');

    await t.client.release({ registrationId: reg.registration?.id });
  });

  it('memory_limit_mb equal to ISOGEAR_MAX_MEMORY_MB is accepted; above it is INVALID_ARGUMENT (also where it has no effect)', async () => {
    const t = server();
    const ok = await t.client.execute({ source: 'export default 1;', mode: ISOLATE, limits: limits(0, 128) });
    succeeded(ok);
    const reg = await t.client.register({ trigger: 'mem.t', source: 'export default () => 3;' });

    const over = /memory_limit_mb/;
    await expectStatus(t.client.execute({ source: 'export default 1;', mode: ISOLATE, limits: limits(0, 129) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(t.client.execute({ source: 'export default 1;', mode: SHARED, limits: limits(0, 129) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(t.client.register({ trigger: 'mem.u', source: 'export default () => 1;', limits: limits(0, 1024) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(t.client.trigger({ trigger: 'mem.t', limits: limits(0, 129) }), grpc.status.INVALID_ARGUMENT, over);
    await expectStatus(
      t.client.execute({ source: 'export default 1;', interpreterId: reg.interpreter?.id, limits: limits(0, 129) }),
      grpc.status.INVALID_ARGUMENT,
      over,
    );
    const err = await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(0, 4096) }), grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /128/, 'the message names the maximum');

    await t.client.release({ registrationId: reg.registration?.id });
  });

  it('source plus modules over ISOGEAR_MAX_SOURCE_BYTES is INVALID_ARGUMENT (counted in UTF-8 bytes)', async () => {
    const t = server();
    const head = 'export default 1; //';
    const sourceOf = (bytes: number): string => head + 'x'.repeat(bytes - head.length);
    const atLimit = await t.client.execute({ source: sourceOf(2048) });
    assert.equal(outcomeName(atLimit.outcome), 'OUTCOME_SUCCEEDED', 'exactly the limit is allowed');

    const tooBig = /ISOGEAR_MAX_SOURCE_BYTES|2048/;
    await expectStatus(t.client.execute({ source: sourceOf(2049) }), grpc.status.INVALID_ARGUMENT, tooBig);
    await expectStatus(
      t.client.execute({ source: 'import m from "m"; export default m; //' + 'x'.repeat(1200), modules: { m: 'export default 1; //' + 'y'.repeat(1000) } }),
      grpc.status.INVALID_ARGUMENT,
      tooBig,
    );
    // 1100 characters, 2200 bytes
    await expectStatus(t.client.execute({ source: `export default "${'é'.repeat(1100)}";` }), grpc.status.INVALID_ARGUMENT, tooBig);
    await expectStatus(t.client.register({ trigger: 'big.t', source: sourceOf(2049) }), grpc.status.INVALID_ARGUMENT, tooBig);
    await expectStatus(
      t.client.register({ trigger: 'big.t', source: 'import m from "m"; export default () => m;', modules: { m: 'export default 1; //' + 'y'.repeat(2100) } }),
      grpc.status.INVALID_ARGUMENT,
      tooBig,
    );
    assert.equal(t.manager.counters().interpreters, 0, 'nothing was created for a rejected request');
  });
});

describe('limits: console output is bounded', () => {
  describe('with the default ISOGEAR_MAX_LOG_BYTES (64 KiB)', () => {
    const server = useTestServer();

    for (const mode of MODES) {
      it(`200 KB of console.log is cut at the limit and logs_truncated is set (${modeName(mode)})`, async () => {
        const t = server();
        const limit = t.config.maxLogBytes;
        assert.equal(limit, 64 * 1024);
        const res = await t.client.execute({
          source: 'const chunk = "0123456789".repeat(1000); for (let i = 0; i < 20; i++) console.log(chunk); export default "done";',
          mode,
        });
        assert.equal(outcomeName(res.outcome), 'OUTCOME_SUCCEEDED', 'truncated output does not fail the run');
        assert.equal(res.result, 'done');
        assert.equal(res.logsTruncated, true);
        assert.ok(logBytes(res.logs) <= limit, `${logBytes(res.logs)} bytes of logs exceed ${limit}`);
        assert.ok(logBytes(res.logs) > limit / 2, 'output up to the limit is kept');
        assert.equal(res.logs[0].message, '0123456789'.repeat(1000), 'earlier entries are kept whole');
      });
    }

    it('a handler run is bounded the same way (TriggerResult.logs_truncated)', async () => {
      const t = server();
      const setup = await t.client.execute({
        source: 'gears.register("chatty", () => { console.warn("w".repeat(200 * 1024)); return 1; });',
      });
      succeeded(setup);
      const trig = await t.client.trigger({ trigger: 'chatty' });
      const [r] = trig.results;
      succeeded(r);
      assert.equal(r.logsTruncated, true);
      assert.ok(logBytes(r.logs) <= t.config.maxLogBytes);
      assert.equal(r.logs[0].level, 'warn');

      const quiet = await t.client.execute({ source: 'console.log("short"); export default 1;' });
      assert.equal(quiet.logsTruncated, false, 'each run has its own budget');
      assert.deepEqual(quiet.logs, [{ level: 'log', message: 'short' }]);
      await releaseInterpreters(t.client, setup.interpreterId);
    });
  });

  describe('with ISOGEAR_MAX_LOG_BYTES=1000', () => {
    const server = useTestServer({ ISOGEAR_MAX_LOG_BYTES: '1000' });

    it('output under the limit is kept whole and not marked truncated', async () => {
      const t = server();
      const res = await t.client.execute({ source: 'console.log("a".repeat(400)); console.info("b".repeat(400)); export default 1;' });
      assert.equal(res.logsTruncated, false);
      assert.deepEqual(
        res.logs.map((l) => [l.level, l.message.length]),
        [
          ['log', 400],
          ['info', 400],
        ],
      );
    });

    it('many small entries: a prefix is kept in order, the rest is dropped', async () => {
      const t = server();
      const res = await t.client.execute({ source: 'for (let i = 0; i < 10000; i++) console.log("line " + i); export default 1;' });
      assert.equal(res.logsTruncated, true);
      assert.ok(logBytes(res.logs) <= 1000, `${logBytes(res.logs)} bytes`);
      assert.ok(res.logs.length > 50 && res.logs.length < 10000);
      res.logs.slice(0, -1).forEach((l, i) => assert.equal(l.message, `line ${i}`));
    });

    it('the bound is in UTF-8 bytes, not characters', async () => {
      const t = server();
      const res = await t.client.execute({ source: 'console.log("é".repeat(2000)); console.log("after"); export default 1;' });
      assert.equal(res.logsTruncated, true);
      assert.ok(logBytes(res.logs) <= 1000, `${logBytes(res.logs)} bytes of logs exceed 1000`);
      assert.ok(res.logs.length >= 1);
      assert.match(res.logs[0].message, /^é+$/, 'a multi-byte character is never split');
    });
  });
});

describe('limits: shared isolates take only the interpreters their heap holds', () => {
  // 16 MB at 256 KiB per context: room for 48 interpreters on the one shared isolate. An empty
  // context costs ~170 KiB, so 200 created at once would overrun the heap and kill the isolate,
  // and every interpreter on it, if placement let them in.
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1', ISOGEAR_SHARED_MEMORY_MB: '16' });

  it('a burst of shared-mode Executes beyond capacity is refused with RESOURCE_EXHAUSTED; no isolate dies, bystanders keep working', async () => {
    const t = server();
    const bystander = await t.client.register({ trigger: 'burst.bystander', source: 'let n = 0; export default () => ++n;', mode: SHARED });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, () => t.client.execute({ mode: SHARED, source: 'export default "ok";' })),
    );
    let ok = 0;
    for (const o of outcomes) {
      if (o.status === 'fulfilled') {
        succeeded(o.value);
        ok += 1;
      } else {
        const err = o.reason as grpc.ServiceError;
        assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
        assert.match(err.details, /ISOGEAR_SHARED_MEMORY_MB/);
      }
    }
    assert.ok(ok >= 40, `most of the first ${ok} fit`);
    assert.ok(ok < 200, 'some were refused');
    assert.equal(t.manager.counters().isolatesDisposed.shared, 0, 'the shared isolate survived the burst');
    const trig = await t.client.trigger({ trigger: 'burst.bystander' });
    succeeded(trig.results[0]);
    assert.equal(trig.results[0].result, 1);
    // capacity is back once the burst is over
    succeeded(await t.client.execute({ mode: SHARED, source: 'export default "after";' }));
    await t.client.release({ interpreterId: bystander.interpreter?.id });
  });
});
