import assert from 'node:assert/strict';
import { AlreadyExistsError, UnavailableError } from '../../src/core/errors';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import type { ManagerOptions } from '../../src/core/options';
import type { IsolationMode } from '../../src/core/types';
import type { InterpreterRecipe } from '../../src/core/durability/RecipeStore';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';
import { MemoryStore } from '../helpers/memoryStore';
import { assertNoLeaks } from '../helpers/server';

const MODES: IsolationMode[] = ['shared', 'isolate'];

async function rejects(promise: Promise<unknown>, type: new (...args: never[]) => Error, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof type, `expected ${type.name}, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

/** Managers over one store: `restart()` ends the current one (as a crash would: nothing released) and restores a new one. */
class Cluster {
  readonly store = new MemoryStore();
  manager!: InterpreterManager;
  constructor(private readonly options: Partial<ManagerOptions> = {}) {}

  async start(): Promise<InterpreterManager> {
    this.manager = await InterpreterManager.create({ ...MANAGER_OPTIONS, ...this.options, store: this.store });
    await this.manager.restore(() => this.store.loadAll(), 4);
    return this.manager;
  }

  async restart(): Promise<InterpreterManager> {
    await this.manager.destroy();
    return this.start();
  }

  /** Releases everything, checks nothing leaked and the store is empty, ends the manager. */
  async end(): Promise<void> {
    try {
      for (const i of (await this.manager.listInterpreters({})).items) {
        if (i.registrationReferences > 0) await this.manager.release({ interpreterId: i.id });
      }
      await assertNoLeaks(this.manager);
      assert.equal(this.store.size, 0, 'every recipe left the store with its last registration');
    } finally {
      await this.manager.destroy();
    }
  }
}

describe('durable registrations: restore from the store', () => {
  for (const mode of MODES) {
    it(`${mode}: a restart rebuilds interpreters with their ids, names, globals and triggers`, async () => {
      const c = new Cluster();
      let m = await c.start();
      try {
        const base = await m.execute({
          source: 'globalThis.greet = (n) => "hello " + n; gears.register("hi", (p) => greet(p)); gears.register("bye", () => "bye");',
          mode,
          name: 'greeter',
        });
        const itp = base.interpreterId;
        const attached = await m.register({ trigger: 'late', source: 'export default () => greet("late");', interpreterId: itp });
        await m.execute({ source: 'globalThis.greet = (n) => "hi " + n;', interpreterId: itp });
        await m.release({ registrationId: base.registrations[1].id });
        const before = (await m.listRegistrations({})).items.map((r) => [r.id, r.trigger, r.interpreterId]).sort();

        m = await c.restart();
        const after = (await m.listRegistrations({})).items.map((r) => [r.id, r.trigger, r.interpreterId]).sort();
        assert.deepEqual(after, before, 'the same registrations, ids and interpreter');
        const info = await m.getInterpreter(itp);
        assert.equal(info.interpreter.name, 'greeter');
        assert.equal(info.interpreter.mode, mode);
        assert.equal(info.interpreter.state, 'ready');
        assert.equal((await m.trigger({ trigger: 'hi', payload: 'you' }))[0].result, 'hi you', 'the steps replayed in order');
        assert.equal((await m.trigger({ trigger: 'late' }))[0].result, 'hi late');
        await rejects(m.trigger({ trigger: 'bye' }), Error, /no registration is bound/);
        assert.equal(m.restoreStatus().restored, 1);
        assert.deepEqual(m.restoreStatus().broken, []);
        // new registrations after a restore never take a restored id
        const more = await m.execute({ source: 'gears.register("more", () => 1);', interpreterId: itp });
        assert.ok(![base.registrations[0].id, base.registrations[1].id, attached.registration.id].includes(more.registrations[0].id));
        // and names still refuse a second holder
        await rejects(m.execute({ source: 'gears.register("x", () => 1);', name: 'greeter' }), AlreadyExistsError, /greeter/);
      } finally {
        await c.end();
      }
    });
  }

  it('handlers registered by a handler run are stored as a trigger step and come back', async () => {
    const c = new Cluster();
    let m = await c.start();
    try {
      await m.execute({ source: 'gears.register("spawn", (p) => { gears.register("child." + p, () => "child " + p); return p; });' });
      await m.trigger({ trigger: 'spawn', payload: 'a' });
      await m.trigger({ trigger: 'spawn', payload: 'b' });
      const ids = (await m.listRegistrations({})).items.map((r) => r.id).sort();
      m = await c.restart();
      assert.deepEqual((await m.listRegistrations({})).items.map((r) => r.id).sort(), ids);
      assert.equal((await m.trigger({ trigger: 'child.b' }))[0].result, 'child b');
    } finally {
      await c.end();
    }
  });

  it('an upgrade swaps the stored recipe: after a restart only the new one is there', async () => {
    const c = new Cluster();
    let m = await c.start();
    try {
      await m.execute({ source: 'gears.register("v", () => 1);', name: 'svc' });
      const v2 = await m.execute({ source: 'gears.register("v", () => 2);', name: 'svc', replace: true });
      assert.equal(c.store.size, 1);
      m = await c.restart();
      const runs = await m.trigger({ trigger: 'v' });
      assert.deepEqual(runs.map((r) => r.result), [2]);
      assert.equal((await m.listInterpreters({ name: 'svc' })).items[0].id, v2.interpreterId);
      // an upgrade that registers nothing takes the old one away, durably
      await m.execute({ source: 'export default 0;', name: 'svc', replace: true });
      assert.equal(c.store.size, 0);
      m = await c.restart();
      assert.equal(m.counters().interpreters, 0);
    } finally {
      await c.end();
    }
  });

  it('a store that refuses a write: the request is UNAVAILABLE and nothing is kept, here or there', async () => {
    const c = new Cluster();
    const m = await c.start();
    try {
      c.store.failWrites = 'disk full';
      await rejects(m.execute({ source: 'gears.register("a", () => 1);' }), UnavailableError, /could not be stored.*disk full/);
      await rejects(m.register({ trigger: 'b', source: 'export default () => 1;' }), UnavailableError, /disk full/);
      assert.equal(m.counters().registrations, 0);
      c.store.failWrites = undefined;
      const kept = await m.execute({ source: 'gears.register("a", () => 1);' });
      c.store.failWrites = 'disk full';
      await rejects(m.release({ registrationId: kept.registrations[0].id }), UnavailableError, /release could not be stored/);
      assert.equal((await m.trigger({ trigger: 'a' }))[0].result, 1, 'a release that was not stored did not happen');
      c.store.failWrites = undefined;
    } finally {
      await c.end();
    }
  });

  it('a recipe that no longer replays is kept, listed FAILED with its registrations broken, and releasable', async () => {
    const c = new Cluster();
    const good = await (async () => {
      const m = await c.start();
      const r = await m.execute({ source: 'gears.register("ok", () => "ok");' });
      await m.destroy();
      return r;
    })();
    const recipe: InterpreterRecipe = {
      interpreterId: 'itp_00000000000000000001',
      tenant: 'default',
      name: 'bad',
      mode: 'shared',
      memoryMb: 0,
      registrationPrefix: 'feedbeef_',
      createdAtMs: Date.now(),
      released: [],
      paused: [],
      steps: [
        { id: 'stp_1', kind: 'execute', source: 'gears.register("one", () => 1);', argsJson: '', timeoutMs: 1000, registrations: [{ id: 'reg_feedbeef_1', trigger: 'one', description: '' }] },
        { id: 'stp_2', kind: 'execute', source: 'gears.register("two", () => 2);', argsJson: '', timeoutMs: 1000, registrations: [{ id: 'reg_feedbeef_2', trigger: 'other', description: '' }] },
      ],
    };
    c.store.put(recipe);
    const m = await c.start();
    try {
      const status = m.restoreStatus();
      assert.equal(status.restored, 1);
      assert.equal(status.broken.length, 1);
      assert.match(status.broken[0].reason, /step 2 of 2 \(execute\) registered \[trigger two as reg_feedbeef_2\] where it first registered \[trigger other as reg_feedbeef_2\]/);
      const info = await m.getInterpreter(recipe.interpreterId);
      assert.equal(info.interpreter.state, 'failed');
      assert.match(info.interpreter.failureReason, /restore failed/);
      assert.deepEqual(info.registrations.map((r) => [r.id, r.broken]).sort(), [['reg_feedbeef_1', true], ['reg_feedbeef_2', true]]);
      const [run] = await m.trigger({ trigger: 'one' });
      assert.equal(run.outcome, 'failed');
      assert.equal((await m.trigger({ trigger: 'ok' }))[0].result, 'ok', 'the good recipe beside it came back');
      assert.equal((await m.listRegistrations({ interpreterId: good.interpreterId })).items.length, 1);
      await m.release({ interpreterId: recipe.interpreterId });
      assert.equal(c.store.size, 1, 'the broken recipe left the store when released');
      assert.deepEqual(m.restoreStatus().broken, [], 'and is no longer counted broken');
    } finally {
      await c.end();
    }
  });

  it('restores with bounded concurrency and reports progress', async () => {
    const c = new Cluster();
    for (let i = 0; i < 8; i++) {
      c.store.put({
        interpreterId: `itp_0000000000000000010${i}`,
        tenant: 'default',
        name: '',
        mode: 'isolate',
        memoryMb: 32,
        registrationPrefix: `b${i}_`,
        createdAtMs: i,
        released: [],
      paused: [],
        steps: [
          {
            id: `stp_${i}`,
            kind: 'execute',
            source: `const t = Date.now(); while (Date.now() - t < 60); gears.register("slow.${i}", () => ${i});`,
            argsJson: '',
            timeoutMs: 2000,
            registrations: [{ id: `reg_b${i}_1`, trigger: `slow.${i}`, description: '' }],
          },
        ],
      });
    }
    const m = await InterpreterManager.create({ ...MANAGER_OPTIONS, store: c.store });
    c.manager = m;
    try {
      let most = 0;
      const sampler = setInterval(() => (most = Math.max(most, m.counters().executionsInFlight)), 2);
      const progress: [number, number][] = [];
      const status = await m.restore(() => c.store.loadAll(), 2, (done, total) => progress.push([done, total]));
      clearInterval(sampler);
      assert.equal(status.restored, 8);
      assert.ok(most >= 1 && most <= 2, `at most 2 replays ran at once (saw ${most})`);
      assert.deepEqual(progress, Array.from({ length: 8 }, (_, k) => [k + 1, 8]));
      assert.equal((await m.trigger({ trigger: 'slow.7' }))[0].result, 7);
    } finally {
      await c.end();
    }
  });

  it('a recipe whose script now throws is broken with the error', async () => {
    const c = new Cluster();
    c.store.put({
      interpreterId: 'itp_00000000000000000002',
      tenant: 't1',
      name: '',
      mode: 'isolate',
      memoryMb: 32,
      registrationPrefix: 'cafe_',
      createdAtMs: 0,
      released: [],
      paused: [],
      steps: [{ id: 'stp_1', kind: 'register', source: 'throw new TypeError("gone");', trigger: 'h', timeoutMs: 500, registrations: [{ id: 'reg_cafe_1', trigger: 'h', description: '' }] }],
    });
    const m = await c.start();
    try {
      assert.match(m.restoreStatus().broken[0].reason, /step 1 of 1 \(register\) failed: TypeError: gone/);
      assert.equal((await m.listRegistrations({ tenant: 't1' })).items[0].broken, true);
      await m.release({ interpreterId: 'itp_00000000000000000002', tenant: 't1' });
    } finally {
      await c.end();
    }
  });
});
