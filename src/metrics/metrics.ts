import { status } from '@grpc/grpc-js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SourceMetrics } from './sourceMetrics';
import { DEFAULT_TENANT } from '../core/tenants';
import type { IsolateKind, ManagerCounters, RestoreStatus, RunEndEvent } from '../core/types';

/**
 * Every metric isogear exports, with its labels, in one place. Gauges about interpreters,
 * references and isolates are computed at scrape time from the manager's own counters, so they
 * are exact and cannot drift; run counters and histograms are fed by the manager's run-end hook.
 * No label ever carries an id.
 */

export const LABEL = {
  kind: 'kind',
  mode: 'mode',
  state: 'state',
  owner: 'owner',
  reason: 'reason',
  result: 'result',
  outcome: 'outcome',
  grpcType: 'grpc_type',
  grpcService: 'grpc_service',
  grpcMethod: 'grpc_method',
  grpcCode: 'grpc_code',
  tenant: 'tenant',
} as const;

export const ISOLATE_KINDS = ['dedicated', 'shared', 'pooled'] as const;
export const MODES = ['shared', 'isolate'] as const;
export const STATES = ['ready', 'draining', 'failed'] as const;
export const OWNERS = ['registration', 'execution'] as const;
export const RUN_KINDS = ['execute', 'trigger', 'schedule', 'stream'] as const;
export const OUTCOMES = ['succeeded', 'failed', 'timed_out', 'memory_exceeded', 'aborted'] as const;
/** Every gRPC status code name, as grpc_server_handled_total's grpc_code label spells it. */
export const GRPC_CODES = Object.keys(status).filter((k) => Number.isNaN(Number(k)));
export const EXECUTION_STATES = ['queued', 'running', 'done'] as const;
export const CANCEL_CAUSES = ['request', 'client', 'shutdown'] as const;
export const DISPOSE_REASONS = ['released', 'replaced', 'memory_limit', 'failed', 'unresponsive', 'shutdown'] as const;

/** Seconds; from a warm trigger (~0.1 ms) to the longest allowed run (60 s by default). */
const RUN_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const RPC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** What the metrics read from the isolate manager. */
export interface MetricsSource {
  counters(): ManagerCounters;
  disposals(): Map<string, number>;
  heapByKind(): Promise<Record<IsolateKind, number>>;
  tenantUsage(): Map<string, { interpreters: number; registrations: number }>;
  restoreStatus(): RestoreStatus;
}

/** What the metrics read from the API keys (names and counts only: never a key or a digest). */
export interface KeysSource {
  readonly tenantNames: string[];
  readonly reloads: { applied: number; rejected: number };
}

export interface MetricsOptions {
  /**
   * ISOGEAR_METRICS_TENANT_LABEL: a `tenant` label on the run metrics, and per-tenant gauges.
   * Off by default: every tenant is a series of each, which a large tenant list multiplies.
   */
  tenantLabel?: boolean;
}

export type GrpcType = 'unary' | 'client_stream' | 'server_stream' | 'bidi_stream';

export class IsogearMetrics {
  readonly registry = new Registry();
  private source: MetricsSource | undefined;
  private keys: KeysSource | undefined;
  private readonly tenantLabel: boolean;
  /** The schedules' and consumers' hooks (the manager's `sourceEvents`). */
  readonly sources: SourceMetrics;

  private readonly executions: Counter<string>;
  private readonly duration: Histogram<string>;
  private readonly grpcStarted: Counter<string>;
  private readonly grpcHandled: Counter<string>;
  private readonly grpcHandling: Histogram<string>;

