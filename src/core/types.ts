/**
 * The core's contracts: what a caller of the isolate manager passes in and gets back. Plain
 * data, no gRPC or proto types, so the core is usable as a library.
 */

export type IsolationMode = 'shared' | 'isolate';
export type InterpreterState = 'ready' | 'draining' | 'disposed' | 'failed';
export type Outcome = 'succeeded' | 'failed' | 'timed_out' | 'memory_exceeded' | 'aborted';
/** Who holds a reference on an interpreter. */
export type OwnerKind = 'registration' | 'execution';
export type IsolateKind = 'dedicated' | 'shared';
export type LogLevel = 'log' | 'info' | 'warn' | 'error' | 'debug';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Per-request limits; `undefined` or 0 means the server default. */
export interface Limits {
  timeoutMs?: number;
  memoryLimitMb?: number;
}

export interface ScriptError {
  name: string;
  message: string;
  stack: string;
}

export interface LogEntry {
  level: LogLevel;
  message: string;
}

export interface InterpreterInfo {
  id: string;
  name: string;
  mode: IsolationMode;
  state: InterpreterState;
  references: number;
  registrationReferences: number;
  executionReferences: number;
  createdAt: Date;
  heapUsedBytes: number;
  cpuTimeMs: number;
  failureReason: string;
}

export interface RegistrationStats {
  runs: number;
  failures: number;
  lastError?: ScriptError;
  totalTimeMs: number;
  lastRunAt?: Date;
  /** schedule: ticks skipped because the previous run was still going. */
  skippedTicks?: number;
  /** schedule: when it fires next. */
  nextRunAt?: Date;
  /** stream: entries delivered to its group and not acknowledged yet. */
  pendingEntries?: number;
  /** stream: entries its group has not read yet. */
  lag?: number;
  /** stream: the last entry this server's consumer handled. */
  lastEntryId?: string;
  /** stream: entries given up as dead letters. */
  deadLetters?: number;
}

/** What runs a registration's handler: Trigger (gears.register), a cron schedule, or a Redis stream. */
export type RegistrationKind = 'trigger' | 'schedule' | 'stream';

export interface RegistrationInfo {
  id: string;
  kind: RegistrationKind;
  /** The trigger bound; '' for a schedule or a consumer. */
  trigger: string;
  /** schedule: the cron expression and its time zone ('' for UTC); '' for others. */
  schedule: string;
  timezone: string;
  /** stream: the Redis stream and its consumer group; '' for others. */
  stream: string;
  group: string;
  interpreterId: string;
  description: string;
  createdAt: Date;
  stats: RegistrationStats;
  broken: boolean;
  /** Paused: Trigger skips it (PauseRegistrations). */
  paused: boolean;
}

/** Every request acts for one tenant (DEFAULT_TENANT when omitted): it sees only what that tenant created. */
export interface Tenanted {
  tenant?: string;
}

/** What a request's source and modules are written in (JavaScript unless it says otherwise). */
export type Language = 'javascript' | 'typescript';

export interface ExecuteSpec extends Tenanted {
  source: string;
  /** TypeScript: the source and every module are stripped of their types before they run. */
  language?: Language;
  /** `undefined`: the default export is called with `undefined`. */
  args?: JsonValue;
  mode?: IsolationMode;
  limits?: Limits;
  modules?: Record<string, string>;
  interpreterId?: string;
  name?: string;
  replace?: boolean;
}

/** What one run produced, for both Execute and each handler run of a Trigger. */
export interface RunReport {
  executionId: string;
  interpreterId: string;
  outcome: Outcome;
  /** JSON result; `null` unless the outcome is `succeeded`. */
  result: JsonValue;
  error?: ScriptError;
  logs: LogEntry[];
  logsTruncated: boolean;
  wallTimeMs: number;
  cpuTimeMs: number;
  /** Bytes of the result as JSON (0 when there is none): what it adds to a response. */
  resultBytes?: number;
}

export interface ExecuteResult extends RunReport {
  registrations: RegistrationInfo[];
  /** The interpreter after the run; unset for a run cancelled before its interpreter existed. */
  interpreter?: InterpreterInfo;
}

