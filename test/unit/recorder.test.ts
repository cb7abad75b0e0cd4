import assert from 'node:assert/strict';
import { closeCore, composeCore, type CoreParts } from '../../src/core/CoreParts';
import type { InterpreterRecipe, RecipeStep } from '../../src/core/durability/RecipeStore';
import { ResourceExhaustedError, UnavailableError } from '../../src/core/errors';
import { newToken } from '../../src/core/ids';
import type { Interpreter } from '../../src/core/Interpreter';
import { loadWork, type Run } from '../../src/core/Runner';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';
import { MemoryStore } from '../helpers/memoryStore';
import { deferred } from '../helpers/server';

/** A store whose next `create` waits until the test lets it go. */
class GatedStore extends MemoryStore {
  gate: Promise<void> | undefined;
  readonly order: string[] = [];
  override async create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string }> {
    if (this.gate) await this.gate;
    this.order.push('create');
    return super.create(recipe, replaceName);
  }
  override async append(id: string, step: RecipeStep): Promise<void> {
    this.order.push('append');
    return super.append(id, step);
  }
}

describe('Recorder: steps are committed once stored, releases stored first (against the in-memory store)', () => {
  let store: GatedStore;
  let core: CoreParts;
  let closed: boolean;
  beforeEach(() => {
    store = new GatedStore();
    closed = false;
    core = composeCore({ ...MANAGER_OPTIONS, warmIsolates: 0, warmContextsPerShared: 0, store }, () => closed);
  });
  afterEach(async () => {
    // nothing may be left: every test releases what it made
    assert.equal(core.interpreters.size, 0, 'no interpreter is left');
    assert.equal(core.index.size, 0, 'no registration is left');
    closed = true;
    await closeCore(core);
  });

  const load = (interp: Interpreter, source: string): Promise<Run> =>
    core.runner.run({ interp, kind: 'execute', timeoutMs: 2000, since: performance.now(), work: loadWork(interp, { kind: 'execute', source, modules: {} }, newToken()) });
  const step = (source: string): { kind: 'execute'; source: string; modules: Record<string, string>; argsJson: string; timeoutMs: number } => ({
    kind: 'execute',
    source,
    modules: {},
    argsJson: '',
    timeoutMs: 2000,
  });

  /** Runs `source` in `interp` and commits its step; resolves with what it registered. */
  async function commit(interp: Interpreter, source: string): Promise<string[]> {
    const run = await load(interp, source);
    try {
      assert.equal(run.report.outcome, 'succeeded', run.report.error?.message);
      const regs = await core.recorder.commitStep(interp, run.tuple!, run.report.executionId, step(source));
      return regs.map((r) => r.id);
    } finally {
      run.end();
    }
  }

  it('stores nothing until a step registers; then the recipe holds every step so far, and later steps are appended', async () => {
    const interp = await core.interpreters.create('shared', 64, 'billing', 'default');
    const hold = interp.acquire('execution');
    await commit(interp, 'globalThis.n = 1;');
    assert.equal(store.writes, 0, 'a step that registers nothing writes nothing');
    assert.equal(core.recorder.isStored(interp), false);
    const [first] = await commit(interp, 'gears.register("a", () => globalThis.n)');
    assert.equal(core.recorder.isStored(interp), true);
    const [second] = await commit(interp, 'gears.register("b", () => 2)');
    hold.release();
    const recipe = await store.load(interp.id);
    assert.ok(recipe);
    assert.deepEqual(
      recipe.steps.map((s) => [s.source, s.registrations.map((r) => r.id)]),
      [
        ['globalThis.n = 1;', []],
        ['gears.register("a", () => globalThis.n)', [first]],
        ['gears.register("b", () => 2)', [second]],
      ],
    );
    assert.deepEqual([recipe.name, recipe.mode, recipe.memoryMb, recipe.tenant], ['billing', 'shared', 0, 'default']);
    assert.deepEqual(store.order, ['create', 'append']);

    // a release of one is stored as released; of the last, the recipe goes
    const one = await core.recorder.release(interp, [core.index.get(first)!], false);
    assert.deepEqual(one.releasedRegistrationIds, [first]);
    assert.deepEqual((await store.load(interp.id))?.released, [first]);
    const rest = await core.recorder.release(interp, [], true);
    assert.deepEqual(rest.releasedRegistrationIds, [second]);
    assert.equal(rest.interpreter.state, 'disposed');
    assert.equal(store.size, 0);
  });

  it('a store that refuses: the commit rejects UNAVAILABLE, nothing is kept here, the quota hold is returned, the failure counted', async () => {
    const interp = await core.interpreters.create('shared', 64, '', 'default');
    const hold = interp.acquire('execution');
    store.failWrites = 'disk full';
    await assert.rejects(commit(interp, 'gears.register("a", () => 1)'), (err: unknown) => err instanceof UnavailableError && /could not be stored, so nothing changed: disk full/.test(err.message));
    assert.equal(core.index.size, 0);
    assert.equal(core.ledger.of('default').registrations, 0);
    assert.equal(core.recorder.storeWriteFailures, 1);
    assert.equal(core.recorder.isStored(interp), false);
    hold.release();
    assert.equal(interp.state, 'disposed');
  });

  it('a pause is stored before it takes effect; one the store refuses is UNAVAILABLE and pauses nothing', async () => {
    const interp = await core.interpreters.create('shared', 64, '', 'default');
    const hold = interp.acquire('execution');
    const [a, b] = await commit(interp, 'gears.register("p", () => 1); gears.register("p", () => 2);');
    hold.release();
    store.failWrites = 'disk full';
    await assert.rejects(core.pausing.set({ trigger: 'p' }, true), (err: unknown) => err instanceof UnavailableError && /the pause could not be stored, so nothing changed: disk full/.test(err.message));
    assert.deepEqual([core.index.get(a)?.paused, core.index.get(b)?.paused], [false, false]);
    assert.deepEqual((await store.load(interp.id))?.paused, []);
    store.failWrites = undefined;
    assert.deepEqual(await core.pausing.set({ registrationId: b }, true), [b]);
    assert.deepEqual((await store.load(interp.id))?.paused, [b]);
    assert.equal(core.index.get(b)?.paused, true);
    // a released registration leaves the stored paused set too
    await core.recorder.release(interp, [core.index.get(b)!], false);
    assert.deepEqual((await store.load(interp.id))?.paused, []);
    await core.recorder.release(interp, [], true);
    assert.equal(store.size, 0);
  });

  it('a step whose registrations would pass the tenant quota is refused before anything is stored or kept', async () => {
    closed = true;
    await closeCore(core);
    closed = false;
    core = composeCore(
      { ...MANAGER_OPTIONS, warmIsolates: 0, warmContextsPerShared: 0, store, tenantQuotas: () => ({ interpreters: 10, registrations: 1, concurrentRuns: 4, dedicatedMemoryMb: 1000, backgroundExecutions: 1000 }) },
      () => closed,
    );
    const interp = await core.interpreters.create('shared', 64, '', 'default');
    const hold = interp.acquire('execution');
    await assert.rejects(commit(interp, 'gears.register("a", () => 1); gears.register("b", () => 2)'), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'tenant_registrations');
    assert.equal(store.writes, 0);
    assert.equal(core.index.size, 0);
    const [kept] = await commit(interp, 'gears.register("a", () => 1)');
    assert.equal(core.index.size, 1);
    hold.release();
    const released = await core.recorder.release(interp, [], true);
    assert.deepEqual(released.releasedRegistrationIds, [kept]);
  });

  it('store work of one interpreter runs in order: a step stored while the recipe is created waits for it', async () => {
    const interp = await core.interpreters.create('isolate', 64, '', 'default');
    const hold = interp.acquire('execution');
    const gate = deferred();
    store.gate = gate.promise;
    const first = commit(interp, 'gears.register("a", () => 1)');
    // the second run starts while the first one's recipe is still being created
    await new Promise((r) => setTimeout(r, 20));
    const second = commit(interp, 'gears.register("b", () => 2)');
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(store.order, []);
    assert.equal(core.index.size, 0, 'nothing is live before it is stored');
    gate.resolve();
    const [a] = await first;
    const [b] = await second;
    assert.deepEqual(store.order, ['create', 'append']);
    assert.deepEqual((await store.load(interp.id))?.steps.map((s) => s.registrations[0].id), [a, b]);
    assert.equal((await store.load(interp.id))?.memoryMb, 64);
    hold.release();
    await core.recorder.release(interp, [], true);
    assert.equal(store.size, 0);
  });
});
