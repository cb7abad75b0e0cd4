import { CodeCache } from '../sandbox/CodeCache';
import { Transpiler } from '../sandbox/Transpiler';
import { Admission } from './Admission';
import { MemoryRecipes } from './durability/MemoryRecipes';
import { Recorder } from './durability/Recorder';
import { ReplicaFollower } from './durability/ReplicaFollower';
import { Restorer } from './durability/Restorer';
import { Interpreters } from './Interpreters';
import { IsolateHost, type IsolateDisposeReason } from './IsolateHost';
import { NameTable } from './NameTable';
import { DEFAULTS, resolveOptions, type ManagerOptions, type ResolvedOptions } from './options';
import { DedicatedPlacement } from './placement/DedicatedPlacement';
import type { Placement } from './placement/Placement';
import { SharedPlacement } from './placement/SharedPlacement';
import { RegistrationIndex } from './RegistrationIndex';
import { Runner } from './Runner';
import { SandboxMaker } from './SandboxMaker';
import { TenantLedger } from './TenantLedger';
import { EventHub } from './EventHub';
import { Pausing } from './Pausing';
import { ExecutionTable } from './ExecutionTable';
import { TriggerFanOut } from './TriggerFanOut';
import type { IsolationMode } from './types';
import { WarmPool } from './WarmPool';
import { EventSources } from './sources/EventSources';
import { Scheduler } from './sources/Scheduler';
import { SourceRunner } from './sources/SourceRunner';
import { StreamConsumers } from './sources/StreamConsumers';
import type { ConsumerSettings } from './sources/ports';
import os from 'node:os';

/**
 * The core's parts, wired together once: the facade (InterpreterManager) holds them, and unit
 * tests compose them the same way to test a part without a server. Arrows point one way:
 * bookkeeping (ledger, admission, index, names) ← placement ← interpreters ← runner ←
 * durability (recorder, restorer, follower) and the Trigger fan-out.
 */
export interface CoreParts {
  readonly options: ResolvedOptions;
  readonly codeCache: CodeCache;
  /** TypeScript to JavaScript, its outputs cached beside the code cache (same bound). */
  readonly transpiler: Transpiler;
  readonly ledger: TenantLedger;
  readonly admission: Admission;
  readonly index: RegistrationIndex;
  readonly names: NameTable;
  readonly pool: WarmPool;
  readonly dedicated: DedicatedPlacement;
  readonly shared: SharedPlacement;
  readonly interpreters: Interpreters;
  readonly runner: Runner;
  readonly recorder: Recorder;
  readonly restorer: Restorer;
  readonly follower: ReplicaFollower;
  readonly fanOut: TriggerFanOut;
  readonly executions: ExecutionTable;
  readonly events: EventHub;
  readonly pausing: Pausing;
  readonly sources: EventSources;
}

/**
 * Validates `options` (RangeError naming the option), fills in the defaults and wires the parts.
 * `closed()` turns true when shutdown begins (closeCore follows).
 */
