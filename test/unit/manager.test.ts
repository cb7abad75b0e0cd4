import assert from 'node:assert/strict';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  IllegalStateError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../../src/core/errors';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import { Reference } from '../../src/core/Reference';
import type { IsolationMode } from '../../src/core/types';
import { waitFor } from '../helpers/proto';
import { assertNoLeaks } from '../helpers/server';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';

const MODES: IsolationMode[] = ['shared', 'isolate'];

const OPTIONS = MANAGER_OPTIONS;

/** Awaits a promise that must reject with an instance of `type`; returns the error. */
async function rejectsWith<E extends Error>(promise: Promise<unknown> | (() => unknown), type: new (...args: never[]) => E, message?: RegExp): Promise<E> {
  let caught: unknown;
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, `expected ${type.name}, but it succeeded`);
  assert.ok(caught instanceof type, `expected ${type.name}, got ${String(caught)}`);
  if (message) assert.match(caught.message, message);
  return caught;
}

describe('InterpreterManager as a library (no gRPC)', () => {
  let manager: InterpreterManager;
  beforeEach(async () => {
    manager = await InterpreterManager.create(OPTIONS);
  });
  afterEach(async () => {
    try {
      await assertNoLeaks(manager);
    } finally {
      await manager.destroy();
    }
  });

  it('create() validates its options', async () => {
    await rejectsWith(InterpreterManager.create({ ...OPTIONS, defaultTimeoutMs: 20_000 }), RangeError, /defaultTimeoutMs/);
    await rejectsWith(InterpreterManager.create({ ...OPTIONS, sharedIsolates: 0 }), RangeError, /sharedIsolates/);
    await rejectsWith(InterpreterManager.create({ ...OPTIONS, defaultMode: 'strong' as IsolationMode }), RangeError, /defaultMode/);
  });

  it('starts with nothing but its shared isolates', () => {
    const c = manager.counters();
    assert.equal(c.interpreters, 0);
    assert.equal(c.registrations, 0);
    assert.equal(c.dedicatedIsolates, 0);
    assert.equal(c.sharedIsolates, 2);
    assert.deepEqual(c.references, { registration: 0, execution: 0 });
    assert.equal(c.executionsInFlight, 0);
  });

  for (const mode of MODES) {
    describe(mode, () => {
      it('execute runs a script and disposes its interpreter at zero references', async () => {
        const res = await manager.execute({ source: 'console.info("hi"); export default (a) => a.x + 1;', args: { x: 41 }, mode });
        assert.equal(res.outcome, 'succeeded', JSON.stringify(res.error));
        assert.equal(res.result, 42);
        assert.deepEqual(res.logs, [{ level: 'info', message: 'hi' }]);
        assert.equal(res.interpreter?.state, 'disposed');
        assert.equal(res.interpreter?.references, 0);
        assert.equal(res.interpreter?.mode, mode);
        assert.deepEqual(res.registrations, []);
        assert.equal(manager.counters().interpreters, 0);
      });

      it('counts references through execute, register, trigger and release', async () => {
        const created = manager.counters().isolatesCreated.dedicated;
        const res = await manager.execute({
          source: 'let n = 0; gears.register("count.a", () => ++n); gears.register("count.b", (p) => p * 2);',
          mode,
        });
        assert.equal(res.outcome, 'succeeded', JSON.stringify(res.error));
        assert.equal(res.interpreter?.state, 'ready');
        assert.equal(res.interpreter?.registrationReferences, 2);
        assert.equal(res.interpreter?.executionReferences, 0);
        const itp = res.interpreterId;

        let c = manager.counters();
        assert.equal(c.interpreters, 1);
        assert.equal(c.registrations, 2);
        assert.deepEqual(c.references, { registration: 2, execution: 0 });
        assert.equal(c.dedicatedIsolates, mode === 'isolate' ? 1 : 0);
        assert.equal(c.interpretersByMode[mode], 1);

        const attached = await manager.register({ trigger: 'count.c', source: 'export default () => "c";', interpreterId: itp });
        assert.equal(attached.registration.interpreterId, itp);
        assert.equal(attached.interpreter.registrationReferences, 3);
        assert.deepEqual(manager.counters().references, { registration: 3, execution: 0 });
        assert.equal(manager.counters().interpreters, 1, 'attaching adds an owner, not an interpreter');

        const first = await manager.trigger({ trigger: 'count.a' });
        const second = await manager.trigger({ trigger: 'count.a' });
        assert.deepEqual([first[0].result, second[0].result], [1, 2], 'handlers share their interpreter state');
        assert.equal((await manager.trigger({ trigger: 'count.b', payload: 21 }))[0].result, 42);
        assert.equal((await manager.trigger({ trigger: 'count.c' }))[0].result, 'c');

        const one = await manager.release({ registrationId: res.registrations[0].id });
        assert.deepEqual(one.releasedRegistrationIds, [res.registrations[0].id]);
        assert.equal(one.interpreter.state, 'ready');
        assert.equal(one.interpreter.registrationReferences, 2);
        await rejectsWith(manager.trigger({ trigger: 'count.a' }), NotFoundError);

        const rest = await manager.release({ interpreterId: itp });
        assert.deepEqual(rest.releasedRegistrationIds, [res.registrations[1].id, attached.registration.id]);
        assert.equal(rest.interpreter.state, 'disposed');
        assert.equal(rest.interpreter.references, 0);

        c = manager.counters();
        assert.equal(c.interpreters, 0);
        assert.equal(c.registrations, 0);
        assert.deepEqual(c.references, { registration: 0, execution: 0 });
        assert.equal(c.dedicatedIsolates, 0);
        assert.equal(c.isolatesCreated.dedicated - created, mode === 'isolate' ? 1 : 0);
        assert.equal(c.isolatesCreated.dedicated, c.isolatesDisposed.dedicated);
      });

      it('a run in flight holds an execution reference; release during it drains, the end of the run disposes', async () => {
        const reg = await manager.register({ trigger: 'hold', source: 'export default () => new Promise((r) => { globalThis.finish = r; });', mode });
        const itp = reg.interpreter.id;
        const running = manager.trigger({ trigger: 'hold', limits: { timeoutMs: 300 } });
        await waitFor('one run in flight', () => manager.counters().executionsInFlight === 1);
        assert.deepEqual(manager.counters().references, { registration: 1, execution: 1 });

        const rel = await manager.release({ registrationId: reg.registration.id });
        assert.equal(rel.interpreter.state, 'draining');
        assert.equal(rel.interpreter.executionReferences, 1);
        assert.equal(manager.counters().interpreters, 1, 'not disposed under a running script');
        await rejectsWith(manager.execute({ source: 'export default 1;', interpreterId: itp }), FailedPreconditionError, /DRAINING/);

        const [result] = await running;
        assert.equal(result.outcome, 'timed_out');
        const info = await manager.getInterpreter(itp);
        assert.equal(info.interpreter.state, 'disposed');
        assert.equal(manager.counters().interpreters, 0);
      });

      it('execute in an existing interpreter shares its globals and adds its registrations there', async () => {
        const base = await manager.execute({ source: 'globalThis.greeting = "hello"; gears.register("base", () => 1);', mode });
        const more = await manager.execute({
          source: 'gears.register("more", () => globalThis.greeting); export default globalThis.greeting;',
          interpreterId: base.interpreterId,
        });
        assert.equal(more.result, 'hello');
        assert.equal(more.interpreter?.registrationReferences, 2);
        assert.equal((await manager.trigger({ trigger: 'more' }))[0].result, 'hello');
        await manager.release({ interpreterId: base.interpreterId });
      });
    });
  }

  it('releasing twice is NotFoundError; the Reference double-release guard is unreachable', async () => {
    const res = await manager.execute({ source: 'gears.register("twice.a", () => 1); gears.register("twice.b", () => 2);' });
    const [a, b] = res.registrations;
    await manager.release({ registrationId: a.id });
    const again = await rejectsWith(() => manager.release({ registrationId: a.id }), NotFoundError, new RegExp(a.id));
    assert.ok(!(again instanceof IllegalStateError));
    assert.deepEqual(manager.counters().references, { registration: 1, execution: 0 });

    await manager.release({ interpreterId: res.interpreterId });
    await rejectsWith(() => manager.release({ interpreterId: res.interpreterId }), NotFoundError);
    await rejectsWith(() => manager.release({ registrationId: b.id }), NotFoundError);
    await rejectsWith(() => manager.release({ registrationId: 'reg_unknown' }), NotFoundError);
    await rejectsWith(() => manager.release({ interpreterId: 'itp_unknown' }), NotFoundError);
    assert.deepEqual(manager.counters().references, { registration: 0, execution: 0 });
  });

  it('concurrent releases of one registration: exactly one wins', async () => {
    const res = await manager.execute({ source: 'gears.register("race", () => 1);', mode: 'shared' });
    const id = res.registrations[0].id;
    const outcomes = await Promise.allSettled([0, 1, 2, 3].map(() => Promise.resolve().then(() => manager.release({ registrationId: id }))));
    assert.equal(outcomes.filter((o) => o.status === 'fulfilled').length, 1);
    for (const o of outcomes) if (o.status === 'rejected') assert.ok(o.reason instanceof NotFoundError, String(o.reason));
    assert.deepEqual(manager.counters().references, { registration: 0, execution: 0 });
  });

  it('raises the documented error classes for bad requests', async () => {
    await rejectsWith(manager.execute({ source: '' }), InvalidArgumentError, /source/);
    await rejectsWith(manager.execute({ source: 'export default 1;', limits: { timeoutMs: 10_001 } }), InvalidArgumentError, /timeout_ms/);
    await rejectsWith(manager.execute({ source: 'export default 1;', limits: { memoryLimitMb: 257 } }), InvalidArgumentError, /memory_limit_mb/);
    await rejectsWith(manager.register({ trigger: 'x', source: 'export default 1;' }), InvalidArgumentError, /default export/);
    await rejectsWith(manager.register({ trigger: '', source: 'export default () => 1;' }), InvalidArgumentError, /trigger/);
    await rejectsWith(manager.execute({ source: 'export default 1;', interpreterId: 'itp_nope' }), NotFoundError);
    await rejectsWith(manager.trigger({ trigger: 'nobody.listens' }), NotFoundError);
    await rejectsWith(manager.getInterpreter('itp_nope'), NotFoundError);

    const named = await manager.execute({ source: 'gears.register("named", () => 1);', name: 'svc' });
    await rejectsWith(manager.execute({ source: 'export default 1;', name: 'svc' }), AlreadyExistsError, /svc/);
    await manager.release({ interpreterId: named.interpreterId });

    const gone = await manager.execute({ source: 'export default 1;' });
    await rejectsWith(manager.execute({ source: 'export default 1;', interpreterId: gone.interpreterId }), FailedPreconditionError, /DISPOSED/);
  });

  it('script failures are outcomes, not errors', async () => {
    const thrown = await manager.execute({ source: 'throw new TypeError("nope");' });
    assert.equal(thrown.outcome, 'failed');
    assert.equal(thrown.error?.name, 'TypeError');
    const syntax = await manager.execute({ source: 'export default (' });
    assert.equal(syntax.outcome, 'failed');
    assert.equal(syntax.error?.name, 'SyntaxError');
    const slow = await manager.execute({ source: 'for (;;) {}', limits: { timeoutMs: 200 } });
    assert.equal(slow.outcome, 'timed_out');
  });

  it('an aborted signal ends the run ABORTED and drops its reference', async () => {
    const controller = new AbortController();
    const running = manager.execute({ source: 'await new Promise(() => {});', mode: 'shared', limits: { timeoutMs: 5000 } }, controller.signal);
    await waitFor('one run in flight', () => manager.counters().executionsInFlight === 1);
    controller.abort();
    const res = await running;
    assert.equal(res.outcome, 'aborted');
    assert.equal(res.interpreter?.references, 0);
    assert.equal(manager.counters().executionsInFlight, 0);
  });

  it('maxInterpreters is ResourceExhaustedError naming the limit', async () => {
    const small = await InterpreterManager.create({ ...OPTIONS, maxInterpreters: 1 });
    try {
      const held = await small.register({ trigger: 'only', source: 'export default () => 1;', mode: 'shared' });
      const err = await rejectsWith(small.execute({ source: 'export default 1;' }), ResourceExhaustedError);
      assert.equal(err.limit, 'max_interpreters');
      await small.release({ registrationId: held.registration.id });
      assert.equal((await small.execute({ source: 'export default 2;' })).result, 2);
      await assertNoLeaks(small);
    } finally {
      await small.destroy();
    }
  });
});

