import { createHash } from 'node:crypto';
import type { RegistrationSpec } from '../Registration';
import type { IsolationMode, VersionInfo } from '../types';

/**
 * The recipe-store contract: what the core asks of a place that keeps recipes. The core owns it;
 * the adapters in src/store implement it (store → core, never the other way round).
 *
 * What is durable about an interpreter: the recipe that rebuilds it. Its JavaScript state (globals,
 * closures, counters) is not stored; replaying the recipe in a fresh interpreter rebuilds what the
 * steps build, and the registrations get the ids they had.
 */

/**
 * One registration a step made, in the order its gears.register, gears.schedule and
 * gears.consume calls came. A recipe stored before schedules existed has no `kind`: a trigger.
 */
export type StoredRegistration = RegistrationSpec;

/** What a recipe keeps of a registration: its kind and source, and only the fields that kind has. */
export function storedSpec(r: RegistrationSpec): StoredRegistration {
  switch (r.kind ?? 'trigger') {
    case 'schedule':
      return { id: r.id, kind: 'schedule', trigger: '', description: r.description, cron: r.cron ?? '', timezone: r.timezone ?? '' };
    case 'stream':
      return { id: r.id, kind: 'stream', trigger: '', description: r.description, stream: r.stream ?? '', group: r.group ?? '' };
    default:
      // (no kind: a trigger's stored form stays what it was, readable by an older server)
      return { id: r.id, trigger: r.trigger, description: r.description };
  }
}

/** One successful load into the interpreter, replayed in order on restore. */
export interface RecipeStep {
  /** Unique per step (`stp_…`): replicas tell the steps they ran from the ones they still must. */
  id: string;
  /**
   * `execute`: an Execute (creating or attached) ran `source` with `argsJson`; `register`: a
   * Register loaded `source` and bound its default export to `trigger`; `trigger`: a Trigger ran
   * handler `handlerId` with `payloadJson`, and the handler called gears.register.
   */
  kind: 'execute' | 'register' | 'trigger';
  /** execute, register: the main module and the modules it imports. */
  source?: string;
  modules?: Record<string, string>;
  /** execute, register: 'typescript' when the sources are TypeScript (absent: JavaScript). */
  language?: 'typescript';
  /** execute: the args JSON ('' for none). */
  argsJson?: string;
  /** register: the trigger bound; trigger: the trigger fired. */
  trigger?: string;
  /** register: the description. */
  description?: string;
  /** trigger: the registration whose run registered (a trigger's, a schedule's or a consumer's). */
  handlerId?: string;
  payloadJson?: string;
  /** trigger: what the handler's event held besides its ids, as JSON, when it was not a Trigger's ({scheduledAt}, {stream, entryId}). */
  eventJson?: string;
  /** The run's time limit, kept for the replay. */
  timeoutMs: number;
  /** What the run registered; the replay must register the same triggers, and gets these ids. */
  registrations: StoredRegistration[];
}

export interface InterpreterRecipe {
  interpreterId: string;
  tenant: string;
  /** '' when unnamed. A (tenant, name) pair is held by at most one recipe. */
  name: string;
  mode: IsolationMode;
  /** The heap limit of its dedicated isolate (mode isolate). */
  memoryMb: number;
  /** The prefix of the registration ids it mints. */
  registrationPrefix: string;
  createdAtMs: number;
  steps: RecipeStep[];
  /** Registrations released since their step ran: the replay makes them, then releases them. */
  released: string[];
  /** Registrations paused now (PauseRegistrations): the replay makes them, then pauses them. */
  paused: string[];
  /**
   * A named recipe's version: 1 for the first recipe stored with its (tenant, name), +1 for each
   * after. The store gives it at `create` (whatever the recipe carried) and it never changes.
   * Absent on an unnamed recipe, and on one stored before versions existed (read as 1).
   */
  version?: number;
  /** A rollback's recipe: the version whose recipe it re-created. */
  rolledBackFrom?: number;
}

