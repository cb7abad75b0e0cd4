import assert from 'node:assert/strict';
import { grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { delta, scrape, value } from '../helpers/metrics';
import { ISOLATE, limits, MODES, modeName, releaseInterpreters, SHARED, succeeded, waitFor } from '../helpers/proto';

const GEARS = { grpc_service: 'isogear.v1.GearsService', grpc_type: 'unary' };

describe('metrics: /metrics follows the lifecycle exactly', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    const m = mode === SHARED ? 'shared' : 'isolate';
    it(`one Execute registering two handlers, two triggers, two releases (${modeName(mode)})`, async () => {
      const t = server();
      const s0 = await scrape(t);
      const exec = await t.client.execute({ mode, source: 'gears.register("m.t", () => 1); gears.register("m.t", () => 2);' });
      succeeded(exec);
      const s1 = await scrape(t);
      assert.equal(value(s1, 'isogear_interpreters', { mode: m, state: 'ready' }), 1);
      assert.equal(value(s1, 'isogear_interpreter_references', { owner: 'registration' }), 2);
      assert.equal(value(s1, 'isogear_interpreter_references', { owner: 'execution' }), 0);
      assert.equal(value(s1, 'isogear_registrations'), 2);
      assert.equal(value(s1, 'isogear_isolates', { kind: 'dedicated' }), mode === ISOLATE ? 1 : 0);
      assert.equal(delta(s0, s1, 'isogear_isolates_created_total', { kind: 'dedicated' }), mode === ISOLATE ? 1 : 0);
      assert.equal(delta(s0, s1, 'isogear_executions_total', { mode: m, kind: 'execute', outcome: 'succeeded' }), 1);
      assert.equal(delta(s0, s1, 'isogear_execution_duration_seconds_count', { mode: m, kind: 'execute' }), 1);
      assert.ok(value(s1, 'isogear_heap_used_bytes', { kind: mode === ISOLATE ? 'dedicated' : 'shared' }) > 0, 'heap is sampled');

      await t.client.trigger({ trigger: 'm.t' });
      await t.client.trigger({ trigger: 'm.t' });
      const s2 = await scrape(t);
      assert.equal(delta(s1, s2, 'isogear_executions_total', { mode: m, kind: 'trigger', outcome: 'succeeded' }), 4);
      assert.equal(delta(s1, s2, 'isogear_execution_duration_seconds_count', { mode: m, kind: 'trigger' }), 4);
      assert.equal(value(s2, 'isogear_executions_in_flight', { mode: m }), 0);

      await t.client.release({ registrationId: exec.registrations[0].id });
      const s3 = await scrape(t);
      assert.equal(value(s3, 'isogear_interpreter_references', { owner: 'registration' }), 1);
      assert.equal(value(s3, 'isogear_registrations'), 1);
      await t.client.release({ registrationId: exec.registrations[1].id });
      const s4 = await scrape(t);
      assert.equal(value(s4, 'isogear_interpreters', { mode: m, state: 'ready' }), 0);
      assert.equal(value(s4, 'isogear_interpreter_references', { owner: 'registration' }), 0);
      assert.equal(value(s4, 'isogear_registrations'), 0);
      assert.equal(value(s4, 'isogear_isolates', { kind: 'dedicated' }), 0);
      assert.equal(delta(s0, s4, 'isogear_isolates_disposed_total', { kind: 'dedicated', reason: 'released' }), mode === ISOLATE ? 1 : 0);
      assert.equal(delta(s0, s4, 'grpc_server_handled_total', { ...GEARS, grpc_method: 'Release', grpc_code: 'OK' }), 2);
      assert.equal(delta(s0, s4, 'grpc_server_started_total', { ...GEARS, grpc_method: 'Trigger' }), 2);
    });
  }

  it('a timed-out run and a memory kill are counted under their outcomes and disposal reasons', async () => {
    const t = server();
    const s0 = await scrape(t);
    const slow = await t.client.execute({ mode: SHARED, limits: limits(200), source: 'for (;;) {}' });
    assert.equal(slow.outcome, pb.Outcome.OUTCOME_TIMED_OUT);
    const bomb = await t.client.execute({
      mode: ISOLATE,
      limits: limits(10_000, 16),
      source: 'const a = []; for (;;) a.push(new Array(100000).fill(1.5));',
    });
    assert.equal(bomb.outcome, pb.Outcome.OUTCOME_MEMORY_EXCEEDED);
    const s1 = await scrape(t);
    assert.equal(delta(s0, s1, 'isogear_executions_total', { mode: 'shared', kind: 'execute', outcome: 'timed_out' }), 1);
    assert.equal(delta(s0, s1, 'isogear_executions_total', { mode: 'isolate', kind: 'execute', outcome: 'memory_exceeded' }), 1);
    assert.equal(delta(s0, s1, 'isogear_isolates_disposed_total', { kind: 'dedicated', reason: 'memory_limit' }), 1);
    assert.equal(value(s1, 'isogear_isolates', { kind: 'dedicated' }), 0);
  });

  it('an upgrade disposes the old dedicated isolate with reason "replaced"', async () => {
    const t = server();
    const s0 = await scrape(t);
    succeeded(await t.client.execute({ mode: ISOLATE, name: 'm.up', source: 'gears.register("m.up", () => 1);' }));
    const v2 = await t.client.execute({ mode: ISOLATE, name: 'm.up', replace: true, source: 'gears.register("m.up", () => 2);' });
    succeeded(v2);
    const s1 = await scrape(t);
    assert.equal(delta(s0, s1, 'isogear_isolates_disposed_total', { kind: 'dedicated', reason: 'replaced' }), 1);
    assert.equal(value(s1, 'isogear_isolates', { kind: 'dedicated' }), 1);

    await releaseInterpreters(t.client, v2.interpreterId);
    const s2 = await scrape(t);
    assert.equal(delta(s1, s2, 'isogear_isolates_disposed_total', { kind: 'dedicated', reason: 'released' }), 1, 'the successor goes as any released one');
    assert.equal(value(s2, 'isogear_isolates', { kind: 'dedicated' }), 0);
  });

  it('grpc_server_handled_total counts an INVALID_ARGUMENT and a cancelled call', async () => {
    const t = server();
    const s0 = await scrape(t);
    await t.client.execute({ source: '' }).catch(() => undefined);
    const err = await new Promise<grpc.ServiceError | null>((resolve) => {
      const call = t.client.raw.execute(
        pb.ExecuteRequest.fromPartial({ source: 'await new Promise(() => {});', limits: limits(5000) }),
        new grpc.Metadata(),
        {},
        (e) => resolve(e),
      );
      setTimeout(() => call.cancel(), 200);
    });
    assert.equal(err?.code, grpc.status.CANCELLED);
    let s1 = await scrape(t);
    for (let i = 0; i < 50 && delta(s0, s1, 'grpc_server_handled_total', { ...GEARS, grpc_method: 'Execute', grpc_code: 'CANCELLED' }) === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      s1 = await scrape(t);
    }
    assert.equal(delta(s0, s1, 'grpc_server_handled_total', { ...GEARS, grpc_method: 'Execute', grpc_code: 'INVALID_ARGUMENT' }), 1);
    assert.equal(delta(s0, s1, 'grpc_server_handled_total', { ...GEARS, grpc_method: 'Execute', grpc_code: 'CANCELLED' }), 1);
    assert.equal(delta(s0, s1, 'grpc_server_started_total', { ...GEARS, grpc_method: 'Execute' }), 2);
    assert.ok(value(s1, 'grpc_server_handling_seconds_count', { ...GEARS, grpc_method: 'Execute' }) >= 2);
  });

  it('serves only GET /metrics: anything else is 404; process metrics are there; no label carries an id', async () => {
    const t = server();
    const holder = await t.client.execute({ source: 'gears.register("m.ids", () => 1);' });
    succeeded(holder);
    const base = `http://${t.server.metricsAddress}`;
    assert.equal((await fetch(`${base}/`)).status, 404);
    assert.equal((await fetch(`${base}/metrics/x`)).status, 404);
    assert.equal((await fetch(`${base}/metrics`, { method: 'POST' })).status, 404);
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.match(text, /^process_cpu_user_seconds_total /m);
    assert.match(text, /^nodejs_eventloop_lag_seconds /m);
    assert.doesNotMatch(text, /(itp|exe|reg)_[0-9a-f]{8}/, 'no interpreter, execution or registration id in any label');
    await releaseInterpreters(t.client, holder.interpreterId);
  });
});

