import { closeCore, composeCore, type CoreParts } from './CoreParts';
import { ExecuteCommand } from './ExecuteCommand';
import { CancelReason, type Execution } from './Execution';
import type { FanOut } from './TriggerFanOut';
import type { InterpreterRecipe } from './durability/RecipeStore';
import type { Recorder } from './durability/Recorder';
import { Versions } from './durability/Versions';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from './errors';
import { newToken } from './ids';
import type { Interpreter } from './Interpreter';
import type { ManagerOptions, ResolvedOptions } from './options';
import { paginate } from './paginate';
import type { Registration } from './Registration';
import { loadWork, type LoadSpec, type Run } from './Runner';
import { DEFAULT_TENANT } from './tenants';
import type {
  ExecuteResult,
  ExecuteSpec,
  ExecutionFilter,
  ExecutionInfo,
  WatchFilter,
  WatchStream,
  InterpreterFilter,
  InterpreterInfo,
  IsolateKind,
  IsolateManager,
  ManagerCounters,
  Page,
  RegisterResult,
  RegisterSpec,
  RegistrationFilter,
  RegistrationInfo,
  ReleaseResult,
  PauseTarget,
  ReleaseTarget,
  RestoreStatus,
  RollbackSpec,
  TriggerRunResult,
  TriggerSpec,
  VersionInfo,
} from './types';
import {
  checkAttach,
  checkDescription,
  checkIdLength,
  checkModules,
  encodeValue,
  outcomeText,
  requireSource,
  requireTrigger,
  resolveLimits,
} from './validation';

const tenantOf = (t: { tenant?: string }): string => t.tenant || DEFAULT_TENANT;

/** How long CancelExecution waits for the cancelled execution to be DONE before it answers. */
const CANCEL_SETTLE_MS = 2000;

/**
 * A background execution as accepted: QUEUED, or RUNNING when a run slot was free (the grant
 * arrives within the current turn's promise jobs, so one macrotask later it has been given). A
 * run quick enough to be DONE by then is answered as it was when accepted, RUNNING: the answer
 * is the acceptance, and its response is for GetExecution and WaitExecution.
 */
async function started(execution: Execution): Promise<ExecutionInfo> {
  await new Promise<void>((resolve) => setImmediate(resolve));
  const info = execution.info();
  if (info.state !== 'done') return info;
  return { ...info, state: 'running', endedAt: undefined, executeResult: undefined, triggerResults: undefined };
}

/**
 * The isolate manager: the facade that composes the core's parts and answers the API's calls.
 * It checks a request, admits it to a run slot, finds or creates its interpreter (Interpreters,
 * on the Placement of its mode), runs it (Runner), and commits what the run registered
 * (Recorder, which stores the step first when a store is configured). Reference counts live in
 * Interpreter, registrations in RegistrationIndex, names in NameTable, quotas in TenantLedger.
 */
export class InterpreterManager implements IsolateManager {
  private closed = false;
  private accepting = true;
  private readonly core: CoreParts;
  private readonly options: ResolvedOptions;
  private readonly executes: ExecuteCommand;
  private readonly versions: Versions;

  private constructor(options: ManagerOptions) {
    this.core = composeCore(options, () => this.closed);
    this.options = this.core.options;
    const { admission, interpreters, names, runner, recorder } = this.core;
    this.executes = new ExecuteCommand({
      options: this.options,
      admission,
      interpreters,
      names,
      runner,
      recorder,
      catchUp: (id) => this.catchUp(id),
      assertOpen: () => this.assertOpen(),
      logger: this.options.logger,
    });
    const { index, executions } = this.core;
    this.versions = new Versions({ admission, interpreters, index, runner, recorder, executions, defaultMemoryMb: this.options.defaultMemoryMb, assertOpen: () => this.assertOpen() });
  }

  static async create(options: ManagerOptions): Promise<InterpreterManager> {
    const manager = new InterpreterManager(options);
    manager.core.pool.refill();
    return manager;
  }

  async execute(spec: ExecuteSpec, signal?: AbortSignal): Promise<ExecuteResult> {
    const plan = await this.executes.check(spec);
    const execution = this.core.executions.open({ tenant: plan.tenant, kind: 'execute', background: false, interpreterId: plan.attachId });
    return this.executes.run(plan, execution, signal);
  }

  async startExecute(spec: ExecuteSpec): Promise<ExecutionInfo> {
    this.assertAccepting();
    const plan = await this.executes.check(spec);
    this.executes.precheck(plan);
    const execution = this.core.executions.open({ tenant: plan.tenant, kind: 'execute', background: true, interpreterId: plan.attachId });
    this.core.executions.track(this.executes.run(plan, execution));
    return started(execution);
  }

