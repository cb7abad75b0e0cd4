import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { scratchDataDir } from '../helpers/process';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, releaseInterpreters, SHARED, succeeded } from '../helpers/proto';
import { grpc } from '../helpers/client';
import { service } from 'grpc-health-check';
import { startTestServer, type TestServer } from '../helpers/server';

const rpcLines = (t: TestServer, method: string): Record<string, unknown>[] => t.logs.filter((l) => l.msg === 'rpc' && l.method === method);

describe('logs: JSON lines with what operators need', () => {
  describe('at debug', () => {
    const server = useTestServer({ ISOGEAR_LOG_LEVEL: 'debug' });

    it('one line per RPC with method, status code, duration and the ids that apply', async () => {
      const t = server();
      const exec = await t.client.execute({ mode: SHARED, source: 'gears.register("log.t", () => 1); console.log("from the script");' });
      succeeded(exec);
      await t.client.trigger({ trigger: 'log.t' });
      await t.client.execute({ source: '' }).catch(() => undefined);
      await t.client.release({ registrationId: exec.registrations[0].id });

      const [ok, bad] = rpcLines(t, 'Execute');
      assert.equal(ok.level, 'info');
      assert.equal(ok.code, 'OK');
      assert.equal(typeof ok.durationMs, 'number');
      assert.equal(ok.interpreterId, exec.interpreterId);
      assert.equal(ok.executionId, exec.executionId);
      assert.equal(ok.outcome, 'OUTCOME_SUCCEEDED');
      assert.deepEqual(ok.registrationIds, [exec.registrations[0].id]);
      assert.equal(bad.code, 'INVALID_ARGUMENT');
      const [trig] = rpcLines(t, 'Trigger');
      assert.deepEqual(trig.registrationIds, [exec.registrations[0].id]);
      assert.equal(trig.trigger, 'log.t');
      const [rel] = rpcLines(t, 'Release');
      assert.deepEqual(rel.registrationIds, [exec.registrations[0].id]);
      assert.equal(rel.interpreterId, exec.interpreterId);
      for (const line of t.logs) assert.ok(!JSON.stringify(line).includes('gears.register("log.t"'), 'no script source in any log line');

      const consoleLine = t.logs.find((l) => l.msg === 'script console');
      assert.equal(consoleLine?.level, 'debug');
      assert.deepEqual(consoleLine?.logs, [{ level: 'log', message: 'from the script' }]);
    });

    it('warns on memory kills and on upgrades', async () => {
      const t = server();
      const bomb = await t.client.execute({ mode: ISOLATE, limits: limits(10_000, 16), source: 'const a = []; for (;;) a.push(new Array(100000).fill(1.5));' });
      const kill = t.logs.find((l) => l.msg === 'memory limit exceeded: isolate disposed');
      assert.equal(kill?.level, 'warn');
      assert.equal(kill?.interpreterId, bomb.interpreterId);
      const v1 = await t.client.execute({ name: 'log.up', source: 'gears.register("log.up", () => 1);' });
      const v2 = await t.client.execute({ name: 'log.up', replace: true, source: 'gears.register("log.up", () => 2);' });
      const up = t.logs.find((l) => l.msg === 'interpreter upgraded: the old one is released');
      assert.equal(up?.level, 'warn');
      assert.deepEqual([up?.name, up?.from, up?.to], ['log.up', v1.interpreterId, v2.interpreterId]);
      await releaseInterpreters(t.client, v2.interpreterId);
    });
  });

  describe('at info', () => {
    const server = useTestServer({ ISOGEAR_LOG_LEVEL: 'info' });

    it('script console output is not logged', async () => {
      const t = server();
      succeeded(await t.client.execute({ source: 'console.log("quiet"); export default 1;' }));
      assert.equal(rpcLines(t, 'Execute').length, 1);
      assert.ok(!t.logs.some((l) => l.msg === 'script console'));
    });
  });

  it('the process logs its effective config at start-up and exits 0 on SIGTERM', async function () {
    this.timeout(20_000);
    const child = spawn(process.execPath, ['--no-node-snapshot', '--import', 'tsx', path.join(__dirname, '../../src/main.ts')], {
      env: { ...process.env, ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0', ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0', ISOGEAR_SHARED_ISOLATES: '1', ISOGEAR_DATA_DIR: scratchDataDir() },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const started = new Promise<Record<string, unknown>>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const line = out.split('\n').find((l) => l.includes('isogear started'));
        if (line) resolve(JSON.parse(line) as Record<string, unknown>);
      });
      child.on('exit', (code) => reject(new Error(`exited ${code} before starting: ${out}`)));
    });
    const first = await started;
    const config = first.config as Record<string, unknown>;
    assert.equal(first.level, 'info');
    assert.equal(config.defaultMode, 'isolate');
    assert.equal(config.sharedIsolates, 1);
    assert.match(String(first.grpcAddress), /^127\.0\.0\.1:\d+$/);
    let err = '';
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(`code ${code} signal ${signal}`)));
    child.kill('SIGTERM');
    assert.equal(await exited, 'code 0 signal null', `stdout: ${out}\nstderr: ${err}`);
    assert.match(out, /"msg":"stopped"/);
  });
});

describe('health: NOT_SERVING once shutdown begins', () => {
  it('a health Watch sees SERVING, then NOT_SERVING when shutdown starts', async () => {
    const t = await startTestServer();
    const Health = grpc.makeClientConstructor(service as unknown as grpc.ServiceDefinition, 'grpc.health.v1.Health');
    const health = new Health(t.server.grpcAddress, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
      watch(req: object): grpc.ClientReadableStream<{ status: string }>;
    };
    const seen: string[] = [];
    const stream = health.watch({ service: 'isogear.v1.GearsService' });
    const notServing = new Promise<void>((resolve) => {
      stream.on('data', (m: { status: string }) => {
        seen.push(String(m.status));
        if (String(m.status) === 'NOT_SERVING') resolve();
      });
      stream.on('error', () => undefined);
    });
    while (!seen.includes('SERVING')) await new Promise((r) => setTimeout(r, 10));
    const stopping = t.server.shutdown(2000);
    await notServing;
    assert.deepEqual(seen.slice(0, 2), ['SERVING', 'NOT_SERVING']);
    stream.cancel();
    health.close();
    t.client.close();
    await stopping;
  });
});
