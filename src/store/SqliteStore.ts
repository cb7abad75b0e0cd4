import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { IllegalStateError } from '../core/errors';
import type { IsolationMode } from '../core/types';
import { NameTakenError, StoreError, type InterpreterRecipe, type RecipeStep, type RecipeStore } from '../core/durability/RecipeStore';

/** The schema this code writes; PRAGMA user_version holds the one a file was written with. */
const SCHEMA_VERSION = 2;
/** How long open waits for a server that is letting go of the file (a restart on the same volume). */
const BUSY_TIMEOUT_MS = 1000;
const FILE_NAME = 'isogear.db';

/**
 * Steps and released ids hang off the interpreter by foreign key with ON DELETE CASCADE, so a
 * removal is one DELETE. `seq` columns are rowids: each new row's is above every row's still
 * there, so ordering by them is creation (append) order.
 */
const SCHEMA_V1 = `
  CREATE TABLE interpreters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    memory_mb INTEGER NOT NULL,
    prefix TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
  );
  -- The name rule, kept by the database: one holder per (tenant, name), unnamed ones exempt.
  CREATE UNIQUE INDEX interpreters_name ON interpreters (tenant, name) WHERE name <> '';
  CREATE TABLE steps (
    seq INTEGER PRIMARY KEY,
    interpreter_id TEXT NOT NULL REFERENCES interpreters (id) ON DELETE CASCADE,
    doc TEXT NOT NULL
  );
  CREATE INDEX steps_interpreter ON steps (interpreter_id, seq);
  CREATE TABLE released (
    interpreter_id TEXT NOT NULL REFERENCES interpreters (id) ON DELETE CASCADE,
    registration_id TEXT NOT NULL,
    PRIMARY KEY (interpreter_id, registration_id)
  ) WITHOUT ROWID;
`;

/** Version 2: paused registrations (PauseRegistrations), by the same foreign key. */
const SCHEMA_V2 = `
  CREATE TABLE paused (
    interpreter_id TEXT NOT NULL REFERENCES interpreters (id) ON DELETE CASCADE,
    registration_id TEXT NOT NULL,
    PRIMARY KEY (interpreter_id, registration_id)
  ) WITHOUT ROWID;
`;

interface InterpreterRow {
  id: string;
  tenant: string;
  name: string;
  mode: string;
  memory_mb: number;
  prefix: string;
  created_at_ms: number;
}
interface StepRow {
  interpreter_id: string;
  doc: string;
}
interface ReleasedRow {
  interpreter_id: string;
  registration_id: string;
}

const isSqliteError = (err: unknown): err is Error & { code: string } =>
  err instanceof Error && typeof (err as { code?: unknown }).code === 'string';

/**
 * The embedded store: one SQLite file in the data directory, for one server. A change resolves
 * once its transaction committed with synchronous=FULL, so it survives SIGKILL and power loss.
 * The file is held with an exclusive lock for as long as the store is open, so a second server
 * pointed at the same directory fails at open instead of writing beside the first.
 */
export class SqliteStore implements RecipeStore {
  readonly shared = false;
  readonly description: string;
  private closed = false;

  private constructor(
    private readonly db: Database.Database,
    private readonly file: string,
  ) {
    this.description = `sqlite ${file}`;
  }

  /** Creates `dataDir` (and parents) and `isogear.db` in it when missing, and migrates the schema. */
  static open(dataDir: string): SqliteStore {
    const file = path.resolve(dataDir, FILE_NAME);
    let db: Database.Database | undefined;
    try {
      mkdirSync(path.dirname(file), { recursive: true });
      db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
      // Before WAL is entered: in exclusive mode SQLite keeps the WAL index in memory (no -shm
      // file) and never lets go of the lock it takes, so a second opener gets SQLITE_BUSY.
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      const handle = db;
      // A write transaction at open takes the exclusive lock now, not at the first change.
      handle
        .transaction(() => {
          const version = handle.pragma('user_version', { simple: true }) as number;
          if (version > SCHEMA_VERSION) {
            throw new StoreError(
              `sqlite ${file} was written by a newer isogear (schema version ${version}; this one reads up to ${SCHEMA_VERSION}): upgrade isogear or point it at another data directory`,
            );
          }
          // each version's additions in turn: a file of an older isogear is brought up to date
          if (version < 1) handle.exec(SCHEMA_V1);
          if (version < 2) handle.exec(SCHEMA_V2);
          if (version < SCHEMA_VERSION) handle.pragma(`user_version = ${SCHEMA_VERSION}`);
        })
        .immediate();
      return new SqliteStore(db, file);
    } catch (err) {
      db?.close();
      if (err instanceof StoreError) throw err;
      if (isSqliteError(err) && err.code.startsWith('SQLITE_BUSY')) {
        throw new StoreError(`sqlite ${file} is in use by another isogear process (SQLite holds it locked); one data directory serves one server`, { cause: err });
      }
      throw new StoreError(`sqlite ${file}: cannot open: ${(err as Error).message}`, { cause: err });
    }
  }

  async loadAll(): Promise<InterpreterRecipe[]> {
    return this.run('loadAll', () =>
      this.db.transaction(() =>
        this.assemble(
          this.db.prepare<[], InterpreterRow>('SELECT * FROM interpreters ORDER BY seq').all(),
          this.db.prepare<[], StepRow>('SELECT interpreter_id, doc FROM steps ORDER BY seq').all(),
          this.db.prepare<[], ReleasedRow>('SELECT interpreter_id, registration_id FROM released ORDER BY interpreter_id, registration_id').all(),
          this.db.prepare<[], ReleasedRow>('SELECT interpreter_id, registration_id FROM paused ORDER BY interpreter_id, registration_id').all(),
        ),
      )(),
    );
  }

