import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { IllegalStateError } from '../core/errors';
import type { IsolationMode } from '../core/types';
import {
  DEFAULT_MAX_VERSIONS,
  NameTakenError,
  StoreError,
  versionSource,
  type InterpreterRecipe,
  type RecipeStep,
  type RecipeStore,
  type StoredVersion,
} from '../core/durability/RecipeStore';

/** The schema this code writes; PRAGMA user_version holds the one a file was written with. */
const SCHEMA_VERSION = 3;
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

/**
 * Version 3: versions of named interpreters. A live named recipe's version, the version whose
 * recipe it re-created (a rollback's) and what ListVersions shows of its source sit on its row
 * (NULL on unnamed ones, which have no versions). A named recipe that leaves the live set is kept whole, as JSON, in
 * `versions`: it outlives its interpreter's row, so it hangs off no foreign key. A rowid table, not
 * WITHOUT ROWID: a doc holds every source of the recipe and may run to megabytes.
 */
const SCHEMA_V3 = `
  ALTER TABLE interpreters ADD COLUMN version INTEGER;
  ALTER TABLE interpreters ADD COLUMN rolled_back_from INTEGER;
  -- of the first step's source; NULL while a named recipe has no step yet (its first appended one's is read then)
  ALTER TABLE interpreters ADD COLUMN source_sha256 TEXT;
  ALTER TABLE interpreters ADD COLUMN source_bytes INTEGER;
  CREATE TABLE versions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    interpreter_id TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    source_sha256 TEXT NOT NULL,
    source_bytes INTEGER NOT NULL,
    rolled_back_from INTEGER,
    doc TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version)
  );
`;

/** Version 3's data: the named recipes a file already holds become their names' version 1. */
function migrateV3(db: Database.Database): void {
  const named = db.prepare<[], { id: string }>("SELECT id FROM interpreters WHERE name <> ''").all();
  const first = db.prepare<[string], { doc: string }>('SELECT doc FROM steps WHERE interpreter_id = ? ORDER BY seq LIMIT 1');
  const set = db.prepare('UPDATE interpreters SET version = 1, source_sha256 = ?, source_bytes = ? WHERE id = ?');
  for (const { id } of named) {
    const doc = first.get(id)?.doc;
    if (doc === undefined) set.run(null, null, id);
    else {
      const source = versionSource({ steps: [JSON.parse(doc) as RecipeStep] });
      set.run(source.sourceSha256, source.sourceBytes, id);
    }
  }
}

