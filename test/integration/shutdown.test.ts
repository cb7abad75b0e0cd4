/**
 * Graceful shutdown of the real process (src/main.ts): SIGTERM drains, runs past the grace
 * period are aborted, a second signal answers the calls in flight UNAVAILABLE and exits at once.
 */
import assert from 'node:assert/strict';
import { expectStatus, grpc, TestClient } from '../helpers/client';
import { logLines, scrapeMetrics, spawnServer, type ServerProcess } from '../helpers/process';
import { limits, outcomeName, succeeded } from '../helpers/proto';

async function metric(p: ServerProcess, name: string): Promise<number> {
  const samples = await scrapeMetrics(p.metricsAddress);
  return [...samples].filter(([k]) => k === name || k.startsWith(`${name}{`)).reduce((sum, [, v]) => sum + v, 0);
}

async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const HANG = 'export default () => new Promise(() => {});';
const EXIT_FORCED = 'the event loop did not end after shutdown: exiting';
/** A call's error once it fails (undefined if it succeeds), caught at once: the test looks at it later. */
const failure = (call: Promise<unknown>): Promise<grpc.ServiceError | undefined> => call.then(() => undefined, (err: grpc.ServiceError) => err);

/** What a call in flight hears from a server that a second signal ends: the server's own answer. */
function assertSecondSignal(err: grpc.ServiceError | undefined): void {
  assert.ok(err, 'the call failed');
  assert.equal(grpc.status[err.code], 'UNAVAILABLE', err.details);
  assert.match(err.details, /^the server is exiting: a second signal \(SIGINT\)/);
}

describe('graceful shutdown of the process', function () {
  this.timeout(20_000);
  const procs: ServerProcess[] = [];
  const clients: TestClient[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const p of procs.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
  });

  async function start(env: Record<string, string>): Promise<{ p: ServerProcess; client: TestClient }> {
    const p = await spawnServer(env);
    procs.push(p);
    const client = new TestClient(p.grpcAddress);
    clients.push(client);
    return { p, client };
  }

  it('SIGTERM: new calls UNAVAILABLE, the run in flight finishes, exit 0 with nothing logged as an error', async () => {
    const { p, client } = await start({ ISOGEAR_SHUTDOWN_GRACE_MS: '5000' });
    const inFlight = client.execute({ source: 'export default () => { const end = Date.now() + 800; while (Date.now() < end); return "finished"; }' });
    await until('the run to start', async () => (await metric(p, 'isogear_executions_in_flight')) === 1);
    const watcher = new TestClient(p.grpcAddress);
    clients.push(watcher);
    assert.equal(await watcher.healthCheck(''), 'SERVING');
    p.child.kill('SIGTERM');
    await until('shutdown to begin', () => p.output().stdout.includes('"msg":"shutting down"'));
    await expectStatus(client.execute({ source: 'export default 1' }), grpc.status.UNAVAILABLE);
    const res = await inFlight;
    succeeded(res);
    assert.equal(res.result, 'finished');
    assert.equal(await p.exited, 'code 0 signal null', p.output().stderr);
    const lines = logLines(p.output().stdout);
    assert.ok(lines.some((l) => l.msg === 'stopped'));
    assert.ok(!lines.some((l) => l.level === 'error' || l.level === 'fatal'), 'no error logged');
    assert.ok(!lines.some((l) => l.msg === EXIT_FORCED), 'the event loop ended by itself (isolated-vm joined its isolate threads)');
  });

  it('runs still going when ISOGEAR_SHUTDOWN_GRACE_MS ends are aborted (OUTCOME_ABORTED), isolates disposed, exit 0', async () => {
    const { p, client } = await start({ ISOGEAR_SHUTDOWN_GRACE_MS: '300' });
    const runs = [client.execute({ source: HANG, limits: limits(30_000) }), client.execute({ source: 'for (;;) {}', limits: limits(30_000) })];
    await until('both runs to start', async () => (await metric(p, 'isogear_executions_in_flight')) === 2);
    p.child.kill('SIGTERM');
    for (const res of await Promise.all(runs)) {
      assert.equal(outcomeName(res.outcome), 'OUTCOME_ABORTED', JSON.stringify(res.error));
      assert.match(res.error?.message ?? '', /shut down/);
    }
    assert.equal(await p.exited, 'code 0 signal null', p.output().stderr);
    assert.ok(!logLines(p.output().stdout).some((l) => l.msg === EXIT_FORCED), 'the event loop ended by itself with a spinning isolate disposed');
  });

  it('a second signal exits at once, without waiting for the grace period', async () => {
    const { p, client } = await start({ ISOGEAR_SHUTDOWN_GRACE_MS: '60000' });
    const run = failure(client.execute({ source: HANG, limits: limits(30_000) }));
    await until('the run to start', async () => (await metric(p, 'isogear_executions_in_flight')) === 1);
    p.child.kill('SIGTERM');
    await until('shutdown to begin', () => p.output().stdout.includes('"msg":"shutting down"'));
    p.child.kill('SIGINT');
    assert.equal(await p.exited, 'code 1 signal null');
    assert.ok(logLines(p.output().stdout).some((l) => l.msg === 'second signal: exiting now'));
    assertSecondSignal(await run);
    const lines = logLines(p.output().stdout);
    assert.ok(lines.some((l) => l.msg === 'rpc' && l.method === 'Execute' && l.code === 'UNAVAILABLE'), 'the server answered the call itself');
    assert.ok(!lines.some((l) => l.msg === 'stopped'), 'the graceful shutdown went no further');
  });

  it('a second signal answers the call in flight UNAVAILABLE even when the client reads the GOAWAY late', async () => {
    const { p, client } = await start({ ISOGEAR_SHUTDOWN_GRACE_MS: '60000' });
    const run = failure(client.execute({ source: HANG, limits: limits(30_000) }));
    await until('the run to start', async () => (await metric(p, 'isogear_executions_in_flight')) === 1);
    p.child.kill('SIGTERM');
    // This process stays busy while the server sends its GOAWAY and sends the second signal
    // before reading it: its HTTP/2 reply then meets a server that is exiting, and the connection
    // is reset. Node ends the streams of a session reset after a GOAWAY as if it had closed
    // cleanly, so a call left to that reset would end INTERNAL ("Received RST_STREAM with code 0
    // (Call ended without gRPC status)"), not UNAVAILABLE.
    const end = performance.now() + 200;
    while (performance.now() < end);
    p.child.kill('SIGINT');
    assert.equal(await p.exited, 'code 1 signal null');
    assertSecondSignal(await run);
  });
});