  constructor(options: MetricsOptions = {}) {
    this.tenantLabel = options.tenantLabel ?? false;
    const registers = [this.registry];
    const tenantLabels: string[] = this.tenantLabel ? [LABEL.tenant] : [];
    // Arrow functions keep the class's `this`; inside each collect(), `this` is the metric.
    const read = (): ManagerCounters | undefined => this.source?.counters();
    this.sources = new SourceMetrics(registers, read);
    const disposals = (): Map<string, number> | undefined => this.source?.disposals();
    const heapByKind = (): Promise<Record<IsolateKind, number>> | undefined => this.source?.heapByKind();
    // Counters mirrored from the manager's cumulative counts: each scrape adds what changed.
    const seen = new Map<string, number>();
    // (an increment of 0 still makes the series: it exists, at 0, from the first scrape)
    const mirror = (counter: Counter<string>, key: string, labels: Record<string, string>, value: number): void => {
      const delta = value - (seen.get(key) ?? 0);
      counter.inc(labels, Math.max(0, delta));
      seen.set(key, value);
    };

    new Gauge({
      name: 'isogear_isolates',
      help: 'Live V8 isolates by kind: dedicated (one isolate-mode interpreter each), shared (hosting shared-mode interpreters), pooled (warm, unused).',
      labelNames: [LABEL.kind],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        this.set({ kind: 'dedicated' }, c.dedicatedIsolates);
        this.set({ kind: 'shared' }, c.sharedIsolates);
        this.set({ kind: 'pooled' }, c.warm.isolates);
      },
    });
    new Gauge({
      name: 'isogear_interpreters',
      help: 'Live interpreters by isolation mode and lifecycle state.',
      labelNames: [LABEL.mode, LABEL.state],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const mode of MODES) for (const state of STATES) this.set({ mode, state }, c.interpretersByModeAndState[mode][state]);
      },
    });
    new Gauge({
      name: 'isogear_interpreter_references',
      help: 'References held on interpreters, by owner kind.',
      labelNames: [LABEL.owner],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const owner of OWNERS) this.set({ owner }, c.references[owner]);
      },
    });
    new Gauge({
      name: 'isogear_registrations',
      help: 'Registrations not yet released (broken ones included).',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.registrations);
      },
    });
    new Gauge({
      name: 'isogear_registrations_paused',
      help: 'Registrations paused (PauseRegistrations): Trigger skips them until they are resumed.',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.registrationsPaused);
      },
    });
    new Counter({
      name: 'isogear_isolates_created_total',
      help: 'V8 isolates created, by kind.',
      labelNames: [LABEL.kind],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const kind of ['dedicated', 'shared'] as const) mirror(this, `created:${kind}`, { kind }, c.isolatesCreated[kind]);
        mirror(this, 'created:pooled', { kind: 'pooled' }, c.warm.isolatesCreated);
      },
    });
    new Counter({
      name: 'isogear_isolates_disposed_total',
      help: 'V8 isolates disposed, by kind and reason (released, replaced, memory_limit, failed, unresponsive, shutdown).',
      labelNames: [LABEL.kind, LABEL.reason],
      registers,
      collect() {
        const d = disposals();
        if (!d) return;
        for (const [key, value] of d) {
          const [kind, reason] = key.split(':');
          mirror(this, `disposed:${key}`, { kind, reason }, value);
        }
      },
    });
    new Gauge({
      name: 'isogear_warm_pool_size',
      help: 'Interpreters created ahead of time and not yet taken, by mode: isolate (warm dedicated isolates), shared (warm contexts over all shared isolates).',
      labelNames: [LABEL.mode],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        this.set({ mode: 'isolate' }, c.warm.isolates);
        this.set({ mode: 'shared' }, c.warm.contexts);
      },
    });
    new Counter({
      name: 'isogear_warm_pool_takes_total',
      help: 'New interpreters by mode and whether the warm pool had one ready (hit) or it was created on the request path (miss).',
      labelNames: [LABEL.mode, LABEL.result],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const mode of MODES) {
          mirror(this, `warm:hit:${mode}`, { mode, result: 'hit' }, c.warm.hits[mode]);
          mirror(this, `warm:miss:${mode}`, { mode, result: 'miss' }, c.warm.misses[mode]);
        }
      },
    });
    new Gauge({
      name: 'isogear_code_cache_bytes',
      help: 'V8 code cache held for module sources compiled more than once (bounded by ISOGEAR_CODE_CACHE_BYTES).',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.codeCache.bytes);
      },
    });
    new Counter({
      name: 'isogear_code_cache_lookups_total',
      help: 'Module compiles by whether the code cache had data for the source (hit), or not (miss); rejected: V8 refused the data.',
      labelNames: [LABEL.result],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const result of ['hit', 'miss', 'rejected'] as const) {
          mirror(this, `code:${result}`, { result }, result === 'hit' ? c.codeCache.hits : result === 'miss' ? c.codeCache.misses : c.codeCache.rejected);
        }
      },
    });
    new Counter({
      name: 'isogear_typescript_transpiles_total',
      help: 'TypeScript modules stripped of their types, by whether the output was cached (hit) or made now (miss).',
      labelNames: [LABEL.result],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        mirror(this, 'ts:hit', { result: 'hit' }, c.transpiles.hits);
        mirror(this, 'ts:miss', { result: 'miss' }, c.transpiles.misses);
      },
    });
    new Counter({
      name: 'isogear_rollbacks_total',
      help: 'Rollbacks of named interpreters: succeeded (the name moved), or failed (a replay failed, timed out or was cancelled; nothing changed).',
      labelNames: [LABEL.result],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        mirror(this, 'rb:succeeded', { result: 'succeeded' }, c.rollbacks.succeeded);
        mirror(this, 'rb:failed', { result: 'failed' }, c.rollbacks.failed);
      },
    });
    new Gauge({
      name: 'isogear_executions_in_flight',
      help: 'Runs (Execute, Register loads, handler runs) in progress, by isolation mode.',
      labelNames: [LABEL.mode],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const mode of MODES) this.set({ mode }, c.executionsInFlightByMode[mode]);
      },
    });
    new Gauge({
      name: 'isogear_runs_waiting',
      help: 'Requests waiting for a run slot (ISOGEAR_MAX_CONCURRENT_RUNS); refused beyond ISOGEAR_MAX_QUEUED_RUNS.',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.runsWaiting);
      },
    });
    new Gauge({
      name: 'isogear_background_executions',
      help: 'Background executions (StartExecute, StartTrigger) by state: queued, running, and done (kept for GetExecution/WaitExecution within ISOGEAR_EXECUTION_RETENTION_MS and _BYTES).',
      labelNames: [LABEL.state],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const state of EXECUTION_STATES) this.set({ state }, c.executions.background[state]);
      },
    });
    new Gauge({
      name: 'isogear_background_execution_retained_bytes',
      help: 'Bytes of responses kept for DONE background executions (bounded by ISOGEAR_EXECUTION_RETENTION_BYTES).',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.executions.retainedBytes);
      },
    });
    new Counter({
      name: 'isogear_execution_cancels_total',
      help: 'Executions cancelled (a Trigger fan-out once, with its handler runs), by reason: request (CancelExecution), client (the caller cancelled or its deadline passed), shutdown.',
      labelNames: [LABEL.reason],
      registers,
      collect() {
        const c = read();
        if (!c) return;
        for (const reason of CANCEL_CAUSES) mirror(this, `cancel:${reason}`, { reason }, c.executions.cancels[reason]);
      },
    });
    new Gauge({
      name: 'isogear_watch_streams',
      help: 'Watch streams open.',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.watch.streams);
      },
    });
    new Counter({
      name: 'isogear_watch_events_dropped_total',
      help: 'Watch events dropped because a watcher read too slowly (its buffer, ISOGEAR_WATCH_BUFFER, was full); the watcher is told how many.',
      registers,
      collect() {
        const c = read();
        if (c) mirror(this, 'watch:dropped', {}, c.watch.dropped);
      },
    });
    new Gauge({
      name: 'isogear_shared_isolates_extra',
      help: 'Shared isolates added beyond ISOGEAR_SHARED_ISOLATES because every shared isolate was held by a long run (at most ISOGEAR_EXTRA_SHARED_ISOLATES; retired when idle).',
      registers,
      collect() {
        const c = read();
        if (c) this.set(c.extraSharedIsolates);
      },
    });
    this.executions = new Counter({
      name: 'isogear_executions_total',
      help: 'Runs ended, by isolation mode, kind (execute: Execute and Register loads; trigger: handler runs of a Trigger; schedule and stream: the runs of schedules and stream consumers) and outcome.',
      labelNames: [LABEL.mode, LABEL.kind, LABEL.outcome, ...tenantLabels],
      registers,
    });
    this.duration = new Histogram({
      name: 'isogear_execution_duration_seconds',
      help: 'Wall time of runs, by isolation mode and kind.',
      labelNames: [LABEL.mode, LABEL.kind, ...tenantLabels],
      buckets: RUN_BUCKETS,
      registers,
    });
    new Gauge({
      name: 'isogear_heap_used_bytes',
      help: 'V8 heap in use (plus external memory counted against the limit), summed over live isolates of each kind.',
      labelNames: [LABEL.kind],
      registers,
      async collect() {
        const heap = await heapByKind();
        if (!heap) return;
        this.set({ kind: 'dedicated' }, heap.dedicated);
        this.set({ kind: 'shared' }, heap.shared);
      },
    });
    const grpcLabels = [LABEL.grpcType, LABEL.grpcService, LABEL.grpcMethod];
    this.grpcStarted = new Counter({
      name: 'grpc_server_started_total',
      help: 'Total number of RPCs started on the server.',
      labelNames: grpcLabels,
      registers,
    });
    this.grpcHandled = new Counter({
      name: 'grpc_server_handled_total',
      help: 'Total number of RPCs completed on the server, regardless of success or failure.',
      labelNames: [...grpcLabels, LABEL.grpcCode],
      registers,
    });
    this.grpcHandling = new Histogram({
      name: 'grpc_server_handling_seconds',
      help: 'Response latency of RPCs handled by the server, in seconds.',
      labelNames: grpcLabels,
      buckets: RPC_BUCKETS,
      registers,
    });
    // Series that exist from the first scrape, at 0, so rates and alerts never see "no data".
    const disposedTotal = this.registry.getSingleMetric('isogear_isolates_disposed_total') as Counter<string>;
    const createdTotal = this.registry.getSingleMetric('isogear_isolates_created_total') as Counter<string>;
    for (const kind of ISOLATE_KINDS) {
      createdTotal.inc({ kind }, 0);
      for (const reason of DISPOSE_REASONS) disposedTotal.inc({ kind, reason }, 0);
    }
    // (with the tenant label, each tenant's series start when observe() learns the tenants)
    if (!this.tenantLabel) this.initRuns({});
    const durability = (): RestoreStatus | undefined => this.source?.restoreStatus();
    new Gauge({
      name: 'isogear_stored_interpreters_broken',
      help: 'Stored interpreters whose recipe could not be rebuilt here (listed FAILED, their registrations broken; kept in the store). The log says why.',
      registers,
      collect() {
        this.set(durability()?.broken.length ?? 0);
      },
    });
    new Gauge({
      name: 'isogear_restore_pending',
      help: 'Stored interpreters the start-up restore has still to rebuild (the server answers UNAVAILABLE until it is 0).',
      registers,
      collect() {
        const r = durability()?.restoring;
        this.set(r ? r.total - r.done : 0);
      },
    });
    const restoredTotal = new Counter({
      name: 'isogear_restored_interpreters_total',
      help: 'Interpreters rebuilt from their stored recipes (at start-up, and from other replicas\' changes on a shared store).',
      registers,
      collect() {
        const d = durability();
        if (d) mirror(restoredTotal, 'restored', {}, d.restored);
      },
    });
    const storeFailures = new Counter({
      name: 'isogear_store_write_failures_total',
      help: 'Changes the store refused (the request was answered UNAVAILABLE and nothing changed).',
      registers,
      collect() {
        const d = durability();
        if (d) mirror(storeFailures, 'store:failures', {}, d.storeWriteFailures);
      },
    });
    const keys = (): KeysSource | undefined => this.keys;
    const reloadsTotal = new Counter({
      name: 'isogear_api_keys_reloads_total',
      help: 'Re-reads of the API keys file, by result: applied (its keys are in force) or rejected (the previous keys stayed; the log says why).',
      labelNames: [LABEL.result],
      registers,
      collect() {
        const k = keys();
        if (!k) return;
        mirror(reloadsTotal, 'reloads:applied', { result: 'applied' }, k.reloads.applied);
        mirror(reloadsTotal, 'reloads:rejected', { result: 'rejected' }, k.reloads.rejected);
      },
    });
    reloadsTotal.inc({ result: 'applied' }, 0);
    reloadsTotal.inc({ result: 'rejected' }, 0);
    new Gauge({
      name: 'isogear_api_key_tenants',
      help: 'Tenants with at least one key in the API keys file in force (0 when the server runs without one).',
      registers,
      collect() {
        this.set(keys()?.tenantNames.length ?? 0);
      },
    });
    if (this.tenantLabel) {
      const usage = (): Map<string, { interpreters: number; registrations: number }> | undefined => this.source?.tenantUsage();
      for (const [name, field, help] of [
        ['isogear_tenant_interpreters', 'interpreters', 'Live interpreters of each tenant (counted against its interpreters quota).'],
        ['isogear_tenant_registrations', 'registrations', 'Live registrations of each tenant (counted against its registrations quota).'],
      ] as const) {
        new Gauge({
          name,
          help,
          labelNames: [LABEL.tenant],
          registers,
          collect() {
            const u = usage();
            if (!u) return;
            this.reset();
            for (const [tenant, v] of u) this.set({ tenant }, v[field]);
          },
        });
      }
    }
    collectDefaultMetrics({ register: this.registry });
  }

  /**
   * Connects the gauges to the manager whose counters they report. With the tenant label, the
   * run series of the tenants the keys file names (or the one tenant of an open server) start
   * at 0 now.
   */
  observe(source: MetricsSource, keys?: KeysSource): void {
    this.source = source;
    this.keys = keys;
    if (this.tenantLabel) for (const tenant of keys?.tenantNames ?? [DEFAULT_TENANT]) this.initRuns({ tenant });
  }

  /**
   * The gRPC series of every method the server serves start at 0 (go-grpc-prometheus does the
   * same): a rate or an error ratio then reads 0, not "no data", before the first call.
   */
  initRpcs(methods: readonly { type: GrpcType; service: string; method: string }[]): void {
    for (const { type, service, method } of methods) {
      const labels = { grpc_type: type, grpc_service: service, grpc_method: method };
      this.grpcStarted.inc(labels, 0);
      for (const code of GRPC_CODES) this.grpcHandled.inc({ ...labels, grpc_code: code }, 0);
      this.grpcHandling.zero(labels);
    }
  }

  /** Every run series (`extra`: the tenant label) at 0: each mode, kind and outcome, and the duration histogram. */
  private initRuns(extra: Record<string, string>): void {
    for (const mode of MODES) {
      for (const kind of RUN_KINDS) {
        for (const outcome of OUTCOMES) this.executions.inc({ ...extra, mode, kind, outcome }, 0);
        this.duration.zero({ ...extra, mode, kind });
      }
    }
  }

  /** The manager's run-end hook. */
  readonly recordRun = (event: RunEndEvent): void => {
    const labels: Record<string, string> = { mode: event.mode, kind: event.kind };
    if (this.tenantLabel) labels.tenant = event.tenant;
    this.executions.inc({ ...labels, outcome: event.outcome });
    this.duration.observe(labels, event.wallTimeMs / 1000);
  };

  rpcStarted(type: GrpcType, service: string, method: string): void {
    this.grpcStarted.inc({ grpc_type: type, grpc_service: service, grpc_method: method });
  }

  rpcHandled(type: GrpcType, service: string, method: string, code: string, seconds: number): void {
    this.grpcHandled.inc({ grpc_type: type, grpc_service: service, grpc_method: method, grpc_code: code });
    this.grpcHandling.observe({ grpc_type: type, grpc_service: service, grpc_method: method }, seconds);
  }
}