  async register(spec: RegisterSpec, signal?: AbortSignal): Promise<RegisterResult> {
    const since = performance.now();
    this.assertOpen();
    requireTrigger(spec.trigger);
    requireSource(spec.source, 'source');
    const description = spec.description ?? '';
    checkDescription(description);
    const modules = checkModules(spec.source, spec.modules, this.options.maxSourceBytes);
    const attach = spec.interpreterId !== undefined && spec.interpreterId !== '';
    checkAttach(attach, spec.mode);
    const limits = resolveLimits(spec.limits, this.options);
    const tenant = tenantOf(spec);
    const full = this.core.ledger.registrationRefusal(tenant, 1);
    if (full) throw full;
    if (attach) await this.catchUp(spec.interpreterId as string);
    const slot = await this.core.admission.acquire(tenant, signal);
    try {
      this.assertOpen();
      const interp = attach
        ? this.core.interpreters.attachable(spec.interpreterId as string, tenant)
        : await this.core.interpreters.create(spec.mode ?? this.options.defaultMode, limits.memoryMb, '', tenant);
      if (attach) this.core.index.refuseWhenFull(interp);
      const language = spec.language === 'typescript' ? ('typescript' as const) : undefined;
      const load: LoadSpec = { kind: 'register', source: spec.source, modules, trigger: spec.trigger, description, language };
      const run = await this.core.runner.run({ interp, kind: 'register', timeoutMs: limits.timeoutMs, since, signal, work: loadWork(interp, load, newToken()), slot });
      let registration: Registration | undefined;
      try {
        registration = await this.commitHandler(interp, run, spec.trigger, { kind: 'register', source: spec.source, modules, trigger: spec.trigger, description, timeoutMs: limits.timeoutMs, ...(language ? { language } : {}) });
      } finally {
        run.end();
      }
      return { registration: registration.info(false), interpreter: await interp.info() };
    } finally {
      slot.release();
    }
  }

  /** Commits what a Register's load registered: exactly one handler for its trigger, or an error saying why not. */
  private async commitHandler(interp: Interpreter, run: Run, trigger: string, step: Parameters<Recorder['commitStep']>[3]): Promise<Registration> {
    const { report, tuple } = run;
    if (report.outcome !== 'succeeded' || !tuple) {
      if (report.outcome === 'aborted') throw new UnavailableError('the run was aborted before the handler loaded');
      const why = report.error ? `${report.error.name}: ${report.error.message}` : report.outcome;
      throw new InvalidArgumentError(`source does not yield a handler (${outcomeText(report.outcome)}): ${why}`);
    }
    const refuse = (why: string): never => {
      interp.abandonRun(report.executionId);
      throw new FailedPreconditionError(why);
    };
    if (tuple.registrations.length !== 1 || tuple.registrations[0].trigger !== trigger) {
      refuse('the handler module registered other handlers while loading; use Execute for scripts that call gears.register');
    }
    if (!interp.accepting) refuse(`interpreter ${interp.id} was released while the handler loaded`);
    const [registration] = await this.core.recorder.commitStep(interp, tuple, report.executionId, step);
    if (!registration) throw new FailedPreconditionError(`interpreter ${interp.id} was released while the handler loaded`);
    return registration;
  }

  async release(target: ReleaseTarget): Promise<ReleaseResult> {
    if ('interpreterId' in target) await this.catchUp(target.interpreterId);
    const { interp, regs } = this.releaseTarget(target);
    if (this.core.recorder.isStored(interp)) return this.core.recorder.release(interp, regs, 'interpreterId' in target);
    this.core.index.release(interp, regs);
    return { releasedRegistrationIds: regs.map((r) => r.id), interpreter: interp.infoWithHeap(0) };
  }

  /**
   * On a shared store, an interpreter made on another replica reaches this one through the
   * changes feed, about a second later. A client behind a balancer may name it here before that:
   * an id unknown here is looked up in the store first (and built here if it is there), so a
   * client's next call sees what its last one did, whichever replica answers it.
   */
  private async catchUp(id: string): Promise<void> {
    checkIdLength(id, 'interpreter_id');
    const { recorder } = this.core;
    if (!id || !recorder.store?.shared) return;
    const local = this.core.interpreters.get(id);
    // Here already: the changes feed may be building or updating it right now (it is in the table
    // before its steps are replayed): wait for the store work queued for it, not a half-built copy.
    if (local) return recorder.settled(id);
    // A store that cannot answer now leaves the answer to what this replica knows (the feed
    // brings the change when the store is back); the request's own store work reports the outage.
    await this.core.follower.apply(id).catch(() => undefined);
  }

