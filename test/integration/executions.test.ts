import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, pb, TestClient } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape, value } from '../helpers/metrics';
import { ISOLATE, limits, MODES, modeName, releaseInterpreters, SHARED, succeeded, waitFor } from '../helpers/proto';
import { sleep, startTestServer, type TestServer } from '../helpers/server';

const { EXECUTION_STATE_QUEUED, EXECUTION_STATE_RUNNING, EXECUTION_STATE_DONE } = pb.ExecutionState;
const { EXECUTION_KIND_EXECUTE, EXECUTION_KIND_TRIGGER, EXECUTION_KIND_HANDLER } = pb.ExecutionKind;
const { OUTCOME_SUCCEEDED, OUTCOME_ABORTED } = pb.Outcome;

/** A script that keeps its isolate busy for `ms` of wall time, then returns `value`. */
const spin = (ms: number, value: unknown = 'spun'): string =>
  `export default () => { const t = Date.now(); while (Date.now() - t < ${ms}) {} return ${JSON.stringify(value)}; }`;
/** A script that waits on a promise that never settles: only its timeout or a cancel ends it. */
const HANG = 'export default () => new Promise(() => {});';
const RUNAWAY = 'export default () => { while (true) {} }';
const UNKNOWN_ID = `exe_${'0'.repeat(20)}`;

/** Waits until the execution reaches `state` (polling GetExecution). */
async function reaches(client: TestClient, id: string, state: pb.ExecutionState, ms = 10_000): Promise<pb.Execution> {
  const until = Date.now() + ms;
  for (;;) {
    const e = await client.getExecution({ executionId: id });
    if (e.state === state) return e;
    if (Date.now() > until) throw new Error(`execution ${id} stayed ${pb.executionStateToJSON(e.state)}, wanted ${pb.executionStateToJSON(state)}`);
    await sleep(10);
  }
}

