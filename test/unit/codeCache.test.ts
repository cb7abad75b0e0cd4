import assert from 'node:assert/strict';
import ivm from 'isolated-vm';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import type { ManagerOptions } from '../../src/core/options';
import { CodeCache } from '../../src/sandbox/CodeCache';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';
import { assertNoLeaks } from '../helpers/server';

const bytes = (n: number): ivm.ExternalCopy<ArrayBuffer> => new ivm.ExternalCopy(new ArrayBuffer(n));

describe('CodeCache: V8 cached data for sources compiled more than once, bounded', () => {
  it('asks for nothing on a first sighting, to produce data on the second, and hands it out from the third', () => {
    const cache = new CodeCache(1 << 20);
    const key = CodeCache.key('export default 1');
    assert.deepEqual(cache.options(key), {});
    assert.deepEqual(cache.options(key), { produceCachedData: true });
    const data = bytes(100);
    cache.store(key, data);
    assert.equal(cache.options(key).cachedData, data);
    assert.deepEqual({ hits: cache.hits, misses: cache.misses, size: cache.size, bytes: cache.sizeBytes }, { hits: 1, misses: 2, size: 1, bytes: 100 });
  });

  it('evicts the least recently used past its bound and never keeps an entry over a quarter of it', () => {
    const cache = new CodeCache(1000);
    const keys = ['a', 'b', 'c'].map((s) => CodeCache.key(s));
    for (const k of keys) cache.store(k, bytes(240));
    cache.options(keys[0]); // a is now the most recently used
    cache.store(CodeCache.key('d'), bytes(240));
    cache.store(CodeCache.key('e'), bytes(240));
    assert.ok(cache.sizeBytes <= 1000, String(cache.sizeBytes));
    assert.ok(cache.options(keys[0]).cachedData, 'the recently used entry stays');
    assert.equal(cache.options(keys[1]).cachedData, undefined, 'the least recently used went first');
    cache.store(CodeCache.key('big'), bytes(251));
    assert.equal(cache.options(CodeCache.key('big')).cachedData, undefined);
  });

  it('forgets data V8 rejected', () => {
    const cache = new CodeCache(1 << 20);
    const key = CodeCache.key('x');
    cache.store(key, bytes(10));
    cache.reject(key);
    assert.deepEqual({ size: cache.size, bytes: cache.sizeBytes, rejected: cache.rejected }, { size: 0, bytes: 0, rejected: 1 });
  });

  describe('in the manager', () => {
    const OPTIONS: ManagerOptions = { ...MANAGER_OPTIONS, sharedIsolates: 1, warmIsolates: 0, warmContextsPerShared: 0 };
    let manager: InterpreterManager;
    afterEach(async () => {
      try {
        await assertNoLeaks(manager);
      } finally {
        await manager.destroy();
      }
    });

    for (const mode of ['isolate', 'shared'] as const) {
      it(`a repeated source and its imports run from cached data with the same results and stack frames (${mode})`, async () => {
        manager = await InterpreterManager.create(OPTIONS);
        const spec = {
          mode,
          modules: { lib: 'export const f = (x) => x * 3; export const where = () => new Error("here").stack;' },
          source: 'import { f, where } from "lib";\nexport default (a) => ({ v: f(a), stack: where() });',
          args: 14,
        };
        const runs = [];
        for (let i = 0; i < 4; i++) runs.push(await manager.execute(spec));
        for (const r of runs) {
          assert.equal(r.outcome, 'succeeded', JSON.stringify(r.error));
          assert.equal((r.result as { v: number }).v, 42);
          assert.match((r.result as { stack: string }).stack, /at where \(lib:1:/);
        }
        const c = manager.counters().codeCache;
        assert.equal(c.entries, 2, 'main and lib are cached');
        assert.equal(c.hits, 4, 'the third and fourth runs consumed both');
        assert.equal(c.rejected, 0);
      });
    }

    it('ISOGEAR_CODE_CACHE_BYTES 0 turns it off', async () => {
      manager = await InterpreterManager.create({ ...OPTIONS, codeCacheBytes: 0 });
      for (let i = 0; i < 3; i++) assert.equal((await manager.execute({ source: 'export default 1' })).result, 1);
      assert.deepEqual(manager.counters().codeCache, { entries: 0, bytes: 0, hits: 0, misses: 0, rejected: 0 });
    });
  });
});