/** One version of a named interpreter (see VersionInfo), as the store keeps it. */
export type StoredVersion = VersionInfo;

/** What a version lists of its recipe's source: the first step's (the creating request's). */
export function versionSource(recipe: Pick<InterpreterRecipe, 'steps'>): { sourceSha256: string; sourceBytes: number } {
  const source = recipe.steps[0]?.source ?? '';
  return { sourceSha256: createHash('sha256').update(source, 'utf8').digest('hex'), sourceBytes: Buffer.byteLength(source, 'utf8') };
}

/** How many versions a name keeps when the store is not told (ISOGEAR_MAX_VERSIONS). */
export const DEFAULT_MAX_VERSIONS = 20;

/** `create` found the name held by another recipe and was not asked to replace it. */
export class NameTakenError extends Error {
  constructor(
    readonly tenant: string,
    readonly interpreterName: string,
    readonly holder: string,
  ) {
    super(`an interpreter named "${interpreterName}" already exists (${holder})`);
    this.name = 'NameTakenError';
  }
}

/** The store could not be read or written; the message says which store and why. */
export class StoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
  }
}

/**
 * Where recipes are kept. Every method resolves only once the change is durable (an embedded
 * store: committed and synced; a shared one: acknowledged by the server), and each change is
 * atomic. Methods on an interpreter that is not stored are no-ops, never errors: a release may
 * race a removal.
 */
export interface RecipeStore {
  /** For logs: which store, where. */
  readonly description: string;
  /** True when several servers share it (and `follow` reports the others' changes). */
  readonly shared: boolean;
  /** Every stored recipe, oldest first. */
  loadAll(): Promise<InterpreterRecipe[]>;
  /** One recipe, or undefined when it is not stored. */
  load(interpreterId: string): Promise<InterpreterRecipe | undefined>;
  /**
   * Stores a new recipe. When it is named, the name must be free, or (with `replaceName`) the
   * recipe that holds it is removed in the same step; resolves with that recipe's id. Rejects
   * with NameTakenError when the name is held and `replaceName` is false.
   *
   * Versions: a named recipe gets the name's next version (1 + the highest it has, kept or
   * current; 1 for a new name) and resolves with it. A named recipe that leaves the store (the
   * holder replaced here, or `remove`) is kept in its name's history, as it stood (released and
   * paused ids included), in the same step. Each change keeps the newest `maxVersions` versions
   * of the name (the current one counts) and drops older kept ones. Unnamed recipes have none.
   */
  create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string; version?: number }>;
  /** The versions of (tenant, name), oldest first; empty for a name it never stored. */
  versions(tenant: string, name: string): Promise<StoredVersion[]>;
  /** The recipe of one version (kept or current), with its `version`; undefined when the name has no such version. */
  loadVersion(tenant: string, name: string, version: number): Promise<InterpreterRecipe | undefined>;
  /** Adds a step at the end of an interpreter's recipe. */
  append(interpreterId: string, step: RecipeStep): Promise<void>;
  /** Marks registrations of an interpreter released. */
  release(interpreterId: string, registrationIds: string[]): Promise<void>;
  /** Marks registrations of an interpreter paused (`paused` true) or running again. */
  setPaused(interpreterId: string, registrationIds: string[], paused: boolean): Promise<void>;
  /** Removes an interpreter's recipe (its last registration went); a named one is kept as a version (see create). */
  remove(interpreterId: string): Promise<void>;
  /**
   * Shared stores: reports, from now on, the id of every interpreter whose recipe changed
   * (created, appended, released, removed), by this server or another, within a bounded delay;
   * for a recipe an upgrade removed, `replacedBy` names the recipe that took its name. Call it
   * before `loadAll`: no change made in between is missed.
   * `onResync` is called when changes may have been missed (the feed was trimmed past us, the
   * connection dropped): every recipe must be compared again.
   */
  follow?(onChange: (interpreterId: string, replacedBy?: string) => void, onResync: () => void): Promise<void>;
  close(): Promise<void>;
}
