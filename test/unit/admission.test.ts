import assert from 'node:assert/strict';
import { Admission } from '../../src/core/Admission';
import { IllegalStateError, ResourceExhaustedError } from '../../src/core/errors';
import { RunSlots } from '../../src/core/RunSlots';
import { TenantLedger } from '../../src/core/TenantLedger';
import type { QuotaName } from '../../src/core/tenants';
import { deferred } from '../helpers/server';

const OPTIONS = { maxConcurrentRuns: 4, maxQueuedRuns: 8, maxQueueWaitMs: 5000 };

function ledgerWith(concurrentRuns: Record<string, number>): TenantLedger {
  return new TenantLedger(
    (tenant): Record<QuotaName, number> => ({ interpreters: 100, registrations: 100, dedicatedMemoryMb: 1000, backgroundExecutions: 1000, concurrentRuns: concurrentRuns[tenant] ?? 4 }),
    100,
  );
}

describe('Admission: run slots per server and per tenant', () => {
  it('a tenant at its quota waits in its own queue while another tenant takes the server slots', async () => {
    const admission = new Admission(OPTIONS, ledgerWith({ alpha: 1 }));
    const a1 = await admission.acquire('alpha');
    let a2Granted = false;
    const a2 = admission.acquire('alpha').then((s) => {
      a2Granted = true;
      return s;
    });
    // alpha's waiter queues at its own gate, not the server's: beta gets the three server slots alpha does not hold at once
    const beta = await Promise.all([admission.acquire('beta'), admission.acquire('beta'), admission.acquire('beta')]);
    assert.equal(admission.running, 4);
    assert.equal(admission.waiting, 0);
    await new Promise((r) => setImmediate(r));
    assert.equal(a2Granted, false);
    // alpha's run ends: its slot and its server slot go to its own waiter
    a1.release();
    const slot = await a2;
    assert.equal(a2Granted, true);
    assert.equal(admission.running, 4);
    slot.release();
    for (const s of beta) s.release();
    assert.equal(admission.running, 0);
    assert.equal(admission.waiting, 0);
  });

  it('a concurrentRuns quota of 0 refuses at once, naming the quota', async () => {
    const admission = new Admission(OPTIONS, ledgerWith({ alpha: 0 }));
    await assert.rejects(admission.acquire('alpha'), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'tenant_concurrent_runs');
  });

  it('a tenant whose queue is full is refused with its quota named, not the server setting', async () => {
    const admission = new Admission({ ...OPTIONS, maxQueuedRuns: 0 }, ledgerWith({ alpha: 1 }));
    const held = await admission.acquire('alpha');
    await assert.rejects(admission.acquire('alpha'), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'tenant_concurrent_runs' && /quota concurrentRuns/.test(err.message));
    held.release();
  });

  it('releasing a slot twice is a bug and throws (a tenant slot and a server slot alike)', async () => {
    const admission = new Admission(OPTIONS, ledgerWith({ alpha: 1 }));
    const tenantSlot = await admission.acquire('alpha');
    tenantSlot.release();
    assert.throws(() => tenantSlot.release(), (err: unknown) => err instanceof IllegalStateError && /run slot was released twice/.test(err.message));
    const serverSlot = await admission.acquire('beta');
    serverSlot.release();
    assert.throws(() => serverSlot.release(), IllegalStateError);
    assert.equal(admission.running, 0);
  });

  it('a held slot frees only when the work it holds settles, and still only once', async () => {
    const slots = new RunSlots({ maxConcurrent: 1, maxQueued: 1, maxWaitMs: 5000 });
    const slot = await slots.acquire();
    const work = deferred();
    slot.holdUntil(work.promise);
    slot.release();
    assert.equal(slots.running, 1);
    assert.throws(() => slot.release(), IllegalStateError);
    work.resolve();
    await work.promise;
    await new Promise((r) => setImmediate(r));
    assert.equal(slots.running, 0);
  });
});
