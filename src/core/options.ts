import { Tracing } from '../tracing/Tracing';
import type { RecipeStore } from './durability/RecipeStore';
import type { ConsumerEvents, ConsumerSettings, StreamSource, TickClaims } from './sources/ports';
import type { QuotaName } from './tenants';
import type { CoreLogger, IsolationMode, RunEndEvent } from './types';

/**
 * The isolate manager's options: every default in one place (src/config.ts takes its fallbacks
 * from here) and the one check that refuses options the manager cannot work with.
 */

/** The smallest heap limit an isolate may have, in MB. */
export const MIN_MEMORY_MB = 8;

/** Defaults of every setting that has one; `ISOGEAR_*` variables fall back to these. */
export const DEFAULTS = {
  defaultMode: 'isolate' as IsolationMode,
  defaultTimeoutMs: 5000,
  maxTimeoutMs: 60_000,
  defaultMemoryMb: 64,
  maxMemoryMb: 512,
  maxInterpreters: 10_000,
  maxSourceBytes: 1024 * 1024,
  maxLogBytes: 64 * 1024,
  maxValueBytes: 1024 * 1024,
  maxRegistrationsPerInterpreter: 10_000,
  maxConcurrentRuns: 64,
  maxQueuedRuns: 256,
  maxQueueWaitMs: 5000,
  maxResponseBytes: 16 * 1024 * 1024,
  warmIsolates: 16,
  warmContextsPerShared: 16,
  codeCacheBytes: 32 * 1024 * 1024,
  executionRetentionMs: 10 * 60 * 1000,
  executionRetentionBytes: 64 * 1024 * 1024,
  tenantMaxBackgroundExecutions: 1000,
  extraSharedIsolates: 0,
  watchBuffer: 1000,
  tenantMaxWatchers: 16,
} as const;

export interface ManagerOptions {
  defaultMode: IsolationMode;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultMemoryMb: number;
  maxMemoryMb: number;
  /** How many shared isolates host shared-mode interpreters. */
  sharedIsolates: number;
  /** Heap limit of each shared isolate. */
  sharedIsolateMemoryMb: number;
  maxInterpreters: number;
  /** Cap on source plus every module source of one request, in bytes (UTF-8). */
  maxSourceBytes: number;
  /** Console output kept per run, in characters. */
  maxLogBytes: number;
  /** Cap on args, payload and result, in bytes of JSON. */
  maxValueBytes: number;
  maxRegistrationsPerInterpreter: number;
  /** Runs executing at once; more wait for a slot (default 64). */
  maxConcurrentRuns?: number;
  /** Requests waiting for a run slot; more are refused with RESOURCE_EXHAUSTED (default 256). */
  maxQueuedRuns?: number;
  /** How long a request waits for a run slot before RESOURCE_EXHAUSTED (default 5000 ms). */
  maxQueueWaitMs?: number;
  /** Results and logs one Trigger response may carry; beyond it they are withheld (default 16 MiB). */
  maxResponseBytes?: number;
  /** Warm dedicated isolates (with the default heap limit) kept ready for isolate mode (default 16). */
  warmIsolates?: number;
  /** Warm contexts kept ready on each shared isolate for shared mode (default 16). */
  warmContextsPerShared?: number;
  /** Bytes of V8 code cache kept for module sources compiled more than once (default 32 MiB; 0: off). */
  codeCacheBytes?: number;
  /** How long a DONE background execution is kept for GetExecution and WaitExecution (default 10 minutes). */
  executionRetentionMs?: number;
  /** Bytes of responses of DONE background executions kept at most, oldest out first (default 64 MiB). */
  executionRetentionBytes?: number;
  /**
   * Shared isolates that may be added when every shared isolate is held by a long run, so new
   * shared-mode interpreters do not queue behind it (default: as many as `sharedIsolates`).
   */
  extraSharedIsolates?: number;
  /** Events one watcher may have waiting before they are dropped (default 1000). */
  watchBuffer?: number;
  /** Watches one tenant may have open (default 16). */
  tenantMaxWatchers?: number;
  logger?: CoreLogger;
  /** Where the spans of traced requests go (default: tracing off). */
  tracing?: Tracing;
  /** Called once per run (Execute, Register load or handler run) as it ends, for metrics. */
  onRunEnd?: (event: RunEndEvent) => void;
  /** Called when V8 lost control of an isolate; the process must exit. */
  onCatastrophicError?: (message: string) => void;
  /**
   * The quotas of a tenant, asked at every check (they may change while the server runs);
   * undefined, or no function: no per-tenant quota.
   */
  tenantQuotas?: (tenant: string) => Record<QuotaName, number> | undefined;
  /**
   * Where the recipes of interpreters that hold registrations are kept; none: nothing is durable.
   * With one, Execute, Register and a Trigger whose handler registers answer only once the change
   * is stored, and Release once the removal is.
   */
  store?: RecipeStore;
  /**
   * Without a store: how many versions a named interpreter keeps in this process (a store is
   * told its own at open). Default 20.
   */
  maxVersions?: number;
  /** Where gears.consume reads streams; none: gears.consume fails the run, naming ISOGEAR_EVENTS_REDIS_URL. */
  streams?: StreamSource;
  /** A shared store's tick claims, so each schedule tick runs on one replica; none: every tick runs here. */
  tickClaims?: TickClaims;
  /** Consumers' settings (defaults: 5 deliveries, 60 s idle before a claim, retries from 1 s, 8 entries a read, 1 s reads). */
  consumers?: Partial<ConsumerSettings>;
  /** This server's name in consumer groups and claims (default: host name and process id). */
  serverName?: string;
  /** Metrics of the sources: consumers' entries and events-Redis state, and skipped schedule ticks. */
  sourceEvents?: ConsumerEvents & { skip?(): void };
}

