import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import { IllegalStateError } from '../../src/core/errors';
import { RedisStore } from '../../src/store/RedisStore';
import { SqliteStore } from '../../src/store/SqliteStore';
import { SqliteWorkerStore } from '../../src/store/SqliteWorkerStore';
import { MemoryRecipes } from '../../src/core/durability/MemoryRecipes';
import { NameTakenError, StoreError, type InterpreterRecipe, type RecipeStep, type RecipeStore } from '../../src/core/durability/RecipeStore';
import { waitFor } from '../helpers/proto';
import { requireRedis, startRedis, type TestRedis } from '../helpers/redis';

const ROOT = path.join(__dirname, '../..');

let counter = 0;
const uniq = (): string => `${++counter}_${randomBytes(4).toString('hex')}`;

function recipe(over: Partial<InterpreterRecipe> = {}): InterpreterRecipe {
  const n = uniq();
  return {
    interpreterId: `itp_${n}`,
    tenant: 'acme',
    name: '',
    mode: 'shared',
    memoryMb: 64,
    registrationPrefix: `${n}_`,
    createdAtMs: 1_700_000_000_000 + counter,
    steps: [],
    released: [],
    paused: [],
    ...over,
  };
}

function step(over: Partial<RecipeStep> = {}): RecipeStep {
  return { id: `stp_${uniq()}`, kind: 'execute', source: 'export default 1;', argsJson: '', timeoutMs: 1000, registrations: [], ...over };
}

/** Awaits a promise that must reject with an instance of `type`; returns the error. */
async function rejectsWith<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E, message?: RegExp): Promise<E> {
  const caught = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(caught, `expected ${type.name}, but it succeeded`);
  assert.ok(caught instanceof type, `expected ${type.name}, got ${String(caught)}`);
  if (message) assert.match(caught.message, message);
  return caught;
}