describe('Reference', () => {
  it('a second release throws IllegalStateError and never drops a second count', () => {
    const drops: string[] = [];
    const ref = new Reference('registration', { id: 'itp_test', dropReference: (kind) => drops.push(kind) });
    ref.release();
    assert.equal(ref.isReleased, true);
    assert.throws(() => ref.release(), IllegalStateError);
    assert.deepEqual(drops, ['registration']);
  });
});

describe('InterpreterManager.destroy()', () => {
  it('makes every later call fail with UnavailableError, ends runs in flight ABORTED, and leaves nothing behind', async () => {
    const manager = await InterpreterManager.create(OPTIONS);
    try {
      const held = await manager.execute({ source: 'gears.register("kept", () => 1);', mode: 'isolate' });
      await manager.execute({ source: 'gears.register("kept", () => 2);', mode: 'shared' });
      assert.equal(manager.counters().interpreters, 2);
      const running = manager.execute({ source: 'await new Promise(() => {});', mode: 'isolate', limits: { timeoutMs: 5000 } });
      await waitFor('one run in flight', () => manager.counters().executionsInFlight === 1);

      await manager.destroy();
      const res = await running;
      assert.equal(res.outcome, 'aborted');

      await rejectsWith(manager.execute({ source: 'export default 1;' }), UnavailableError);
      await rejectsWith(manager.register({ trigger: 'x', source: 'export default () => 1;' }), UnavailableError);
      await rejectsWith(manager.trigger({ trigger: 'kept' }), UnavailableError);
      await rejectsWith(manager.execute({ source: 'export default 1;', interpreterId: held.interpreterId }), UnavailableError);

      const c = manager.counters();
      assert.equal(c.interpreters, 0);
      assert.equal(c.registrations, 0);
      assert.equal(c.dedicatedIsolates, 0);
      assert.equal(c.sharedIsolates, 0);
      await assertNoLeaks(manager);
      await manager.destroy();
    } finally {
      await manager.destroy();
    }
  });
});
