/**
 * gears.schedule on one server (the embedded store): ticks, the handler's event, pause and
 * resume, skipped ticks, bad expressions, and a restart keeping the schedule and its pause.
 * Three replicas on one Redis are in sources.redis.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pb, type TestClient } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape, value } from '../helpers/metrics';
import { outcomeName, releaseInterpreters, succeeded } from '../helpers/proto';
import { sleep, startTestServer } from '../helpers/server';

/** The registration as listed now. */
async function listed(client: TestClient, id: string): Promise<pb.Registration> {
  const found = (await client.listRegistrations({})).registrations.find((r) => r.id === id);
  assert.ok(found, `registration ${id} is listed`);
  return found;
}

/** Waits until the schedule has run `n` times (its stats), at most `ms`. */
async function runsReach(client: TestClient, id: string, n: number, ms = 5000): Promise<number> {
  const end = Date.now() + ms;
  for (;;) {
    const runs = Number((await listed(client, id)).stats?.runs ?? 0);
    if (runs >= n) return runs;
    if (Date.now() > end) throw new Error(`registration ${id} ran ${runs} times, not ${n}, within ${ms} ms`);
    await sleep(50);
  }
}

const EVERY_SECOND = `
let seen = [];
export default function () {
  const id = gears.schedule('* * * * * *', (payload, event) => { seen.push({ payload, event, keys: Object.keys(event) }); }, { description: 'each second' });
  gears.register('sched.seen', () => seen);
  return id;
}`;