  /** What a Release names: the registrations to drop and their interpreter (the caller's tenant's only). */
  private releaseTarget(target: ReleaseTarget): { interp: Interpreter; regs: Registration[] } {
    const tenant = tenantOf(target);
    if ('registrationId' in target) {
      checkIdLength(target.registrationId, 'registration_id');
      const found = this.core.index.get(target.registrationId);
      // another tenant's registration answers exactly like one that does not exist
      const reg = found?.tenant === tenant ? found : undefined;
      if (!reg) throw new NotFoundError(`registration ${target.registrationId} not found (unknown or already released)`);
      return { interp: this.core.interpreters.must(reg.interpreterId), regs: [reg] };
    }
    checkIdLength(target.interpreterId, 'interpreter_id');
    const interp = this.core.interpreters.own(target.interpreterId, tenant);
    if (!interp) throw new NotFoundError(`interpreter ${target.interpreterId} not found (unknown or already disposed)`);
    if (interp.registrations.size === 0) {
      throw new NotFoundError(`interpreter ${target.interpreterId} holds no registrations to release`);
    }
    return { interp, regs: [...interp.registrations.values()] };
  }

  async setPaused(target: PauseTarget, paused: boolean): Promise<string[]> {
    this.assertOpen();
    if ('interpreterId' in target) await this.catchUp(target.interpreterId);
    return this.core.pausing.set(target, paused);
  }

  async trigger(spec: TriggerSpec, signal?: AbortSignal): Promise<TriggerRunResult[]> {
    const { req, bound } = this.checkTrigger(spec);
    const execution = this.core.executions.open({ tenant: req.tenant, kind: 'trigger', background: false, trigger: req.trigger });
    return this.core.fanOut.run(req, bound, execution, signal);
  }

  async startTrigger(spec: TriggerSpec): Promise<ExecutionInfo> {
    this.assertAccepting();
    const { req, bound } = this.checkTrigger(spec);
    const execution = this.core.executions.open({ tenant: req.tenant, kind: 'trigger', background: true, trigger: req.trigger });
    this.core.executions.track(this.core.fanOut.run(req, bound, execution));
    return started(execution);
  }

  private checkTrigger(spec: TriggerSpec): { req: FanOut; bound: readonly Registration[] } {
    this.assertOpen();
    requireTrigger(spec.trigger);
    const payloadJson = encodeValue(spec.payload, 'payload', this.options.maxValueBytes);
    const limits = resolveLimits(spec.limits, this.options);
    const tenant = tenantOf(spec);
    const bound = this.core.fanOut.bound(tenant, spec.trigger);
    if (!bound) throw new NotFoundError(`no registration is bound to trigger "${spec.trigger}"`);
    return { req: { tenant, trigger: spec.trigger, payloadJson, timeoutMs: limits.timeoutMs }, bound };
  }

  /**
   * A live watch of the tenant's events from now on (see EventHub), filtered as asked. NOT_FOUND
   * for an interpreter or registration the tenant does not have; INVALID_ARGUMENT for a trigger
   * name no registration could have; RESOURCE_EXHAUSTED past the tenant's watches.
   */
  watch(filter: WatchFilter): WatchStream {
    this.assertOpen();
    const tenant = filter.tenant || DEFAULT_TENANT;
    if (filter.interpreterId) {
      checkIdLength(filter.interpreterId, 'interpreter_id');
      if (!this.core.interpreters.own(filter.interpreterId, tenant)) throw new NotFoundError(`interpreter ${filter.interpreterId} not found (unknown or disposed)`);
    }
    if (filter.registrationId) {
      checkIdLength(filter.registrationId, 'registration_id');
      if (this.core.index.get(filter.registrationId)?.tenant !== tenant) throw new NotFoundError(`registration ${filter.registrationId} not found (unknown or released)`);
    }
    if (filter.trigger) requireTrigger(filter.trigger);
    return this.core.events.watch({ ...filter, tenant });
  }

  listVersions(name: string, tenant?: string): Promise<VersionInfo[]> {
    this.assertOpen();
    return this.versions.list(tenant, name);
  }

  rollback(spec: RollbackSpec, signal?: AbortSignal): Promise<ExecuteResult> {
    return this.versions.rollback(spec, signal);
  }

  getExecution(id: string, tenant: string = DEFAULT_TENANT): ExecutionInfo {
    return this.core.executions.find(id, tenant).info();
  }