/** Retries `fn` until it resolves, for at most `ms`. */
async function eventually<T>(what: string, fn: () => Promise<T>, ms: number): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > until) throw new Error(`${what} kept failing for ${ms} ms`, { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

const ids = (recipes: InterpreterRecipe[]): string[] => recipes.map((r) => r.interpreterId);

/** One store's backing data for one test: `open` gives a new store on it, each closed after the test. */
interface Target {
  /** `maxVersions`: how many versions a name keeps (ISOGEAR_MAX_VERSIONS; the default when absent). */
  open(options?: { maxVersions?: number }): Promise<RecipeStore>;
  cleanup(): Promise<void>;
}

/**
 * The conformance suite: what every RecipeStore must do, through the interface only.
 * `make` gives each test fresh, empty backing data.
 */
function describeStore(name: string, make: () => Promise<Target>): void {
  describe(name, () => {
    let target: Target | undefined;
    let opened: RecipeStore[] = [];
    /** A store on the test's data; `open()` again after close() is a restart. */
    const open = async (options?: { maxVersions?: number }): Promise<RecipeStore> => {
      const store = await target!.open(options);
      opened.push(store);
      return store;
    };

    beforeEach(async () => {
      target = await make();
    });
    afterEach(async () => {
      for (const s of opened) await s.close();
      opened = [];
      await target?.cleanup();
      target = undefined;
    });

    it('starts empty', async () => {
      const store = await open();
      assert.deepEqual(await store.loadAll(), []);
      assert.equal(await store.load('itp_missing'), undefined);
    });

    it('loads what it created, oldest first by creation (not by createdAtMs)', async () => {
      const store = await open();
      const a = recipe({ createdAtMs: 3000 });
      const b = recipe({ createdAtMs: 2000, mode: 'isolate', memoryMb: 256, tenant: 'other' });
      const c = recipe({ createdAtMs: 1000, name: 'svc' });
      for (const r of [a, b]) assert.deepEqual(await store.create(r, false), {});
      // a named recipe gets its name's first version
      assert.deepEqual(await store.create(c, false), { version: 1 });
      assert.deepEqual(await store.load(b.interpreterId), b);
      assert.deepEqual(await store.loadAll(), [a, b, { ...c, version: 1 }]);
    });

    it('appends steps in order and keeps released ids (each once)', async () => {
      const store = await open();
      const r = recipe({ steps: [step()], released: ['reg_x'] });
      await store.create(r, false);
      const more = [step({ kind: 'register', trigger: 't1', description: 'd' }), step(), step({ kind: 'trigger', handlerId: 'reg_1', payloadJson: '{}' })];
      for (const s of more) await store.append(r.interpreterId, s);
      await store.release(r.interpreterId, ['reg_b', 'reg_a']);
      await store.release(r.interpreterId, ['reg_a']);
      await store.release(r.interpreterId, []);
      const loaded = await store.load(r.interpreterId);
      assert.deepEqual(loaded?.steps, [...r.steps, ...more]);
      assert.deepEqual(loaded?.released, ['reg_a', 'reg_b', 'reg_x']);
    });

    it('keeps paused ids: paused and resumed in any order, each once, none left once released, and through a restart', async () => {
      const store = await open();
      const r = recipe({ steps: [step()], paused: ['reg_c'] });
      await store.create(r, false);
      await store.setPaused(r.interpreterId, ['reg_b', 'reg_a'], true);
      await store.setPaused(r.interpreterId, ['reg_a'], true);
      await store.setPaused(r.interpreterId, [], true);
      assert.deepEqual((await store.load(r.interpreterId))?.paused, ['reg_a', 'reg_b', 'reg_c']);
      await store.setPaused(r.interpreterId, ['reg_c', 'reg_zz'], false);
      await store.release(r.interpreterId, ['reg_b']);
      await store.setPaused('itp_missing', ['reg_a'], true); // a recipe that is gone: a no-op, never an error
      assert.deepEqual((await store.load(r.interpreterId))?.paused, ['reg_a']);
      await store.close();
      const again = await open();
      const loaded = (await again.loadAll()).find((x) => x.interpreterId === r.interpreterId);
      assert.deepEqual({ paused: loaded?.paused, released: loaded?.released }, { paused: ['reg_a'], released: ['reg_b'] });
      assert.equal(await again.load('itp_missing'), undefined);
    });

    it('removes a recipe, and leaves the others', async () => {
      const store = await open();
      const [a, b] = [recipe(), recipe()];
      await store.create(a, false);
      await store.create(b, false);
      await store.append(a.interpreterId, step());
      await store.release(a.interpreterId, ['reg_1']);
      await store.remove(a.interpreterId);
      assert.equal(await store.load(a.interpreterId), undefined);
      assert.deepEqual(await store.loadAll(), [b]);
    });

    it('treats append, release and remove on an interpreter it does not hold as no-ops', async () => {
      const store = await open();
      const gone = recipe();
      await store.create(gone, false);
      await store.remove(gone.interpreterId);
      for (const id of ['itp_never', gone.interpreterId]) {
        await store.append(id, step());
        await store.release(id, ['reg_1']);
        await store.remove(id);
      }
      assert.deepEqual(await store.loadAll(), []);
      // Nothing was left behind that a new recipe with the same id would pick up.
      await store.create(gone, false);
      assert.deepEqual(await store.load(gone.interpreterId), gone);
    });

    it('refuses to create an interpreter id it already holds', async () => {
      const store = await open();
      const r = recipe();
      await store.create(r, false);
      await rejectsWith(store.create({ ...r, name: 'other' }, false), StoreError, /create failed/);
      assert.deepEqual(await store.loadAll(), [r]);
    });

    it('keeps a name per tenant: NameTakenError names the holder, another tenant or no name is fine', async () => {
      const store = await open();
      const holder = recipe({ name: 'svc' });
      await store.create(holder, false);
      await store.create(recipe({ name: 'svc', tenant: 'other' }), false);
      await store.create(recipe(), false);
      await store.create(recipe(), false);
      const loser = recipe({ name: 'svc' });
      const err = await rejectsWith(store.create(loser, false), NameTakenError);
      assert.equal(err.holder, holder.interpreterId);
      assert.equal(err.tenant, 'acme');
      assert.equal(err.interpreterName, 'svc');
      assert.equal(await store.load(loser.interpreterId), undefined);
      assert.equal((await store.loadAll()).length, 4);
    });

    it('frees a name when its holder is removed', async () => {
      const store = await open();
      const first = recipe({ name: 'svc' });
      await store.create(first, false);
      await store.remove(first.interpreterId);
      const second = recipe({ name: 'svc' });
      // the removed holder is kept as version 1: the name goes on from there
      assert.deepEqual(await store.create(second, false), { version: 2 });
      assert.deepEqual(ids(await store.loadAll()), [second.interpreterId]);
    });

    it('replaceName removes the holder in the same step and returns its id', async () => {
      const store = await open();
      const old = recipe({ name: 'svc', steps: [step()], released: ['reg_1'] });
      const bystander = recipe();
      await store.create(old, false);
      await store.create(bystander, false);
      const next = recipe({ name: 'svc' });
      assert.deepEqual(await store.create(next, true), { replaced: old.interpreterId, version: 2 });
      assert.equal(await store.load(old.interpreterId), undefined);
      assert.deepEqual(ids(await store.loadAll()), [bystander.interpreterId, next.interpreterId]);
      // The name now belongs to the replacement.
      const err = await rejectsWith(store.create(recipe({ name: 'svc' }), false), NameTakenError);
      assert.equal(err.holder, next.interpreterId);
      // Replacing a free name replaces nothing.
      assert.deepEqual(await store.create(recipe({ name: 'free' }), true), { version: 1 });
    });

    it('round-trips steps with every field exactly: modules, args, unicode, a 1 MB source', async () => {
      const store = await open();
      const unicode = 'héllo 世界 🦀 \u0000 \n\t "quoted" \\ \u2028 \ud800 lone';
      const big = `export default ${JSON.stringify('x'.repeat(1024 * 1024))};`;
      const steps: RecipeStep[] = [
        step({
          source: `import { f } from './lib.js'; export default f(${JSON.stringify(unicode)});`,
          modules: { './lib.js': 'export const f = (s) => s;', './ü/ñ.js': `export default ${JSON.stringify(unicode)};` },
          argsJson: JSON.stringify({ a: [1, 2.5, null, true], s: unicode }),
          timeoutMs: 2500,
          registrations: [{ id: 'reg_p_1', trigger: 'orders.created', description: unicode }],
        }),
        step({ kind: 'register', source: big, modules: {}, trigger: 'big', description: '', timeoutMs: 1, registrations: [{ id: 'reg_p_2', trigger: 'big', description: '' }] }),
        step({ kind: 'trigger', handlerId: 'reg_p_2', payloadJson: JSON.stringify({ unicode }), timeoutMs: 30_000, registrations: [] }),
        // a schedule and a consumer keep their kind and source; a schedule's run that registered keeps its event
        step({
          kind: 'trigger',
          handlerId: 'reg_p_3',
          payloadJson: 'null',
          eventJson: JSON.stringify({ scheduledAt: '2026-12-07T09:00:00.000Z' }),
          timeoutMs: 5000,
          registrations: [
            { id: 'reg_p_4', kind: 'schedule', trigger: '', description: unicode, cron: '*/10 * * * * *', timezone: 'Europe/Paris' },
            { id: 'reg_p_5', kind: 'stream', trigger: '', description: '', stream: `orders:${unicode}`, group: 'billing' },
          ],
        }),
      ];
      delete steps[3].source;
      delete steps[3].argsJson;
      delete steps[2].source;
      delete steps[2].argsJson;
      const r = recipe({ tenant: 'tenant ü', name: 'name.é-1', steps: steps.slice(0, 1) });
      await store.create(r, false);
      await store.append(r.interpreterId, steps[1]);
      await store.append(r.interpreterId, steps[2]);
      await store.append(r.interpreterId, steps[3]);
      const loaded = await store.load(r.interpreterId);
      assert.deepEqual(loaded, { ...r, steps, version: 1 });
      assert.equal(loaded?.steps[1].source?.length, big.length);
    });

    describe('versions of a named interpreter', () => {
      const at = (v: { version: number; current: boolean; interpreterId: string }): string => `${v.version}${v.current ? '*' : ''} ${v.interpreterId}`;

      it('lists each recipe that held the name, oldest first: replaced and removed ones kept as they stood, the holder current', async () => {
        const store = await open();
        const v1 = recipe({ name: 'svc', steps: [step({ source: 'export default "one";' })] });
        await store.create(v1, false);
        await store.append(v1.interpreterId, step({ kind: 'register', trigger: 't', registrations: [{ id: 'reg_a', trigger: 't', description: '' }] }));
        await store.release(v1.interpreterId, ['reg_a']);
        await store.setPaused(v1.interpreterId, ['reg_b'], true);
        const v2 = recipe({ name: 'svc', mode: 'isolate', memoryMb: 128, steps: [step({ source: 'export default "twö";' })] });
        assert.deepEqual(await store.create(v2, true), { replaced: v1.interpreterId, version: 2 });
        await store.create(recipe({ name: 'other' }), false);
        await store.create(recipe({ name: 'svc', tenant: 'beta' }), false);

        const list = await store.versions('acme', 'svc');
        assert.deepEqual(list.map(at), [`1 ${v1.interpreterId}`, `2* ${v2.interpreterId}`]);
        assert.equal(list[0].createdAtMs, v1.createdAtMs);
        assert.equal(list[0].sourceSha256, createHash('sha256').update('export default "one";').digest('hex'));
        assert.equal(list[0].sourceBytes, 21);
        assert.equal(list[1].sourceBytes, Buffer.byteLength('export default "twö";'), 'bytes are UTF-8 bytes');
        assert.equal(list[1].rolledBackFrom, undefined);

        // a kept version's recipe is the one that held the name, as it stood when it left
        const kept = await store.loadVersion('acme', 'svc', 1);
        assert.equal(kept?.interpreterId, v1.interpreterId);
        assert.equal(kept?.version, 1);
        assert.equal(kept?.steps.length, 2);
        assert.deepEqual(kept?.released, ['reg_a']);
        assert.deepEqual(kept?.paused, ['reg_b']);
        const current = await store.loadVersion('acme', 'svc', 2);
        assert.deepEqual(current, { ...v2, version: 2 });
        assert.equal(await store.loadVersion('acme', 'svc', 3), undefined);
        assert.equal(await store.loadVersion('beta', 'svc', 2), undefined, 'another tenant has its own versions');
        assert.deepEqual((await store.versions('beta', 'svc')).map(at).length, 1);
        assert.deepEqual(await store.versions('acme', 'never'), []);
        // a kept version is no live recipe: never restored
        assert.equal(await store.load(v1.interpreterId), undefined);
        assert.ok(!ids(await store.loadAll()).includes(v1.interpreterId));

        // removed with its last registration: kept too, and the name is then free, with no current version
        await store.remove(v2.interpreterId);
        assert.deepEqual((await store.versions('acme', 'svc')).map(at), [`1 ${v1.interpreterId}`, `2 ${v2.interpreterId}`]);
        const v3 = recipe({ name: 'svc', rolledBackFrom: 1, steps: kept!.steps });
        assert.deepEqual(await store.create(v3, false), { version: 3 });
        const after = await store.versions('acme', 'svc');
        assert.deepEqual(after.map(at), [`1 ${v1.interpreterId}`, `2 ${v2.interpreterId}`, `3* ${v3.interpreterId}`]);
        assert.equal(after[2].rolledBackFrom, 1);
        assert.equal(after[2].sourceSha256, after[0].sourceSha256);
        assert.equal((await store.load(v3.interpreterId))?.rolledBackFrom, 1);
      });

      it('keeps the newest maxVersions of a name (the current one counts), and unnamed recipes have none', async () => {
        const store = await open({ maxVersions: 3 });
        const made: string[] = [];
        for (let k = 0; k < 5; k++) {
          const r = recipe({ name: 'svc' });
          made.push(r.interpreterId);
          assert.equal((await store.create(r, true)).version, k + 1);
        }
        assert.deepEqual((await store.versions('acme', 'svc')).map(at), [`3 ${made[2]}`, `4 ${made[3]}`, `5* ${made[4]}`]);
        assert.equal(await store.loadVersion('acme', 'svc', 2), undefined, 'an older version is gone');
        await store.remove(made[4]);
        assert.deepEqual((await store.versions('acme', 'svc')).map(at), [`3 ${made[2]}`, `4 ${made[3]}`, `5 ${made[4]}`]);
        const next = recipe({ name: 'svc' });
        assert.equal((await store.create(next, false)).version, 6);
        assert.deepEqual((await store.versions('acme', 'svc')).map(at), [`4 ${made[3]}`, `5 ${made[4]}`, `6* ${next.interpreterId}`]);

        const unnamed = recipe({ steps: [step()] });
        assert.deepEqual(await store.create(unnamed, false), {});
        await store.remove(unnamed.interpreterId);
        assert.deepEqual(await store.versions('acme', ''), []);
      });

      it('keeps versions across close and reopen', async () => {
        let store = await open();
        const v1 = recipe({ name: 'svc', steps: [step()] });
        const v2 = recipe({ name: 'svc', steps: [step({ source: 'export default 2;' })] });
        await store.create(v1, false);
        await store.create(v2, true);
        const before = await store.versions('acme', 'svc');
        const kept = await store.loadVersion('acme', 'svc', 1);
        await store.close();
        store = await open();
        assert.deepEqual(await store.versions('acme', 'svc'), before);
        assert.deepEqual(await store.loadVersion('acme', 'svc', 1), kept);
        assert.equal((await store.create(recipe({ name: 'svc' }), true)).version, 3);
      });
    });

    it('sees everything after close and reopen', async () => {
      let store = await open();
      const kept = recipe({ name: 'svc', steps: [step()] });
      const removed = recipe();
      await store.create(kept, false);
      await store.create(removed, false);
      await store.append(kept.interpreterId, step({ kind: 'register', trigger: 't', description: 'd' }));
      await store.release(kept.interpreterId, ['reg_9']);
      await store.remove(removed.interpreterId);
      const replacer = recipe({ name: 'svc2' });
      await store.create(replacer, false);
      const before = await store.loadAll();
      await store.close();
      await store.close();
      await rejectsWith(store.loadAll(), IllegalStateError);

      store = await open();
      assert.deepEqual(await store.loadAll(), before);
      // The name rule held across the restart too.
      await rejectsWith(store.create(recipe({ name: 'svc' }), false), NameTakenError);
    });
  });
}

/** Runs a child process (the repo's TypeScript through tsx) and resolves once it printed `ready`. */
function spawnChild(code: string): Promise<{ kill(): Promise<void> }> {
  const child = spawn(process.execPath, ['--no-node-snapshot', '--import', 'tsx', '-e', code], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let output = '';
  return new Promise((resolve, reject) => {
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    child.stdout.on('data', (c: Buffer) => {
      output += c.toString();
      if (output.includes('ready'))
        resolve({
          kill: async () => {
            child.kill('SIGKILL');
            await exited;
          },
        });
    });
    void exited.then(() => reject(new Error(`child exited before ready:\n${output}`)));
  });
}

describe('registration stores', () => {
  // the store of a server without one (ISOGEAR_STORE=memory); a reopen sees the same recipes
  describeStore('MemoryRecipes conformance', async () => {
    // (each open is a handle on the same recipes; a closed handle refuses, as a closed store does)
    let live: MemoryRecipes | undefined;
    return {
      open: async (options) => {
        const store = (live ??= new MemoryRecipes(options?.maxVersions));
        let closed = false;
        return new Proxy(store, {
          get(t, prop) {
            if (prop === 'close') return async () => void (closed = true);
            const v = Reflect.get(t, prop, t) as unknown;
            if (typeof v !== 'function') return v;
            if (closed) return () => Promise.reject(new IllegalStateError(`memory: ${String(prop)} after close`));
            return (v as (...a: unknown[]) => unknown).bind(t);
          },
        });
      },
      cleanup: async () => undefined,
    };
  });

  describe('SqliteStore', () => {
    const dirs: string[] = [];
    const tempDir = (): string => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-store-'));
      dirs.push(dir);
      return dir;
    };
    after(() => {
      for (const dir of dirs) {
        chmodSync(dir, 0o700);
        rmSync(dir, { recursive: true, force: true });
      }
    });

    describeStore('conformance', async () => {
      const dir = path.join(tempDir(), 'data');
      return { open: async (options) => SqliteStore.open(dir, options), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
    });

    // what the server runs: the same store on a worker thread of its own
    describeStore('conformance, on its worker thread (SqliteWorkerStore)', async () => {
      const dir = path.join(tempDir(), 'data');
      return { open: (options) => SqliteWorkerStore.open(dir, options), cleanup: async () => rmSync(dir, { recursive: true, force: true }) };
    });

    it('on its worker thread: a second opener is refused (StoreError), a taken name is NameTakenError, use after close IllegalStateError', async () => {
      const dir = path.join(tempDir(), 'w');
      const first = await SqliteWorkerStore.open(dir);
      try {
        await rejectsWith(SqliteWorkerStore.open(dir), StoreError, /in use by another isogear process/);
        await first.create(recipe({ name: 'n' }), false);
        await rejectsWith(first.create(recipe({ name: 'n' }), false), NameTakenError, /"n" already exists/);
      } finally {
        await first.close();
      }
      await rejectsWith(first.load('x'), IllegalStateError, /after close/);
    });

    describe('on its own', () => {
      /** Makes a file this isogear wrote one of an older schema `version`: drops what the later versions added. */
      const downgrade = (dir: string, version: number): void => {
        const db = new Database(path.join(dir, 'isogear.db'));
        try {
          if (version < 3) {
            db.exec('DROP TABLE versions');
            for (const column of ['version', 'rolled_back_from', 'source_sha256', 'source_bytes']) db.exec(`ALTER TABLE interpreters DROP COLUMN ${column}`);
          }
          if (version < 2) db.exec('DROP TABLE paused');
          db.pragma(`user_version = ${version}`);
        } finally {
          db.close();
        }
      };

      it('creates nested directories and one isogear.db, with WAL but no -shm file (exclusive locking)', async () => {
        const dir = path.join(tempDir(), 'a', 'b');
        const store = SqliteStore.open(dir);
        try {
          assert.equal(store.shared, false);
          assert.equal((store as RecipeStore).follow, undefined);
          assert.equal(store.description, `sqlite ${path.join(dir, 'isogear.db')}`);
          await store.create(recipe(), false);
          assert.deepEqual(readdirSync(dir).sort(), ['isogear.db', 'isogear.db-wal']);
        } finally {
          await store.close();
        }
      });

      it('refuses a second opener of the same directory, in this process and in another', async function () {
        this.timeout(60_000);
        const dir = tempDir();
        const first = SqliteStore.open(dir);
        try {
          assert.throws(() => SqliteStore.open(dir), (err: Error) => err instanceof StoreError && /isogear\.db is in use by another isogear process/.test(err.message));
        } finally {
          await first.close();
        }

        // Another process holds it, with a change it acknowledged; SIGKILL must keep that change.
        const r = recipe({ name: 'durable' });
        const child = await spawnChild(
          `const { SqliteStore } = require('./src/store/SqliteStore.ts');
           const s = SqliteStore.open(${JSON.stringify(dir)});
           s.create(${JSON.stringify(r)}, false).then(() => { console.log('ready'); setInterval(() => {}, 1000); });`,
        );
        try {
          assert.throws(() => SqliteStore.open(dir), (err: Error) => err instanceof StoreError && /is in use by another isogear process/.test(err.message));
        } finally {
          await child.kill();
        }
        const after = SqliteStore.open(dir);
        try {
          assert.deepEqual(await after.loadAll(), [{ ...r, version: 1 }]);
        } finally {
          await after.close();
        }
      });

      it('keeps the name rule in the database itself, not only in the code', async () => {
        const dir = tempDir();
        const store = SqliteStore.open(dir);
        await store.create(recipe({ name: 'svc' }), false);
        await store.close();
        const db = new Database(path.join(dir, 'isogear.db'));
        try {
          const insert = db.prepare("INSERT INTO interpreters (id, tenant, name, mode, memory_mb, prefix, created_at_ms) VALUES (?, 'acme', ?, 'shared', 64, 'p_', 0)");
          assert.throws(() => insert.run('itp_dup', 'svc'), /UNIQUE constraint failed/);
          insert.run('itp_unnamed_1', '');
          insert.run('itp_unnamed_2', '');
        } finally {
          db.close();
        }
      });

      it('brings a file of schema version 1 (before pausing) up to date, keeping its recipes', async () => {
        const dir = tempDir();
        const old = recipe({ steps: [step()], released: ['reg_1'] });
        const first = SqliteStore.open(dir);
        await first.create(old, false);
        await first.close();
        // what isogear wrote before version 2: no paused table (nor version 3's versions)
        downgrade(dir, 1);
        const store = SqliteStore.open(dir);
        try {
          assert.deepEqual(await store.loadAll(), [old]);
          await store.setPaused(old.interpreterId, ['reg_2'], true);
          assert.deepEqual((await store.load(old.interpreterId))?.paused, ['reg_2']);
        } finally {
          await store.close();
        }
        const check = new Database(path.join(dir, 'isogear.db'));
        try {
          assert.equal(check.pragma('user_version', { simple: true }), 3);
        } finally {
          check.close();
        }
      });

      it('brings a file of schema version 2 (before versions) up to date: its named recipes become version 1, the next replace version 2', async () => {
        const dir = tempDir();
        const source = 'export default "written before versions: ü";';
        const named = recipe({ name: 'svc', steps: [step({ source }), step({ kind: 'register', trigger: 't', description: '' })], released: ['reg_1'], paused: ['reg_2'] });
        const unnamed = recipe({ steps: [step()] });
        const first = SqliteStore.open(dir);
        await first.create(named, false);
        await first.create(unnamed, false);
        await first.close();
        // what isogear wrote before version 3: no versions table, no version columns
        downgrade(dir, 2);
        await SqliteStore.open(dir).close();
        // the migration numbered and hashed the named recipe, once (a listing reads its row)
        const migrated = new Database(path.join(dir, 'isogear.db'));
        try {
          assert.deepEqual(migrated.prepare('SELECT id, version, source_sha256, source_bytes FROM interpreters ORDER BY seq').all(), [
            { id: named.interpreterId, version: 1, source_sha256: createHash('sha256').update(source).digest('hex'), source_bytes: Buffer.byteLength(source) },
            { id: unnamed.interpreterId, version: null, source_sha256: null, source_bytes: null },
          ]);
        } finally {
          migrated.close();
        }
        const store = SqliteStore.open(dir);
        try {
          assert.deepEqual(await store.loadAll(), [{ ...named, version: 1 }, unnamed]);
          assert.deepEqual(await store.versions('acme', 'svc'), [
            {
              version: 1,
              createdAtMs: named.createdAtMs,
              interpreterId: named.interpreterId,
              current: true,
              sourceSha256: createHash('sha256').update(source).digest('hex'),
              sourceBytes: Buffer.byteLength(source),
            },
          ]);
          const next = recipe({ name: 'svc', steps: [step()] });
          assert.deepEqual(await store.create(next, true), { replaced: named.interpreterId, version: 2 });
          const list = await store.versions('acme', 'svc');
          assert.deepEqual(
            list.map((v) => [v.version, v.current, v.interpreterId]),
            [
              [1, false, named.interpreterId],
              [2, true, next.interpreterId],
            ],
          );
          assert.equal(list[0].sourceSha256, createHash('sha256').update(source).digest('hex'));
          assert.deepEqual(await store.loadVersion('acme', 'svc', 1), { ...named, version: 1 });
        } finally {
          await store.close();
        }
        const check = new Database(path.join(dir, 'isogear.db'));
        try {
          assert.equal(check.pragma('user_version', { simple: true }), 3);
        } finally {
          check.close();
        }
      });

      it('refuses a file written by a newer schema version', async () => {
        const dir = tempDir();
        await SqliteStore.open(dir).close();
        const db = new Database(path.join(dir, 'isogear.db'));
        db.pragma('user_version = 99');
        db.close();
        assert.throws(
          () => SqliteStore.open(dir),
          (err: Error) => err instanceof StoreError && /newer isogear \(schema version 99; this one reads up to 3\)/.test(err.message) && err.message.includes(dir),
        );
      });

      it('reports a corrupt file as a StoreError naming it', () => {
        const dir = tempDir();
        writeFileSync(path.join(dir, 'isogear.db'), Buffer.alloc(8192, 'not a database '));
        assert.throws(
          () => SqliteStore.open(dir),
          (err: Error) => err instanceof StoreError && err.message.includes(path.join(dir, 'isogear.db')) && /not a database/.test(err.message),
        );
      });

      it('reports a directory it cannot create or write as a StoreError naming the path', () => {
        const base = tempDir();
        // Root writes anywhere, so a path through a regular file is the unwritable directory it cannot get past.
        writeFileSync(path.join(base, 'file'), '');
        const under = path.join(base, 'file', 'data');
        assert.throws(() => SqliteStore.open(under), (err: Error) => err instanceof StoreError && err.message.includes(under) && /ENOTDIR/.test(err.message));
        if (process.getuid?.() !== 0) {
          const readOnly = path.join(base, 'ro');
          SqliteStore.open(readOnly).close();
          rmSync(path.join(readOnly, 'isogear.db'));
          chmodSync(readOnly, 0o500);
          assert.throws(() => SqliteStore.open(readOnly), (err: Error) => err instanceof StoreError && err.message.includes(readOnly));
        }
      });
    });
  });

  describe('RedisStore', function () {
    let redis: TestRedis | undefined;
    const extra: TestRedis[] = [];
    const stores: RecipeStore[] = [];
    let prefixes = 0;
    before(async function () {
      requireRedis(this);
      redis = await startRedis();
    });
    afterEach(async () => {
      for (const s of stores.splice(0)) await s.close();
      for (const r of extra.splice(0)) await r.stop();
    });
    after(async () => {
      await redis?.stop();
    });

    const nextPrefix = (): string => `t${++prefixes}:`;
    /** A store on `url` (the suite's Redis by default), closed after the test. */
    const openStore = async (keyPrefix: string, url = redis!.url): Promise<RedisStore> => {
      const store = await RedisStore.open(url, { keyPrefix });
      stores.push(store);
      return store;
    };
    /** Records what follow() reports. */
    const follower = async (store: RedisStore): Promise<{ changed: string[]; replacedBy: Map<string, string>; resyncs: number }> => {
      const seen = { changed: [] as string[], replacedBy: new Map<string, string>(), resyncs: 0 };
      await store.follow(
        (id, by) => {
          seen.changed.push(id);
          if (by) seen.replacedBy.set(id, by);
        },
        () => seen.resyncs++,
      );
      return seen;
    };

    describeStore('conformance', async () => {
      // Every test its own key prefix on the one server: a reopen is a new client on the same keys.
      const keyPrefix = nextPrefix();
      return { open: (options) => RedisStore.open(redis!.url, { keyPrefix, maxVersions: options?.maxVersions }), cleanup: async () => undefined };
    });

    describe('on its own', () => {
      it('fails fast at open when Redis does not answer', async () => {
        const gone = await startRedis();
        await gone.stop();
        const started = Date.now();
        await rejectsWith(RedisStore.open(gone.url), StoreError, new RegExp(`redis ${gone.url} did not answer within \\d+ ms`));
        assert.ok(Date.now() - started < 6000, `open took ${Date.now() - started} ms`);
      });

      it('is shared, and keeps its keys under the prefix', async () => {
        const prefix = nextPrefix();
        const store = await openStore(prefix);
        assert.equal(store.shared, true);
        assert.match(store.description, new RegExp(`^redis ${redis!.url} \\(keys ${prefix}\\*\\)$`));
        await store.create(recipe({ name: 'n', steps: [step()], released: ['reg_1'] }), false);
        const raw = new Redis(redis!.url);
        try {
          const keys = await raw.keys('*');
          // meta, steps, released, index, names, seq, changes
          assert.equal(keys.filter((k) => k.startsWith(prefix)).length, 7, keys.join(' '));
        } finally {
          raw.disconnect();
        }
      });

      it("follow reports another replica's changes, including the removal a replaceName made", async function () {
        this.timeout(20_000);
        const prefix = nextPrefix();
        const [a, b] = [await openStore(prefix), await openStore(prefix)];
        const seen = await follower(a);
        const old = recipe({ name: 'svc' });
        await b.create(old, false);
        await waitFor('the create reported', () => seen.changed.includes(old.interpreterId), 3000);
        seen.changed.length = 0;
        const next = recipe({ name: 'svc' });
        assert.deepEqual(await b.create(next, true), { replaced: old.interpreterId, version: 2 });
        await b.append(next.interpreterId, step());
        await b.release(next.interpreterId, ['reg_1']);
        await b.remove(next.interpreterId);
        await waitFor('five changes reported', () => seen.changed.length >= 5, 3000);
        assert.deepEqual(seen.changed, [old.interpreterId, next.interpreterId, next.interpreterId, next.interpreterId, next.interpreterId]);
        assert.deepEqual([...seen.replacedBy], [[old.interpreterId, next.interpreterId]], 'the removal names its successor');
        // No-ops on a recipe that is gone report nothing.
        await b.append(next.interpreterId, step());
        await a.create(recipe(), false);
        await waitFor("a's own create reported", () => seen.changed.length === 6, 3000);
        assert.equal(seen.resyncs, 0);
        const closing = Date.now();
        await a.close();
        assert.ok(Date.now() - closing < 2500, `close took ${Date.now() - closing} ms`);
      });

      it('follow resyncs when the changes stream was trimmed past it', async () => {
        const prefix = nextPrefix();
        const store = await openStore(prefix);
        const seen = await follower(store);
        const raw = new Redis(redis!.url);
        try {
          // What MAXLEN trimming does to a follower that fell behind: an entry it never read.
          await raw.multi().incr(`${prefix}seq`).xadd(`${prefix}changes`, '*', 'id', 'itp_lost', 'n', '1').xtrim(`${prefix}changes`, 'MAXLEN', 0).exec();
        } finally {
          raw.disconnect();
        }
        const r = recipe();
        await store.create(r, false);
        await waitFor('resync', () => seen.resyncs === 1, 3000);
        await waitFor('the create reported', () => seen.changed.includes(r.interpreterId), 3000);
        assert.ok(!seen.changed.includes('itp_lost'));
      });

      it('follow resyncs after Redis restarts, then goes on reporting; commands while it is down fail in bounded time', async function () {
        this.timeout(30_000);
        const own = await startRedis();
        extra.push(own);
        const prefix = nextPrefix();
        const store = await openStore(prefix, own.url);
        const seen = await follower(store);
        await store.create(recipe(), false);
        await waitFor('the create reported', () => seen.changed.length === 1, 3000);

        await own.restart();
        await waitFor('resync after the restart', () => seen.resyncs >= 1, 10_000);
        // Its main connection came back too (the restarted Redis is empty: no persistence).
        const r = recipe();
        await eventually('a write after the restart', () => store.create(r, false), 5000);
        await waitFor('the create after the restart reported', () => seen.changed.includes(r.interpreterId), 5000);
        assert.equal(seen.resyncs, 1);

        await own.stop();
        const started = Date.now();
        await rejectsWith(store.append(r.interpreterId, step()), StoreError, /append failed/);
        await rejectsWith(store.loadAll(), StoreError, /loadAll failed/);
        assert.ok(Date.now() - started < 1000, `the failing commands took ${Date.now() - started} ms`);
        const closing = Date.now();
        await store.close();
        assert.ok(Date.now() - closing < 1000, `close with Redis gone took ${Date.now() - closing} ms`);
      });

      it('versions follow replicas: one replaces a name, the other lists its versions and loads the kept one; kept keys stay out of the index', async () => {
        const prefix = nextPrefix();
        const [a, b] = [await openStore(prefix), await openStore(prefix)];
        const v1 = recipe({ name: 'svc', steps: [step({ source: 'export default "one";' })], released: ['reg_1'], paused: ['reg_2'] });
        assert.deepEqual(await a.create(v1, false), { version: 1 });
        const v2 = recipe({ name: 'svc', steps: [step({ source: 'export default "two";' })] });
        assert.deepEqual(await b.create(v2, true), { replaced: v1.interpreterId, version: 2 });

        const list = await a.versions('acme', 'svc');
        assert.deepEqual(
          list.map((v) => [v.version, v.current, v.interpreterId]),
          [
            [1, false, v1.interpreterId],
            [2, true, v2.interpreterId],
          ],
        );
        assert.equal(list[0].sourceSha256, createHash('sha256').update('export default "one";').digest('hex'));
        assert.deepEqual(await a.loadVersion('acme', 'svc', 1), { ...v1, version: 1 });
        assert.deepEqual(ids(await a.loadAll()), [v2.interpreterId]);
        const raw = new Redis(redis!.url);
        try {
          // the kept recipe's keys were renamed under its name's version, out of the live ones
          assert.deepEqual(await raw.zrange(`${prefix}index`, '0', '-1'), [v2.interpreterId]);
          assert.equal(await raw.exists(`${prefix}i:${v1.interpreterId}`), 0);
          const kept = `${prefix}v:acme\nsvc:1`;
          assert.deepEqual(await raw.zrange(`${prefix}versions:acme\nsvc`, '0', '-1'), ['1']);
          assert.equal(await raw.exists(kept, `${kept}:steps`, `${kept}:released`, `${kept}:paused`), 4);
        } finally {
          raw.disconnect();
        }
      });

      it('two replicas racing create for one name: exactly one wins, the other gets NameTakenError', async () => {
        const prefix = nextPrefix();
        const [a, b] = [await openStore(prefix), await openStore(prefix)];
        for (let round = 0; round < 25; round++) {
          const name = `race${round}`;
          const [ra, rb] = [recipe({ name }), recipe({ name })];
          const results = await Promise.allSettled([a.create(ra, false), b.create(rb, false)]);
          const won = results.filter((x) => x.status === 'fulfilled');
          const lost = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
          assert.equal(won.length, 1, `round ${round}: ${results.map((x) => x.status).join(', ')}`);
          assert.ok(lost[0].reason instanceof NameTakenError, String(lost[0].reason));
          const winner = results[0].status === 'fulfilled' ? ra : rb;
          assert.equal((lost[0].reason as NameTakenError).holder, winner.interpreterId);
        }
        assert.equal((await a.loadAll()).length, 25);
      });
    });
  });
});
