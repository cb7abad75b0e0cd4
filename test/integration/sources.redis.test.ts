/**
 * Schedules and stream consumers against a real redis-server on loopback: consumers acknowledge
 * what their handler took, retry and dead-letter what it refused, share a group across replicas
 * and reclaim what a killed replica held; a schedule's tick runs on exactly one of three replicas;
 * pause, resume and a restart keep every entry.
 */
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { pb, TestClient } from '../helpers/client';
import { scrape, value } from '../helpers/metrics';
import { scrapeMetrics, spawnServer, type ServerProcess } from '../helpers/process';
import { releaseInterpreters, succeeded } from '../helpers/proto';
import { requireRedis, startRedis, type TestRedis } from '../helpers/redis';
import { sleep, startTestServer, type TestServer } from '../helpers/server';

async function listed(client: TestClient, id: string): Promise<pb.Registration> {
  const found = (await client.listRegistrations({})).registrations.find((r) => r.id === id);
  assert.ok(found, `registration ${id} is listed`);
  return found;
}

async function until(what: string, cond: () => Promise<boolean>, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const runsOf = async (client: TestClient, id: string): Promise<number> => Number((await listed(client, id)).stats?.runs ?? 0);

/** A consumer of `stream` that keeps what it got, and a trigger that returns it. */
const CONSUMER = (stream: string, extra = ''): string => `
const got = [];
export default function () {
  const id = gears.consume(${JSON.stringify(stream)}, (entry, event) => {
    got.push({ entry, event, keys: Object.keys(event) });
    ${extra}
  }, { description: 'orders' });
  gears.register('got.${stream}', () => got);
  return id;
}`;

type Got = { entry: Record<string, string>; event: Record<string, string>; keys: string[] }[];

describe('schedules and stream consumers on Redis', function () {
  this.timeout(60_000);
  let redis: TestRedis;
  let r: Redis;
  const servers: TestServer[] = [];
  const procs: ServerProcess[] = [];

  before(async function () {
    requireRedis(this);
    redis = await startRedis();
    r = new Redis(redis.url);
  });
  after(async () => {
    r?.disconnect();
    await redis?.stop();
  });
  afterEach(async function () {
    for (const p of procs.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      await p.exited;
    }
    // each server asserts nothing leaked as the test left it (a failed test's are tidied first, so its own failure is what is reported)
    for (const s of servers.splice(0)) {
      if (this.currentTest?.state === 'failed') {
        for (const i of (await s.client.listInterpreters({ pageSize: 1000 })).interpreters) await s.client.release({ interpreterId: i.id }).catch(() => undefined);
      }
      await s.close();
    }
    await r.flushall();
  });

  async function start(env: Record<string, string> = {}): Promise<TestServer> {
    const s = await startTestServer({ ISOGEAR_STORE: redis.url, ISOGEAR_STREAM_RETRY_MS: '50', ...env });
    servers.push(s);
    return s;
  }

  it('a consumer gets five entries as plain objects with {registrationId, executionId, stream, entryId}, each acknowledged', async () => {
    const t = await start();
    const made = await t.client.execute({ source: CONSUMER('orders') });
    succeeded(made);
    const id = made.result as string;
    const reg = await listed(t.client, id);
    assert.equal(reg.stream, 'orders');
    assert.equal(reg.group, 'isogear', 'the default group');
    assert.equal(reg.trigger, '');
    await until('the group to exist', async () => ((await r.call('XINFO', 'GROUPS', 'orders').catch(() => [])) as unknown[]).length === 1);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await r.xadd('orders', '*', 'n', String(i), 'kind', 'order')) as string);
    await until('five runs', async () => (await runsOf(t.client, id)) === 5);
    const got = (await t.client.trigger({ trigger: 'got.orders' })).results[0].result as Got;
    assert.deepEqual(got.map((g) => g.entry), [0, 1, 2, 3, 4].map((n) => ({ n: String(n), kind: 'order' })));
    assert.deepEqual(got.map((g) => g.event.entryId), ids, 'in stream order');
    for (const g of got) {
      assert.deepEqual(g.keys, ['registrationId', 'executionId', 'stream', 'entryId']);
      assert.equal(g.event.registrationId, id);
      assert.equal(g.event.stream, 'orders');
    }
    await until('every entry acknowledged', async () => ((await r.xpending('orders', 'isogear')) as [number])[0] === 0);
    await until('the stats to catch up', async () => (await listed(t.client, id)).stats?.lastEntryId === ids[4]);
    const samples = await scrape(t);
    assert.equal(value(samples, 'isogear_stream_entries_total', { result: 'acknowledged' }), 5);
    assert.equal(value(samples, 'isogear_executions_total', { mode: 'isolate', kind: 'stream', outcome: 'succeeded' }), 5);
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('a failing entry is retried up to ISOGEAR_STREAM_MAX_DELIVERIES, then acknowledged as a dead letter; the others go on', async () => {
    const t = await start({ ISOGEAR_STREAM_MAX_DELIVERIES: '3' });
    const made = await t.client.execute({ source: CONSUMER('jobs', `if (entry.bad) throw new Error('refused ' + event.entryId);`) });
    const id = made.result as string;
    await until('the group to exist', async () => ((await r.call('XINFO', 'GROUPS', 'jobs').catch(() => [])) as unknown[]).length === 1);
    const bad = (await r.xadd('jobs', '*', 'bad', '1')) as string;
    const good = (await r.xadd('jobs', '*', 'ok', '1')) as string;
    await until('a dead letter', async () => Number((await listed(t.client, id)).stats?.deadLetters) === 1);
    const got = (await t.client.trigger({ trigger: 'got.jobs' })).results[0].result as Got;
    assert.equal(got.filter((g) => g.event.entryId === bad).length, 3, 'the bad entry was delivered three times');
    assert.equal(got.filter((g) => g.event.entryId === good).length, 1, 'the good one once');
    assert.equal(((await r.xpending('jobs', 'isogear')) as [number])[0], 0, 'nothing left pending');
    const reg = await listed(t.client, id);
    assert.equal(Number(reg.stats?.failures), 3);
    assert.match(reg.stats?.lastError?.message ?? '', /refused/);
    const samples = await scrape(t);
    assert.equal(value(samples, 'isogear_stream_entries_total', { result: 'dead_letter' }), 1);
    assert.equal(value(samples, 'isogear_stream_entries_total', { result: 'retried' }), 2);
    assert.ok(t.logs.some((l) => l.msg === 'stream consumer: dead letter: the entry failed every delivery and was acknowledged without success' && l.entryId === bad && l.deliveries === 3));
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('a paused consumer reads nothing and loses nothing: resumed, it continues where it stopped', async () => {
    const t = await start();
    const made = await t.client.execute({ source: CONSUMER('paused') });
    const id = made.result as string;
    await until('the group to exist', async () => ((await r.call('XINFO', 'GROUPS', 'paused').catch(() => [])) as unknown[]).length === 1);
    await r.xadd('paused', '*', 'n', '0');
    await until('the first entry', async () => (await runsOf(t.client, id)) === 1);
    assert.deepEqual((await t.client.pause({ registrationId: id })).registrationIds, [id]);
    for (let i = 1; i <= 3; i++) await r.xadd('paused', '*', 'n', String(i));
    await sleep(1500);
    assert.equal(await runsOf(t.client, id), 1, 'nothing read while paused');
    const groups = (await r.call('XINFO', 'GROUPS', 'paused')) as unknown[][];
    assert.equal(groups[0][groups[0].indexOf('lag') + 1], 3, 'the three entries wait in the stream');
    await t.client.resume({ registrationId: id });
    await until('the rest', async () => (await runsOf(t.client, id)) === 4);
    const got = (await t.client.trigger({ trigger: 'got.paused' })).results[0].result as Got;
    assert.deepEqual(got.map((g) => g.entry.n), ['0', '1', '2', '3']);
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('three replicas run each tick of one schedule exactly once between them', async () => {
    const [a, b, c] = [await start(), await start(), await start()];
    const made = await a.client.execute({
      source: `const ticks = []; export default () => { gears.register('ticks', () => ticks); return gears.schedule('* * * * * *', (p, e) => { ticks.push(e.scheduledAt); }); }`,
    });
    const id = made.result as string;
    for (const s of [b, c]) await until('the replica to follow', async () => (await s.client.listRegistrations({})).registrations.some((x) => x.id === id));
    await sleep(4200);
    await a.client.pause({ registrationId: id });
    for (const s of [b, c]) await until('the pause to reach the replica', async () => (await listed(s.client, id)).paused);
    await sleep(1100); // a run claimed just before the pause finishes
    const all: string[] = [];
    const per: number[] = [];
    for (const s of [a, b, c]) {
      const ticks = (await s.client.trigger({ trigger: 'ticks' })).results[0].result as string[];
      per.push(ticks.length);
      all.push(...ticks);
    }
    const sorted = [...all].sort();
    assert.equal(new Set(all).size, all.length, `no tick ran twice: ${sorted.join(' ')}`);
    assert.ok(all.length >= 4, `ticks run: ${all.length} (${per.join('+')})`);
    for (let i = 1; i < sorted.length; i++) assert.equal(Date.parse(sorted[i]) - Date.parse(sorted[i - 1]), 1000, `no tick missed: ${sorted.join(' ')}`);
    await releaseInterpreters(a.client, made.interpreterId);
    for (const s of [b, c]) await until('the release to reach the replica', async () => (await s.client.listRegistrations({})).registrations.length === 0);
  });

  it('replicas share a group, and entries a killed replica held are reclaimed by another once idle', async () => {
    const env = { ISOGEAR_STORE: redis.url, ISOGEAR_STREAM_CLAIM_IDLE_MS: '1000', ISOGEAR_DEFAULT_TIMEOUT_MS: '10000' };
    const a = await spawnServer(env);
    procs.push(a);
    const ca = new TestClient(a.grpcAddress);
    try {
      const made = await ca.execute({ source: CONSUMER('work', `if (entry.slow) { const end = Date.now() + 6000; while (Date.now() < end); }`) });
      const id = made.result as string;
      await until('the group to exist', async () => ((await r.call('XINFO', 'GROUPS', 'work').catch(() => [])) as unknown[]).length === 1);
      const slow = (await r.xadd('work', '*', 'slow', '1')) as string;
      await until('the slow entry to be taken', async () => ((await r.xpending('work', 'isogear')) as [number])[0] === 1);
      const b = await spawnServer(env);
      procs.push(b);
      const cb = new TestClient(b.grpcAddress);
      try {
        a.child.kill('SIGKILL');
        await a.exited;
        await until('the other replica to reclaim and acknowledge it', async () => ((await r.xpending('work', 'isogear')) as [number])[0] === 0, 15_000);
        const got = (await cb.trigger({ trigger: 'got.work' })).results[0].result as Got;
        assert.deepEqual(got.map((g) => g.event.entryId), [slow]);
        // both replicas then take new entries: each is its own consumer in the group
        const c = await spawnServer(env);
        procs.push(c);
        const cc = new TestClient(c.grpcAddress);
        try {
          await until('the third replica to follow', async () => (await cc.listRegistrations({})).registrations.some((x) => x.id === id));
          for (let i = 0; i < 40; i++) await r.xadd('work', '*', 'n', String(i));
          await until('all forty handled', async () => {
            const n = [(await cb.trigger({ trigger: 'got.work' })).results[0].result as Got, (await cc.trigger({ trigger: 'got.work' })).results[0].result as Got].map((g) => g.filter((x) => x.entry.n !== undefined).length);
            return n[0] + n[1] === 40;
          });
          await until('all forty acknowledged', async () => ((await r.xpending('work', 'isogear')) as [number])[0] === 0);
          const consumers = (await r.call('XINFO', 'CONSUMERS', 'work', 'isogear')) as unknown[][];
          assert.ok(consumers.length >= 3, 'one consumer per replica');
          const metrics = await scrapeMetrics(b.metricsAddress);
          assert.ok((metrics.get('isogear_stream_entries_total{result="acknowledged"}') ?? 0) >= 1);
          await releaseInterpreters(cb, made.interpreterId);
        } finally {
          cc.close();
        }
      } finally {
        cb.close();
      }
    } finally {
      ca.close();
    }
  });

  it('a restart keeps a consumer, its group position and its paused state; entries added meanwhile are all handled', async () => {
    const first = await startTestServer({ ISOGEAR_STORE: redis.url });
    const made = await first.client.execute({ source: CONSUMER('kept') });
    const id = made.result as string;
    await until('the group to exist', async () => ((await r.call('XINFO', 'GROUPS', 'kept').catch(() => [])) as unknown[]).length === 1);
    await r.xadd('kept', '*', 'n', '0');
    await until('the first entry', async () => (await runsOf(first.client, id)) === 1);
    await first.client.pause({ registrationId: id });
    await first.server.shutdown(2000);
    first.client.close();
    for (let i = 1; i <= 3; i++) await r.xadd('kept', '*', 'n', String(i));

    const second = await start();
    const back = await listed(second.client, id);
    assert.equal(back.paused, true);
    assert.equal(back.stream, 'kept');
    await sleep(1200);
    assert.equal(await runsOf(second.client, id), 0, 'still paused after the restart');
    await second.client.resume({ registrationId: id });
    await until('the three entries', async () => (await runsOf(second.client, id)) === 3);
    const got = (await second.client.trigger({ trigger: 'got.kept' })).results[0].result as Got;
    assert.deepEqual(got.map((g) => g.entry.n), ['1', '2', '3'], 'from where the group stopped, nothing twice');
    await releaseInterpreters(second.client, made.interpreterId);
  });

  it('a stream key Redis refuses (another type) is logged and retried without marking Redis down; a deleted group is made again', async () => {
    const t = await start();
    await r.set('notastream', 'x');
    const made = await t.client.execute({ source: CONSUMER('notastream') });
    succeeded(made);
    const id = made.result as string;
    await until('the refusal to be logged', async () => t.logs.some((l) => l.msg === 'stream consumer: Redis refused a command on the stream; retrying with backoff' && l.registrationId === id));
    assert.equal(value(await scrape(t), 'isogear_events_redis_up'), 1, 'Redis answered: it is up');
    await r.del('notastream');
    await until('the group to be made', async () => ((await r.call('XINFO', 'GROUPS', 'notastream').catch(() => [])) as unknown[]).length === 1, 40_000);
    await r.xadd('notastream', '*', 'n', '1');
    await until('the entry', async () => (await runsOf(t.client, id)) === 1);
    // the stream deleted under a running consumer: its group is made again and it goes on
    await r.del('notastream');
    await until('the group to be made again', async () => ((await r.call('XINFO', 'GROUPS', 'notastream').catch(() => [])) as unknown[]).length === 1, 40_000);
    await r.xadd('notastream', '*', 'n', '2');
    await until('the next entry', async () => (await runsOf(t.client, id)) === 2);
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('an unreachable events Redis does not stop the server: consumers back off, log it, and isogear_events_redis_up says 0', async () => {
    const gone = await startRedis();
    const url = gone.url;
    await gone.stop();
    const t = await startTestServer({ ISOGEAR_EVENTS_REDIS_URL: url });
    servers.push(t);
    const made = await t.client.execute({ source: CONSUMER('nowhere') });
    succeeded(made);
    await until('the metric to say so', async () => value(await scrape(t), 'isogear_events_redis_up') === 0);
    assert.ok(value(await scrape(t), 'isogear_events_redis_errors_total') >= 1);
    assert.ok(t.logs.some((l) => l.msg === 'stream consumer: the events Redis failed; retrying with backoff' && l.stream === 'nowhere'));
    // the server still serves
    succeeded(await t.client.execute({ source: 'export default 1' }));
    await releaseInterpreters(t.client, made.interpreterId);
  });
});
