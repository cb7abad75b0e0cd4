import { setMaxListeners } from 'node:events';
import { CodeCache } from '../sandbox/CodeCache';
import { Sandbox, SandboxCallError, type RunTuple } from '../sandbox/Sandbox';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  IllegalStateError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from './errors';
import { NameTakenError, type InterpreterRecipe, type RecipeStep } from '../store/types';
import { newExecutionId, newInterpreterId, newRegistrationPrefix, newStepId, newToken } from './ids';
import { Interpreter } from './Interpreter';
import { IsolateHost, type IsolateDisposeReason } from './IsolateHost';
import { isValidName, isValidSpecifier, isValidTrigger, TRIGGER_PATTERN } from './names';
import type { Reference } from './Reference';
import { Registration } from './Registration';
import { RunSlots, type RunSlotsRefusals, type Slot } from './RunSlots';
import { DEFAULT_TENANT, type QuotaName } from './tenants';
import { WarmPool, type WarmSandbox } from './WarmPool';
import type {
  ExecuteResult,
  ExecuteSpec,
  InterpreterFilter,
  InterpreterInfo,
  IsolateKind,
  IsolateManager,
  IsolationMode,
  JsonValue,
  Limits,
  ManagerCounters,
  ManagerOptions,
  Outcome,
  Page,
  BrokenRecipe,
  RestoreStatus,
  RegisterResult,
  RegisterSpec,
  RegistrationFilter,
  RegistrationInfo,
  ReleaseResult,
  ReleaseTarget,
  RunReport,
  ScriptError,
  TriggerRunResult,
  TriggerSpec,
} from './types';

/** isolated-vm stops synchronous code at the timeout itself; the host timer (for awaits) fires just after. */
const HOST_TIMER_SLACK_MS = 20;
const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;
const TOMBSTONES = 10_000;

/**
 * Names and triggers are per tenant: the maps that index them key on tenant and name together
 * (a newline cannot occur in a tenant, name or trigger).
 */
const scoped = (tenant: string, key: string): string => `${tenant}\n${key}`;
const tenantOf = (t: { tenant?: string }): string => t.tenant || DEFAULT_TENANT;

/** What one tenant holds, counted against its quotas. */
interface TenantUsage {
  /** Live interpreters, and those being created. */
  interpreters: number;
  registrations: number;
  /** Heap limits of its dedicated isolates (live and being created), in MB. */
  dedicatedMemoryMb: number;
  /** Its own admission for runs, while its concurrentRuns quota is below the server's. */
  gate?: RunSlots;
}

/** Refusals of a tenant's run admission name the quota, never the server-wide settings. */
const tenantRefusals = (tenant: string): RunSlotsRefusals => ({
  full: {
    limit: 'tenant_concurrent_runs',
    message: (o) => `tenant "${tenant}" has its quota of ${o.maxConcurrent} runs executing and ${o.maxQueued} more waiting (quota concurrentRuns); retry shortly`,
  },
  waited: {
    limit: 'tenant_concurrent_runs',
    message: (o) => `none of tenant "${tenant}"'s ${o.maxConcurrent} runs (quota concurrentRuns) ended within ${o.maxWaitMs} ms; retry later`,
  },
});

/** One slot made of two (the tenant's and the server's): released and held together. */
const bothSlots = (a: Slot, b: Slot): Slot => ({
  release: () => {
    b.release();
    a.release();
  },
  holdUntil: (work) => {
    a.holdUntil(work);
    b.holdUntil(work);
  },
});
const MIN_MEMORY_MB = 8;
/** How long past its timeout an isolate may sit on a call before it is declared stuck and disposed. */
const STUCK_GRACE_MS = 3000;
/**
 * A shared isolate that has settled no call for this long is busy with one long call, or wedged:
 * its warm contexts are not used (nor refilled) until it moves again.
 */
const WARM_PROGRESS_MS = 250;
const WARM_UP_TIMEOUT_MS = 1000;
const WATCHDOG_INTERVAL_MS = 500;
/** Run admission defaults (ISOGEAR_MAX_CONCURRENT_RUNS, ISOGEAR_MAX_QUEUED_RUNS, ISOGEAR_MAX_QUEUE_WAIT_MS). */
export const DEFAULT_MAX_CONCURRENT_RUNS = 64;
export const DEFAULT_MAX_QUEUED_RUNS = 256;
export const DEFAULT_MAX_QUEUE_WAIT_MS = 5000;
export const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
export const DEFAULT_WARM_ISOLATES = 16;
export const DEFAULT_WARM_CONTEXTS = 16;
export const DEFAULT_CODE_CACHE_BYTES = 32 * 1024 * 1024;
/** What a TriggerResult costs beyond its result, logs and error: ids, outcome, times. */
const RESULT_OVERHEAD_BYTES = 256;
/** Heap budgeted per shared-mode interpreter: an empty context costs about 170 KiB. */
const SHARED_CONTEXT_BUDGET_BYTES = 256 * 1024;
/** Share of a shared isolate's heap limit that placement fills before refusing new interpreters. */
const SHARED_FILL = 0.75;

interface ResolvedLimits {
  timeoutMs: number;
  memoryMb: number;
}

interface RunSetup {
  /**
   * Starts the run in the sandbox; resolves with its tuple or rejects with SandboxCallError.
   * `remainingMs()` is what is left of the run's budget; `active()` turns false once the run was
   * settled by the host timer or an abort, so a slow compile does not start code nobody awaits.
   */
  start(execId: string, remainingMs: () => number, active: () => boolean): Promise<RunTuple>;
  /** Token of a pending load, so an abandoned run's driver hook is dropped too. */
  token?: string;
}

/** The ids a rebuilt interpreter keeps. */
interface FixedIds {
  id: string;
  prefix: string;
}

type Settled =
  | { kind: 'tuple'; tuple: RunTuple }
  | { kind: 'error'; error: unknown }
  | { kind: 'timeout' }
  | { kind: 'aborted' };

/**
 * The isolate manager: creates interpreters on dedicated or shared isolates, counts their
 * references, runs executions and handler runs with limits, keeps registrations and the trigger
 * index, and disposes each interpreter the moment its last reference goes.
 *
 * Every change to the registration set (commit after a run, release, upgrade swap) happens in one
 * synchronous step, so a concurrent Trigger, which snapshots its registrations synchronously,
 * sees the set before or after the change, never a mix.
 */
export class InterpreterManager implements IsolateManager {
  private readonly interpreters = new Map<string, Interpreter>();
  private readonly registrations = new Map<string, Registration>();
  private readonly byTrigger = new Map<string, Registration[]>();
  private readonly names = new Map<string, Interpreter>();
  private readonly reservedNames = new Set<string>();
  private readonly tombstones = new Map<string, { tenant: string; info: InterpreterInfo }>();
  private readonly usage = new Map<string, TenantUsage>();
  private readonly shared: IsolateHost[] = [];
  private readonly dedicated = new Set<IsolateHost>();
  private readonly created: Record<IsolateKind, number> = { dedicated: 0, shared: 0 };
  private readonly disposedCount: Record<IsolateKind, number> = { dedicated: 0, shared: 0 };
  private readonly disposedByReason = new Map<string, number>();
  private readonly inFlightRuns = new Set<Promise<unknown>>();
  /** Store work per interpreter, in order (see serial). */
  private readonly chains = new Map<string, Promise<void>>();
  private restoring: { total: number; done: number } | undefined;
  private restoredCount = 0;
  private readonly broken = new Map<string, BrokenRecipe>();
  private storeFailures = 0;
  private creating = 0;
  private inFlight = 0;
  private readonly inFlightByMode: Record<IsolationMode, number> = { shared: 0, isolate: 0 };
  private seq = 0;
  private closed = false;
  private readonly watchdog: NodeJS.Timeout;
  private readonly slots: RunSlots;
  private readonly pool: WarmPool;
  private readonly codeCache: CodeCache;

  private constructor(private readonly options: ManagerOptions) {
    this.slots = new RunSlots({
      maxConcurrent: options.maxConcurrentRuns ?? DEFAULT_MAX_CONCURRENT_RUNS,
      maxQueued: options.maxQueuedRuns ?? DEFAULT_MAX_QUEUED_RUNS,
      maxWaitMs: options.maxQueueWaitMs ?? DEFAULT_MAX_QUEUE_WAIT_MS,
    });
    this.watchdog = setInterval(() => this.checkStuck(), WATCHDOG_INTERVAL_MS);
    this.watchdog.unref();
    this.codeCache = new CodeCache(options.codeCacheBytes ?? DEFAULT_CODE_CACHE_BYTES);
    this.pool = new WarmPool({
      isolates: options.warmIsolates ?? DEFAULT_WARM_ISOLATES,
      contextsPerShared: options.warmContextsPerShared ?? DEFAULT_WARM_CONTEXTS,
      memoryMb: options.defaultMemoryMb,
      newIsolate: (onDeath) => IsolateHost.create('dedicated', options.defaultMemoryMb, onDeath, options.onCatastrophicError),
      newSandbox: (host, id, prefix) => this.newWarmSandbox(host, id, prefix),
      sharedHosts: () => this.shared,
      idle: () => this.inFlight === 0 && this.creating === 0,
      hasRoomFor: (host, warm) => host.interpreterIds.size + warm < this.sharedCapacity() && host.isProgressing(performance.now(), WARM_PROGRESS_MS),
      onError: (err) => this.options.logger?.warn({ err }, 'warm pool: could not create an interpreter ahead of time'),
    });
  }

  /** Disposes isolates stuck in code no timeout guards; their interpreters go FAILED. */
  private checkStuck(): void {
    const now = performance.now();
    for (const host of [...this.shared, ...this.dedicated]) {
      if (!host.isStuck(now, STUCK_GRACE_MS)) continue;
      this.options.logger?.warn({ isolate: host.kind, interpreters: [...host.interpreterIds] }, 'isolate stopped responding; disposing it');
      host.noteDeath('unresponsive');
    }
  }

