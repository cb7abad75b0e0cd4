import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { IllegalStateError } from '../core/errors';
import type { WireError, WorkerData } from './sqliteWorker';
import { NameTakenError, StoreError, type InterpreterRecipe, type RecipeStep, type RecipeStore, type StoredVersion } from '../core/durability/RecipeStore';

/** The worker entry beside this file: .ts under tsx (tests), .js in dist. */
const WORKER_FILE = path.join(__dirname, `sqliteWorker${path.extname(__filename)}`);

function unwire(e: WireError): Error {
  switch (e.name) {
    case 'NameTakenError':
      return new NameTakenError(e.tenant ?? '', e.interpreterName ?? '', e.holder ?? '');
    case 'IllegalStateError':
      return new IllegalStateError(e.message);
    default:
      return new StoreError(e.message);
  }
}

/**
 * The embedded store (SqliteStore) on a worker thread of its own: better-sqlite3 is synchronous,
 * and a commit with synchronous=FULL waits for an fsync (about 0.5 ms here, several under I/O
 * load); on the server's thread that wait would stall every call in flight. Calls are answered in
 * the order they were made, as SQLite runs them one at a time.
 */
export class SqliteWorkerStore implements RecipeStore {
  readonly shared = false;
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly description: string,
  ) {
    worker.on('message', (m: { seq: number; value?: unknown; error?: WireError }) => {
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      if (m.error) p.reject(unwire(m.error));
      else p.resolve(m.value);
    });
    const fail = (why: string): void => {
      this.dead ??= new StoreError(`${description}: ${why}`);
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
    worker.on('error', (err) => fail(`its worker thread failed: ${err.message}`));
    worker.on('exit', () => fail('its worker thread has ended'));
  }

  /**
   * Opens (creates) `isogear.db` in `dataDir` on a new worker thread; rejects with StoreError as
   * SqliteStore.open throws. `maxVersions` as SqliteStore.open takes it.
   */
  static open(dataDir: string, options: { maxVersions?: number } = {}): Promise<SqliteWorkerStore> {
    const workerData: WorkerData = { dataDir, maxVersions: options.maxVersions };
    // Under tsx (tests, `--import tsx`), a worker does not inherit its loader: it registers it itself.
    const worker = WORKER_FILE.endsWith('.ts')
      ? new Worker(`require('tsx/cjs'); require(${JSON.stringify(WORKER_FILE)});`, { eval: true, workerData })
      : new Worker(WORKER_FILE, { workerData });
    return new Promise((resolve, reject) => {
      const onExit = (): void => reject(new StoreError(`sqlite ${path.resolve(dataDir)}: the store's worker thread ended while opening it`));
      worker.once('error', (err) => reject(new StoreError(`sqlite ${path.resolve(dataDir)}: the store's worker thread failed: ${err.message}`)));
      worker.once('exit', onExit);
      worker.once('message', (m: { ready?: string; failed?: WireError }) => {
        worker.off('exit', onExit);
        if (m.ready !== undefined) resolve(new SqliteWorkerStore(worker, m.ready));
        else {
          void worker.terminate();
          reject(unwire(m.failed ?? { name: 'StoreError', message: 'the store did not open' }));
        }
      });
    });
  }

  private call<T>(method: string, ...args: unknown[]): Promise<T> {
    if (this.closing && method !== 'close') return Promise.reject(new IllegalStateError(`${this.description}: used after close`));
    if (this.dead) return Promise.reject(this.dead);
    const seq = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(seq, { resolve: resolve as (v: unknown) => void, reject });
      this.worker.postMessage({ seq, method, args });
    });
  }

  loadAll(): Promise<InterpreterRecipe[]> {
    return this.call('loadAll');
  }

  load(interpreterId: string): Promise<InterpreterRecipe | undefined> {
    return this.call('load', interpreterId);
  }

  create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string; version?: number }> {
    return this.call('create', recipe, replaceName);
  }

  versions(tenant: string, name: string): Promise<StoredVersion[]> {
    return this.call('versions', tenant, name);
  }

  loadVersion(tenant: string, name: string, version: number): Promise<InterpreterRecipe | undefined> {
    return this.call('loadVersion', tenant, name, version);
  }

  append(interpreterId: string, step: RecipeStep): Promise<void> {
    return this.call('append', interpreterId, step);
  }

  release(interpreterId: string, registrationIds: string[]): Promise<void> {
    return this.call('release', interpreterId, registrationIds);
  }

  setPaused(interpreterId: string, registrationIds: string[], paused: boolean): Promise<void> {
    return this.call('setPaused', interpreterId, registrationIds, paused);
  }

  remove(interpreterId: string): Promise<void> {
    return this.call('remove', interpreterId);
  }

  /** Closes the database (every change answered before is on disk) and ends the thread. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (!this.dead) await this.call('close').catch(() => undefined);
      await this.worker.terminate();
    })();
    return this.closing;
  }
}