/**
 * One version of a named interpreter, as ListVersions shows it. The current version is the
 * stored recipe that holds the name now; the others are kept recipes that held it before (or
 * held it last and were removed when their registrations went).
 */
export interface VersionInfo {
  version: number;
  /** When its interpreter was created (the recipe's createdAtMs). */
  createdAtMs: number;
  /** The interpreter that is, or was, this version. */
  interpreterId: string;
  current: boolean;
  /** Of its first step's source (the request that created it): hex SHA-256, and its length in UTF-8 bytes. */
  sourceSha256: string;
  sourceBytes: number;
  /** A rollback's version: the version whose recipe it re-created. */
  rolledBackFrom?: number;
}

export interface RollbackSpec extends Tenanted {
  name: string;
  version: number;
}

export interface RegisterSpec extends Tenanted {
  trigger: string;
  source: string;
  language?: Language;
  mode?: IsolationMode;
  limits?: Limits;
  modules?: Record<string, string>;
  interpreterId?: string;
  description?: string;
}

export interface RegisterResult {
  registration: RegistrationInfo;
  interpreter: InterpreterInfo;
}

export type ReleaseTarget = ({ registrationId: string } | { interpreterId: string }) & Tenanted;

/** What PauseRegistrations and ResumeRegistrations act on: one registration, an interpreter's, or a trigger's. */
export type PauseTarget = ({ registrationId: string } | { interpreterId: string } | { trigger: string }) & Tenanted;

export interface ReleaseResult {
  releasedRegistrationIds: string[];
  interpreter: InterpreterInfo;
}

export interface TriggerSpec extends Tenanted {
  trigger: string;
  payload?: JsonValue;
  limits?: Limits;
}

export interface TriggerRunResult extends RunReport {
  registrationId: string;
}

