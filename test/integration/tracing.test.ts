import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { pb } from '../helpers/client';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startTestServer, type TestServer } from '../helpers/server';

/** A client's span context, as a W3C traceparent header. */
function clientSpan(sampled = true): { traceId: string; spanId: string; metadata: Record<string, string> } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceId, spanId, metadata: { traceparent: `00-${traceId}-${spanId}-${sampled ? '01' : '00'}`, tracestate: 'client=py' } };
}

const SERVER = 2;
const RPC = (m: string): string => `isogear.v1.GearsService/${m}`;

/** The children of `parent` in `spans`, by name. */
function children(spans: ReceivedSpan[], parent: ReceivedSpan): ReceivedSpan[] {
  return spans.filter((s) => s.parentSpanId === parent.spanId);
}
function one(spans: ReceivedSpan[], name: string): ReceivedSpan {
  const found = spans.filter((s) => s.name === name);
  assert.equal(found.length, 1, `one ${name} span among ${spans.map((s) => s.name).join(', ')}`);
  return found[0];
}
/**
 * A call's spans share one clock (Tracing's anchor), so they nest to the microsecond (the SDK's
 * own stamps, Date.now() per span, would be a millisecond apart at worst).
 */
const CLOCK_NS = 1_000n;
/** Asserts `inner` lies within `outer` in time (to the SDK's clock). */
function within(inner: ReceivedSpan, outer: ReceivedSpan): void {
  assert.ok(inner.startNs >= outer.startNs - CLOCK_NS && inner.endNs <= outer.endNs + CLOCK_NS, `${inner.name} lies within ${outer.name}`);
}