describe('gears.schedule', function () {
  this.timeout(30_000);
  const server = useTestServer();

  it('runs the handler at each tick with (null, {registrationId, executionId, scheduledAt}), counted as kind="schedule"', async () => {
    const t = server();
    const made = await t.client.execute({ source: EVERY_SECOND });
    succeeded(made);
    const id = made.result as string;
    const reg = await listed(t.client, id);
    assert.equal(reg.schedule, '* * * * * *');
    assert.equal(reg.trigger, '', 'a schedule is bound to no trigger');
    assert.equal(reg.timezone, '');
    assert.equal(reg.description, 'each second');
    assert.ok(reg.stats?.nextRunAt && reg.stats.nextRunAt.getTime() > Date.now() - 50, 'it says when it fires next');
    const start = Date.now();
    await runsReach(t.client, id, 3);
    const elapsed = Date.now() - start;
    assert.ok(elapsed >= 1500 && elapsed < 4500, `three ticks of a per-second schedule took ${elapsed} ms`);

    const seen = (await t.client.trigger({ trigger: 'sched.seen' })).results[0].result as { payload: unknown; event: Record<string, string>; keys: string[] }[];
    assert.ok(seen.length >= 3);
    const ticks = seen.map((s) => Date.parse(s.event.scheduledAt));
    for (const s of seen) {
      assert.equal(s.payload, null);
      assert.deepEqual(s.keys, ['registrationId', 'executionId', 'scheduledAt']);
      assert.equal(s.event.registrationId, id);
      assert.match(s.event.executionId, /^exe_[0-9a-f]{20}$/);
      assert.match(s.event.scheduledAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/, 'an ISO time on a whole second');
    }
    for (let i = 1; i < ticks.length; i++) assert.equal(ticks[i] - ticks[i - 1], 1000, 'consecutive ticks, none missed or doubled');
    assert.equal(new Set(seen.map((s) => s.event.executionId)).size, seen.length, 'each run its own execution');

    const samples = await scrape(t);
    assert.ok(value(samples, 'isogear_executions_total', { mode: 'isolate', kind: 'schedule', outcome: 'succeeded' }) >= 3);
    assert.equal(value(samples, 'isogear_sources', { kind: 'schedule' }), 1);
    await releaseInterpreters(t.client, made.interpreterId);
    assert.equal(value(await scrape(t), 'isogear_sources', { kind: 'schedule' }), 0, 'a released schedule stops');
  });

  it('watchers see the run of each tick, and CancelExecution stops one while it runs', async () => {
    const t = server();
    const made = await t.client.execute({ source: `export default () => gears.schedule('* * * * * *', () => new Promise(() => {}))` });
    const id = made.result as string;
    const watch = t.client.watch({ registrationId: id });
    await watch.ready;
    const events = watch[Symbol.asyncIterator]();
    // the first tick's run, listed as a HANDLER execution while it runs, is cancelled by id
    let running: pb.Execution | undefined;
    for (const end = Date.now() + 5000; !running && Date.now() < end; await sleep(50)) {
      running = (await t.client.listExecutions({})).executions.find((e) => e.registrationId === id);
    }
    assert.ok(running, 'the run is listed');
    assert.equal(running.kind, pb.ExecutionKind.EXECUTION_KIND_HANDLER);
    await t.client.pause({ registrationId: id });
    await t.client.cancelExecution({ executionId: running.id });
    let ev = (await events.next()).value as pb.WatchEvent;
    if (ev.registration) ev = (await events.next()).value as pb.WatchEvent; // (the pause)
    assert.equal(ev.run?.registrationId, id);
    assert.equal(ev.run?.executionId, running.id);
    assert.equal(outcomeName(ev.run?.outcome ?? 0), 'OUTCOME_ABORTED');
    watch.close();
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('a bad cron expression or time zone fails the call with a message that says why, and the script can catch it', async () => {
    const t = server();
    const cases: [string, RegExp][] = [
      [`gears.schedule('* * * *', () => {})`, /the cron expression "\* \* \* \*" is invalid: .*five, six/],
      [`gears.schedule('61 * * * *', () => {})`, /the cron expression "61 \* \* \* \*" is invalid: Invalid value for minute: 61/],
      [`gears.schedule('0 0 31 2 *', () => {})`, /is invalid: it never matches a date/],
      [`gears.schedule('', () => {})`, /the cron expression is invalid: it is empty/],
      [`gears.schedule(5, () => {})`, /the cron expression is invalid: it must be a string/],
      [`gears.schedule('* * * * *', () => {}, { timezone: 'Mars/Olympus' })`, /options.timezone "Mars\/Olympus" is not an IANA time zone/],
      [`gears.schedule('* * * * *', 'nope')`, /gears.schedule: handler must be a function/],
    ];
    for (const [call, why] of cases) {
      const res = await t.client.execute({ source: `export default () => { ${call}; }` });
      assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED', call);
      assert.equal(res.error?.name, 'TypeError', call);
      assert.match(res.error?.message ?? '', why, call);
      assert.equal(res.registrations.length, 0);
    }
    const caught = await t.client.execute({ source: `export default () => { try { gears.schedule('nope', () => {}); } catch (e) { return e.message; } }` });
    assert.match(caught.result as string, /is invalid/);
    assert.equal((await t.client.listRegistrations({})).registrations.length, 0);
  });

  it('a paused schedule does not fire and does not make up its missed ticks; resumed, it runs again', async () => {
    const t = server();
    const made = await t.client.execute({ source: EVERY_SECOND });
    const id = made.result as string;
    await runsReach(t.client, id, 1);
    assert.deepEqual((await t.client.pause({ registrationId: id })).registrationIds, [id]);
    const paused = await listed(t.client, id);
    assert.equal(paused.paused, true);
    assert.equal(paused.stats?.nextRunAt, undefined, 'a paused schedule has no next run');
    const runsAtPause = Number(paused.stats?.runs);
    await sleep(2300);
    assert.equal(Number((await listed(t.client, id)).stats?.runs), runsAtPause, 'no tick ran while paused');
    await t.client.resume({ registrationId: id });
    await runsReach(t.client, id, runsAtPause + 1, 2500);
    await sleep(300);
    const after = Number((await listed(t.client, id)).stats?.runs);
    assert.ok(after <= runsAtPause + 2, `missed ticks are not made up (${runsAtPause} → ${after})`);
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('a tick that comes while the previous run still goes is skipped and counted, never queued', async () => {
    const t = server();
    const made = await t.client.execute({
      source: `export default () => gears.schedule('* * * * * *', () => { const end = Date.now() + 2300; while (Date.now() < end); })`,
      limits: { timeoutMs: 10_000, memoryLimitMb: 0 },
    });
    const id = made.result as string;
    await runsReach(t.client, id, 1, 6000);
    const reg = await listed(t.client, id);
    assert.ok(Number(reg.stats?.skippedTicks) >= 2, `ticks skipped: ${reg.stats?.skippedTicks}`);
    assert.ok(value(await scrape(t), 'isogear_schedule_ticks_skipped_total') >= 2);
    await releaseInterpreters(t.client, made.interpreterId);
  });
});

describe('gears.schedule across a restart', function () {
  this.timeout(30_000);
  it('comes back with the recipe: the same id, its cron, and its paused state', async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-sched-'));
    try {
      const first = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
      const a = await first.client.execute({ source: `export default () => [gears.schedule('*/2 * * * * *', () => {}, { timezone: 'Europe/Paris' }), gears.schedule('* * * * * *', () => {})]` });
      const [kept, pausedId] = a.result as string[];
      await first.client.pause({ registrationId: pausedId });
      await first.server.shutdown(2000);

      const second = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
      try {
        const back = await listed(second.client, kept);
        assert.equal(back.schedule, '*/2 * * * * *');
        assert.equal(back.timezone, 'Europe/Paris');
        assert.equal(back.paused, false);
        assert.equal((await listed(second.client, pausedId)).paused, true);
        await runsReach(second.client, kept, 1, 4000);
        await sleep(1200);
        assert.equal(Number((await listed(second.client, pausedId)).stats?.runs), 0, 'the paused one stays paused');
        await releaseInterpreters(second.client, a.interpreterId);
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('gears.consume without an events Redis fails the call, naming the setting', async () => {
    const t = await startTestServer();
    try {
      const res = await t.client.execute({ source: `export default () => gears.consume('orders', () => {})` });
      assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED');
      assert.match(res.error?.message ?? '', /gears.consume needs a Redis to read streams from: set ISOGEAR_EVENTS_REDIS_URL/);
    } finally {
      await t.close();
    }
  });
});