export interface PageRequest {
  pageSize?: number;
  pageToken?: string;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

export interface InterpreterFilter extends PageRequest, Tenanted {
  name?: string;
  mode?: IsolationMode;
}

export interface RegistrationFilter extends PageRequest, Tenanted {
  trigger?: string;
  interpreterId?: string;
}

export type ExecutionState = 'queued' | 'running' | 'done';
/** An Execute run, a Trigger's fan-out, or one handler run of a fan-out. */
export type ExecutionKind = 'execute' | 'trigger' | 'handler';
/** Why an execution was cancelled: CancelExecution, its caller gave up, or the server shut down. */
export type CancelCause = 'request' | 'client' | 'shutdown';

/** An execution as it is now. */
export interface ExecutionInfo {
  id: string;
  state: ExecutionState;
  kind: ExecutionKind;
  /** Empty until known (a new interpreter), and for a TRIGGER. */
  interpreterId: string;
  registrationId: string;
  trigger: string;
  createdAt: Date;
  startedAt?: Date;
  endedAt?: Date;
  /** Started by StartExecute/StartTrigger (or a handler run of a StartTrigger): kept once DONE. */
  background: boolean;
  /** DONE EXECUTE: what the run produced. */
  executeResult?: ExecuteResult;
  /** DONE TRIGGER: one result per registration. */
  triggerResults?: TriggerRunResult[];
}

export interface ExecutionFilter extends PageRequest, Tenanted {
  state?: ExecutionState;
  interpreterId?: string;
}

/** Executions now, for metrics. */
export interface ExecutionCounters {
  /** Background executions by state (DONE: those retained). */
  background: Record<ExecutionState, number>;
  /** Bytes of responses retained for DONE background executions. */
  retainedBytes: number;
  /** Executions (of any kind, background or not) cancelled so far, by cause; a fan-out's handler runs count with it, once. */
  cancels: Record<CancelCause, number>;
  /** Executions of every kind queued or running now (0 when idle: nothing left behind). */
  live: number;
}

/** A run that ended, as a watcher sees it (the ids are the responses' ids). */
export interface RunEventInfo {
  executionId: string;
  interpreterId: string;
  /** A handler run's registration; '' for an Execute or a Register load. */
  registrationId: string;
  trigger: string;
  outcome: Outcome;
  error?: ScriptError;
  wallTimeMs: number;
  cpuTimeMs: number;
}

/** A console line, as it was written. */
export interface LogEventInfo {
  executionId: string;
  interpreterId: string;
  registrationId: string;
  entry: LogEntry;
}

/** What a watcher receives. `dropped`: events it lost because it read too slowly, sent before the next one it gets. */
/** What a registration event reports. */
export type RegistrationChange = 'created' | 'released' | 'paused' | 'resumed';

export type WatchEventBody =
  | { kind: 'interpreter'; interpreter: InterpreterInfo }
  | { kind: 'registration'; registration: RegistrationInfo; released: boolean; change: RegistrationChange }
  | { kind: 'run'; run: RunEventInfo }
  | { kind: 'log'; log: LogEventInfo }
  | { kind: 'dropped'; count: number };

export interface WatchEvent {
  time: Date;
  body: WatchEventBody;
}

/** Which events a watcher wants; every filter set must match (AND). */
export interface WatchFilter extends Tenanted {
  interpreterId?: string;
  /** Only runs, logs and registrations of handlers bound to this trigger. */
  trigger?: string;
  /** Only this registration's runs, logs and changes. */
  registrationId?: string;
  includeLogs?: boolean;
}

/** An open watch: read with `next()` (undefined once it is closed), end with `close()`. */
export interface WatchStream {
  next(): Promise<WatchEvent | undefined>;
  close(): void;
  /** Why the server closed it (shutdown); undefined when its reader did. */
  readonly closeReason: Error | undefined;
}

/** Exact live counts, for tests ("nothing leaked") and metrics. */
export interface ManagerCounters {
  interpreters: number;
  interpretersByState: Record<Exclude<InterpreterState, 'disposed'>, number>;
  interpretersByMode: Record<IsolationMode, number>;
  interpretersByModeAndState: Record<IsolationMode, Record<Exclude<InterpreterState, 'disposed'>, number>>;
  dedicatedIsolates: number;
  sharedIsolates: number;
  registrations: number;
  /** Of those, paused (PauseRegistrations). */
  registrationsPaused: number;
  references: Record<OwnerKind, number>;
  executionsInFlight: number;
  executionsInFlightByMode: Record<IsolationMode, number>;
  /** Requests (and Trigger fan-outs) waiting for a run slot. */
  runsWaiting: number;
  /** Run slots taken: runs executing, including cancelled ones whose code has not stopped yet. */
  runSlotsInUse: number;
  isolatesCreated: Record<IsolateKind, number>;
  isolatesDisposed: Record<IsolateKind, number>;
  /** The warm pool: what it holds, its hits and misses, pooled isolates created and disposed. */
  warm: WarmPoolStats;
  /** The code cache for module sources: entries, bytes held, lookups that found data or not. */
  codeCache: { entries: number; bytes: number; hits: number; misses: number; rejected: number };
  /** TypeScript modules stripped of their types: found in the transpile cache (hit) or transpiled (miss). */
  transpiles: { hits: number; misses: number };
  /** Rollbacks that moved the name (succeeded), and those whose replay failed or was cancelled (nothing changed). */
  rollbacks: { succeeded: number; failed: number };
  executions: ExecutionCounters;
  /** Shared isolates added beyond ISOGEAR_SHARED_ISOLATES because every shared isolate was held by a long run. */
  extraSharedIsolates: number;
  /** Watch streams open now, and events dropped so far because a watcher read too slowly. */
  watch: { streams: number; dropped: number };
  /** Schedules and consumers running here, and their consumer groups' pending entries and lag (each group once). */
  sources: { schedules: number; consumers: number; pendingEntries: number; lag: number; redisDown: number };
}

export interface WarmPoolStats {
  /** Warm dedicated isolates and warm shared-isolate contexts waiting to be taken. */
  isolates: number;
  contexts: number;
  /** Takes served warm (hit), or not (miss: the interpreter was created on the request path). */
  hits: Record<IsolationMode, number>;
  misses: Record<IsolationMode, number>;
  isolatesCreated: number;
  /** Pooled isolates disposed while still in the pool, by reason ('shutdown', 'failed', …). */
  isolatesDisposed: Map<string, number>;
}

/** A stored interpreter that could not be rebuilt here; it stays stored. */
export interface BrokenRecipe {
  interpreterId: string;
  tenant: string;
  name: string;
  reason: string;
}

export interface RestoreStatus {
  /** Recipes rebuilt (at start-up and from other servers' changes). */
  restored: number;
  broken: BrokenRecipe[];
  /** While the start-up restore runs. */
  restoring?: { total: number; done: number };
  /** Changes the store refused (each answered UNAVAILABLE). */
  storeWriteFailures: number;
}

/** The isolate manager's public surface (see InterpreterManager for the implementation). */
export interface IsolateManager {
  execute(spec: ExecuteSpec, signal?: AbortSignal): Promise<ExecuteResult>;
  register(spec: RegisterSpec, signal?: AbortSignal): Promise<RegisterResult>;
  release(target: ReleaseTarget): Promise<ReleaseResult>;
  trigger(spec: TriggerSpec, signal?: AbortSignal): Promise<TriggerRunResult[]>;
  /**
   * Pauses (`paused` true) or resumes registrations; answers with the ids this call changed, in
   * creation order. Durable once it answers, and followed by replicas.
   */
  setPaused(target: PauseTarget, paused: boolean): Promise<string[]>;
  /** Checks `spec` as execute() does, queues it and answers at once; the run goes on without the caller. */
  startExecute(spec: ExecuteSpec): Promise<ExecutionInfo>;
  /** Checks `spec` as trigger() does and answers at once; the fan-out goes on without the caller. */
  startTrigger(spec: TriggerSpec): Promise<ExecutionInfo>;
  /** The versions of a named interpreter, oldest first (NOT_FOUND when it has none). */
  listVersions(name: string, tenant?: string): Promise<VersionInfo[]>;
  /** Re-creates a version of a named interpreter in a new one and moves the name to it, as an upgrade does. */
  rollback(spec: RollbackSpec, signal?: AbortSignal): Promise<ExecuteResult>;
  getExecution(id: string, tenant?: string): ExecutionInfo;
  /**
   * Waits until the execution is DONE, `timeoutMs` (0: the server's maximum) or `capMs` (the
   * caller's own bound, e.g. its deadline) passes, or `signal` aborts; answers it as it is then.
   */
  waitExecution(id: string, timeoutMs: number, options?: { tenant?: string; capMs?: number; signal?: AbortSignal }): Promise<ExecutionInfo>;
  listExecutions(filter: ExecutionFilter): Page<ExecutionInfo>;
  /** A live watch of the tenant's events from now on: interpreters, registrations, runs, and console lines if asked. */
  watch(filter: WatchFilter): WatchStream;
  /** Cancels a queued or running execution; answers it once DONE (a DONE one unchanged). */
  cancelExecution(id: string, tenant?: string): Promise<ExecutionInfo>;
  getInterpreter(id: string, tenant?: string): Promise<{ interpreter: InterpreterInfo; registrations: RegistrationInfo[] }>;
  listInterpreters(filter: InterpreterFilter): Promise<Page<InterpreterInfo>>;
  listRegistrations(filter: RegistrationFilter): Page<RegistrationInfo>;
  counters(): ManagerCounters;
  /** The start-up restore (while it runs) and the stored interpreters that could not be rebuilt. */
  restoreStatus(): RestoreStatus;
  /** How far the start-up restore is while it runs, else undefined (asked by every request). */
  restoreProgress(): { total: number; done: number } | undefined;
  destroy(): Promise<void>;
}

export interface RunEndEvent {
  /** The tenant whose interpreter ran. */
  tenant: string;
  mode: IsolationMode;
  /** `execute` for Execute and Register loads, `trigger` for a Trigger's handler runs, `schedule` and `stream` for those sources' runs. */
  kind: 'execute' | 'trigger' | 'schedule' | 'stream';
  outcome: Outcome;
  wallTimeMs: number;
}

export interface CoreLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}