describe('OpenTelemetry traces to a real OTLP receiver', function () {
  this.timeout(30_000);
  let receiver: OtlpReceiver;
  before(async () => {
    receiver = await OtlpReceiver.start();
  });
  after(async () => {
    await receiver.close();
  });

  /**
   * Runs `body` against a traced server, then closes it (asserting nothing leaked). A failing
   * body's own error is the one reported (the leak its early end causes is not).
   */
  const withServer = async (protocol: 'grpc' | 'http/protobuf' | 'http/json', body: (t: TestServer) => Promise<void>, env: Record<string, string> = {}): Promise<void> => {
    const t = await traced(protocol, env);
    try {
      await body(t);
    } catch (err) {
      await t.close().catch(() => undefined);
      throw err;
    }
    await t.close();
  };

  const traced = (protocol: 'grpc' | 'http/protobuf' | 'http/json', env: Record<string, string> = {}): Promise<TestServer> =>
    startTestServer({
      OTEL_EXPORTER_OTLP_ENDPOINT: protocol === 'grpc' ? receiver.grpcEndpoint : receiver.httpEndpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      OTEL_BSP_SCHEDULE_DELAY: '20',
      OTEL_SERVICE_NAME: 'isogear-under-test',
      ...env,
    });

  for (const protocol of ['grpc', 'http/protobuf', 'http/json'] as const) {
    it(`continues the caller's trace through an Execute: queue, interpreter, load, run and store commit (${protocol})`, async () => {
      await withServer(protocol, async (t) => {
        const caller = clientSpan();
        const res = await t.client.execute({ source: 'gears.register("tr.one", () => 1); export default 2;', mode: pb.IsolationMode.ISOLATION_MODE_ISOLATE }, { metadata: caller.metadata });
        await receiver.waitFor(() => receiver.trace(caller.traceId).length >= 6, 'the Execute trace');
        const spans = receiver.trace(caller.traceId);
        assert.ok(spans.every((s) => s.protocol === protocol));
        const rpc = one(spans, RPC('Execute'));
        assert.equal(rpc.parentSpanId, caller.spanId, "the server's span is a child of the caller's");
        assert.equal(rpc.kind, SERVER);
        assert.deepEqual(
          { system: rpc.attributes['rpc.system.name'], method: rpc.attributes['rpc.method'], code: rpc.attributes['rpc.status_code'], tenant: rpc.attributes['isogear.tenant'] },
          { system: 'grpc', method: RPC('Execute'), code: 'OK', tenant: 'default' },
        );
        assert.equal(rpc.statusCode, 0);
        assert.equal(rpc.resource['service.name'], 'isogear-under-test');
        assert.equal(rpc.scope, 'isogear');

        const below = children(spans, rpc);
        assert.deepEqual(below.map((s) => s.name).sort(), ['isogear.interpreter.create', 'isogear.queue', 'isogear.run', 'isogear.store.commit']);
        for (const s of below) within(s, rpc);
        assert.equal(one(below, 'isogear.queue').attributes['isogear.queue.kind'], 'request');
        const created = one(below, 'isogear.interpreter.create');
        assert.equal(created.attributes['isogear.interpreter.mode'], 'isolate');
        assert.equal(created.attributes['isogear.interpreter.id'], res.interpreterId);
        assert.equal(typeof created.attributes['isogear.warm_pool.hit'], 'boolean');
        const run = one(below, 'isogear.run');
        assert.equal(run.attributes['isogear.execution.id'], res.executionId);
        assert.equal(run.attributes['isogear.outcome'], 'succeeded');
        assert.equal(run.attributes['isogear.run.kind'], 'execute');
        assert.equal(typeof run.attributes['isogear.run.cpu_time_ms'], 'number');
        const load = one(children(spans, run), 'isogear.module.load');
        within(load, run);
        const queue = one(below, 'isogear.queue');
        assert.ok(queue.endNs <= created.startNs + CLOCK_NS && created.endNs <= run.startNs + CLOCK_NS, 'queue wait, then the interpreter, then the run');
        assert.equal(load.attributes['isogear.code_cache.hit'], false, 'a source seen for the first time is compiled');
        const commit = one(below, 'isogear.store.commit');
        assert.deepEqual({ op: commit.attributes['isogear.store.operation'], n: commit.attributes['isogear.store.registrations'] }, { op: 'create', n: 1 });
        assert.ok(commit.startNs >= run.endNs - CLOCK_NS, 'the commit follows the run');
        await t.client.release({ interpreterId: res.interpreterId });
    });
    });
  }

  it('gives a Trigger one span per handler run, each with its queue wait and its run', async () => {
    await withServer('grpc', async (t) => {
      const made = await t.client.execute({
        source: 'for (const n of [1, 2, 3]) gears.register("tr.fan", (p) => p * n);',
        mode: pb.IsolationMode.ISOLATION_MODE_SHARED,
      });
      const caller = clientSpan();
      const fired = await t.client.trigger({ trigger: 'tr.fan', payload: 5 }, { metadata: caller.metadata });
      assert.deepEqual(fired.results.map((r) => r.result), [5, 10, 15]);
      await receiver.waitFor(() => receiver.trace(caller.traceId).length >= 10, 'the Trigger trace');
      const spans = receiver.trace(caller.traceId);
      const rpc = one(spans, RPC('Trigger'));
      assert.equal(rpc.parentSpanId, caller.spanId);
      const handlers = children(spans, rpc);
      assert.deepEqual(handlers.map((s) => s.name), ['isogear.handler', 'isogear.handler', 'isogear.handler']);
      assert.deepEqual(handlers.map((h) => h.attributes['isogear.registration.id']).sort(), made.registrations.map((r) => r.id).sort());
      assert.deepEqual(handlers.map((h) => h.attributes['isogear.execution.id']).sort(), fired.results.map((r) => r.executionId).sort());
      for (const h of handlers) {
        assert.equal(h.attributes['isogear.trigger'], 'tr.fan');
        assert.equal(h.attributes['isogear.outcome'], 'succeeded');
        within(h, rpc);
        const inside = children(spans, h);
        assert.deepEqual(inside.map((s) => s.name).sort(), ['isogear.queue', 'isogear.run']);
        assert.equal(one(inside, 'isogear.run').attributes['isogear.run.kind'], 'handler');
        assert.equal(one(inside, 'isogear.run').attributes['isogear.execution.id'], h.attributes['isogear.execution.id']);
      }
      // the first handler waits as the request, the rest as its admitted followers
      assert.deepEqual(handlers.map((h) => one(children(spans, h), 'isogear.queue').attributes['isogear.queue.kind']).sort(), ['admitted', 'admitted', 'request']);
      await t.client.release({ interpreterId: made.interpreterId });
    });
  });

  it('starts a trace of its own without traceparent, follows background runs, and marks what failed (never with what the script wrote)', async () => {
    await withServer('http/protobuf', async (t) => {
      // no traceparent: a new trace, rooted at the server
      const plain = await t.client.execute({ source: 'export default "SECRET-RESULT-1";', args: 'SECRET-ARG-2', mode: pb.IsolationMode.ISOLATION_MODE_SHARED });
      await receiver.waitFor(() => receiver.spans.some((s) => s.attributes['isogear.execution.id'] === plain.executionId), 'the untraced call');
      const run = receiver.spans.find((s) => s.attributes['isogear.execution.id'] === plain.executionId) as ReceivedSpan;
      const root = one(receiver.trace(run.traceId), RPC('Execute'));
      assert.equal(root.parentSpanId, '', 'a call without traceparent is the root of a new trace');

      // a script that throws: the run fails, the call does not
      const caller = clientSpan();
      const thrown = await t.client.execute({ source: 'console.log("SECRET-LOG-3"); throw new TypeError("SECRET-MESSAGE-4");', mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: caller.metadata });
      assert.equal(thrown.error?.message, 'SECRET-MESSAGE-4');
      await receiver.waitFor(() => receiver.trace(caller.traceId).some((s) => s.name === RPC('Execute')), 'the failed run');
      const failedRun = one(receiver.trace(caller.traceId), 'isogear.run');
      assert.deepEqual({ code: failedRun.statusCode, type: failedRun.attributes['error.type'], outcome: failedRun.attributes['isogear.outcome'] }, { code: 2, type: 'failed', outcome: 'failed' });
      assert.equal(one(receiver.trace(caller.traceId), RPC('Execute')).statusCode, 0);

      // a refused call: its status code, not a server fault
      const refused = clientSpan();
      await assert.rejects(t.client.execute({ source: 'export default 1', interpreterId: 'itp_nope' }, { metadata: refused.metadata }));
      await receiver.waitFor(() => receiver.trace(refused.traceId).length > 0, 'the refused call');
      const refusedRpc = one(receiver.trace(refused.traceId), RPC('Execute'));
      assert.deepEqual({ code: refusedRpc.attributes['rpc.status_code'], type: refusedRpc.attributes['error.type'], status: refusedRpc.statusCode }, { code: 'NOT_FOUND', type: 'NOT_FOUND', status: 0 });

      // a background run: its spans hang under the StartExecute call that accepted it
      const bg = clientSpan();
      const started = await t.client.startExecute({ source: 'export default "SECRET-RESULT-5";', mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: bg.metadata });
      await t.client.waitExecution({ executionId: started.id, timeoutMs: 5000 });
      await receiver.waitFor(() => receiver.trace(bg.traceId).some((s) => s.name === 'isogear.run'), 'the background run');
      const bgSpans = receiver.trace(bg.traceId);
      const accepted = one(bgSpans, RPC('StartExecute'));
      const bgRun = one(bgSpans, 'isogear.run');
      assert.equal(bgRun.parentSpanId, accepted.spanId);
      assert.equal(bgRun.attributes['isogear.execution.id'], started.id);
      assert.equal(one(bgSpans, 'isogear.queue').attributes['isogear.queue.kind'], 'background');

      // nothing a script was given, wrote or returned is in any span
      const everything = JSON.stringify(receiver.spans.map((s) => ({ ...s, startNs: 0, endNs: 0 })));
      for (const secret of ['SECRET-RESULT-1', 'SECRET-ARG-2', 'SECRET-LOG-3', 'SECRET-MESSAGE-4', 'SECRET-RESULT-5', 'export default']) {
        assert.ok(!everything.includes(secret), `no span carries ${secret}`);
      }
    });
  });

  it('reports a code cache hit once a source is compiled again, and honours an unsampled caller', async () => {
    await withServer('http/json', async (t) => {
      const source = 'export default [1, 2, 3].map((x) => x * 2);';
      const traces: string[] = [];
      for (let i = 0; i < 4; i++) {
        const caller = clientSpan();
        traces.push(caller.traceId);
        await t.client.execute({ source, mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: caller.metadata });
      }
      await receiver.waitFor(() => traces.every((id) => receiver.trace(id).some((s) => s.name === 'isogear.module.load')), 'four loads');
      const hits = traces.map((id) => one(receiver.trace(id), 'isogear.module.load').attributes['isogear.code_cache.hit']);
      assert.equal(hits[0], false);
      assert.equal(hits[3], true, `the fourth compile of one source uses the code cache (${hits.join(', ')})`);

      // the caller decided not to sample: the server records nothing of its call
      const unsampled = clientSpan(false);
      const marker = clientSpan();
      await t.client.execute({ source: 'export default 1;', mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: unsampled.metadata });
      await t.client.execute({ source: 'export default 1;', mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: marker.metadata });
      await receiver.waitFor(() => receiver.trace(marker.traceId).some((s) => s.name === RPC('Execute')), 'the sampled call after it');
      assert.deepEqual(receiver.trace(unsampled.traceId), []);
    });
  });

  it('exports nothing when OTEL_TRACES_EXPORTER is none or OTEL_SDK_DISABLED is true, even with an endpoint', async () => {
    for (const env of [{ OTEL_TRACES_EXPORTER: 'none' }, { OTEL_SDK_DISABLED: 'true' }] as Record<string, string>[]) {
      const t = await traced('grpc', env);
      const caller = clientSpan();
      try {
        await t.client.execute({ source: 'export default 1;', mode: pb.IsolationMode.ISOLATION_MODE_SHARED }, { metadata: caller.metadata });
      } finally {
        await t.close(); // a server that traced would flush its spans here
      }
      assert.deepEqual(receiver.trace(caller.traceId), [], JSON.stringify(env));
    }
  });

  it('each tick of a schedule is a trace of its own: isogear.schedule, its queue wait and its run', async () => {
    await withServer('http/protobuf', async (t) => {
      const made = await t.client.execute({ source: `export default () => gears.schedule('* * * * * *', () => 1)` });
      const id = made.result as string;
      const ticks = (): ReceivedSpan[] => receiver.spans.filter((s) => s.name === 'isogear.schedule' && s.attributes['isogear.registration.id'] === id);
      await receiver.waitFor(() => ticks().some((tick) => receiver.trace(tick.traceId).length >= 3), 'a schedule tick trace');
      const tick = ticks().find((x) => receiver.trace(x.traceId).length >= 3) as ReceivedSpan;
      assert.equal(tick.parentSpanId, '', 'a root span');
      assert.equal(tick.attributes['isogear.outcome'], 'succeeded');
      assert.match(String(tick.attributes['isogear.schedule.tick']), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
      const spans = receiver.trace(tick.traceId);
      const below = children(spans, tick);
      assert.equal(one(below, 'isogear.queue').attributes['isogear.queue.kind'], 'background');
      const run = one(below, 'isogear.run');
      assert.equal(run.attributes['isogear.run.kind'], 'schedule');
      assert.equal(run.attributes['isogear.execution.id'], tick.attributes['isogear.execution.id']);
      within(run, tick);
      await t.client.release({ interpreterId: made.interpreterId });
    });
  });

});
