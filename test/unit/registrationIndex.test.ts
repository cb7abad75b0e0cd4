import assert from 'node:assert/strict';
import { ResourceExhaustedError } from '../../src/core/errors';
import { Interpreter } from '../../src/core/Interpreter';
import type { IsolateHost } from '../../src/core/IsolateHost';
import { RegistrationIndex } from '../../src/core/RegistrationIndex';
import { TenantLedger } from '../../src/core/TenantLedger';
import type { RunTuple, Sandbox } from '../../src/sandbox/Sandbox';

/** A context that only records what the index asks of it (no isolate needed for bookkeeping). */
class RecordingSandbox {
  readonly calls: string[] = [];
  commit(execId: string): void {
    this.calls.push(`commit ${execId}`);
  }
  abandon(execId: string): void {
    this.calls.push(`abandon ${execId}`);
  }
  unregister(ids: string[]): void {
    this.calls.push(`unregister ${ids.join(',')}`);
  }
  release(): void {
    this.calls.push('release');
  }
}

let seq = 0;
function interpreter(tenant = 'alpha', prefix = `p${++seq}_`): { interp: Interpreter; sandbox: RecordingSandbox; disposed: () => boolean } {
  const sandbox = new RecordingSandbox();
  let gone = false;
  const interp = new Interpreter(
    {
      id: `itp_${seq}`,
      seq,
      mode: 'shared',
      name: '',
      host: {} as IsolateHost,
      sandbox: sandbox as unknown as Sandbox,
      registrationPrefix: prefix,
      tenant,
      dedicatedMemoryMb: 0,
    },
    (i) => {
      gone = true;
      i.markDisposed();
    },
  );
  return { interp, sandbox, disposed: () => gone };
}

function tuple(regs: [id: string, trigger: string][]): RunTuple {
  return { ok: true, valueJson: 'null', logs: [], logsTruncated: false, registrations: regs.map(([id, trigger]) => ({ id, trigger, description: '' })) } as unknown as RunTuple;
}

describe('RegistrationIndex: live registrations, committed and released in one step each', () => {
  it('commits a run: each registration is bound to its trigger in order, holds a reference, and counts for its tenant', () => {
    const ledger = new TenantLedger(undefined, 100);
    const index = new RegistrationIndex(ledger, 10);
    const { interp, sandbox } = interpreter();
    const hold = interp.acquire('execution');
    const regs = index.commit(interp, tuple([['reg_' + interp.registrationPrefix + '1', 'orders'], ['reg_' + interp.registrationPrefix + '2', 'orders']]), 'exe_1');
    assert.deepEqual(
      index.bound('alpha', 'orders')?.map((r) => r.id),
      regs.map((r) => r.id),
    );
    assert.equal(index.bound('beta', 'orders'), undefined, 'triggers are per tenant');
    assert.equal(interp.referencesOf('registration'), 2);
    assert.equal(ledger.of('alpha').registrations, 2);
    assert.deepEqual(sandbox.calls, ['commit exe_1']);
    index.releaseAll(interp);
    hold.release();
  });

  it('keeps nothing of a run whose interpreter stopped accepting, and tells the sandbox to drop it', () => {
    const index = new RegistrationIndex(new TenantLedger(undefined, 100), 10);
    const { interp, sandbox } = interpreter();
    const hold = interp.acquire('execution');
    interp.beginDraining();
    assert.deepEqual(index.commit(interp, tuple([[`reg_${interp.registrationPrefix}1`, 'orders']]), 'exe_2'), []);
    assert.equal(index.size, 0);
    assert.deepEqual(sandbox.calls, ['abandon exe_2']);
    hold.release();
  });

  it('refuses what the sandbox reports but did not mint, duplicates, bad triggers and runs past the cap', () => {
    const index = new RegistrationIndex(new TenantLedger(undefined, 100), 2);
    const { interp } = interpreter();
    const own = (n: number): string => `reg_${interp.registrationPrefix}${n}`;
    assert.match(index.invalid(interp, tuple([['reg_other_1', 't']])) ?? '', /did not create/);
    assert.match(index.invalid(interp, tuple([[own(1), 't'], [own(1), 't']])) ?? '', /did not create/);
    assert.match(index.invalid(interp, tuple([[own(1), '-bad']])) ?? '', /not a valid trigger name/);
    assert.match(index.invalid(interp, tuple([[own(1), 't'], [own(2), 't'], [own(3), 't']])) ?? '', /more handlers than the 2/);
    assert.equal(index.invalid(interp, tuple([[own(1), 't'], [own(2), 't']])), undefined);
    const hold = interp.acquire('execution');
    index.commit(interp, tuple([[own(1), 't'], [own(2), 't']]), 'exe_3');
    assert.match(index.invalid(interp, tuple([[own(1), 't']])) ?? '', /did not create/, 'an id already live is refused');
    assert.throws(() => index.refuseWhenFull(interp), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'max_registrations_per_interpreter');
    index.releaseAll(interp);
    hold.release();
  });

  it('releasing the last registration while a run holds the interpreter drains it; the run ending disposes it', () => {
    const ledger = new TenantLedger(undefined, 100);
    const index = new RegistrationIndex(ledger, 10);
    const { interp, sandbox, disposed } = interpreter();
    const run = interp.acquire('execution');
    const [a, b] = index.commit(interp, tuple([[`reg_${interp.registrationPrefix}1`, 'x'], [`reg_${interp.registrationPrefix}2`, 'y']]), 'exe_4');
    index.release(interp, [a]);
    assert.equal(interp.state, 'ready');
    assert.equal(index.get(a.id), undefined);
    assert.equal(index.bound('alpha', 'x'), undefined);
    index.release(interp, [b]);
    assert.equal(interp.state, 'draining');
    assert.equal(disposed(), false);
    assert.deepEqual(sandbox.calls.slice(1), [`unregister ${a.id}`, `unregister ${b.id}`]);
    run.release();
    assert.equal(disposed(), true);
    assert.equal(interp.state, 'disposed');
    assert.equal(ledger.of('alpha').registrations, 0);
    assert.equal(index.size, 0);
  });

  it('lists a broken interpreter\'s registrations without running anything, skipping ids already live', () => {
    const index = new RegistrationIndex(new TenantLedger(undefined, 100), 10);
    const { interp, sandbox } = interpreter();
    interp.fail('restore failed: step 1 of 1');
    index.addBroken(interp, [
      { id: 'reg_a', trigger: 't', description: '' },
      { id: 'reg_b', trigger: 't', description: 'second' },
    ]);
    index.addBroken(interp, [{ id: 'reg_a', trigger: 't', description: '' }]);
    assert.deepEqual(index.bound('alpha', 't')?.map((r) => r.id), ['reg_a', 'reg_b']);
    assert.equal(interp.referencesOf('registration'), 2);
    index.releaseAll(interp);
    assert.equal(index.size, 0);
    assert.deepEqual(sandbox.calls, ['release'], 'a failed interpreter\'s released context is never called');
  });
});
