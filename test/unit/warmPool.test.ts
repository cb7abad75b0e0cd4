import assert from 'node:assert/strict';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import type { ManagerOptions } from '../../src/core/options';
import { waitFor } from '../helpers/proto';
import { assertNoLeaks } from '../helpers/server';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';

const OPTIONS: ManagerOptions = { ...MANAGER_OPTIONS, warmIsolates: 3, warmContextsPerShared: 2 };

const full = (m: InterpreterManager, isolates: number, contexts: number): Promise<void> =>
  waitFor(`the warm pool to hold ${isolates} isolates and ${contexts} contexts`, () => {
    const w = m.counters().warm;
    return w.isolates === isolates && w.contexts === contexts;
  });

describe('warm pool: interpreters made ahead of time, taken on the request path', () => {
  let manager: InterpreterManager | undefined;
  afterEach(async () => {
    if (!manager) return;
    try {
      await assertNoLeaks(manager);
    } finally {
      await manager.destroy();
      manager = undefined;
    }
  });

  it('fills to its targets at start, without counting pooled isolates as dedicated or as interpreters', async () => {
    manager = await InterpreterManager.create(OPTIONS);
    await full(manager, 3, 4);
    const c = manager.counters();
    assert.equal(c.interpreters, 0);
    assert.equal(c.dedicatedIsolates, 0);
    assert.equal(c.isolatesCreated.dedicated, 0);
    assert.equal(c.warm.isolatesCreated, 3);
  });

  for (const mode of ['isolate', 'shared'] as const) {
    it(`Execute in ${mode} mode takes a warm interpreter (a hit) whose pre-chosen ids are the ones the script sees, and the pool refills`, async () => {
      const m = (manager = await InterpreterManager.create(OPTIONS));
      await full(m, 3, 4);
      const res = await m.execute({
        source: 'export default () => ({ id: gears.interpreterId, reg: gears.register("warm.t", (p) => p * 2) })',
        mode,
      });
      assert.equal(res.outcome, 'succeeded', JSON.stringify(res.error));
      const { id, reg } = res.result as { id: string; reg: string };
      assert.equal(id, res.interpreterId);
      assert.equal(res.registrations[0].id, reg);
      assert.equal(m.counters().warm.hits[mode], 1);
      assert.equal(m.counters().warm.misses[mode], 0);
      const [fired] = await m.trigger({ trigger: 'warm.t', payload: 21 });
      assert.equal(fired.result, 42);
      await full(m, 3, 4);
      if (mode === 'isolate') assert.equal(m.counters().isolatesCreated.dedicated, 1, 'the taken isolate counts as dedicated from then on');
      await m.release({ interpreterId: res.interpreterId });
    });
  }

  for (const mode of ['isolate', 'shared'] as const) {
    it(`a warm interpreter (its warm-up run done) looks exactly like one made on the request path (${mode})`, async () => {
      const probe = {
        mode,
        source: `export default () => ({
          globals: Object.getOwnPropertyNames(globalThis).sort(),
          gears: Object.getOwnPropertyNames(gears).sort(),
          frozen: Object.isFrozen(gears),
          executionIsNew: typeof gears.executionId === 'string',
          reg: gears.register('warm.probe', () => 1),
        })`,
      };
      const warm = (manager = await InterpreterManager.create(OPTIONS));
      await full(warm, 3, 4);
      const a = await warm.execute(probe);
      assert.equal(warm.counters().warm.hits[mode], 1);
      const cold = await InterpreterManager.create({ ...OPTIONS, warmIsolates: 0, warmContextsPerShared: 0 });
      try {
        const b = await cold.execute(probe);
        assert.equal(cold.counters().warm.misses[mode], 1);
        const strip = (r: typeof a): unknown => ({ ...(r.result as object), reg: undefined });
        assert.deepEqual(strip(a), strip(b));
        assert.match((a.result as { reg: string }).reg, /^reg_[0-9a-f]{16}_1$/, 'the warm-up registered nothing: the first id is _1');
        await cold.release({ interpreterId: b.interpreterId });
        await assertNoLeaks(cold);
      } finally {
        await cold.destroy();
      }
      await warm.release({ interpreterId: a.interpreterId });
    });
  }

  it('a memory limit other than the default misses the pool and creates its isolate on the request path', async () => {
    const m = (manager = await InterpreterManager.create(OPTIONS));
    await full(m, 3, 4);
    const res = await m.execute({ source: 'export default 1', mode: 'isolate', limits: { memoryLimitMb: 32 } });
    assert.equal(res.outcome, 'succeeded');
    assert.deepEqual({ hits: m.counters().warm.hits.isolate, misses: m.counters().warm.misses.isolate }, { hits: 0, misses: 1 });
    assert.equal(m.counters().warm.isolates, 3, 'the warm isolates are untouched');
  });

  it('a burst larger than the pool is served: misses create on the request path, the pool refills to its target and no further', async () => {
    const m = (manager = await InterpreterManager.create(OPTIONS));
    await full(m, 3, 4);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => m.execute({ source: `export default ${i}`, mode: i % 2 ? 'shared' : 'isolate' })));
    results.forEach((r, i) => assert.equal(r.result, i));
    const w = m.counters().warm;
    assert.equal(w.hits.isolate + w.misses.isolate, 5);
    assert.equal(w.hits.shared + w.misses.shared, 5);
    assert.ok(w.hits.isolate >= 3 && w.hits.shared >= 1, JSON.stringify(w));
    await full(m, 3, 4);
  });

  it('warm shared contexts count against the shared isolates’ budget', async () => {
    // 8 MB shared isolates take 8 MB × 0.75 / 256 KiB = 24 contexts each.
    const m = (manager = await InterpreterManager.create({ ...OPTIONS, sharedIsolates: 1, sharedIsolateMemoryMb: 8, warmIsolates: 0, warmContextsPerShared: 16 }));
    await full(m, 0, 16);
    const held = [];
    for (let i = 0; i < 24; i++) {
      const res = await m.execute({ source: 'gears.register("warm.keep", () => 1);', mode: 'shared' });
      assert.equal(res.outcome, 'succeeded', `interpreter ${i + 1}: ${JSON.stringify(res.error)}`);
      held.push(res.interpreterId);
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(m.counters().warm.contexts, 0, 'no warm context past the budget');
    await assert.rejects(m.execute({ source: 'export default 1', mode: 'shared' }), /shared isolates are full/);
    await Promise.all(held.map((interpreterId) => m.release({ interpreterId })));
    await full(m, 0, 16);
  });

  it('destroy disposes the pooled isolates (reason shutdown) and releases the warm contexts', async () => {
    const m = await InterpreterManager.create(OPTIONS);
    await full(m, 3, 4);
    await m.destroy();
    const c = m.counters();
    assert.equal(c.warm.isolates, 0);
    assert.equal(c.warm.contexts, 0);
    assert.equal(c.warm.isolatesDisposed.get('shutdown'), 3);
    assert.equal(m.disposals().get('pooled:shutdown'), 3);
  });

  it('with both targets at 0 the pool holds nothing and every take is a miss', async () => {
    const m = (manager = await InterpreterManager.create({ ...OPTIONS, warmIsolates: 0, warmContextsPerShared: 0 }));
    for (const mode of ['isolate', 'shared'] as const) assert.equal((await m.execute({ source: 'export default 1', mode })).outcome, 'succeeded');
    const w = m.counters().warm;
    assert.deepEqual([w.isolates, w.contexts, w.isolatesCreated, w.hits.isolate + w.hits.shared, w.misses.isolate + w.misses.shared], [0, 0, 0, 0, 2]);
  });
});