describe('metrics: the warm pool', () => {
  const pooled = useTestServer({ ISOGEAR_WARM_ISOLATES: '2', ISOGEAR_WARM_CONTEXTS: '2' });

  it('the warm pool: pooled isolates, warm contexts and hits or misses per mode, as the manager counts them', async () => {
    const t = pooled();
    // Full and idle, the pool stands still between the scrape and the counters.
    await waitFor('the warm pool to fill', () => {
      const c = t.manager.counters();
      return c.warm.isolates === 2 && c.warm.contexts === 2 * c.sharedIsolates;
    });
    const s0 = await scrape(t);
    const w0 = t.manager.counters().warm;
    assert.equal(value(s0, 'isogear_isolates', { kind: 'pooled' }), w0.isolates);
    assert.equal(value(s0, 'isogear_warm_pool_size', { mode: 'isolate' }), w0.isolates);
    assert.equal(value(s0, 'isogear_warm_pool_size', { mode: 'shared' }), w0.contexts);
    assert.equal(value(s0, 'isogear_isolates_created_total', { kind: 'pooled' }), w0.isolatesCreated);
    succeeded(await t.client.execute({ mode: ISOLATE, source: 'export default 1' }));
    succeeded(await t.client.execute({ mode: SHARED, source: 'export default 1' }));
    succeeded(await t.client.execute({ mode: ISOLATE, source: 'export default 1', limits: { timeoutMs: 0, memoryLimitMb: 16 } }));
    const s1 = await scrape(t);
    assert.equal(delta(s0, s1, 'isogear_warm_pool_takes_total', { mode: 'isolate', result: 'hit' }), 1);
    assert.equal(delta(s0, s1, 'isogear_warm_pool_takes_total', { mode: 'shared', result: 'hit' }), 1);
    assert.equal(delta(s0, s1, 'isogear_warm_pool_takes_total', { mode: 'isolate', result: 'miss' }), 1, 'another heap limit misses');
    assert.equal(delta(s0, s1, 'isogear_isolates_created_total', { kind: 'dedicated' }), 2, 'the taken pooled isolate counts as dedicated');
  });
});