/** The caller's executions listed now (every page). */
async function listed(client: TestClient, req: Partial<pb.ListExecutionsRequest> = {}): Promise<pb.Execution[]> {
  const out: pb.Execution[] = [];
  let pageToken = '';
  do {
    const page = await client.listExecutions({ ...req, pageToken, pageSize: 2 });
    out.push(...page.executions);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return out;
}

describe('Executions: background runs, cancel by id, waiting', () => {
  describe('background runs', () => {
    const server = useTestServer();

    for (const mode of MODES) {
      it(`StartExecute answers at once, runs without its caller, and keeps the response once DONE (${modeName(mode)})`, async () => {
        const t = server();
        const other = new TestClient(t.server.grpcAddress);
        try {
          const started = await other.startExecute({ mode, source: spin(400, { hello: 'background' }) });
          assert.match(started.id, /^exe_[0-9a-f]{20}$/);
          assert.equal(started.kind, EXECUTION_KIND_EXECUTE);
          assert.equal(started.background, true);
          assert.ok(started.state === EXECUTION_STATE_QUEUED || started.state === EXECUTION_STATE_RUNNING, pb.executionStateToJSON(started.state));
          assert.ok(started.createdAt instanceof Date);
          assert.equal(started.executeResponse, undefined);
          // the caller goes away: the run goes on
          other.close();
          const running = await reaches(t.client, started.id, EXECUTION_STATE_RUNNING);
          assert.ok(running.startedAt instanceof Date);
          // (its interpreter id is set once the interpreter exists: it may still be being made)
          assert.match(running.interpreterId, /^(itp_[0-9a-f]+)?$/);
          const done = await t.client.waitExecution({ executionId: started.id });
          assert.equal(done.state, EXECUTION_STATE_DONE);
          assert.match(done.interpreterId, /^itp_/);
          assert.ok(done.endedAt instanceof Date && done.endedAt >= (done.startedAt as Date));
          const res = done.executeResponse as pb.ExecuteResponse;
          succeeded(res);
          assert.deepEqual(res.result, { hello: 'background' });
          assert.equal(res.executionId, started.id, 'the execution id is the run id');
          assert.equal(res.interpreterId, done.interpreterId);
          assert.equal(res.interpreter?.state, pb.InterpreterState.INTERPRETER_STATE_DISPOSED);
          // kept: GetExecution and ListExecutions still answer it
          assert.deepEqual(await t.client.getExecution({ executionId: started.id }), done);
          assert.deepEqual((await listed(t.client)).map((e) => e.id), [started.id]);
        } finally {
          other.close();
        }
      });
    }

    it('validates exactly as Execute and Trigger do: the same status for the same bad input', async () => {
      const t = server();
      const named = await t.client.execute({ name: 'taken', source: 'gears.register("bg.taken", () => 1);' });
      const draining = await t.client.execute({ source: 'gears.register("bg.gone", () => 1);' });
      await t.client.release({ interpreterId: draining.interpreterId });
      const cases: [string, Partial<pb.ExecuteRequest>, grpc.status, RegExp][] = [
        ['empty source', { source: '' }, grpc.status.INVALID_ARGUMENT, /source/],
        ['mode with interpreter_id', { source: 'export default 1', mode: SHARED, interpreterId: named.interpreterId }, grpc.status.INVALID_ARGUMENT, /exclusive/],
        ['replace without name', { source: 'export default 1', replace: true }, grpc.status.INVALID_ARGUMENT, /replace needs a name/],
        ['timeout over the maximum', { source: 'export default 1', limits: limits(10_000_000) }, grpc.status.INVALID_ARGUMENT, /timeout/],
        ['unknown interpreter', { source: 'export default 1', interpreterId: 'itp_00000000000000000000' }, grpc.status.NOT_FOUND, /not found/],
        ['disposed interpreter', { source: 'export default 1', interpreterId: draining.interpreterId }, grpc.status.FAILED_PRECONDITION, /DISPOSED/],
        ['name taken', { source: 'export default 1', name: 'taken' }, grpc.status.ALREADY_EXISTS, /already exists/],
      ];
      for (const [what, req, code, pattern] of cases) {
        const sync = await expectStatus(t.client.execute(req), code, pattern);
        const background = await expectStatus(t.client.startExecute(req), code, pattern);
        assert.equal(background.details, sync.details, what);
      }
      for (const [req, code] of [
        [{ trigger: '' }, grpc.status.INVALID_ARGUMENT],
        [{ trigger: 'bg.nobody' }, grpc.status.NOT_FOUND],
        [{ trigger: 'bg.taken', limits: limits(10_000_000) }, grpc.status.INVALID_ARGUMENT],
      ] as const) {
        const sync = await expectStatus(t.client.trigger(req), code);
        const background = await expectStatus(t.client.startTrigger(req), code);
        assert.equal(background.details, sync.details);
      }
      assert.deepEqual(await listed(t.client), [], 'nothing refused was kept');
      await releaseInterpreters(t.client, named.interpreterId);
    });

    it('a background Execute into an existing interpreter shares its globals; its registrations are kept like a synchronous one’s', async () => {
      const t = server();
      const base = await t.client.execute({ source: 'globalThis.n = 41; gears.register("bg.base", () => n);' });
      const started = await t.client.startExecute({ interpreterId: base.interpreterId, source: 'n += 1; gears.register("bg.more", () => n * 10); export default n;' });
      assert.equal(started.interpreterId, base.interpreterId);
      const done = await t.client.waitExecution({ executionId: started.id });
      succeeded(done.executeResponse as pb.ExecuteResponse);
      assert.equal(done.executeResponse?.result, 42);
      assert.equal(done.executeResponse?.registrations.length, 1);
      assert.equal(done.executeResponse?.interpreter?.registrationReferences, 2);
      const fired = await t.client.trigger({ trigger: 'bg.more' });
      assert.equal(fired.results[0].result, 420);
      await releaseInterpreters(t.client, base.interpreterId);
    });

    it('StartTrigger runs the fan-out in the background: the TRIGGER and each HANDLER are listed while they run', async () => {
      const t = server();
      const a = await t.client.register({ trigger: 'bg.fan', source: 'export default (p) => { const t = Date.now(); while (Date.now() - t < 600) {} return p * 2; }' });
      const b = await t.client.register({ trigger: 'bg.fan', mode: SHARED, source: 'export default (p) => { const t = Date.now(); while (Date.now() - t < 600) {} return p * 3; }' });
      const started = await t.client.startTrigger({ trigger: 'bg.fan', payload: 7 });
      assert.equal(started.kind, EXECUTION_KIND_TRIGGER);
      assert.equal(started.trigger, 'bg.fan');
      assert.equal(started.interpreterId, '');
      await waitFor('both handler runs listed', () => t.manager.counters().executionsInFlight === 2);
      const running = await listed(t.client, { state: EXECUTION_STATE_RUNNING });
      const handlers = running.filter((e) => e.kind === EXECUTION_KIND_HANDLER);
      assert.deepEqual(handlers.map((h) => h.registrationId).sort(), [a.registration?.id, b.registration?.id].sort());
      for (const h of handlers) {
        assert.equal(h.trigger, 'bg.fan');
        assert.equal(h.background, true);
        assert.match(h.interpreterId, /^itp_/);
      }
      assert.ok(running.some((e) => e.id === started.id && e.kind === EXECUTION_KIND_TRIGGER));
      // filtered by interpreter: only that handler's run
      const inA = await listed(t.client, { interpreterId: a.interpreter?.id });
      assert.deepEqual(inA.map((e) => e.registrationId), [a.registration?.id]);
      const done = await t.client.waitExecution({ executionId: started.id });
      assert.equal(done.state, EXECUTION_STATE_DONE);
      const results = done.triggerResponse?.results ?? [];
      assert.deepEqual(results.map((r) => r.result), [14, 21]);
      assert.deepEqual(results.map((r) => r.registrationId), [a.registration?.id, b.registration?.id]);
      assert.deepEqual(results.map((r) => r.executionId).sort(), handlers.map((h) => h.id).sort(), 'each HANDLER execution is that handler run');
      // the handler runs were listed only while they ran; the fan-out is kept
      assert.deepEqual((await listed(t.client)).map((e) => e.id), [started.id]);
      await releaseInterpreters(t.client, a.interpreter?.id, b.interpreter?.id);
    });

    it('a background Execute’s registrations are stored before it is DONE: a restart right after keeps them', async () => {
      const dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-bg-'));
      let second: TestServer | undefined;
      try {
        const first = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
        const started = await first.client.startExecute({ name: 'bg-durable', source: 'gears.register("bg.durable", (p) => p + 1);' });
        const done = await first.client.waitExecution({ executionId: started.id });
        succeeded(done.executeResponse as pb.ExecuteResponse);
        // stop at once, without releasing: what is stored is what survives
        first.client.close();
        await first.server.shutdown(0);
        second = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
        const fired = await second.client.trigger({ trigger: 'bg.durable', payload: 1 });
        assert.equal(fired.results[0].result, 2);
        assert.equal(fired.results[0].interpreterId, done.interpreterId);
        await releaseInterpreters(second.client, done.interpreterId);
        await second.close();
      } finally {
        if (second) await second.close();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  });

  describe('every running execution is visible and stoppable', () => {
    const server = useTestServer();

    for (const mode of MODES) {
      it(`CancelExecution ends a synchronous Execute: its caller gets OUTCOME_ABORTED (${modeName(mode)})`, async () => {
        const t = server();
        const other = new TestClient(t.server.grpcAddress);
        try {
          const call = t.client.execute({ mode, source: HANG, limits: limits(30_000) });
          await waitFor('the run started', () => t.manager.counters().executionsInFlight === 1);
          const [sync] = await listed(other, { state: EXECUTION_STATE_RUNNING });
          assert.equal(sync.kind, EXECUTION_KIND_EXECUTE);
          assert.equal(sync.background, false);
          const cancelled = await other.cancelExecution({ executionId: sync.id });
          assert.equal(cancelled.state, EXECUTION_STATE_DONE);
          const res = await call;
          assert.equal(res.outcome, OUTCOME_ABORTED);
          assert.equal(res.executionId, sync.id);
          assert.match(res.error?.message ?? '', /cancelled by CancelExecution/);
          if (mode === ISOLATE) {
            // the fresh interpreter's isolate went with the cancel, not at the run's timeout
            assert.equal(t.manager.counters().dedicatedIsolates, 0);
          }
          // a synchronous run is listed only while it runs
          await expectStatus(other.getExecution({ executionId: sync.id }), grpc.status.NOT_FOUND, /not found/);
        } finally {
          other.close();
        }
      });
    }

    it('a runaway in a fresh isolate-mode interpreter is stopped at once: its isolate is disposed', async () => {
      const t = server();
      const started = await t.client.startExecute({ mode: ISOLATE, source: RUNAWAY, limits: limits(30_000) });
      await reaches(t.client, started.id, EXECUTION_STATE_RUNNING);
      await waitFor('the runaway runs', () => t.manager.counters().executionsInFlight === 1);
      const since = Date.now();
      await t.client.cancelExecution({ executionId: started.id });
      const done = await t.client.waitExecution({ executionId: started.id, timeoutMs: 5000 });
      assert.equal(done.state, EXECUTION_STATE_DONE);
      assert.equal(done.executeResponse?.outcome, OUTCOME_ABORTED);
      await waitFor('its isolate is gone', () => t.manager.counters().dedicatedIsolates === 0, 5000);
      assert.ok(Date.now() - since < 5000, 'not at its 30 s timeout');
    });

    it('cancelling a Trigger cancels every handler run; cancelling one HANDLER stops only that one', async () => {
      const t = server();
      const regs = await Promise.all([0, 1, 2].map(() => t.client.register({ trigger: 'cx.fan', source: HANG })));
      const fast = await t.client.register({ trigger: 'cx.one', source: 'export default (p) => p' });
      const slow = await t.client.register({ trigger: 'cx.one', source: HANG });
      try {
        // synchronous Trigger, cancelled as a whole from another client
        const call = t.client.trigger({ trigger: 'cx.fan', limits: limits(30_000) });
        await waitFor('three handler runs', () => t.manager.counters().executionsInFlight === 3);
        const fanOut = (await listed(t.client, { state: EXECUTION_STATE_RUNNING })).find((e) => e.kind === EXECUTION_KIND_TRIGGER) as pb.Execution;
        assert.equal(fanOut.trigger, 'cx.fan');
        await t.client.cancelExecution({ executionId: fanOut.id });
        const res = await call;
        assert.deepEqual(res.results.map((r) => r.outcome), [OUTCOME_ABORTED, OUTCOME_ABORTED, OUTCOME_ABORTED]);
        for (const r of res.results) assert.match(r.error?.message ?? '', /cancelled by CancelExecution/);

        // one handler of a background Trigger, cancelled alone
        const started = await t.client.startTrigger({ trigger: 'cx.one', payload: 'ok', limits: limits(30_000) });
        await waitFor('the slow handler runs', () => t.manager.counters().executionsInFlight === 1 && t.manager.counters().executions.live === 2);
        const handler = (await listed(t.client, { state: EXECUTION_STATE_RUNNING })).find((e) => e.kind === EXECUTION_KIND_HANDLER) as pb.Execution;
        assert.equal(handler.registrationId, slow.registration?.id);
        const cancelled = await t.client.cancelExecution({ executionId: handler.id });
        assert.equal(cancelled.state, EXECUTION_STATE_DONE);
        assert.equal(cancelled.triggerResponse?.results[0].outcome, OUTCOME_ABORTED);
        const done = await t.client.waitExecution({ executionId: started.id });
        assert.deepEqual(done.triggerResponse?.results.map((r) => r.outcome), [OUTCOME_SUCCEEDED, OUTCOME_ABORTED]);
        assert.equal(done.triggerResponse?.results[0].result, 'ok');
      } finally {
        await releaseInterpreters(t.client, ...regs.map((r) => r.interpreter?.id), fast.interpreter?.id, slow.interpreter?.id);
      }
    });

    it('ids: empty or malformed is INVALID_ARGUMENT, unknown is NOT_FOUND, on every call', async () => {
      const t = server();
      const calls = [
        (id: string) => t.client.getExecution({ executionId: id }),
        (id: string) => t.client.waitExecution({ executionId: id }),
        (id: string) => t.client.cancelExecution({ executionId: id }),
      ];
      for (const call of calls) {
        await expectStatus(call(''), grpc.status.INVALID_ARGUMENT, /execution_id must not be empty/);
        await expectStatus(call('nope'), grpc.status.INVALID_ARGUMENT, /not an execution id/);
        await expectStatus(call(`exe_${'z'.repeat(20)}`), grpc.status.INVALID_ARGUMENT, /not an execution id/);
        await expectStatus(call('x'.repeat(5000)), grpc.status.INVALID_ARGUMENT, /not an execution id/);
        await expectStatus(call(UNKNOWN_ID), grpc.status.NOT_FOUND, /not found/);
      }
      await expectStatus(t.client.listExecutions({ state: 99 as pb.ExecutionState }), grpc.status.INVALID_ARGUMENT, /ExecutionState/);
      await expectStatus(t.client.listExecutions({ pageSize: -1 }), grpc.status.INVALID_ARGUMENT, /page_size/);
      await expectStatus(t.client.listExecutions({ pageToken: 'junk' }), grpc.status.INVALID_ARGUMENT, /page_token/);
    });
  });

  describe('waiting', () => {
    const server = useTestServer({ ISOGEAR_MAX_TIMEOUT_MS: '20000' });

    it('WaitExecution answers the current state at timeout_ms or before the call’s deadline, and holds no run slot', async () => {
      const t = server();
      const started = await t.client.startExecute({ source: HANG, limits: limits(15_000) });
      await reaches(t.client, started.id, EXECUTION_STATE_RUNNING);
      let since = Date.now();
      const timedOut = await t.client.waitExecution({ executionId: started.id, timeoutMs: 200 });
      assert.equal(timedOut.state, EXECUTION_STATE_RUNNING);
      assert.ok(Date.now() - since >= 190, 'it waited');
      since = Date.now();
      const beforeDeadline = await t.client.waitExecution({ executionId: started.id }, { deadlineMs: 800 });
      assert.equal(beforeDeadline.state, EXECUTION_STATE_RUNNING, 'answered (status OK) before the deadline');
      assert.ok(Date.now() - since < 800);
      // a crowd of waiters costs no run slot
      const waiters = Array.from({ length: 300 }, () => t.client.waitExecution({ executionId: started.id }));
      await sleep(100);
      assert.equal(t.manager.counters().runSlotsInUse, 1);
      await t.client.cancelExecution({ executionId: started.id });
      const answers = await Promise.all(waiters);
      for (const a of answers) assert.equal(a.executeResponse?.outcome, OUTCOME_ABORTED);
      await expectStatus(t.client.waitExecution({ executionId: started.id, timeoutMs: 20_001 }), grpc.status.INVALID_ARGUMENT, /timeout_ms 20001 is over the maximum of 20000/);
    });
  });

  describe('retention and quotas', () => {
    it('DONE background executions expire after ISOGEAR_EXECUTION_RETENTION_MS, and the oldest go first past _BYTES', async () => {
      const t = await startTestServer({ ISOGEAR_EXECUTION_RETENTION_MS: '300' });
      try {
        const started = await t.client.startExecute({ source: 'export default 1' });
        await t.client.waitExecution({ executionId: started.id });
        await sleep(450);
        await expectStatus(t.client.getExecution({ executionId: started.id }), grpc.status.NOT_FOUND, /expired: .*ISOGEAR_EXECUTION_RETENTION_MS/);
        await expectStatus(t.client.waitExecution({ executionId: started.id }), grpc.status.NOT_FOUND, /expired/);
        assert.deepEqual(await listed(t.client), []);
      } finally {
        await t.close();
      }
      const b = await startTestServer({ ISOGEAR_EXECUTION_RETENTION_BYTES: '40000' });
      try {
        const ids: string[] = [];
        for (let i = 0; i < 4; i++) {
          const s = await b.client.startExecute({ source: `export default ${JSON.stringify('x'.repeat(15_000))} + ${i}` });
          await b.client.waitExecution({ executionId: s.id });
          ids.push(s.id);
        }
        // about 15.5 kB each: two fit
        await expectStatus(b.client.getExecution({ executionId: ids[0] }), grpc.status.NOT_FOUND, /expired: .*ISOGEAR_EXECUTION_RETENTION_BYTES/);
        await expectStatus(b.client.getExecution({ executionId: ids[1] }), grpc.status.NOT_FOUND, /expired/);
        assert.equal((await b.client.getExecution({ executionId: ids[3] })).executeResponse?.result, `${'x'.repeat(15_000)}3`);
        assert.deepEqual((await listed(b.client)).map((e) => e.id), ids.slice(2));
        const samples = await scrape(b);
        assert.equal(value(samples, 'isogear_background_executions', { state: 'done' }), 2);
        assert.ok(value(samples, 'isogear_background_execution_retained_bytes') <= 40_000);
      } finally {
        await b.close();
      }
    });

    it('a ListExecutions page carries about 1 MiB of kept responses at most, whatever page_size asks', async () => {
      const t = await startTestServer();
      try {
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) {
          const s = await t.client.startExecute({ source: `export default "${i}".repeat(600000)` });
          await t.client.waitExecution({ executionId: s.id });
          ids.push(s.id);
        }
        const first = await t.client.listExecutions({ pageSize: 100 });
        assert.deepEqual(first.executions.map((e) => e.id), [ids[0]]);
        assert.notEqual(first.nextPageToken, '');
        assert.equal((first.executions[0].executeResponse?.result as string).length, 600_000);
        assert.deepEqual((await listed(t.client)).map((e) => e.id), ids, 'every page followed, each once');
      } finally {
        await t.close();
      }
    });

    it('a tenant’s queued and running background executions are bounded by ISOGEAR_TENANT_MAX_BACKGROUND_EXECUTIONS', async () => {
      const t = await startTestServer({ ISOGEAR_TENANT_MAX_BACKGROUND_EXECUTIONS: '2' });
      try {
        const a = await t.client.startExecute({ source: HANG, limits: limits(10_000) });
        const b = await t.client.startExecute({ source: HANG, limits: limits(10_000) });
        const refused = await expectStatus(t.client.startExecute({ source: 'export default 1' }), grpc.status.RESOURCE_EXHAUSTED, /2 background executions .*ISOGEAR_TENANT_MAX_BACKGROUND_EXECUTIONS/);
        assert.equal(refused.metadata.get('isogear-limit')[0], 'tenant_background_executions');
        // synchronous work is not counted
        succeeded(await t.client.execute({ source: 'export default 1' }));
        await t.client.cancelExecution({ executionId: a.id });
        const c = await t.client.startExecute({ source: 'export default 3' });
        assert.equal((await t.client.waitExecution({ executionId: c.id })).executeResponse?.result, 3);
        await t.client.cancelExecution({ executionId: b.id });
      } finally {
        await t.close();
      }
    });

    it('executions belong to their tenant: another tenant’s id is NOT_FOUND and its list is its own', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-exec-tenants-'));
      const keysPath = path.join(dir, 'keys.json');
      const sha = (key: string): string => createHash('sha256').update(key).digest('hex');
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('alpha-secret-key') }, { name: 'beta', keySha256: sha('beta-secret-key') }] }));
      const t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keysPath });
      const alpha = new TestClient(t.server.grpcAddress, 'alpha-secret-key');
      const beta = new TestClient(t.server.grpcAddress, 'beta-secret-key');
      try {
        const mine = await alpha.startExecute({ source: HANG, limits: limits(10_000) });
        for (const call of [() => beta.getExecution({ executionId: mine.id }), () => beta.cancelExecution({ executionId: mine.id }), () => beta.waitExecution({ executionId: mine.id })]) {
          const err = await expectStatus(call(), grpc.status.NOT_FOUND);
          assert.equal(err.details, `execution ${mine.id} not found (unknown, or a synchronous or handler run that ended: those are kept only while they run)`, 'exactly as an unknown id');
        }
        assert.deepEqual(await listed(beta), []);
        assert.deepEqual((await listed(alpha)).map((e) => e.id), [mine.id]);
        assert.equal((await alpha.getExecution({ executionId: mine.id })).state, EXECUTION_STATE_RUNNING, 'beta’s cancel did nothing');
        await alpha.cancelExecution({ executionId: mine.id });
      } finally {
        alpha.close();
        beta.close();
        await t.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('run queue', () => {
    it('a queued execution cancelled before it starts ends ABORTED without running; a DONE one is returned unchanged', async () => {
      // one run slot, held by a synchronous run: background runs queue behind it
      const narrow = await startTestServer({ ISOGEAR_MAX_CONCURRENT_RUNS: '1' });
      try {
        const blocker = narrow.client.execute({ source: spin(800) });
        await waitFor('the blocker runs', () => narrow.manager.counters().executionsInFlight === 1);
        const queued = await narrow.client.startExecute({ source: 'export default "never"' });
        assert.equal(queued.state, EXECUTION_STATE_QUEUED);
        assert.equal(queued.startedAt, undefined);
        const cancelled = await narrow.client.cancelExecution({ executionId: queued.id });
        assert.equal(cancelled.state, EXECUTION_STATE_DONE);
        assert.equal(cancelled.executeResponse?.outcome, OUTCOME_ABORTED);
        assert.match(cancelled.executeResponse?.error?.message ?? '', /cancelled by CancelExecution before the run started/);
        assert.equal(cancelled.executeResponse?.interpreter, undefined, 'no interpreter was made for it');
        succeeded(await blocker);
        assert.deepEqual(await narrow.client.cancelExecution({ executionId: queued.id }), cancelled, 'cancelling it again changes nothing');
      } finally {
        await narrow.close();
      }
    });

    it('background runs wait behind requests: a synchronous Execute that arrives later runs first', async () => {
      const t = await startTestServer({ ISOGEAR_MAX_CONCURRENT_RUNS: '1' });
      try {
        const blocker = t.client.execute({ source: spin(500) });
        await waitFor('the blocker runs', () => t.manager.counters().executionsInFlight === 1);
        const background = await Promise.all([1, 2, 3].map((i) => t.client.startExecute({ source: `export default ${i}` })));
        for (const b of background) assert.equal(b.state, EXECUTION_STATE_QUEUED);
        const sync = await t.client.execute({ source: 'export default Date.now()' });
        succeeded(await blocker);
        const done = await Promise.all(background.map((b) => t.client.waitExecution({ executionId: b.id })));
        for (const d of done) assert.ok((d.startedAt as Date).getTime() >= (sync.result as number) - 5, 'the background runs started after the later synchronous one');
        assert.deepEqual(done.map((d) => d.executeResponse?.result), [1, 2, 3], 'in the order they were accepted');
      } finally {
        await t.close();
      }
    });
  });

  describe('shared mode: no head-of-line stalls', () => {
    it('cancelled runaways on every shared isolate do not delay new shared-mode work: an added isolate takes it, and is retired when idle', async function () {
      this.timeout(60_000);
      const t = await startTestServer({ ISOGEAR_SHARED_ISOLATES: '2', ISOGEAR_EXTRA_SHARED_ISOLATES: '2' });
      try {
        // one runaway per shared isolate, each cancelled by its caller's deadline; each keeps its
        // isolate until its own 6 s timeout (isolated-vm cannot stop it sooner)
        for (let i = 0; i < 2; i++) {
          await expectStatus(t.client.execute({ mode: SHARED, source: RUNAWAY, limits: limits(6000) }, { deadlineMs: 300 }), grpc.status.DEADLINE_EXCEEDED);
        }
        const since = Date.now();
        for (let i = 0; i < 6; i++) succeeded(await t.client.execute({ mode: SHARED, source: `export default ${i}` }));
        const took = Date.now() - since;
        assert.ok(took < 3000, `six shared Executes took ${took} ms behind the runaways`);
        const samples = await scrape(t);
        assert.equal(value(samples, 'isogear_shared_isolates_extra'), 1, 'one added isolate was enough');
        assert.equal(value(samples, 'isogear_isolates', { kind: 'shared' }), 3);
        assert.ok(t.logs.some((l) => /added a shared isolate/.test(String(l.msg))));
        // the runaways end at their timeout; the added isolate then goes
        await waitFor('the added isolate retired', () => t.manager.counters().extraSharedIsolates === 0, 15_000);
        assert.equal(t.manager.counters().sharedIsolates, 2);
        assert.ok(t.logs.some((l) => /retired an added shared isolate/.test(String(l.msg))));
      } finally {
        await t.close();
      }
    });
  });

  describe('metrics and shutdown', () => {
    it('counts background executions by state and cancels by reason', async () => {
      const t = await startTestServer();
      try {
        const started = await t.client.startExecute({ source: HANG, limits: limits(10_000) });
        await reaches(t.client, started.id, EXECUTION_STATE_RUNNING);
        let samples = await scrape(t);
        assert.equal(value(samples, 'isogear_background_executions', { state: 'running' }), 1);
        assert.equal(value(samples, 'isogear_background_executions', { state: 'queued' }), 0);
        await t.client.cancelExecution({ executionId: started.id });
        await expectStatus(t.client.execute({ source: HANG, limits: limits(10_000) }, { deadlineMs: 200 }), grpc.status.DEADLINE_EXCEEDED);
        samples = await scrape(t);
        assert.equal(value(samples, 'isogear_background_executions', { state: 'running' }), 0);
        assert.equal(value(samples, 'isogear_background_executions', { state: 'done' }), 1);
        assert.equal(value(samples, 'isogear_execution_cancels_total', { reason: 'request' }), 1);
        assert.equal(value(samples, 'isogear_execution_cancels_total', { reason: 'client' }), 1);
        assert.equal(value(samples, 'isogear_execution_cancels_total', { reason: 'shutdown' }), 0);
      } finally {
        await t.close();
      }
    });

    it('shutdown refuses new background runs (UNAVAILABLE) and ends those still running ABORTED, saying why', async () => {
      const t = await startTestServer();
      const started = await t.client.startExecute({ source: HANG, limits: limits(30_000) });
      const queuedTrigger = await t.client.execute({ source: 'gears.register("sd.fan", () => new Promise(() => {}));' });
      const fan = await t.client.startTrigger({ trigger: 'sd.fan', limits: limits(30_000) });
      await reaches(t.client, started.id, EXECUTION_STATE_RUNNING);
      t.manager.stopAccepting();
      await expectStatus(t.client.startExecute({ source: 'export default 1' }), grpc.status.UNAVAILABLE, /shutting down/);
      await expectStatus(t.client.startTrigger({ trigger: 'sd.fan' }), grpc.status.UNAVAILABLE, /shutting down/);
      t.client.close();
      await t.server.shutdown(200);
      const done = t.manager.getExecution(started.id);
      assert.equal(done.state, 'done');
      assert.equal(done.executeResult?.outcome, 'aborted');
      assert.match(done.executeResult?.error?.message ?? '', /the server shut down/);
      const fanDone = t.manager.getExecution(fan.id);
      assert.deepEqual(fanDone.triggerResults?.map((r) => r.outcome), ['aborted']);
      assert.equal(t.manager.counters().executions.cancels.shutdown, 2);
      assert.equal(t.manager.counters().executions.live, 0);
      assert.equal(queuedTrigger.outcome, OUTCOME_SUCCEEDED);
      // shutdown let go of everything: close() finds nothing left (and removes the data directory)
      await t.close();
    });
  });
});