  static async create(options: ManagerOptions): Promise<InterpreterManager> {
    validateOptions(options);
    const manager = new InterpreterManager(options);
    for (let i = 0; i < options.sharedIsolates; i++) manager.shared.push(manager.newSharedHost());
    manager.pool.refill();
    return manager;
  }

  // ---------------------------------------------------------------- public API

  async execute(spec: ExecuteSpec, signal?: AbortSignal): Promise<ExecuteResult> {
    const since = performance.now();
    this.assertOpen();
    requireSource(spec.source, 'source');
    const modules = this.checkModules(spec.source, spec.modules);
    const argsJson = this.encodeValue(spec.args, 'args');
    const attach = spec.interpreterId !== undefined && spec.interpreterId !== '';
    if (attach && spec.mode !== undefined) {
      throw new InvalidArgumentError('mode and interpreter_id are exclusive: an existing interpreter keeps its mode');
    }
    if (attach && (spec.name || spec.replace)) {
      throw new InvalidArgumentError('name and replace apply to a new interpreter; they cannot be combined with interpreter_id');
    }
    if (spec.replace && !spec.name) throw new InvalidArgumentError('replace needs a name: it upgrades the interpreter with that name');
    if (spec.name !== undefined && spec.name !== '' && !isValidName(spec.name)) {
      throw new InvalidArgumentError('name must be 1-128 characters of letters, digits, "_", "." and "-", starting with a letter, digit or "_"');
    }
    const limits = this.resolveLimits(spec.limits);
    const name = spec.name ?? '';
    const tenant = tenantOf(spec);
    const slot = await this.acquireRun(tenant, signal);
    try {
      return await this.executeInSlot(spec, since, signal, modules, argsJson, attach, limits, name, tenant, slot);
    } finally {
      slot.release();
    }
  }

  private async executeInSlot(
    spec: ExecuteSpec,
    since: number,
    signal: AbortSignal | undefined,
    modules: Record<string, string>,
    argsJson: string,
    attach: boolean,
    limits: ResolvedLimits,
    name: string,
    tenant: string,
    slot: Slot,
  ): Promise<ExecuteResult> {
    this.assertOpen();
    let interp: Interpreter;
    let reserved = false;
    const nameKey = scoped(tenant, name);
    if (attach) {
      interp = this.attachable(spec.interpreterId as string, tenant);
    } else {
      if (name && !spec.replace) {
        if (this.names.has(nameKey) || this.reservedNames.has(nameKey)) {
          throw new AlreadyExistsError(`an interpreter named "${name}" already exists; set replace to upgrade it`);
        }
        this.reservedNames.add(nameKey);
        reserved = true;
      }
      try {
        interp = await this.createInterpreter(spec.mode ?? this.options.defaultMode, limits.memoryMb, spec.replace ? '' : name, tenant);
      } catch (err) {
        if (reserved) this.reservedNames.delete(nameKey);
        throw err;
      }
      if (reserved) {
        this.reservedNames.delete(nameKey);
        this.names.set(nameKey, interp);
      }
    }

    let committed: Registration[] = [];
    let overQuota: ResourceExhaustedError | undefined;
    let notStored: unknown;
    const token = newToken();
    const report = await this.run(
      interp,
      'execute',
      limits.timeoutMs,
      since,
      signal,
      {
        token,
        start: async (execId, remainingMs, active) => {
          const driver = await interp.sandbox.prepare(spec.source, modules, token);
          if (!active()) throw new SandboxCallError('script', { name: 'AbortError', message: 'the run ended before it started', stack: '' });
          return interp.sandbox.load(driver, execId, token, 'execute', argsJson, '', '', remainingMs());
        },
      },
      (tuple, r) => {
        if (r.outcome !== 'succeeded' || !tuple) return;
        if (tuple.registrations.length > 0) {
          overQuota = this.registrationQuotaRefusal(interp.tenant, tuple.registrations.length);
          if (overQuota) {
            interp.sandbox.abandon(r.executionId);
            return;
          }
        }
        const step = { kind: 'execute' as const, source: spec.source, modules, argsJson, timeoutMs: limits.timeoutMs };
        const done = this.commitStep(interp, tuple, r.executionId, step, spec.replace ? name : undefined, spec.replace ? () => this.swapName(name, interp) : undefined);
        if (Array.isArray(done)) committed = done;
        else return done.then((regs) => void (committed = regs), (err: unknown) => void (notStored = err));
      },
      undefined,
      slot,
    );
    // The script ran, but what it registered would pass the tenant's quota: none of it is kept.
    if (overQuota) throw overQuota;
    // The script ran, but its step could not be stored: none of it is kept.
    if (notStored) throw notStored;
    return {
      ...report,
      registrations: committed.map((r) => r.info(false)),
      interpreter: await interp.info(),
    };
  }

  async register(spec: RegisterSpec, signal?: AbortSignal): Promise<RegisterResult> {
    const since = performance.now();
    this.assertOpen();
    if (typeof spec.trigger !== 'string' || spec.trigger === '') throw new InvalidArgumentError('trigger must not be empty');
    if (!isValidTrigger(spec.trigger)) throw new InvalidArgumentError(`trigger must match /${TRIGGER_PATTERN}/`);
    requireSource(spec.source, 'source');
    const description = spec.description ?? '';
    if (description.length > 1024) throw new InvalidArgumentError('description must be at most 1024 characters');
    const modules = this.checkModules(spec.source, spec.modules);
    const attach = spec.interpreterId !== undefined && spec.interpreterId !== '';
    if (attach && spec.mode !== undefined) {
      throw new InvalidArgumentError('mode and interpreter_id are exclusive: an existing interpreter keeps its mode');
    }
    const limits = this.resolveLimits(spec.limits);
    const tenant = tenantOf(spec);
    const full = this.registrationQuotaRefusal(tenant, 1);
    if (full) throw full;
    const slot = await this.acquireRun(tenant, signal);
    try {
      return await this.registerInSlot(spec, since, signal, modules, description, attach, limits, slot);
    } finally {
      slot.release();
    }
  }

  private async registerInSlot(
    spec: RegisterSpec,
    since: number,
    signal: AbortSignal | undefined,
    modules: Record<string, string>,
    description: string,
    attach: boolean,
    limits: ResolvedLimits,
    slot: Slot,
  ): Promise<RegisterResult> {
    this.assertOpen();
    const tenant = tenantOf(spec);
    const interp = attach
      ? this.attachable(spec.interpreterId as string, tenant)
      : await this.createInterpreter(spec.mode ?? this.options.defaultMode, limits.memoryMb, '', tenant);
    const cap = this.options.maxRegistrationsPerInterpreter;
    if (attach && interp.registrations.size >= cap) {
      throw new ResourceExhaustedError(
        'max_registrations_per_interpreter',
        `interpreter ${interp.id} holds its maximum of ${cap} registrations (ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER); release some first`,
      );
    }

    let registration: Registration | undefined;
    let refused: string | undefined;
    let overQuota: ResourceExhaustedError | undefined;
    let notStored: unknown;
    const token = newToken();
    const report = await this.run(
      interp,
      'register',
      limits.timeoutMs,
      since,
      signal,
      {
        token,
        start: async (execId, remainingMs, active) => {
          const driver = await interp.sandbox.prepare(spec.source, modules, token);
          if (!active()) throw new SandboxCallError('script', { name: 'AbortError', message: 'the run ended before it started', stack: '' });
          return interp.sandbox.load(driver, execId, token, 'register', '', spec.trigger, description, remainingMs());
        },
      },
      (tuple, r) => {
        if (r.outcome !== 'succeeded' || !tuple) return;
        if (tuple.registrations.length !== 1 || tuple.registrations[0].trigger !== spec.trigger) {
          refused = 'the handler module registered other handlers while loading; use Execute for scripts that call gears.register';
          interp.sandbox.abandon(r.executionId);
          return;
        }
        if (!interp.accepting) {
          refused = `interpreter ${interp.id} was released while the handler loaded`;
          interp.sandbox.abandon(r.executionId);
          return;
        }
        overQuota = this.registrationQuotaRefusal(interp.tenant, 1);
        if (overQuota) {
          interp.sandbox.abandon(r.executionId);
          return;
        }
        const step = { kind: 'register' as const, source: spec.source, modules, trigger: spec.trigger, description, timeoutMs: limits.timeoutMs };
        const done = this.commitStep(interp, tuple, r.executionId, step);
        if (Array.isArray(done)) registration = done[0];
        else {
          return done.then(
            (regs) => {
              registration = regs[0];
              if (!registration) refused = `interpreter ${interp.id} was released while the handler loaded`;
            },
            (err: unknown) => void (notStored = err),
          );
        }
      },
      undefined,
      slot,
    );
    if (notStored) throw notStored;
    if (!registration) {
      if (overQuota) throw overQuota;
      if (refused) throw new FailedPreconditionError(refused);
      if (report.outcome === 'aborted') throw new UnavailableError('the run was aborted before the handler loaded');
      const why = report.error ? `${report.error.name}: ${report.error.message}` : report.outcome;
      throw new InvalidArgumentError(`source does not yield a handler (${outcomeText(report.outcome)}): ${why}`);
    }
    return { registration: registration.info(false), interpreter: await interp.info() };
  }

  async release(target: ReleaseTarget): Promise<ReleaseResult> {
    const { interp, regs } = this.releaseTarget(target);
    const store = this.options.store;
    if (!store || !interp.stored) return this.releaseNow(interp, regs);
    // Stored first, then gone here: a crash between the two leaves it released after the restore.
    const byInterpreter = 'interpreterId' in target;
    return this.serial(interp.id, async () => {
      // The registrations may have gone while this waited its turn (another Release, an
      // upgrade): it releases what is there then, and answers as if it had come after the other.
      const live = byInterpreter ? [...interp.registrations.values()] : regs.filter((r) => interp.registrations.get(r.id) === r);
      if (live.length === 0) {
        throw new NotFoundError(
          byInterpreter
            ? `interpreter ${interp.id} holds no registrations to release`
            : `registration ${regs[0].id} not found (unknown or already released)`,
        );
      }
      if (interp.stored) {
        const all = live.length === interp.registrations.size;
        try {
          if (all) await store.remove(interp.id);
          else await store.release(interp.id, live.map((r) => r.id));
        } catch (err) {
          throw this.storeFailure(err, 'the release');
        }
        if (all) {
          interp.stored = false;
          this.broken.delete(interp.id); // a broken one released: nothing of it is left to rebuild
        }
      }
      return this.releaseNow(interp, live);
    });
  }

