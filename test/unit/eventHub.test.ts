import assert from 'node:assert/strict';
import { ResourceExhaustedError, UnavailableError } from '../../src/core/errors';
import { EventHub, type EventSource } from '../../src/core/EventHub';
import type { WatchEventBody } from '../../src/core/types';

const run = (executionId: string, source: EventSource): WatchEventBody => ({
  kind: 'run',
  run: { executionId, interpreterId: source.interpreterId, registrationId: source.registrationId ?? '', trigger: source.trigger ?? '', outcome: 'succeeded', wallTimeMs: 1, cpuTimeMs: 1 },
});
const log = (message: string, source: EventSource): WatchEventBody => ({
  kind: 'log',
  log: { executionId: 'exe_1', interpreterId: source.interpreterId, registrationId: source.registrationId ?? '', entry: { level: 'log', message } },
});
const idOf = (b: WatchEventBody | undefined): string => (b?.kind === 'run' ? b.run.executionId : b?.kind === 'log' ? b.log.entry.message : b?.kind === 'dropped' ? `dropped ${b.count}` : String(b?.kind));

describe('EventHub: live events to bounded watchers', () => {
  const hub = (bufferSize = 10, max = 3): EventHub => new EventHub({ bufferSize, maxWatchersPerTenant: () => max });
  const A: EventSource = { tenant: 'alpha', interpreterId: 'itp_a', registrationId: 'reg_a1', trigger: 'orders' };
  const B: EventSource = { tenant: 'alpha', interpreterId: 'itp_b' };
  const OTHER: EventSource = { tenant: 'beta', interpreterId: 'itp_c', registrationId: 'reg_c1', trigger: 'orders' };

  it('a watcher sees its tenant’s events only, from when it opened, filtered by every filter it set', async () => {
    const h = hub();
    h.publish(A, 'run', () => run('before', A));
    const all = h.watch({ tenant: 'alpha' });
    const byInterp = h.watch({ tenant: 'alpha', interpreterId: 'itp_b' });
    const byTrigger = h.watch({ tenant: 'alpha', trigger: 'orders', registrationId: 'reg_a1', includeLogs: true });
    for (const [source, id] of [[A, 'a'], [B, 'b'], [OTHER, 'c']] as const) h.publish(source, 'run', () => run(id, source));
    h.publish(A, 'log', () => log('hello', A));
    assert.deepEqual([idOf((await all.next())?.body), idOf((await all.next())?.body)], ['a', 'b'], 'not the other tenant’s, nor logs it did not ask for');
    assert.equal(all.backlog, 0);
    assert.equal(idOf((await byInterp.next())?.body), 'b');
    assert.equal(byInterp.backlog, 0);
    assert.deepEqual([idOf((await byTrigger.next())?.body), idOf((await byTrigger.next())?.body)], ['a', 'hello']);
    assert.equal(byTrigger.backlog, 0);
  });

  it('builds an event only when a watcher wants it; wantsLogs follows the watchers that asked for logs', () => {
    const h = hub();
    let built = 0;
    h.publish(A, 'run', () => (built++, run('x', A)));
    assert.equal(built, 0, 'nobody watches');
    assert.equal(h.wantsLogs('alpha'), false);
    const w = h.watch({ tenant: 'beta' });
    h.publish(A, 'run', () => (built++, run('x', A)));
    assert.equal(built, 0, 'nobody of this tenant watches');
    const logs = h.watch({ tenant: 'alpha', includeLogs: true });
    assert.equal(h.wantsLogs('alpha'), true);
    assert.equal(h.wantsLogs('beta'), false);
    h.publish(A, 'run', () => (built++, run('x', A)));
    assert.equal(built, 1);
    logs.close();
    assert.equal(h.wantsLogs('alpha'), false);
    w.close();
    assert.equal(h.size, 0, 'no watcher is left');
  });

  it('a slow reader loses what passes its buffer, learns how many, and never blocks the publisher', async () => {
    const h = hub(3);
    const w = h.watch({ tenant: 'alpha' });
    for (let i = 0; i < 10; i++) h.publish(A, 'run', () => run(`r${i}`, A));
    const got: string[] = [];
    for (let i = 0; i < 4; i++) got.push(idOf((await w.next())?.body));
    assert.deepEqual(got, ['dropped 7', 'r0', 'r1', 'r2']);
    // a waiting reader gets the next event at once
    const pending = w.next();
    h.publish(A, 'run', () => run('r10', A));
    assert.equal(idOf((await pending)?.body), 'r10');
    w.close();
  });

  it('bounds open watches per tenant (RESOURCE_EXHAUSTED tenant_watchers); closing one frees its place', () => {
    const h = hub(10, 2);
    const a = h.watch({ tenant: 'alpha' });
    h.watch({ tenant: 'alpha' });
    assert.throws(() => h.watch({ tenant: 'alpha' }), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'tenant_watchers' && /ISOGEAR_TENANT_MAX_WATCHERS is 2/.test(err.message));
    h.watch({ tenant: 'beta' });
    a.close();
    a.close();
    h.watch({ tenant: 'alpha' });
    assert.equal(h.size, 3);
    h.closeAll(new UnavailableError('the server is shutting down'));
    assert.equal(h.size, 0);
  });

  it('closing ends a pending read with undefined, drops what it held, and says why the hub closed it', async () => {
    const h = hub();
    const w = h.watch({ tenant: 'alpha' });
    const pending = w.next();
    const reason = new UnavailableError('the server is shutting down');
    h.closeAll(reason);
    assert.equal(await pending, undefined);
    assert.equal(w.isOpen, false);
    assert.equal(w.closeReason, reason);
    h.publish(A, 'run', () => run('late', A));
    assert.equal(await w.next(), undefined);
    const mine = h.watch({ tenant: 'alpha' });
    mine.close();
    assert.equal(mine.closeReason, undefined, 'closed by its reader');
  });
});