interface InterpreterRow {
  id: string;
  tenant: string;
  name: string;
  mode: string;
  memory_mb: number;
  prefix: string;
  created_at_ms: number;
  version: number | null;
  rolled_back_from: number | null;
  source_sha256: string | null;
  source_bytes: number | null;
}
interface VersionRow {
  version: number;
  interpreter_id: string;
  created_at_ms: number;
  source_sha256: string;
  source_bytes: number;
  rolled_back_from: number | null;
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
    private readonly maxVersions: number,
  ) {
    this.description = `sqlite ${file}`;
  }

  /**
   * Creates `dataDir` (and parents) and `isogear.db` in it when missing, and migrates the schema.
   * `maxVersions`: how many versions a name keeps, the current one included (ISOGEAR_MAX_VERSIONS).
   */
  static open(dataDir: string, options: { maxVersions?: number } = {}): SqliteStore {
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
          if (version < 3) {
            handle.exec(SCHEMA_V3);
            migrateV3(handle);
          }
          if (version < SCHEMA_VERSION) handle.pragma(`user_version = ${SCHEMA_VERSION}`);
        })
        .immediate();
      return new SqliteStore(db, file, options.maxVersions ?? DEFAULT_MAX_VERSIONS);
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
    return this.run('load', () => this.db.transaction(() => this.recipeOf(interpreterId))());
  }

  async create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string; version?: number }> {
    return this.run('create', () =>
      this.db.transaction((): { replaced?: string; version?: number } => {
        // before the holder goes: a recipe replacing itself would otherwise pass for a new one
        if (this.db.prepare<[string], { id: string }>('SELECT id FROM interpreters WHERE id = ?').get(recipe.interpreterId)) {
          throw new Error(`interpreter ${recipe.interpreterId} is stored already`);
        }
        if (recipe.name === '') {
          this.insertRecipe(recipe, null);
          return {};
        }
        let replaced: string | undefined;
        const holder = this.db
          .prepare<[string, string], { id: string }>('SELECT id FROM interpreters WHERE tenant = ? AND name = ?')
          .get(recipe.tenant, recipe.name);
        if (holder) {
          if (!replaceName) throw new NameTakenError(recipe.tenant, recipe.name, holder.id);
          this.keep(holder.id);
          replaced = holder.id;
        }
        // the store numbers versions, whatever the recipe carried
        const version = this.newest(recipe.tenant, recipe.name) + 1;
        this.insertRecipe(recipe, version);
        this.trim(recipe.tenant, recipe.name);
        return replaced === undefined ? { version } : { replaced, version };
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
    this.run('remove', () =>
      this.db.transaction(() => {
        const row = this.db.prepare<[string], { tenant: string; name: string }>('SELECT tenant, name FROM interpreters WHERE id = ?').get(interpreterId);
        if (!row) return;
        if (row.name === '') this.db.prepare('DELETE FROM interpreters WHERE id = ?').run(interpreterId);
        else {
          this.keep(interpreterId);
          this.trim(row.tenant, row.name);
        }
      })(),
    );
  }

  async versions(tenant: string, name: string): Promise<StoredVersion[]> {
    // unnamed recipes have no versions (and '' would match every one of them)
    if (name === '') return [];
    return this.run('versions', () =>
      this.db.transaction(() => {
        const kept = this.db
          .prepare<[string, string], VersionRow>(
            'SELECT version, interpreter_id, created_at_ms, source_sha256, source_bytes, rolled_back_from FROM versions WHERE tenant = ? AND name = ? ORDER BY version',
          )
          .all(tenant, name)
          .map((v) => listed(v, false));
        const holder = this.db.prepare<[string, string], InterpreterRow>('SELECT * FROM interpreters WHERE tenant = ? AND name = ?').get(tenant, name);
        if (holder) {
          const source = this.sourceOf(holder);
          const row = { version: holder.version ?? 1, interpreter_id: holder.id, created_at_ms: holder.created_at_ms, rolled_back_from: holder.rolled_back_from };
          kept.push(listed({ ...row, source_sha256: source.sourceSha256, source_bytes: source.sourceBytes }, true));
        }
        return kept;
      })(),
    );
  }

  async loadVersion(tenant: string, name: string, version: number): Promise<InterpreterRecipe | undefined> {
    if (name === '') return undefined;
    return this.run('loadVersion', () =>
      this.db.transaction(() => {
        const holder = this.db
          .prepare<[string, string, number], { id: string }>('SELECT id FROM interpreters WHERE tenant = ? AND name = ? AND COALESCE(version, 1) = ?')
          .get(tenant, name, version);
        if (holder) return this.recipeOf(holder.id);
        const kept = this.db.prepare<[string, string, number], { doc: string }>('SELECT doc FROM versions WHERE tenant = ? AND name = ? AND version = ?').get(tenant, name, version);
        return kept ? (JSON.parse(kept.doc) as InterpreterRecipe) : undefined;
      })(),
    );
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

  /** A new live recipe's rows; `version` is null for an unnamed one. */
  private insertRecipe(recipe: InterpreterRecipe, version: number | null): void {
    // hashed once here, not at each listing; a recipe with no step yet has no source to hash (sourceOf)
    const source = version !== null && recipe.steps.length > 0 ? versionSource(recipe) : undefined;
    this.db
      .prepare(
        `INSERT INTO interpreters (id, tenant, name, mode, memory_mb, prefix, created_at_ms, version, rolled_back_from, source_sha256, source_bytes)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        recipe.interpreterId,
        recipe.tenant,
        recipe.name,
        recipe.mode,
        recipe.memoryMb,
        recipe.registrationPrefix,
        recipe.createdAtMs,
        version,
        recipe.rolledBackFrom ?? null,
        source?.sourceSha256 ?? null,
        source?.sourceBytes ?? null,
      );
    for (const step of recipe.steps) this.insertStep(recipe.interpreterId, step);
    this.insertReleased(recipe.interpreterId, recipe.released);
    this.writePaused(recipe.interpreterId, recipe.paused, true);
  }

  /** Moves a live named recipe into its name's kept versions, as it stands (released and paused ids included). */
  private keep(interpreterId: string): void {
    const row = this.db.prepare<[string], InterpreterRow>('SELECT * FROM interpreters WHERE id = ?').get(interpreterId);
    const recipe = this.recipeOf(interpreterId);
    if (!row || !recipe) return;
    const version = row.version ?? 1;
    const source = this.sourceOf(row);
    this.db
      .prepare(
        `INSERT INTO versions (tenant, name, version, interpreter_id, created_at_ms, source_sha256, source_bytes, rolled_back_from, doc)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(row.tenant, row.name, version, row.id, row.created_at_ms, source.sourceSha256, source.sourceBytes, row.rolled_back_from, JSON.stringify({ ...recipe, version }));
    this.db.prepare('DELETE FROM interpreters WHERE id = ?').run(interpreterId);
  }

  /** The highest version (tenant, name) has, kept or current (0: none). */
  private newest(tenant: string, name: string): number {
    const row = this.db
      .prepare<{ tenant: string; name: string }, { newest: number | null }>(
        `SELECT MAX(v) AS newest FROM (
           SELECT MAX(version) AS v FROM versions WHERE tenant = @tenant AND name = @name
           UNION ALL SELECT COALESCE(version, 1) FROM interpreters WHERE tenant = @tenant AND name = @name
         )`,
      )
      .get({ tenant, name });
    return row?.newest ?? 0;
  }

  /** Drops the kept versions of (tenant, name) older than its newest `maxVersions` (the current one counts). */
  private trim(tenant: string, name: string): void {
    this.db.prepare('DELETE FROM versions WHERE tenant = ? AND name = ? AND version <= ?').run(tenant, name, this.newest(tenant, name) - this.maxVersions);
  }

  /** What a live named recipe's version lists of its source: its row's, or its first step's while the row has none. */
  private sourceOf(row: InterpreterRow): { sourceSha256: string; sourceBytes: number } {
    if (row.source_sha256 !== null && row.source_bytes !== null) return { sourceSha256: row.source_sha256, sourceBytes: row.source_bytes };
    const first = this.db.prepare<[string], { doc: string }>('SELECT doc FROM steps WHERE interpreter_id = ? ORDER BY seq LIMIT 1').get(row.id);
    return versionSource({ steps: first ? [JSON.parse(first.doc) as RecipeStep] : [] });
  }

  /** One live recipe, or undefined; called inside a transaction. */
  private recipeOf(interpreterId: string): InterpreterRecipe | undefined {
    return this.assemble(
      this.db.prepare<[string], InterpreterRow>('SELECT * FROM interpreters WHERE id = ?').all(interpreterId),
      this.db.prepare<[string], StepRow>('SELECT interpreter_id, doc FROM steps WHERE interpreter_id = ? ORDER BY seq').all(interpreterId),
      this.db.prepare<[string], ReleasedRow>('SELECT interpreter_id, registration_id FROM released WHERE interpreter_id = ? ORDER BY registration_id').all(interpreterId),
      this.db.prepare<[string], ReleasedRow>('SELECT interpreter_id, registration_id FROM paused WHERE interpreter_id = ? ORDER BY registration_id').all(interpreterId),
    )[0];
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
        // a named recipe has a version (one stored before versions existed: 1); an unnamed one none
        ...(r.name !== '' ? { version: r.version ?? 1 } : {}),
        ...(r.rolled_back_from !== null ? { rolledBackFrom: r.rolled_back_from } : {}),
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

/** A version as ListVersions shows it. */
function listed(v: VersionRow, current: boolean): StoredVersion {
  return {
    version: v.version,
    createdAtMs: v.created_at_ms,
    interpreterId: v.interpreter_id,
    current,
    sourceSha256: v.source_sha256,
    sourceBytes: v.source_bytes,
    ...(v.rolled_back_from !== null ? { rolledBackFrom: v.rolled_back_from } : {}),
  };
}