  /** What a Release names: the registrations to drop and their interpreter (the caller's tenant's only). */
  private releaseTarget(target: ReleaseTarget): { interp: Interpreter; regs: Registration[] } {
    const tenant = tenantOf(target);
    if ('registrationId' in target) {
      checkIdLength(target.registrationId, 'registration_id');
      const found = this.registrations.get(target.registrationId);
      // another tenant's registration answers exactly like one that does not exist
      const reg = found?.tenant === tenant ? found : undefined;
      if (!reg) throw new NotFoundError(`registration ${target.registrationId} not found (unknown or already released)`);
      return { interp: this.mustInterpreter(reg.interpreterId), regs: [reg] };
    }
    checkIdLength(target.interpreterId, 'interpreter_id');
    const interp = this.ownInterpreter(target.interpreterId, tenant);
    if (!interp) throw new NotFoundError(`interpreter ${target.interpreterId} not found (unknown or already disposed)`);
    if (interp.registrations.size === 0) {
      throw new NotFoundError(`interpreter ${target.interpreterId} holds no registrations to release`);
    }
    return { interp, regs: [...interp.registrations.values()] };
  }

  private releaseNow(interp: Interpreter, regs: Registration[]): ReleaseResult {
    if (regs.length > 0) this.releaseRegistrations(interp, regs);
    return { releasedRegistrationIds: regs.map((r) => r.id), interpreter: interp.infoWithHeap(0) };
  }

  async trigger(spec: TriggerSpec, signal?: AbortSignal): Promise<TriggerRunResult[]> {
    this.assertOpen();
    if (typeof spec.trigger !== 'string' || spec.trigger === '') throw new InvalidArgumentError('trigger must not be empty');
    if (!isValidTrigger(spec.trigger)) throw new InvalidArgumentError(`trigger must match /${TRIGGER_PATTERN}/`);
    const payloadJson = this.encodeValue(spec.payload, 'payload');
    const limits = this.resolveLimits(spec.limits);
    const tenant = tenantOf(spec);
    const bound = this.byTrigger.get(scoped(tenant, spec.trigger));
    if (!bound || bound.length === 0) throw new NotFoundError(`no registration is bound to trigger "${spec.trigger}"`);
    // The snapshot and every run's execution reference are taken in this synchronous step; the
    // runs then start as run slots come free (ISOGEAR_MAX_CONCURRENT_RUNS).
    const snapshot = bound.slice();
    const held: (Reference | undefined)[] = snapshot.map((reg) => {
      const interp = this.interpreters.get(reg.interpreterId);
      return interp && interp.state !== 'failed' ? interp.acquire('execution') : undefined;
    });
    // One listener on the caller's signal, fanned out through our own: a trigger may run
    // thousands of handlers, each listening for the abort.
    const fanOut = new AbortController();
    setMaxListeners(0, fanOut.signal);
    const forward = (): void => fanOut.abort();
    if (signal?.aborted) fanOut.abort();
    else signal?.addEventListener('abort', forward, { once: true });
    const runs: Promise<TriggerRunResult>[] = [];
    // Each result is bounded (ISOGEAR_MAX_VALUE_BYTES, ISOGEAR_MAX_LOG_BYTES), but a fan-out to
    // thousands of handlers is not: results and logs past the response budget are withheld as
    // they arrive, so the response (and what is held to build it) stays bounded.
    const maxResponse = this.options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    let budget = maxResponse;
    const withinBudget = (r: TriggerRunResult): TriggerRunResult => {
      const bytes = RESULT_OVERHEAD_BYTES + (r.resultBytes ?? 0) + r.logs.reduce((n, l) => n + l.message.length + 8, 0) + (r.error ? r.error.message.length + r.error.stack.length : 0);
      if (bytes <= budget) {
        budget -= bytes;
        return r;
      }
      budget = Math.max(0, budget - RESULT_OVERHEAD_BYTES);
      return {
        ...r,
        result: null,
        resultBytes: 0,
        logs: [],
        logsTruncated: r.logsTruncated || r.logs.length > 0,
        error: {
          name: 'ResponseTooLargeError',
          message: `the handler's result and logs were withheld: the Trigger response reached its limit of ${maxResponse} bytes (ISOGEAR_MAX_RESPONSE_BYTES); the outcome is what the handler did`,
          stack: '',
        },
      };
    };
    try {
      for (let i = 0; i < snapshot.length; i++) {
        // The first slot is admitted like any request's; the rest wait behind it, one at a time.
        const slot = await this.acquireRun(tenant, fanOut.signal, i > 0);
        const ref = held[i];
        held[i] = undefined;
        runs.push(
          this.runHandler(snapshot[i], spec.trigger, payloadJson, limits.timeoutMs, fanOut.signal, ref, slot)
            .then(withinBudget)
            .finally(() => slot.release()),
        );
      }
      return await Promise.all(runs);
    } catch (err) {
      fanOut.abort();
      await Promise.allSettled(runs);
      throw err;
    } finally {
      signal?.removeEventListener('abort', forward);
      for (const ref of held) ref?.release();
    }
  }

  async getInterpreter(id: string, tenant: string = DEFAULT_TENANT): Promise<{ interpreter: InterpreterInfo; registrations: RegistrationInfo[] }> {
    checkIdLength(id, 'interpreter_id');
    const interp = this.ownInterpreter(id, tenant);
    if (interp) {
      const broken = interp.state === 'failed';
      return { interpreter: await interp.info(), registrations: [...interp.registrations.values()].map((r) => r.info(broken)) };
    }
    const tomb = this.ownTombstone(id, tenant);
    if (tomb) return { interpreter: { ...tomb }, registrations: [] };
    throw new NotFoundError(`interpreter ${id} not found`);
  }

  async listInterpreters(filter: InterpreterFilter): Promise<Page<InterpreterInfo>> {
    const tenant = tenantOf(filter);
    const page = paginate(
      this.interpreters.values(),
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
      this.registrations.values(),
      (r) => r.seq,
      (r) => r.tenant === tenant && (!filter.trigger || r.trigger === filter.trigger) && (!filter.interpreterId || r.interpreterId === filter.interpreterId),
      filter,
    );
    return {
      items: page.items.map((r) => r.info(this.interpreters.get(r.interpreterId)?.state === 'failed')),
      nextPageToken: page.nextPageToken,
    };
  }

  counters(): ManagerCounters {
    const byState = { ready: 0, draining: 0, failed: 0 };
    const byMode = { shared: 0, isolate: 0 };
    const byModeAndState = { shared: { ready: 0, draining: 0, failed: 0 }, isolate: { ready: 0, draining: 0, failed: 0 } };
    const references = { registration: 0, execution: 0 };
    for (const i of this.interpreters.values()) {
      if (i.state !== 'disposed') {
        byState[i.state] += 1;
        byModeAndState[i.mode][i.state] += 1;
      }
      byMode[i.mode] += 1;
      references.registration += i.referencesOf('registration');
      references.execution += i.referencesOf('execution');
    }
    return {
      interpreters: this.interpreters.size,
      interpretersByState: byState,
      interpretersByMode: byMode,
      interpretersByModeAndState: byModeAndState,
      dedicatedIsolates: this.dedicated.size,
      sharedIsolates: this.shared.filter((h) => !h.disposed).length,
      registrations: this.registrations.size,
      references,
      executionsInFlight: this.inFlight,
      executionsInFlightByMode: { ...this.inFlightByMode },
      runsWaiting: this.slots.queued,
      runSlotsInUse: this.slots.running,
      isolatesCreated: { ...this.created },
      isolatesDisposed: { ...this.disposedCount },
      warm: this.pool.stats(),
      codeCache: { entries: this.codeCache.size, bytes: this.codeCache.sizeBytes, hits: this.codeCache.hits, misses: this.codeCache.misses, rejected: this.codeCache.rejected },
    };
  }

  /** Live interpreters and registrations of every tenant that has held any, for metrics. */
  tenantUsage(): Map<string, { interpreters: number; registrations: number }> {
    const out = new Map<string, { interpreters: number; registrations: number }>();
    for (const [tenant, u] of this.usage) out.set(tenant, { interpreters: u.interpreters, registrations: u.registrations });
    return out;
  }

  /** Disposals by `<kind>:<reason>`, for metrics. */
  disposals(): Map<string, number> {
    const out = new Map(this.disposedByReason);
    for (const [reason, n] of this.pool.stats().isolatesDisposed) out.set(`pooled:${reason}`, n);
    return out;
  }

  /** Heap in use summed over the live isolates of each kind (samples at most a few ms old). */
  async heapByKind(): Promise<Record<IsolateKind, number>> {
    const hosts = [...this.dedicated, ...this.shared].filter((h) => !h.disposed);
    const bytes = await Promise.all(hosts.map((h) => h.heapUsedBytes()));
    const out: Record<IsolateKind, number> = { dedicated: 0, shared: 0 };
    hosts.forEach((h, i) => (out[h.kind] += bytes[i]));
    return out;
  }