  async load(interpreterId: string): Promise<InterpreterRecipe | undefined> {
    return this.run('load', () =>
      this.db.transaction(() =>
        this.assemble(
          this.db.prepare<[string], InterpreterRow>('SELECT * FROM interpreters WHERE id = ?').all(interpreterId),
          this.db.prepare<[string], StepRow>('SELECT interpreter_id, doc FROM steps WHERE interpreter_id = ? ORDER BY seq').all(interpreterId),
          this.db
            .prepare<[string], ReleasedRow>('SELECT interpreter_id, registration_id FROM released WHERE interpreter_id = ? ORDER BY registration_id')
            .all(interpreterId),
          this.db.prepare<[string], ReleasedRow>('SELECT interpreter_id, registration_id FROM paused WHERE interpreter_id = ? ORDER BY registration_id').all(interpreterId),
        ),
      )()[0],
    );
  }

  async create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string }> {
    return this.run('create', () =>
      this.db.transaction((): { replaced?: string } => {
        let replaced: string | undefined;
        if (recipe.name !== '') {
          const holder = this.db
            .prepare<[string, string], { id: string }>('SELECT id FROM interpreters WHERE tenant = ? AND name = ?')
            .get(recipe.tenant, recipe.name);
          if (holder) {
            if (!replaceName) throw new NameTakenError(recipe.tenant, recipe.name, holder.id);
            this.db.prepare('DELETE FROM interpreters WHERE id = ?').run(holder.id);
            replaced = holder.id;
          }
        }
        this.db
          .prepare('INSERT INTO interpreters (id, tenant, name, mode, memory_mb, prefix, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)')
          .run(recipe.interpreterId, recipe.tenant, recipe.name, recipe.mode, recipe.memoryMb, recipe.registrationPrefix, recipe.createdAtMs);
        for (const step of recipe.steps) this.insertStep(recipe.interpreterId, step);
        this.insertReleased(recipe.interpreterId, recipe.released);
        this.writePaused(recipe.interpreterId, recipe.paused, true);
        return replaced === undefined ? {} : { replaced };
      })(),
    );
  }

  async append(interpreterId: string, step: RecipeStep): Promise<void> {
    this.run('append', () => this.db.transaction(() => this.insertStep(interpreterId, step))());
  }

  async release(interpreterId: string, registrationIds: string[]): Promise<void> {
    this.run('release', () => this.db.transaction(() => this.insertReleased(interpreterId, registrationIds))());
  }

  async setPaused(interpreterId: string, registrationIds: string[], paused: boolean): Promise<void> {
    this.run('setPaused', () => this.db.transaction(() => this.writePaused(interpreterId, registrationIds, paused))());
  }

  async remove(interpreterId: string): Promise<void> {
    this.run('remove', () => this.db.prepare('DELETE FROM interpreters WHERE id = ?').run(interpreterId));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      this.db.close();
    } catch (err) {
      throw new StoreError(`sqlite ${this.file}: close failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Inserts nothing when the interpreter is not stored: a change may race its removal. */
  private insertStep(interpreterId: string, step: RecipeStep): void {
    this.db.prepare('INSERT INTO steps (interpreter_id, doc) SELECT id, ? FROM interpreters WHERE id = ?').run(JSON.stringify(step), interpreterId);
  }

  /** A released registration is no longer paused: it is gone. */
  private insertReleased(interpreterId: string, registrationIds: string[]): void {
    const insert = this.db.prepare('INSERT OR IGNORE INTO released (interpreter_id, registration_id) SELECT id, ? FROM interpreters WHERE id = ?');
    for (const registrationId of registrationIds) insert.run(registrationId, interpreterId);
    this.writePaused(interpreterId, registrationIds, false);
  }

  /** Inserts nothing when the interpreter is not stored, as insertStep. */
  private writePaused(interpreterId: string, registrationIds: string[], paused: boolean): void {
    const change = paused
      ? this.db.prepare('INSERT OR IGNORE INTO paused (interpreter_id, registration_id) SELECT id, ? FROM interpreters WHERE id = ?')
      : this.db.prepare('DELETE FROM paused WHERE registration_id = ? AND interpreter_id = ?');
    for (const registrationId of registrationIds) change.run(registrationId, interpreterId);
  }

  /** Rows to recipes, keeping the interpreters' order. */
  private assemble(rows: InterpreterRow[], steps: StepRow[], released: ReleasedRow[], paused: ReleasedRow[]): InterpreterRecipe[] {
    const byId = new Map<string, InterpreterRecipe>();
    for (const r of rows) {
      byId.set(r.id, {
        interpreterId: r.id,
        tenant: r.tenant,
        name: r.name,
        mode: r.mode as IsolationMode,
        memoryMb: r.memory_mb,
        registrationPrefix: r.prefix,
        createdAtMs: r.created_at_ms,
        steps: [],
        released: [],
        paused: [],
      });
    }
    for (const s of steps) byId.get(s.interpreter_id)?.steps.push(JSON.parse(s.doc) as RecipeStep);
    for (const r of released) byId.get(r.interpreter_id)?.released.push(r.registration_id);
    for (const r of paused) byId.get(r.interpreter_id)?.paused.push(r.registration_id);
    return [...byId.values()];
  }

  /** Runs one store operation; what the database throws becomes a StoreError naming the file. */
  private run<T>(operation: string, fn: () => T): T {
    if (this.closed) throw new IllegalStateError(`${this.description}: ${operation} after close`);
    try {
      return fn();
    } catch (err) {
      if (err instanceof NameTakenError || err instanceof StoreError) throw err;
      throw new StoreError(`sqlite ${this.file}: ${operation} failed: ${(err as Error).message}`, { cause: err });
    }
  }
}