  waitExecution(id: string, timeoutMs: number, options: { tenant?: string; capMs?: number; signal?: AbortSignal } = {}): Promise<ExecutionInfo> {
    const execution = this.core.executions.find(id, options.tenant || DEFAULT_TENANT);
    const max = this.options.maxTimeoutMs;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > max) {
      throw new InvalidArgumentError(`timeout_ms ${timeoutMs} is over the maximum of ${max} ms (ISOGEAR_MAX_TIMEOUT_MS)`);
    }
    const ms = Math.min(timeoutMs || max, options.capMs ?? Infinity);
    return this.core.executions.wait(execution, ms, options.signal);
  }

  listExecutions(filter: ExecutionFilter): Page<ExecutionInfo> {
    if (filter.interpreterId) checkIdLength(filter.interpreterId, 'interpreter_id');
    return this.core.executions.list({ ...filter, tenant: tenantOf(filter) });
  }

  /**
   * Cancels the execution (see Execution.cancel) and answers it once it is DONE, or as it is
   * after CANCEL_SETTLE_MS (a cancelled run still storing what it registered, say).
   */
  async cancelExecution(id: string, tenant: string = DEFAULT_TENANT): Promise<ExecutionInfo> {
    const execution = this.core.executions.find(id, tenant);
    execution.cancel(new CancelReason('request', 'cancelled by CancelExecution'));
    return this.core.executions.wait(execution, CANCEL_SETTLE_MS);
  }

  async getInterpreter(id: string, tenant: string = DEFAULT_TENANT): Promise<{ interpreter: InterpreterInfo; registrations: RegistrationInfo[] }> {
    await this.catchUp(id);
    const interp = this.core.interpreters.own(id, tenant);
    if (interp) {
      const broken = interp.state === 'failed';
      return { interpreter: await interp.info(), registrations: [...interp.registrations.values()].map((r) => r.info(broken)) };
    }
    const tomb = this.core.interpreters.tombstone(id, tenant);
    if (tomb) return { interpreter: { ...tomb }, registrations: [] };
    throw new NotFoundError(`interpreter ${id} not found`);
  }

  async listInterpreters(filter: InterpreterFilter): Promise<Page<InterpreterInfo>> {
    const tenant = tenantOf(filter);
    const page = paginate(
      this.core.interpreters.values(),
      (i) => i.seq,
      (i) => i.tenant === tenant && (!filter.name || i.name === filter.name) && (!filter.mode || i.mode === filter.mode),
      filter,
    );
    return { items: await Promise.all(page.items.map((i) => i.info())), nextPageToken: page.nextPageToken };
  }

  listRegistrations(filter: RegistrationFilter): Page<RegistrationInfo> {
    if (filter.interpreterId) checkIdLength(filter.interpreterId, 'interpreter_id');
    const tenant = tenantOf(filter);
    const page = paginate(
      this.core.index.values(),
      (r) => r.seq,
      (r) => r.tenant === tenant && (!filter.trigger || r.trigger === filter.trigger) && (!filter.interpreterId || r.interpreterId === filter.interpreterId),
      filter,
    );
    return {
      items: page.items.map((r) => r.info(this.core.interpreters.get(r.interpreterId)?.state === 'failed')),
      nextPageToken: page.nextPageToken,
    };
  }

  counters(): ManagerCounters {
    const byState = { ready: 0, draining: 0, failed: 0 };
    const byMode = { shared: 0, isolate: 0 };
    const byModeAndState = { shared: { ready: 0, draining: 0, failed: 0 }, isolate: { ready: 0, draining: 0, failed: 0 } };
    const references = { registration: 0, execution: 0 };
    for (const i of this.core.interpreters.values()) {
      if (i.state !== 'disposed') {
        byState[i.state] += 1;
        byModeAndState[i.mode][i.state] += 1;
      }
      byMode[i.mode] += 1;
      references.registration += i.referencesOf('registration');
      references.execution += i.referencesOf('execution');
    }
    return {
      interpreters: this.core.interpreters.size,
      interpretersByState: byState,
      interpretersByMode: byMode,
      interpretersByModeAndState: byModeAndState,
      dedicatedIsolates: this.core.dedicated.size,
      sharedIsolates: this.core.shared.size,
      registrations: this.core.index.size,
      registrationsPaused: this.core.index.paused,
      sources: this.core.sources.counters(),
      references,
      executionsInFlight: this.core.runner.inFlight,
      executionsInFlightByMode: this.core.runner.inFlightByMode(),
      runsWaiting: this.core.admission.waiting,
      runSlotsInUse: this.core.admission.running,
      isolatesCreated: { dedicated: this.core.dedicated.tally.created, shared: this.core.shared.tally.created },
      isolatesDisposed: { dedicated: this.core.dedicated.tally.disposed, shared: this.core.shared.tally.disposed },
      warm: this.core.pool.stats(),
      codeCache: { entries: this.core.codeCache.size, bytes: this.core.codeCache.sizeBytes, hits: this.core.codeCache.hits, misses: this.core.codeCache.misses, rejected: this.core.codeCache.rejected },
      transpiles: { hits: this.core.transpiler.hits, misses: this.core.transpiler.misses },
      rollbacks: this.versions.rollbacks,
      executions: this.core.executions.counters(),
      extraSharedIsolates: this.core.shared.extra,
      watch: { streams: this.core.events.size, dropped: this.core.events.droppedTotal },
    };
  }

  /** Live interpreters and registrations of every tenant that has held any, for metrics. */
  tenantUsage(): Map<string, { interpreters: number; registrations: number }> {
    return this.core.ledger.snapshot();
  }

  /** Disposals by `<kind>:<reason>`, for metrics. */
  disposals(): Map<string, number> {
    const out = new Map<string, number>();
    for (const placement of [this.core.dedicated, this.core.shared]) {
      for (const [reason, n] of placement.tally.disposedByReason) out.set(`${placement.tally.kind}:${reason}`, n);
    }
    for (const [reason, n] of this.core.pool.stats().isolatesDisposed) out.set(`pooled:${reason}`, n);
    return out;
  }

  /** Heap in use summed over the live isolates of each kind (samples at most a few ms old). */
  async heapByKind(): Promise<Record<IsolateKind, number>> {
    const hosts = [...this.core.dedicated.hosts(), ...this.core.shared.hosts()].filter((h) => !h.disposed);
    const bytes = await Promise.all(hosts.map((h) => h.heapUsedBytes()));
    const out: Record<IsolateKind, number> = { dedicated: 0, shared: 0 };
    hosts.forEach((h, i) => (out[h.kind] += bytes[i]));
    return out;
  }

  /**
   * Rebuilds stored interpreters (at start-up, from what `load` reads): each recipe is replayed in
   * a fresh interpreter, `concurrency` at a time. A recipe that cannot be replayed is kept in the
   * store and its interpreter listed FAILED with its registrations (broken); none is dropped.
   */
  restore(load: () => Promise<InterpreterRecipe[]>, concurrency: number, onProgress?: (done: number, total: number) => void): Promise<RestoreStatus> {
    return this.core.restorer.restore(load, concurrency, onProgress);
  }

  /** While the start-up restore runs, how far it is (cheap: asked by every request). */
  restoreProgress(): { total: number; done: number } | undefined {
    return this.core.restorer.progress();
  }

  /** Restored and broken recipes so far (restore and replicas' changes), for status and metrics. */
  restoreStatus(): RestoreStatus {
    return this.core.restorer.status();
  }

  /** A recipe changed in a shared store: this server's copy is made to match (see ReplicaFollower). */
  applyStored(interpreterId: string, replacedBy?: string): Promise<void> {
    return this.core.follower.apply(interpreterId, replacedBy);
  }

  /** Compares every recipe (stored, or held here) again: changes may have been missed. */
  resync(concurrency = 4): Promise<void> {
    return this.core.follower.resync(concurrency);
  }

  /**
   * Stops taking work, disposes every isolate (runs still in flight end ABORTED) and waits for
   * those runs to report. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.closed) return;
    this.accepting = false;
    this.closed = true;
    this.core.events.closeAll(new UnavailableError('the server is shutting down'));
    // Queued background runs end now; running ones end as their isolates are disposed.
    this.core.executions.cancelBackground(new CancelReason('shutdown', 'the server shut down'));
    await closeCore(this.core);
    await this.core.executions.settled();
    this.core.executions.destroy();
  }

  /**
   * Shutdown begins: background runs are refused (UNAVAILABLE) while those accepted may finish,
   * and every watch ends (UNAVAILABLE) at once (a watch is no work to finish; an open one would
   * hold the server's graceful stop for its whole grace period).
   */
  stopAccepting(): void {
    this.accepting = false;
    // schedules fire no more and consumers stop reading; their runs going on may finish
    void this.core.sources.stop();
    this.core.events.closeAll(new UnavailableError('the server is shutting down'));
  }

  /** Resolves once every background run accepted so far has ended. */
  backgroundSettled(): Promise<void> {
    return this.core.executions.settled();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private assertOpen(): void {
    if (this.closed) throw new UnavailableError('the server is shutting down');
  }

  private assertAccepting(): void {
    if (this.closed || !this.accepting) throw new UnavailableError('the server is shutting down: it takes no new background executions');
  }
}
