import assert from 'node:assert/strict';
import { ResourceExhaustedError } from '../../src/core/errors';
import { TenantLedger } from '../../src/core/TenantLedger';
import type { QuotaName } from '../../src/core/tenants';

const quotas = (q: Partial<Record<QuotaName, number>>): Record<QuotaName, number> => ({
  interpreters: 1000,
  registrations: 1000,
  concurrentRuns: 64,
  dedicatedMemoryMb: 100_000,
  backgroundExecutions: 1000,
  ...q,
});

function refusal(fn: () => unknown): ResourceExhaustedError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ResourceExhaustedError, `expected ResourceExhaustedError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a refusal');
}

describe('TenantLedger: what each tenant holds against its quotas', () => {
  it('counts interpreters and dedicated memory, and refuses the one past the interpreters quota by name', () => {
    const ledger = new TenantLedger(() => quotas({ interpreters: 2 }), 100);
    ledger.admitInterpreter('alpha', 64);
    ledger.admitInterpreter('alpha', 0);
    const err = refusal(() => ledger.admitInterpreter('alpha', 0));
    assert.equal(err.limit, 'tenant_interpreters');
    assert.match(err.message, /tenant "alpha" holds its quota of 2 interpreters/);
    assert.deepEqual(ledger.of('alpha'), { interpreters: 2, registrations: 0, dedicatedMemoryMb: 64 });
    // another tenant is counted apart
    ledger.admitInterpreter('beta', 0);
    ledger.interpreterGone('alpha', 64);
    assert.deepEqual(ledger.of('alpha'), { interpreters: 1, registrations: 0, dedicatedMemoryMb: 0 });
    ledger.admitInterpreter('alpha', 0);
  });

  it('refuses dedicated memory past its quota, and shared mode (0 MB) never counts against it', () => {
    const ledger = new TenantLedger(() => quotas({ dedicatedMemoryMb: 100 }), 100);
    ledger.admitInterpreter('alpha', 64);
    const err = refusal(() => ledger.admitInterpreter('alpha', 64));
    assert.equal(err.limit, 'tenant_dedicated_memory_mb');
    assert.match(err.message, /64 MB of heap limits; 64 MB more would pass its quota of 100 MB/);
    ledger.admitInterpreter('alpha', 0);
    ledger.admitInterpreter('alpha', 36);
    assert.equal(ledger.of('alpha').dedicatedMemoryMb, 100);
  });

  it('a quota at or above the server limit does not bind (the server limit answers), and a rebuilt interpreter is never refused', () => {
    const atServer = new TenantLedger(() => quotas({ interpreters: 2 }), 2);
    for (let i = 0; i < 3; i++) atServer.admitInterpreter('alpha', 0);
    const ledger = new TenantLedger(() => quotas({ interpreters: 0, dedicatedMemoryMb: 0 }), 100);
    ledger.admitInterpreter('alpha', 64, false);
    assert.deepEqual(ledger.of('alpha'), { interpreters: 1, registrations: 0, dedicatedMemoryMb: 64 });
  });

  it('refuses registrations past the quota, counting those held while a step is stored', () => {
    const ledger = new TenantLedger(() => quotas({ registrations: 3 }), 100);
    assert.equal(ledger.registrationRefusal('alpha', 3), undefined);
    ledger.countRegistrations('alpha', 2);
    const err = ledger.registrationRefusal('alpha', 2);
    assert.equal(err?.limit, 'tenant_registrations');
    assert.match(err?.message ?? '', /holds 2 registrations; 2 more would pass its quota of 3/);
    ledger.countRegistrations('alpha', -2);
    assert.equal(ledger.registrationRefusal('alpha', 3), undefined);
  });

  it('reads the quotas at every check (a reloaded keys file applies at once); no quota function means no quota', () => {
    let q = quotas({ interpreters: 1 });
    const ledger = new TenantLedger(() => q, 100);
    ledger.admitInterpreter('alpha', 0);
    assert.equal(refusal(() => ledger.admitInterpreter('alpha', 0)).limit, 'tenant_interpreters');
    q = quotas({ interpreters: 5 });
    ledger.admitInterpreter('alpha', 0);
    const open = new TenantLedger(undefined, 1);
    for (let i = 0; i < 5; i++) open.admitInterpreter('alpha', 512);
    assert.equal(open.registrationRefusal('alpha', 1e9), undefined);
    assert.deepEqual([...open.snapshot()], [['alpha', { interpreters: 5, registrations: 0 }]]);
  });
});