  /**
   * Stops taking work, disposes every isolate (runs still in flight end ABORTED) and waits for
   * those runs to report. Idempotent.
   */
  async destroy(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    this.pool.destroy();
    for (const host of [...this.dedicated, ...this.shared]) host.dispose('shutdown');
    await Promise.allSettled([...this.inFlightRuns]);
    for (const interp of [...this.interpreters.values()]) {
      for (const reg of interp.registrations.values()) this.unindex(reg);
      interp.registrations.clear();
      interp.fail('the server shut down');
      this.interpreters.delete(interp.id);
    }
    this.names.clear();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  // ---------------------------------------------------------------- interpreters and isolates

  private newSharedHost(): IsolateHost {
    const host = IsolateHost.create('shared', this.options.sharedIsolateMemoryMb, this.onIsolateDeath, this.options.onCatastrophicError);
    this.created.shared += 1;
    return host;
  }

  private readonly onIsolateDeath = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    this.disposedCount[host.kind] += 1;
    const key = `${host.kind}:${reason}`;
    this.disposedByReason.set(key, (this.disposedByReason.get(key) ?? 0) + 1);
    if (host.kind === 'dedicated') this.dedicated.delete(host);
    if (reason !== 'released' && reason !== 'replaced' && reason !== 'shutdown') {
      const why =
        reason === 'memory_limit'
          ? 'its isolate exceeded its memory limit'
          : reason === 'unresponsive'
            ? 'its isolate stopped responding (a script ran code no timeout could stop) and was disposed'
            : 'its isolate was disposed while a script ran';
      this.options.logger?.warn({ isolate: host.kind, reason, interpreters: [...host.interpreterIds] }, 'isolate died');
      for (const id of [...host.interpreterIds]) {
        const interp = this.interpreters.get(id);
        if (!interp) continue;
        interp.fail(why);
        if (interp.references === 0) this.forget(interp);
      }
    }
    if (host.kind === 'shared' && !this.closed) {
      const slot = this.shared.indexOf(host);
      if (slot >= 0) this.shared[slot] = this.newSharedHost();
      this.pool.forgetHost(host);
    }
  };

  /** Interpreters (and warm contexts) one shared isolate may hold: its heap at SHARED_CONTEXT_BUDGET_BYTES each. */
  private sharedCapacity(): number {
    return Math.max(1, Math.floor((this.options.sharedIsolateMemoryMb * 1024 * 1024 * SHARED_FILL) / SHARED_CONTEXT_BUDGET_BYTES));
  }

  /**
   * The least loaded shared isolate that has room. A shared isolate's heap limit is shared by its
   * contexts, and isolated-vm disposes the whole isolate (every interpreter on it) when a burst of
   * new contexts overruns it; so each one takes at most as many interpreters as its limit holds
   * at SHARED_CONTEXT_BUDGET_BYTES each, and none while its last heap sample is nearly full.
   */
  private pickShared(): IsolateHost {
    for (const h of [...this.shared]) h.checkAlive();
    const limitBytes = this.options.sharedIsolateMemoryMb * 1024 * 1024;
    const perIsolate = this.sharedCapacity();
    let best: IsolateHost | undefined;
    for (const h of this.shared) {
      if (h.disposed || h.interpreterIds.size >= perIsolate) continue;
      const heap = h.lastHeapBytes;
      if (heap !== undefined && heap > limitBytes * SHARED_FILL) continue;
      if (
        !best ||
        h.interpreterIds.size < best.interpreterIds.size ||
        (h.interpreterIds.size === best.interpreterIds.size && h.inFlight < best.inFlight)
      ) {
        best = h;
      }
    }
    if (!best) {
      if (this.shared.every((h) => h.disposed)) throw new UnavailableError('no shared isolate is available');
      throw new ResourceExhaustedError(
        'shared_isolate_memory',
        `the shared isolates are full (${this.shared.length} × ${this.options.sharedIsolateMemoryMb} MB, at most ${perIsolate} interpreters each; ` +
          'ISOGEAR_SHARED_ISOLATES, ISOGEAR_SHARED_MEMORY_MB): release registrations or use ISOLATION_MODE_ISOLATE',
      );
    }
    return best;
  }

  /** A new interpreter for `tenant`, within its quotas (interpreters, dedicated isolate memory). */
  private async createInterpreter(mode: IsolationMode, memoryMb: number, name: string, tenant: string, fixed?: FixedIds): Promise<Interpreter> {
    // a rebuilt interpreter was admitted when it was created: its tenant's quotas count it, never refuse it
    const q = fixed ? undefined : this.quotas(tenant);
    const u = this.use(tenant);
    const memory = mode === 'isolate' ? memoryMb : 0;
    // a quota at or above the server's own limit cannot bind: that limit answers first
    if (q && q.interpreters < this.options.maxInterpreters && u.interpreters >= q.interpreters) {
      throw new ResourceExhaustedError(
        'tenant_interpreters',
        `tenant "${tenant}" holds its quota of ${q.interpreters} interpreters (quota interpreters); release registrations to free some`,
      );
    }
    if (q && memory > 0 && u.dedicatedMemoryMb + memory > q.dedicatedMemoryMb) {
      throw new ResourceExhaustedError(
        'tenant_dedicated_memory_mb',
        `tenant "${tenant}" holds dedicated isolates with ${u.dedicatedMemoryMb} MB of heap limits; ${memory} MB more would pass its quota of ${q.dedicatedMemoryMb} MB (quota dedicatedMemoryMb): release registrations, ask for a smaller memory_limit_mb or use shared mode`,
      );
    }
    u.interpreters += 1;
    u.dedicatedMemoryMb += memory;
    try {
      return await this.createInterpreterOnce(mode, memoryMb, name, tenant, 1, fixed);
    } catch (err) {
      u.interpreters -= 1;
      u.dedicatedMemoryMb -= memory;
      throw err;
    }
  }