/** The optional settings, defaults applied. */
export type ResolvedOptions = ManagerOptions & Required<Pick<ManagerOptions, OptionalSetting>>;

type OptionalSetting =
  | 'maxConcurrentRuns'
  | 'maxQueuedRuns'
  | 'maxQueueWaitMs'
  | 'maxResponseBytes'
  | 'warmIsolates'
  | 'warmContextsPerShared'
  | 'codeCacheBytes'
  | 'executionRetentionMs'
  | 'executionRetentionBytes'
  | 'extraSharedIsolates'
  | 'watchBuffer'
  | 'tenantMaxWatchers'
  | 'tracing';

/** Checks `o` (RangeError naming the option) and fills in the defaults of what it leaves out. */
export function resolveOptions(o: ManagerOptions): ResolvedOptions {
  validateOptions(o);
  return {
    ...o,
    maxConcurrentRuns: o.maxConcurrentRuns ?? DEFAULTS.maxConcurrentRuns,
    maxQueuedRuns: o.maxQueuedRuns ?? DEFAULTS.maxQueuedRuns,
    maxQueueWaitMs: o.maxQueueWaitMs ?? DEFAULTS.maxQueueWaitMs,
    maxResponseBytes: o.maxResponseBytes ?? DEFAULTS.maxResponseBytes,
    warmIsolates: o.warmIsolates ?? DEFAULTS.warmIsolates,
    warmContextsPerShared: o.warmContextsPerShared ?? DEFAULTS.warmContextsPerShared,
    codeCacheBytes: o.codeCacheBytes ?? DEFAULTS.codeCacheBytes,
    executionRetentionMs: o.executionRetentionMs ?? DEFAULTS.executionRetentionMs,
    executionRetentionBytes: o.executionRetentionBytes ?? DEFAULTS.executionRetentionBytes,
    extraSharedIsolates: o.extraSharedIsolates ?? o.sharedIsolates,
    watchBuffer: o.watchBuffer ?? DEFAULTS.watchBuffer,
    tenantMaxWatchers: o.tenantMaxWatchers ?? DEFAULTS.tenantMaxWatchers,
    tracing: o.tracing ?? Tracing.off,
  };
}

function validateOptions(o: ManagerOptions): void {
  const positive: (keyof ManagerOptions)[] = [
    'defaultTimeoutMs',
    'maxTimeoutMs',
    'defaultMemoryMb',
    'maxMemoryMb',
    'sharedIsolates',
    'sharedIsolateMemoryMb',
    'maxInterpreters',
    'maxSourceBytes',
    'maxLogBytes',
    'maxValueBytes',
    'maxRegistrationsPerInterpreter',
  ];
  for (const k of positive) {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new RangeError(`manager option ${k} must be a positive integer`);
  }
  for (const [k, min] of [
    ['maxConcurrentRuns', 1],
    ['maxQueuedRuns', 0],
    ['maxQueueWaitMs', 1],
    ['maxResponseBytes', 1],
    ['warmIsolates', 0],
    ['warmContextsPerShared', 0],
    ['codeCacheBytes', 0],
    ['executionRetentionMs', 0],
    ['executionRetentionBytes', 0],
    ['extraSharedIsolates', 0],
    ['watchBuffer', 1],
    ['tenantMaxWatchers', 0],
    ['maxVersions', 1],
  ] as const) {
    const v = o[k];
    if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new RangeError(`manager option ${k} must be an integer >= ${min}`);
  }
  if (o.defaultTimeoutMs > o.maxTimeoutMs) throw new RangeError('defaultTimeoutMs must not exceed maxTimeoutMs');
  if (o.defaultMemoryMb > o.maxMemoryMb) throw new RangeError('defaultMemoryMb must not exceed maxMemoryMb');
  if (o.defaultMemoryMb < MIN_MEMORY_MB || o.sharedIsolateMemoryMb < MIN_MEMORY_MB) {
    throw new RangeError(`memory limits must be at least ${MIN_MEMORY_MB} MB`);
  }
  if (o.defaultMode !== 'shared' && o.defaultMode !== 'isolate') throw new RangeError('defaultMode must be "shared" or "isolate"');
}