export function composeCore(options: ManagerOptions, closed: () => boolean): CoreParts {
  const o = resolveOptions(options);
  const codeCache = new CodeCache(o.codeCacheBytes);
  const transpiler = new Transpiler(o.codeCacheBytes);
  const ledger = new TenantLedger(o.tenantQuotas, o.maxInterpreters);
  const admission = new Admission(o, ledger);
  const events = new EventHub({ bufferSize: o.watchBuffer, maxWatchersPerTenant: () => o.tenantMaxWatchers });
  const index = new RegistrationIndex(ledger, o.maxRegistrationsPerInterpreter, events, o.streams !== undefined);
  const names = new NameTable(index, o.logger);
  const maker = new SandboxMaker(o, codeCache, transpiler);
  // The pool, the placements and the interpreter table refer to each other through these late-bound closures.
  const late: { shared?: SharedPlacement; interpreters?: Interpreters; runner?: Runner } = {};
  const pool = new WarmPool({
    isolates: o.warmIsolates,
    contextsPerShared: o.warmContextsPerShared,
    memoryMb: o.defaultMemoryMb,
    newIsolate: (onDeath) => IsolateHost.create('dedicated', o.defaultMemoryMb, onDeath, o.onCatastrophicError),
    newSandbox: (host, id, prefix) => maker.makeWarm(host, id, prefix),
    sharedHosts: () => late.shared?.regularHosts() ?? [],
    idle: () => late.runner?.inFlight === 0 && late.interpreters?.creating === 0,
    hasRoomFor: (host, warm) => late.shared?.hasRoomFor(host, warm) ?? false,
    onError: (err) => o.logger?.warn({ err }, 'warm pool: could not create an interpreter ahead of time'),
  });
  const onHostDeath = (host: IsolateHost, reason: IsolateDisposeReason): void => late.interpreters?.onHostDeath(host, reason);
  const dedicated = new DedicatedPlacement(pool, maker, onHostDeath, o.onCatastrophicError);
  const shared = new SharedPlacement(
    { isolates: o.sharedIsolates, memoryMb: o.sharedIsolateMemoryMb, onCatastrophicError: o.onCatastrophicError, closed, maxExtra: o.extraSharedIsolates, logger: o.logger },
    pool,
    maker,
    onHostDeath,
  );
  const placements: Record<IsolationMode, Placement> = { isolate: dedicated, shared };
  const interpreters = new Interpreters({ maxInterpreters: o.maxInterpreters, logger: o.logger, closed, events, tracing: o.tracing }, placements, ledger, names);
  const runner = new Runner({ maxValueBytes: o.maxValueBytes, logger: o.logger, onRunEnd: o.onRunEnd, afterRun: () => pool.refill(true), closed, events, tracing: o.tracing }, index);
  Object.assign(late, { shared, interpreters, runner });
  // Without a store, recipes are kept in this process all the same: a name's versions and rollbacks need them.
  const store = o.store ?? new MemoryRecipes(o.maxVersions);
  const recorder = new Recorder({ store, interpreters, index, names, ledger, logger: o.logger, tracing: o.tracing });
  const restorer = new Restorer({ interpreters, index, names, runner, recorder, defaultMemoryMb: o.defaultMemoryMb, logger: o.logger, closed });
  const follower = new ReplicaFollower(interpreters, recorder, restorer, closed);
  const executions = new ExecutionTable({
    retentionMs: o.executionRetentionMs,
    retentionBytes: o.executionRetentionBytes,
    backgroundQuota: (tenant) => ledger.quotas(tenant)?.backgroundExecutions ?? DEFAULTS.tenantMaxBackgroundExecutions,
  });
  const fanOut = new TriggerFanOut({ interpreters, index, admission, runner, recorder, executions, maxResponseBytes: o.maxResponseBytes, tracing: o.tracing });
  const pausing = new Pausing({ index, interpreters, recorder });
  const sources = composeSources(o, { interpreters, index, admission, runner, recorder, executions });
  index.bindSources(sources);
  return { options: o, codeCache, transpiler, ledger, admission, index, names, pool, dedicated, shared, interpreters, runner, recorder, restorer, follower, fanOut, executions, events, pausing, sources };
}

/**
 * Consumers' settings, defaults filled in. Entries of one read run one after another; the last
 * must start before it idles `claimIdleMs` (when another consumer may claim it), so a read takes
 * at most as many entries as fit, at the runs' time limit, in half that.
 */
function consumerSettings(o: ResolvedOptions): ConsumerSettings {
  const s = { maxDeliveries: 5, claimIdleMs: 60_000, retryMs: 1000, blockMs: 1000, ...o.consumers };
  return { ...s, batch: s.batch ?? Math.max(1, Math.min(8, Math.floor(s.claimIdleMs / (2 * o.defaultTimeoutMs)))) };
}

/** Schedules and stream consumers, running handlers through the same parts as a Trigger. */
function composeSources(o: ResolvedOptions, parts: Pick<CoreParts, 'interpreters' | 'index' | 'admission' | 'runner' | 'recorder' | 'executions'>): EventSources {
  const runner = new SourceRunner({ ...parts, timeoutMs: o.defaultTimeoutMs, tracing: o.tracing, logger: o.logger });
  const serverName = o.serverName ?? `${os.hostname()}-${process.pid}`;
  const track = (run: Promise<unknown>): void => parts.executions.track(run);
  const scheduler = new Scheduler({ runner, claims: o.tickClaims, timeoutMs: o.defaultTimeoutMs, logger: o.logger, onSkip: () => o.sourceEvents?.skip?.(), track });
  const consumers = new StreamConsumers({
    runner,
    source: o.streams,
    settings: consumerSettings(o),
    serverName,
    logger: o.logger,
    events: o.sourceEvents,
    track,
  });
  return new EventSources(scheduler, consumers);
}

/**
 * Shuts the parts down in order (call once `closed()` is true): no more warm-ups or watchdog
 * rounds, every isolate disposed (runs still in flight end ABORTED), those runs waited for,
 * then every interpreter failed and forgotten.
 */
export async function closeCore(core: CoreParts): Promise<void> {
  // (the consumers' loops end once their runs, aborted below, have reported)
  const sourcesStopped = core.sources.stop();
  core.interpreters.stopWatchdog();
  core.pool.destroy();
  core.dedicated.destroy();
  core.shared.destroy();
  await core.runner.settled();
  await sourcesStopped;
  core.interpreters.closeAll('the server shut down', (interp) => core.index.forgetAll(interp));
  core.names.clear();
}