  private async createInterpreterOnce(mode: IsolationMode, memoryMb: number, name: string, tenant: string, attempt = 1, fixed?: FixedIds): Promise<Interpreter> {
    if (this.interpreters.size + this.creating >= this.options.maxInterpreters) {
      throw new ResourceExhaustedError(
        'max_interpreters',
        `the server holds its maximum of ${this.options.maxInterpreters} interpreters (ISOGEAR_MAX_INTERPRETERS); release registrations to free some`,
      );
    }
    this.creating += 1;
    let host: IsolateHost | undefined;
    try {
      let warm: WarmSandbox | undefined;
      if (mode === 'isolate') {
        // a warm sandbox has its ids built in: a rebuilt interpreter needs its own
        warm = fixed ? undefined : this.pool.takeIsolate(memoryMb, this.onIsolateDeath);
        host = warm?.host ?? IsolateHost.create('dedicated', memoryMb, this.onIsolateDeath, this.options.onCatastrophicError);
        this.created.dedicated += 1;
        this.dedicated.add(host);
      } else {
        host = this.pickShared();
        warm = fixed ? undefined : this.pool.takeContext(host, host.isProgressing(performance.now(), WARM_PROGRESS_MS));
      }
      const id = fixed?.id ?? warm?.id ?? newInterpreterId();
      const prefix = fixed?.prefix ?? warm?.registrationPrefix ?? newRegistrationPrefix();
      host.interpreterIds.add(id);
      let sandbox: Sandbox;
      try {
        sandbox = warm?.sandbox ?? (await this.newSandbox(host, id, prefix));
      } catch (err) {
        host.interpreterIds.delete(id);
        if (host.kind === 'shared' && host.disposed && !this.closed && attempt < 2) {
          // the shared isolate died under us (another interpreter's memory kill): its slot has a
          // fresh isolate already, so try once more
          return this.createInterpreterOnce(mode, memoryMb, name, tenant, attempt + 1, fixed);
        }
        throw new UnavailableError(`could not create an interpreter: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      }
      if (this.closed) {
        sandbox.release();
        throw new UnavailableError('the server is shutting down');
      }
      const interp = new Interpreter(id, ++this.seq, mode, name, host, sandbox, prefix, this.onUnreferenced, tenant);
      this.interpreters.set(id, interp);
      return interp;
    } catch (err) {
      if (host && host.kind === 'dedicated') host.dispose('failed');
      throw err;
    } finally {
      this.creating -= 1;
    }
  }

  /**
   * A sandbox for the warm pool, with one internal load run through it: the first load in a fresh
   * isolate compiles the bootstrap's functions and warms V8's caches (about 0.6 ms of a first
   * request's time); here it is spent before anyone waits. The run leaves nothing behind: no
   * registrations, no pending run, nothing a script can reach.
   */
  private async newWarmSandbox(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox> {
    const sandbox = await this.newSandbox(host, id, registrationPrefix);
    try {
      const token = newToken();
      const driver = await sandbox.prepare('export default 0;', {}, token);
      const tuple = await sandbox.load(driver, newExecutionId(), token, 'execute', '', '', '', WARM_UP_TIMEOUT_MS);
      if (!tuple.ok) throw new Error(`the warm-up run failed: ${tuple.error?.message ?? tuple.code}`);
      return sandbox;
    } catch (err) {
      sandbox.release();
      throw err;
    }
  }

  /** A context with the bootstrap installed, for interpreter `id` on `host`. */
  private newSandbox(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox> {
    return Sandbox.create(
      host.isolate,
      {
        track: host.track,
        interpreterId: id,
        registrationPrefix,
        maxLogChars: this.options.maxLogBytes,
        triggerPattern: TRIGGER_PATTERN,
        maxResultChars: this.options.maxValueBytes,
        maxRegistrations: this.options.maxRegistrationsPerInterpreter,
        codeCache: this.codeCache,
      },
      host.bootstrapScript(),
    );
  }

  private readonly onUnreferenced = (interp: Interpreter): void => {
    this.forget(interp);
  };

  /** Removes an unreferenced interpreter: dispose its context (and dedicated isolate), keep a tombstone. */
  private forget(interp: Interpreter): void {
    if (!this.interpreters.has(interp.id)) return;
    this.interpreters.delete(interp.id);
    const nameKey = scoped(interp.tenant, interp.name);
    if (interp.name && this.names.get(nameKey) === interp) this.names.delete(nameKey);
    interp.markDisposed();
    interp.host.interpreterIds.delete(interp.id);
    const u = this.use(interp.tenant);
    u.interpreters -= 1;
    if (interp.mode === 'isolate') u.dedicatedMemoryMb -= interp.host.memoryLimitMb;
    if (interp.host.kind === 'dedicated') interp.host.dispose(interp.disposeReason);
    else this.pool.refill(); // room on a shared isolate: a warm context may take it
    this.tombstones.set(interp.id, { tenant: interp.tenant, info: interp.infoWithHeap(0) });
    if (this.tombstones.size > TOMBSTONES) {
      const oldest = this.tombstones.keys().next().value as string;
      this.tombstones.delete(oldest);
    }
  }

  // ---------------------------------------------------------------- tenants

  private use(tenant: string): TenantUsage {
    let u = this.usage.get(tenant);
    if (!u) {
      u = { interpreters: 0, registrations: 0, dedicatedMemoryMb: 0 };
      this.usage.set(tenant, u);
    }
    return u;
  }

  /** The tenant's quotas now (the keys file may have been reloaded), or undefined: none. */
  private quotas(tenant: string): Record<QuotaName, number> | undefined {
    return this.options.tenantQuotas?.(tenant);
  }

  /** The refusal for `adding` more registrations of `tenant`, when they would pass its quota. */
  private registrationQuotaRefusal(tenant: string, adding: number): ResourceExhaustedError | undefined {
    const q = this.quotas(tenant);
    const held = this.use(tenant).registrations;
    if (!q || held + adding <= q.registrations) return undefined;
    return new ResourceExhaustedError(
      'tenant_registrations',
      `tenant "${tenant}" holds ${held} registrations; ${adding} more would pass its quota of ${q.registrations} (quota registrations); release some first`,
    );
  }

  /**
   * A run slot for `tenant`: first one of its own (while its concurrentRuns quota is below the
   * server's limit, so a tenant at its quota waits, or is refused, without taking the server's
   * slots from anyone else), then one of the server's.
   */
  private async acquireRun(tenant: string, signal?: AbortSignal, admitted = false): Promise<Slot> {
    const limit = this.quotas(tenant)?.concurrentRuns;
    const server = this.options.maxConcurrentRuns ?? DEFAULT_MAX_CONCURRENT_RUNS;
    if (limit === undefined || limit >= server) return this.slots.acquire(signal, admitted);
    if (limit === 0) throw new ResourceExhaustedError('tenant_concurrent_runs', `tenant "${tenant}" may not run anything (its concurrentRuns quota is 0)`);
    const u = this.use(tenant);
    u.gate ??= new RunSlots({
      maxConcurrent: limit,
      maxQueued: this.options.maxQueuedRuns ?? DEFAULT_MAX_QUEUED_RUNS,
      maxWaitMs: this.options.maxQueueWaitMs ?? DEFAULT_MAX_QUEUE_WAIT_MS,
      refusals: tenantRefusals(tenant),
    });
    u.gate.setMaxConcurrent(limit);
    const own = await u.gate.acquire(signal, admitted);
    try {
      return bothSlots(own, await this.slots.acquire(signal, admitted));
    } catch (err) {
      own.release();
      throw err;
    }
  }

  /** A live interpreter of `tenant`; another tenant's is treated as absent (existence is not revealed). */
  private ownInterpreter(id: string, tenant: string): Interpreter | undefined {
    const interp = this.interpreters.get(id);
    return interp?.tenant === tenant ? interp : undefined;
  }

  private ownTombstone(id: string, tenant: string): InterpreterInfo | undefined {
    const tomb = this.tombstones.get(id);
    return tomb?.tenant === tenant ? tomb.info : undefined;
  }

  private attachable(id: string, tenant: string): Interpreter {
    checkIdLength(id, 'interpreter_id');
    const interp = this.ownInterpreter(id, tenant);
    if (!interp) {
      const tomb = this.ownTombstone(id, tenant);
      if (tomb) throw new FailedPreconditionError(`interpreter ${id} is ${tomb.state.toUpperCase()}`);
      throw new NotFoundError(`interpreter ${id} not found`);
    }
    if (interp.state === 'failed') throw new FailedPreconditionError(`interpreter ${id} is FAILED: ${interp.failureReason}`);
    if (interp.state === 'draining') {
      throw new FailedPreconditionError(`interpreter ${id} is DRAINING: its registrations were released and it is disposed when its runs end`);
    }
    return interp;
  }

  private mustInterpreter(id: string): Interpreter {
    const interp = this.interpreters.get(id);
    if (!interp) throw new IllegalStateError(`registration points at missing interpreter ${id}`);
    return interp;
  }

  // ---------------------------------------------------------------- registrations

  /** Makes a successful run's registrations live, in one synchronous step. */
  private commit(interp: Interpreter, tuple: RunTuple, execId: string): Registration[] {
    if (!interp.accepting) {
      interp.sandbox.abandon(execId);
      return [];
    }
    interp.sandbox.commit(execId);
    const out: Registration[] = [];
    for (const r of tuple.registrations) {
      const reg = new Registration(r.id, ++this.seq, r.trigger, interp.id, r.description, interp.acquire('registration'), interp.tenant);
      interp.registrations.set(reg.id, reg);
      this.index(reg);
      out.push(reg);
    }
    return out;
  }

  private index(reg: Registration): void {
    this.registrations.set(reg.id, reg);
    const key = scoped(reg.tenant, reg.trigger);
    const list = this.byTrigger.get(key);
    if (list) list.push(reg);
    else this.byTrigger.set(key, [reg]);
    this.use(reg.tenant).registrations += 1;
  }

  /**
   * The sandbox shares its context with user code, so what it reports is checked: registration
   * ids minted by this interpreter, unique, valid triggers, within the per-interpreter cap.
   * Returns why a run's registrations are refused, or undefined.
   */
  private invalidRegistration(interp: Interpreter, tuple: RunTuple): string | undefined {
    if (tuple.registrations.length === 0) return undefined;
    const prefix = `reg_${interp.registrationPrefix}`;
    const seen = new Set<string>();
    for (const r of tuple.registrations) {
      if (!r.id.startsWith(prefix) || seen.has(r.id) || this.registrations.has(r.id)) {
        return 'the interpreter reported a registration it did not create (the script tampered with the sandbox)';
      }
      if (!isValidTrigger(r.trigger)) return `gears.register: trigger ${JSON.stringify(r.trigger.slice(0, 64))} is not a valid trigger name`;
      seen.add(r.id);
    }
    if (interp.registrations.size + tuple.registrations.length > this.options.maxRegistrationsPerInterpreter) {
      return `the run registered more handlers than the ${this.options.maxRegistrationsPerInterpreter} one interpreter may hold`;
    }
    return undefined;
  }

  private unindex(reg: Registration): void {
    if (this.registrations.delete(reg.id)) this.use(reg.tenant).registrations -= 1;
    const key = scoped(reg.tenant, reg.trigger);
    const list = this.byTrigger.get(key);
    if (!list) return;
    const i = list.indexOf(reg);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byTrigger.delete(key);
  }

  /** Drops registrations of one interpreter: unindex all first, then release their references. */
  private releaseRegistrations(interp: Interpreter, regs: Registration[]): void {
    for (const reg of regs) {
      this.unindex(reg);
      interp.registrations.delete(reg.id);
    }
    if (interp.state === 'ready' || interp.state === 'draining') interp.sandbox.unregister(regs.map((r) => r.id));
    if (interp.registrations.size === 0 && interp.referencesOf('execution') > 0) interp.beginDraining();
    for (const reg of regs) reg.reference.release();
  }

  /** The upgrade commit point: the name moves to `next`, the old holder's registrations go. */
  private swapName(name: string, next: Interpreter): void {
    const key = scoped(next.tenant, name);
    const old = this.names.get(key);
    if (old && old !== next) {
      this.names.delete(key);
      old.name = '';
      old.disposeReason = 'replaced';
      if (old.registrations.size > 0) this.releaseRegistrations(old, [...old.registrations.values()]);
      this.options.logger?.warn({ name, from: old.id, to: next.id }, 'interpreter upgraded: the old one is released');
    }
    if (next.registrations.size > 0 && next.accepting) {
      next.name = name;
      this.names.set(key, next);
    }
  }

  // ---------------------------------------------------------------- durability

  /**
   * Commits a finished run's registrations, as `commit` does; with a store, once its step is
   * stored (the step is created with the interpreter's recipe, or appended to it). Synchronous
   * (an array) when nothing durable changes, a promise otherwise; the promise rejects, with
   * nothing kept, when the store refuses. `after` runs in the same synchronous step as the
   * commit (an upgrade's swap).
   */
  private commitStep(
    interp: Interpreter,
    tuple: RunTuple,
    execId: string,
    base: Omit<RecipeStep, 'id' | 'registrations'>,
    replaceName?: string,
    after?: () => void,
  ): Registration[] | Promise<Registration[]> {
    const store = this.options.store;
    const step: RecipeStep = {
      ...base,
      id: newStepId(),
      registrations: tuple.registrations.map((r) => ({ id: r.id, trigger: r.trigger, description: r.description })),
    };
    const n = step.registrations.length;
    const oldHolder = replaceName ? this.names.get(scoped(interp.tenant, replaceName)) : undefined;
    if (!store || (!interp.stored && n === 0 && !oldHolder?.stored)) {
      const out = this.commit(interp, tuple, execId);
      if (store && interp.accepting) this.noteStep(interp, step);
      after?.();
      return out;
    }
    const u = this.use(interp.tenant);
    u.registrations += n; // held for the step while it is written, so a concurrent request sees the quota used
    return this.serial(interp.id, async () => {
      if (!interp.accepting) {
        // released (or failed) while this waited its turn: nothing of it is kept, nor stored
        u.registrations -= n;
        const out = this.commit(interp, tuple, execId);
        after?.();
        return out;
      }
      let created = false;
      let replaced: string | undefined;
      try {
        if (interp.stored) await store.append(interp.id, step);
        else if (n > 0) {
          replaced = (await store.create(this.recipeOf(interp, step, replaceName ?? interp.name), replaceName !== undefined)).replaced;
          created = true;
          interp.stored = true;
          interp.steps.length = 0;
        } else if (oldHolder?.stored) {
          // an upgrade that registers nothing: the old holder of the name goes, and nothing replaces it
          await store.remove(oldHolder.id);
          oldHolder.stored = false;
        }
      } catch (err) {
        u.registrations -= n;
        interp.sandbox.abandon(execId);
        throw err instanceof NameTakenError
          ? new AlreadyExistsError(`an interpreter named "${err.interpreterName}" already exists; set replace to upgrade it`)
          : this.storeFailure(err, 'the registrations');
      }
      u.registrations -= n;
      const out = this.commit(interp, tuple, execId);
      if (out.length < n) {
        // stored, but the interpreter stopped taking registrations meanwhile (its isolate died)
        this.unstore(interp, created, step.registrations.map((r) => r.id));
      } else this.noteStep(interp, step);
      after?.();
      // another server's interpreter held the name: it went from the store with this step
      const other = replaced && replaced !== oldHolder?.id ? this.interpreters.get(replaced) : undefined;
      if (other) this.dropUnstored(other);
      return out;
    });
  }

  /** Undoes a stored step whose registrations could not be kept (best effort, logged). */
  private unstore(interp: Interpreter, created: boolean, ids: string[]): void {
    const store = this.options.store;
    if (!store) return;
    const undo = created ? store.remove(interp.id) : store.release(interp.id, ids);
    if (created) interp.stored = false;
    undo.catch((err: unknown) => this.options.logger?.error({ err, interpreterId: interp.id }, 'store: could not undo a step whose registrations were not kept'));
  }

  /** Its recipe left the store (another server released or replaced it): it goes here too. */
  private dropUnstored(interp: Interpreter): void {
    interp.stored = false;
    this.broken.delete(interp.id);
    const key = scoped(interp.tenant, interp.name);
    if (interp.name && this.names.get(key) === interp) {
      this.names.delete(key);
      interp.name = '';
    }
    if (interp.registrations.size > 0) this.releaseRegistrations(interp, [...interp.registrations.values()]);
  }

  /** Once the recipe is stored, the store has the steps: only their ids stay here (sources can be large). */
  private noteStep(interp: Interpreter, step: RecipeStep): void {
    if (!interp.stored) interp.steps.push(step);
    interp.stepIds.add(step.id);
  }

  private recipeOf(interp: Interpreter, step: RecipeStep, name: string): InterpreterRecipe {
    return {
      interpreterId: interp.id,
      tenant: interp.tenant,
      name,
      mode: interp.mode,
      memoryMb: interp.mode === 'isolate' ? interp.host.memoryLimitMb : 0,
      registrationPrefix: interp.registrationPrefix,
      createdAtMs: interp.createdAt.getTime(),
      steps: [...interp.steps, step],
      // registrations exist only once their step is stored: an interpreter not stored yet has released none
      released: [],
    };
  }

  private storeFailure(err: unknown, what: string): UnavailableError {
    const why = err instanceof Error ? err.message : String(err);
    this.options.logger?.error({ err, store: this.options.store?.description }, `store: ${what} could not be stored`);
    this.storeFailures += 1;
    return new UnavailableError(`${what} could not be stored, so nothing changed: ${why}; retry when the store is back`, { cause: err });
  }

  /** Runs store work of one interpreter in order: its writes, releases and replays never interleave. */
  private serial<T>(interpreterId: string, work: () => Promise<T>): Promise<T> {
    const before = this.chains.get(interpreterId) ?? Promise.resolve();
    const next = before.then(work);
    const tail = next.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(interpreterId, tail);
    void tail.then(() => {
      if (this.chains.get(interpreterId) === tail) this.chains.delete(interpreterId);
    });
    return next;
  }

  /**
   * Rebuilds stored interpreters (at start-up, from what `load` reads): each recipe is replayed in a fresh interpreter,
   * `concurrency` at a time. A recipe that cannot be replayed is kept in the store and its
   * interpreter listed FAILED with its registrations (broken); none is dropped.
   */
  async restore(load: () => Promise<InterpreterRecipe[]>, concurrency: number, onProgress?: (done: number, total: number) => void): Promise<RestoreStatus> {
    // requests wait from now on: none may see the registrations half restored
    const progress = { total: 0, done: 0 };
    this.restoring = progress;
    let recipes: InterpreterRecipe[];
    try {
      recipes = await load();
    } catch (err) {
      this.restoring = undefined;
      throw err;
    }
    progress.total = recipes.length;
    this.options.logger?.info({ interpreters: recipes.length, concurrency }, 'restore: rebuilding stored interpreters from their recipes');
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < recipes.length && !this.closed) {
        const recipe = recipes[next++];
        await this.serial(recipe.interpreterId, () => this.restoreOne(recipe, 'restore'));
        progress.done += 1;
        onProgress?.(progress.done, recipes.length);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, recipes.length)) }, worker));
    this.restoring = undefined;
    return this.restoreStatus();
  }

  /** While the start-up restore runs, how far it is (cheap: asked by every request). */
  restoreProgress(): { total: number; done: number } | undefined {
    return this.restoring;
  }

  /** Restored and broken recipes so far (restore and replicas' changes), for status and metrics. */
  restoreStatus(): RestoreStatus {
    return {
      restored: this.restoredCount,
      broken: [...this.broken.values()],
      restoring: this.restoring ? { ...this.restoring } : undefined,
      storeWriteFailures: this.storeFailures,
    };
  }

  private async restoreOne(recipe: InterpreterRecipe, why: 'restore' | 'replica'): Promise<void> {
    if (this.closed || this.interpreters.has(recipe.interpreterId)) return;
    const since = performance.now();
    let interp: Interpreter;
    try {
      interp = await this.createInterpreter(recipe.mode, recipe.memoryMb || this.options.defaultMemoryMb, '', recipe.tenant, {
        id: recipe.interpreterId,
        prefix: recipe.registrationPrefix,
      });
    } catch (err) {
      // No interpreter to list it under (the server is full): it stays stored for the next start.
      if (this.closed) return;
      const reason = `no interpreter could be created for it: ${err instanceof Error ? err.message : String(err)}`;
      this.noteBroken(recipe, reason);
      return;
    }
    interp.stored = true;
    interp.createdAt = new Date(recipe.createdAtMs);
    // held through the replay: a step that registers nothing must not dispose it
    const hold = interp.acquire('execution');
    try {
      // the name moves with the last step's commit, in one synchronous step: on a replica that
      // follows an upgrade, a Trigger sees the old holder's handlers or the new ones, never both
      const claim = (): void => {
        if (recipe.name) this.claimName(interp, recipe.name);
      };
      const failed = await this.replaySteps(interp, recipe, claim);
      if (failed) {
        claim();
        this.breakInterpreter(interp, recipe, `restore failed: ${failed}`);
        return;
      }
      this.applyReleased(interp, recipe.released);
      this.restoredCount += 1;
      this.broken.delete(recipe.interpreterId);
      this.options.logger?.debug(
        { interpreterId: interp.id, tenant: interp.tenant, steps: recipe.steps.length, registrations: interp.registrations.size, ms: Math.round(performance.now() - since), why },
        'interpreter rebuilt from its recipe',
      );
    } finally {
      hold.release();
      if (interp.registrations.size === 0 && interp.stored && this.options.store) {
        // every registration of it was released: nothing to keep
        interp.stored = false;
        this.options.store.remove(interp.id).catch((err: unknown) => this.options.logger?.warn({ err, interpreterId: interp.id }, 'store: could not remove a recipe whose registrations were all released'));
      }
    }
  }

  /** Replays the steps of `recipe` this interpreter has not run, in order; returns why one failed. */
  private async replaySteps(interp: Interpreter, recipe: InterpreterRecipe, atLast?: () => void): Promise<string | undefined> {
    for (let k = 0; k < recipe.steps.length; k++) {
      const step = recipe.steps[k];
      if (interp.stepIds.has(step.id)) continue;
      const why = await this.replayStep(interp, step, k === recipe.steps.length - 1 ? atLast : undefined);
      if (why) return `step ${k + 1} of ${recipe.steps.length} (${step.kind}) ${why}`;
    }
    return undefined;
  }

  /** Replays one step; `onCommit` runs in the same synchronous step as its commit. */
  private async replayStep(interp: Interpreter, step: RecipeStep, onCommit?: () => void): Promise<string | undefined> {
    if (!interp.accepting) return `could not run: interpreter ${interp.id} is ${interp.state.toUpperCase()}`;
    const ids = step.registrations.map((r) => r.id);
    if (step.kind === 'trigger' && !interp.registrations.has(step.handlerId ?? '')) {
      return `could not run: its handler ${step.handlerId ?? ''} is not registered`;
    }
    const token = newToken();
    const setup: RunSetup =
      step.kind === 'trigger'
        ? { start: (execId, remainingMs) => interp.sandbox.invoke(execId, step.handlerId ?? '', step.payloadJson ?? '', step.trigger ?? '', remainingMs(), ids) }
        : {
            token,
            start: async (execId, remainingMs, active) => {
              const driver = await interp.sandbox.prepare(step.source ?? '', step.modules ?? {}, token);
              if (!active()) throw new SandboxCallError('script', { name: 'AbortError', message: 'the run ended before it started', stack: '' });
              const kind = step.kind === 'register' ? 'register' : 'execute';
              return interp.sandbox.load(driver, execId, token, kind, step.argsJson ?? '', step.trigger ?? '', step.description ?? '', remainingMs(), ids);
            },
          };
    let why: string | undefined;
    const label = (rs: { id: string; trigger: string }[]): string => `[${rs.map((r) => `${r.trigger} as ${r.id}`).join(', ')}]`;
    await this.run(interp, step.kind, step.timeoutMs, performance.now(), undefined, setup, (tuple, r) => {
      if (r.outcome !== 'succeeded' || !tuple) {
        why = `${outcomeText(r.outcome)}: ${r.error ? `${r.error.name}: ${r.error.message}` : 'no result'}`;
        return;
      }
      const got = tuple.registrations.map((x) => `${x.id}\n${x.trigger}`).join('\n');
      const want = step.registrations.map((x) => `${x.id}\n${x.trigger}`).join('\n');
      if (got !== want) {
        interp.sandbox.abandon(r.executionId);
        why = `registered ${label(tuple.registrations)} where it first registered ${label(step.registrations)}`;
        return;
      }
      if (this.commit(interp, tuple, r.executionId).length !== ids.length) why = 'stopped taking registrations';
      else onCommit?.();
    });
    if (!why) this.noteStep(interp, step);
    return why;
  }

  /** Releases, here, stored registrations the recipe marks released. */
  private applyReleased(interp: Interpreter, released: string[]): void {
    const gone = released.map((id) => interp.registrations.get(id)).filter((r): r is Registration => r !== undefined);
    if (gone.length > 0) this.releaseRegistrations(interp, gone);
  }

  /** The name goes to `interp`; a holder here that the store no longer has (it was replaced elsewhere) goes. */
  private claimName(interp: Interpreter, name: string): void {
    const key = scoped(interp.tenant, name);
    const old = this.names.get(key);
    if (old === interp) return;
    if (old) {
      old.disposeReason = 'replaced';
      this.dropUnstored(old);
    }
    interp.name = name;
    this.names.set(key, interp);
  }

  /**
   * A recipe that cannot be replayed: its interpreter goes FAILED (with `reason`) and lists every
   * registration the recipe holds as broken; it stays in the store, and a Release removes it.
   */
  private breakInterpreter(interp: Interpreter, recipe: InterpreterRecipe, reason: string): void {
    interp.fail(reason);
    const released = new Set(recipe.released);
    for (const step of recipe.steps) {
      for (const r of step.registrations) {
        if (released.has(r.id) || this.registrations.has(r.id)) continue;
        const reg = new Registration(r.id, ++this.seq, r.trigger, interp.id, r.description, interp.acquire('registration'), interp.tenant);
        interp.registrations.set(reg.id, reg);
        this.index(reg);
      }
    }
    this.applyReleased(interp, recipe.released);
    this.noteBroken(recipe, reason);
  }

  private noteBroken(recipe: InterpreterRecipe, reason: string): void {
    this.broken.set(recipe.interpreterId, { interpreterId: recipe.interpreterId, tenant: recipe.tenant, name: recipe.name, reason });
    this.options.logger?.error({ interpreterId: recipe.interpreterId, tenant: recipe.tenant, name: recipe.name, reason }, 'stored interpreter is broken: it could not be rebuilt');
  }

  /**
   * A recipe changed in a shared store (another server, or this one, wrote it): this server's copy
   * is made to match. New recipes are rebuilt, new steps replayed, released registrations released,
   * removed recipes dropped (`replacedBy`: the recipe whose upgrade removed it). Idempotent.
   */
  applyStored(interpreterId: string, replacedBy?: string): Promise<void> {
    return this.serial(interpreterId, async () => {
      const store = this.options.store;
      if (!store || this.closed) return;
      const recipe = await store.load(interpreterId);
      const local = this.interpreters.get(interpreterId);
      if (!recipe) {
        // An upgrade elsewhere removed it: rebuild its successor first, which takes the name and
        // drops this one in the same step as its last commit (never both sets, nor neither).
        // The successor's work never waits on this one's, so this cannot deadlock.
        if (local?.stored && replacedBy && local.name) await this.applyStored(replacedBy);
        if (local?.stored) this.dropUnstored(local);
        return;
      }
      if (!local) return this.restoreOne(recipe, 'replica');
      if (!local.stored || local.tenant !== recipe.tenant) return;
      const hold = local.acquire('execution');
      try {
        if (recipe.name && local.name !== recipe.name) this.claimName(local, recipe.name);
        if (local.state !== 'failed') {
          const failed = await this.replaySteps(local, recipe);
          if (failed) this.breakInterpreter(local, recipe, `its copy here diverged from the stored recipe: ${failed}`);
        }
        this.applyReleased(local, recipe.released);
      } finally {
        hold.release();
      }
    });
  }

  /** Compares every recipe (stored, or held here) again: changes may have been missed. */
  async resync(concurrency = 4): Promise<void> {
    const store = this.options.store;
    if (!store) return;
    const ids = new Set((await store.loadAll()).map((r) => r.interpreterId));
    for (const i of this.interpreters.values()) if (i.stored) ids.add(i.id);
    const all = [...ids];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < all.length && !this.closed) await this.applyStored(all[next++]);
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, all.length)) }, worker));
  }

  // ---------------------------------------------------------------- runs

  private async runHandler(
    reg: Registration,
    trigger: string,
    payloadJson: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
    held: Reference | undefined,
    slot: Slot,
  ): Promise<TriggerRunResult> {
    const interp = this.interpreters.get(reg.interpreterId);
    const released = !this.registrations.has(reg.id);
    if (!held || !interp || interp.state === 'failed' || released) {
      held?.release();
      // Released while this run waited for a run slot: the handler is gone, so it is not run.
      const error: ScriptError = released
        ? { name: 'RegistrationReleasedError', message: `registration ${reg.id} was released before its run started`, stack: '' }
        : {
            name: 'InterpreterFailedError',
            message: `interpreter ${reg.interpreterId} is FAILED${interp ? ` (${interp.failureReason})` : ''}; release this registration`,
            stack: '',
          };
      if (!released) reg.recordRun(false, 0, error);
      return {
        registrationId: reg.id,
        executionId: '',
        interpreterId: reg.interpreterId,
        outcome: released ? 'aborted' : 'failed',
        result: null,
        error,
        logs: [],
        logsTruncated: false,
        wallTimeMs: 0,
        cpuTimeMs: 0,
      };
    }
    const report = await this.run(
      interp,
      'trigger',
      timeoutMs,
      performance.now(),
      signal,
      { start: (execId, remainingMs) => interp.sandbox.invoke(execId, reg.id, payloadJson, trigger, remainingMs()) },
      (tuple, r) => {
        if (r.outcome !== 'succeeded' || !tuple || tuple.registrations.length === 0) return;
        const fail = (name: string, message: string): void => {
          r.outcome = 'failed';
          r.result = null;
          r.error = { name, message, stack: '' };
        };
        const over = this.registrationQuotaRefusal(interp.tenant, tuple.registrations.length);
        if (over) {
          interp.sandbox.abandon(r.executionId);
          fail('ResourceExhaustedError', over.message);
          return;
        }
        const step = { kind: 'trigger' as const, handlerId: reg.id, trigger, payloadJson, timeoutMs };
        const done = this.commitStep(interp, tuple, r.executionId, step);
        if (!Array.isArray(done)) {
          return done.then(
            () => undefined,
            (err: unknown) => fail('StoreError', err instanceof Error ? err.message : String(err)),
          );
        }
      },
      held,
      slot,
    );
    reg.recordRun(report.outcome === 'succeeded', report.wallTimeMs, report.error);
    return { ...report, registrationId: reg.id };
  }

  /**
   * Runs code in an interpreter under an execution reference: enforces the wall-clock timeout
   * (isolated-vm's own timeout stops synchronous code and microtask loops; this timer stops waits
   * on promises), honours the abort signal, classifies how the run ended, and calls `onSettled`
   * synchronously, while the execution reference is still held, so its commit is atomic.
   * The timeout counts from the start of the run; reported wall time counts from `since` (the
   * request's start, interpreter creation included).
   */
  private async run(
    interp: Interpreter,
    kind: 'execute' | 'register' | 'trigger',
    timeoutMs: number,
    since: number,
    signal: AbortSignal | undefined,
    setup: RunSetup,
    onSettled: (tuple: RunTuple | undefined, report: RunReport) => void | Promise<void>,
    held?: Reference,
    slot?: Slot,
  ): Promise<RunReport> {
    const execId = newExecutionId();
    const ref = held ?? interp.acquire('execution');
    const host = interp.host;
    this.inFlight += 1;
    this.inFlightByMode[interp.mode] += 1;
    host.inFlight += 1;
    let ended: Outcome = 'failed';
    const started = performance.now();
    const cpuStart = host.cpuTimeMs();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let active = true;
    const remainingMs = (): number => Math.max(1, Math.ceil(timeoutMs - (performance.now() - started)));
    const settledPromise = new Promise<Settled>((resolve) => {
      const settle = (s: Settled): void => {
        active = false;
        resolve(s);
      };
      timer = setTimeout(() => settle({ kind: 'timeout' }), timeoutMs + HOST_TIMER_SLACK_MS);
      if (signal) {
        if (signal.aborted) settle({ kind: 'aborted' });
        onAbort = () => settle({ kind: 'aborted' });
        signal.addEventListener('abort', onAbort, { once: true });
      }
      if (!active) return;
      const call = setup.start(execId, remainingMs, () => active);
      // The slot stays taken until the isolate call really returns: a run the caller gave up on
      // keeps its isolate busy until its own timeout (isolated-vm cannot interrupt it otherwise).
      slot?.holdUntil(call);
      call.then(
        (tuple) => settle({ kind: 'tuple', tuple }),
        (error: unknown) => settle({ kind: 'error', error }),
      );
    });
    this.inFlightRuns.add(settledPromise);
    try {
      const settled = await settledPromise;
      const wallTimeMs = performance.now() - since;
      const cpuTimeMs = Math.max(0, host.cpuTimeMs() - cpuStart);
      interp.cpuTimeMs += cpuTimeMs;
      const report: RunReport = {
        executionId: execId,
        interpreterId: interp.id,
        outcome: 'succeeded',
        result: null,
        logs: [],
        logsTruncated: false,
        wallTimeMs,
        cpuTimeMs,
      };
      let tuple: RunTuple | undefined;
      switch (settled.kind) {
        case 'tuple': {
          tuple = settled.tuple;
          report.logs = tuple.logs;
          report.logsTruncated = tuple.logsTruncated;
          const invalid = tuple.ok ? this.invalidRegistration(interp, tuple) : undefined;
          if (invalid) {
            report.outcome = 'failed';
            report.error = { name: 'Error', message: invalid, stack: '' };
            interp.sandbox.abandon(execId);
          } else if (tuple.ok) {
            const parsed = this.decodeResult(tuple.valueJson as string);
            if (parsed.ok) {
              report.result = parsed.value;
              report.resultBytes = Buffer.byteLength(tuple.valueJson as string, 'utf8');
            }
            else {
              report.outcome = 'failed';
              report.error = parsed.error;
              interp.sandbox.abandon(execId);
            }
          } else if (tuple.code === 'abandoned') {
            report.outcome = 'aborted';
            report.error = { name: 'AbortError', message: 'the run was abandoned', stack: '' };
          } else {
            report.outcome = 'failed';
            report.error = tuple.error ?? { name: 'Error', message: 'the script failed', stack: '' };
          }
          break;
        }
        case 'error': {
          const err = settled.error;
          if (!(err instanceof SandboxCallError)) throw err;
          switch (err.kind) {
            case 'timeout':
              report.outcome = 'timed_out';
              report.error = { ...err.scriptError, message: `script execution timed out after ${timeoutMs} ms` };
              interp.sandbox.abandon(execId, setup.token);
              break;
            case 'memory':
              this.options.logger?.warn(
                { executionId: execId, interpreterId: interp.id, isolate: host.kind, memoryLimitMb: host.memoryLimitMb },
                'memory limit exceeded: isolate disposed',
              );
              report.outcome = 'memory_exceeded';
              report.error = {
                name: 'MemoryLimitError',
                message: `the isolate exceeded its memory limit of ${host.memoryLimitMb} MB and was disposed; interpreter ${interp.id} is FAILED`,
                stack: '',
              };
              host.noteDeath('memory_limit');
              break;
            case 'disposed':
              host.noteDeath(this.closed ? 'shutdown' : 'failed');
              report.outcome = host.reason === 'memory_limit' && host.kind === 'dedicated' ? 'memory_exceeded' : 'aborted';
              report.error = {
                name: 'IsolateDisposedError',
                message:
                  host.reason === 'shutdown'
                    ? 'the server shut down while the script ran'
                    : host.reason === 'memory_limit'
                      ? `the isolate hosting interpreter ${interp.id} exceeded its memory limit and was disposed`
                      : `the isolate hosting interpreter ${interp.id} was disposed while the script ran`,
                stack: '',
              };
              break;
            case 'script':
              report.outcome = 'failed';
              report.error = err.scriptError;
              interp.sandbox.abandon(execId, setup.token);
              break;
          }
          break;
        }
        case 'timeout':
          report.outcome = 'timed_out';
          report.error = { name: 'TimeoutError', message: `script did not finish within ${timeoutMs} ms`, stack: '' };
          interp.sandbox.abandon(execId, setup.token);
          break;
        case 'aborted':
          report.outcome = 'aborted';
          report.error = { name: 'AbortError', message: 'the caller cancelled the run', stack: '' };
          interp.sandbox.abandon(execId, setup.token);
          break;
      }
      // A run the sandbox finished but the host refused (late, invalid result) leaves nothing behind.
      if (report.outcome !== 'succeeded' && tuple?.ok) interp.sandbox.abandon(execId);
      if (report.logs.length > 0) {
        this.options.logger?.debug({ executionId: execId, interpreterId: interp.id, logs: report.logs, truncated: report.logsTruncated }, 'script console');
      }
      // A step that must be stored first is committed once it is (the references are still held).
      const storing = onSettled(tuple, report);
      if (storing) await storing;
      ended = report.outcome;
      if (kind !== 'register' && report.outcome !== 'succeeded') {
        this.options.logger?.debug({ executionId: execId, interpreterId: interp.id, outcome: report.outcome }, 'run did not succeed');
      }
      return report;
    } finally {
      clearTimeout(timer);
      if (signal && onAbort) signal.removeEventListener('abort', onAbort);
      this.inFlightRuns.delete(settledPromise);
      this.inFlight -= 1;
      this.inFlightByMode[interp.mode] -= 1;
      host.inFlight -= 1;
      ref.release();
      this.pool.refill(true);
      this.options.onRunEnd?.({ tenant: interp.tenant, mode: interp.mode, kind: kind === 'trigger' ? 'trigger' : 'execute', outcome: ended, wallTimeMs: performance.now() - since });
    }
  }

  // ---------------------------------------------------------------- validation helpers

  private assertOpen(): void {
    if (this.closed) throw new UnavailableError('the server is shutting down');
  }

  private resolveLimits(limits: Limits | undefined): ResolvedLimits {
    const o = this.options;
    const timeoutMs = limits?.timeoutMs || o.defaultTimeoutMs;
    const memoryMb = limits?.memoryLimitMb || o.defaultMemoryMb;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new InvalidArgumentError('limits.timeout_ms must be a positive integer');
    if (timeoutMs > o.maxTimeoutMs) {
      throw new InvalidArgumentError(`limits.timeout_ms ${timeoutMs} is over the server maximum of ${o.maxTimeoutMs}`);
    }
    if (!Number.isInteger(memoryMb) || memoryMb < MIN_MEMORY_MB) {
      throw new InvalidArgumentError(`limits.memory_limit_mb must be at least ${MIN_MEMORY_MB}`);
    }
    if (memoryMb > o.maxMemoryMb) {
      throw new InvalidArgumentError(`limits.memory_limit_mb ${memoryMb} is over the server maximum of ${o.maxMemoryMb}`);
    }
    return { timeoutMs, memoryMb };
  }

  private checkModules(source: string, modules: Record<string, string> | undefined): Record<string, string> {
    const map = modules ?? {};
    let bytes = Buffer.byteLength(source, 'utf8');
    for (const [specifier, text] of Object.entries(map)) {
      if (!isValidSpecifier(specifier)) {
        throw new InvalidArgumentError(`module specifier ${JSON.stringify(specifier.slice(0, 64))} must be 1-256 characters without control characters`);
      }
      if (specifier.startsWith('isogear:')) throw new InvalidArgumentError(`module specifier "${specifier}" is reserved`);
      if (typeof text !== 'string') throw new InvalidArgumentError(`module "${specifier}" must be a string`);
      bytes += Buffer.byteLength(text, 'utf8') + Buffer.byteLength(specifier, 'utf8');
    }
    if (bytes > this.options.maxSourceBytes) {
      throw new InvalidArgumentError(
        `source plus modules is ${bytes} bytes, over the limit of ${this.options.maxSourceBytes} bytes (ISOGEAR_MAX_SOURCE_BYTES)`,
      );
    }
    return map;
  }

  private encodeValue(value: JsonValue | undefined, field: string): string {
    if (value === undefined) return '';
    let json: string;
    try {
      json = JSON.stringify(value);
    } catch (err) {
      throw new InvalidArgumentError(`${field} is not a JSON value: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (Buffer.byteLength(json, 'utf8') > this.options.maxValueBytes) {
      throw new InvalidArgumentError(`${field} is larger than ${this.options.maxValueBytes} bytes of JSON`);
    }
    return json;
  }

  private decodeResult(json: string): { ok: true; value: JsonValue } | { ok: false; error: ScriptError } {
    if (Buffer.byteLength(json, 'utf8') > this.options.maxValueBytes) {
      return {
        ok: false,
        error: { name: 'RangeError', message: `result is larger than ${this.options.maxValueBytes} bytes of JSON`, stack: '' },
      };
    }
    try {
      return { ok: true, value: JSON.parse(json) as JsonValue };
    } catch {
      return { ok: false, error: { name: 'TypeError', message: 'result is not valid JSON', stack: '' } };
    }
  }
}

function requireSource(source: unknown, field: string): void {
  if (typeof source !== 'string' || source.trim() === '') throw new InvalidArgumentError(`${field} must not be empty`);
}

function outcomeText(outcome: string): string {
  return outcome.replace('_', ' ');
}

/** isogear's ids are about 40 characters; anything far longer is refused before it is echoed. */
const MAX_ID_CHARS = 128;

function checkIdLength(id: string, field: string): void {
  if (id.length > MAX_ID_CHARS) {
    throw new InvalidArgumentError(`${field} is ${id.length} characters long; isogear ids are at most ${MAX_ID_CHARS}`);
  }
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

function encodeToken(seq: number): string {
  return Buffer.from(`s:${seq}`).toString('base64url');
}

function decodeToken(token: string): number {
  const text = Buffer.from(token, 'base64url').toString('utf8');
  const m = /^s:(\d{1,15})$/.exec(text);
  if (!m) throw new InvalidArgumentError('page_token is not a token this server issued');
  return Number(m[1]);
}

function paginate<T>(items: Iterable<T>, seqOf: (t: T) => number, keep: (t: T) => boolean, req: { pageSize?: number; pageToken?: string }): Page<T> {
  const size = req.pageSize ?? 0;
  if (!Number.isInteger(size) || size < 0) throw new InvalidArgumentError('page_size must not be negative');
  if (size > MAX_PAGE_SIZE) throw new InvalidArgumentError(`page_size must be at most ${MAX_PAGE_SIZE}`);
  const limit = size === 0 ? DEFAULT_PAGE_SIZE : size;
  const after = req.pageToken ? decodeToken(req.pageToken) : 0;
  const out: T[] = [];
  let more = false;
  for (const item of items) {
    if (seqOf(item) <= after || !keep(item)) continue;
    if (out.length === limit) {
      more = true;
      break;
    }
    out.push(item);
  }
  return { items: out, nextPageToken: more ? encodeToken(seqOf(out[out.length - 1])) : '' };
}
