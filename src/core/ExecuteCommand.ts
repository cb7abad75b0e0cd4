import type { Admission } from './Admission';
import type { Recorder } from './durability/Recorder';
import { CancelledError, InvalidArgumentError, IsogearError } from './errors';
import { CancelReason, type Execution } from './Execution';
import { newToken } from './ids';
import type { Interpreter } from './Interpreter';
import type { Interpreters } from './Interpreters';
import type { NameTable } from './NameTable';
import type { ResolvedOptions } from './options';
import type { Registration } from './Registration';
import { loadWork, type LoadSpec, type Runner } from './Runner';
import { DEFAULT_TENANT } from './tenants';
import type { ExecuteResult, ExecuteSpec, IsolationMode } from './types';
import { checkAttach, checkModules, checkName, encodeValue, requireSource, resolveLimits, type ResolvedLimits } from './validation';

export interface ExecuteDeps {
  options: ResolvedOptions;
  admission: Admission;
  interpreters: Interpreters;
  names: NameTable;
  runner: Runner;
  recorder: Recorder;
  /** An interpreter id unknown here may exist in a shared store: look it up first (see InterpreterManager). */
  catchUp(interpreterId: string): Promise<void>;
  /** Throws UNAVAILABLE once the server is shutting down. */
  assertOpen(): void;
  logger?: { error(obj: object, msg?: string): void };
}

/** An Execute request that passed its checks: what the run needs. */
export interface ExecutePlan {
  spec: ExecuteSpec;
  tenant: string;
  /** When the request arrived (a synchronous run's wall time counts from here). */
  since: number;
  modules: Record<string, string>;
  argsJson?: string;
  /** The interpreter to run in, or undefined: a new one. */
  attachId?: string;
  /** The new interpreter's name ('' if none). */
  name: string;
  mode: IsolationMode;
  limits: ResolvedLimits;
}

/**
 * One Execute, synchronous or in the background: its checks (`check`, and for a background run
 * `precheck`, which answers before the run what a synchronous caller would learn once admitted),
 * then `run`: a run slot, the interpreter (found, or created under its name), the run, and the
 * commit of what it registered. The run honours its Execution's signal and ends it DONE.
 */
export class ExecuteCommand {
  constructor(private readonly deps: ExecuteDeps) {}

  async check(spec: ExecuteSpec): Promise<ExecutePlan> {
    const since = performance.now();
    const { options } = this.deps;
    this.deps.assertOpen();
    requireSource(spec.source, 'source');
    const modules = checkModules(spec.source, spec.modules, options.maxSourceBytes);
    const argsJson = encodeValue(spec.args, 'args', options.maxValueBytes);
    const attach = spec.interpreterId !== undefined && spec.interpreterId !== '';
    checkAttach(attach, spec.mode);
    if (attach && (spec.name || spec.replace)) {
      throw new InvalidArgumentError('name and replace apply to a new interpreter; they cannot be combined with interpreter_id');
    }
    if (spec.replace && !spec.name) throw new InvalidArgumentError('replace needs a name: it upgrades the interpreter with that name');
    checkName(spec.name);
    const limits = resolveLimits(spec.limits, options);
    const tenant = spec.tenant || DEFAULT_TENANT;
    if (attach) await this.deps.catchUp(spec.interpreterId as string);
    return {
      spec,
      tenant,
      since,
      modules,
      argsJson,
      attachId: attach ? spec.interpreterId : undefined,
      name: spec.name ?? '',
      mode: spec.mode ?? options.defaultMode,
      limits,
    };
  }

  /**
   * The checks a synchronous Execute makes once it has its run slot, made now: a background run
   * is refused at once for the same bad input (NOT_FOUND, FAILED_PRECONDITION, ALREADY_EXISTS, a
   * full quota). What changes while it waits (the interpreter released, the name taken) ends it
   * OUTCOME_FAILED with the error's name and message.
   */
  precheck(plan: ExecutePlan): void {
    const { interpreters, names } = this.deps;
    if (plan.attachId) {
      interpreters.attachable(plan.attachId, plan.tenant);
      return;
    }
    if (plan.name && !plan.spec.replace) names.checkFree(plan.tenant, plan.name);
    const refusal = interpreters.creationRefusal(plan.mode, plan.limits.memoryMb, plan.tenant);
    if (refusal) throw refusal;
  }

  /**
   * Runs the plan as `execution` and ends it DONE. `caller`: a synchronous caller's signal (its
   * cancel or deadline cancels the execution). A synchronous run rethrows request errors (and the
   * caller's own cancel); a run cancelled any other way, or a background run, always resolves
   * with a response.
   */
  async run(plan: ExecutePlan, execution: Execution, caller?: AbortSignal): Promise<ExecuteResult> {
    const forward = (): void => void execution.cancel(new CancelReason('client', 'the caller cancelled the run'));
    if (caller?.aborted) forward();
    else caller?.addEventListener('abort', forward, { once: true });
    let result: ExecuteResult;
    try {
      result = await this.admitted(plan, execution);
    } catch (err) {
      const reason = execution.cancelReason;
      if (err instanceof CancelledError && reason && (execution.background || reason.cause !== 'client')) {
        result = this.endedEarly(plan, execution, 'AbortError', `${reason.message} before the run started`, 'aborted');
      } else if (execution.background) {
        result = this.failedLate(plan, execution, err);
      } else {
        execution.finish({ kind: 'execute', result: this.endedEarly(plan, execution, 'Error', 'the request was refused', 'failed') });
        throw err;
      }
    } finally {
      caller?.removeEventListener('abort', forward);
    }
    execution.finish({ kind: 'execute', result });
    return result;
  }

  private async admitted(plan: ExecutePlan, execution: Execution): Promise<ExecuteResult> {
    const { admission, interpreters, runner, recorder, names } = this.deps;
    const slot = await admission.acquire(plan.tenant, execution.signal, execution.background ? 'background' : 'request');
    try {
      execution.start();
      this.deps.assertOpen();
      // A background run's wall time counts from its start, not from its time in the queue.
      const since = execution.background ? performance.now() : plan.since;
      const interp = plan.attachId ? interpreters.attachable(plan.attachId, plan.tenant) : await this.newNamedInterpreter(plan);
      execution.interpreterId = interp.id;
      const language = plan.spec.language === 'typescript' ? ('typescript' as const) : undefined;
      const load: LoadSpec = { kind: 'execute', source: plan.spec.source, modules: plan.modules, argsJson: plan.argsJson, language };
      const run = await runner.run({
        interp,
        kind: 'execute',
        timeoutMs: plan.limits.timeoutMs,
        since,
        signal: execution.signal,
        work: loadWork(interp, load, newToken()),
        slot,
        execId: execution.id,
      });
      let committed: Registration[] = [];
      try {
        const { report, tuple } = run;
        if (report.outcome === 'succeeded' && tuple) {
          const step = { kind: 'execute' as const, source: plan.spec.source, modules: plan.modules, argsJson: plan.argsJson, timeoutMs: plan.limits.timeoutMs, ...(language ? { language } : {}) };
          const upgrade = plan.spec.replace ? plan.name : undefined;
          // The script ran, but what it registered passes the tenant's quota, or its step could not
          // be stored: none of it is kept (this throws).
          committed = await recorder.commitStep(interp, tuple, report.executionId, step, upgrade, upgrade ? () => names.swap(upgrade, interp) : undefined);
        }
      } finally {
        run.end();
      }
      return { ...run.report, registrations: committed.map((r) => r.info(false)), interpreter: await interp.info() };
    } finally {
      slot.release();
    }
  }

  /** A new interpreter for an Execute: a plain name is reserved while it is created; an upgrade's name moves only when it succeeds. */
  private async newNamedInterpreter(plan: ExecutePlan): Promise<Interpreter> {
    const { interpreters, names } = this.deps;
    const { name, tenant, mode } = plan;
    if (!name || plan.spec.replace) return interpreters.create(mode, plan.limits.memoryMb, '', tenant);
    names.reserve(tenant, name);
    let interp: Interpreter | undefined;
    try {
      interp = await interpreters.create(mode, plan.limits.memoryMb, name, tenant);
      return interp;
    } finally {
      names.settle(tenant, name, interp);
    }
  }

  /** A background run refused after it was accepted: the response says why, as the status would have. */
  private failedLate(plan: ExecutePlan, execution: Execution, err: unknown): ExecuteResult {
    if (err instanceof IsogearError) return this.endedEarly(plan, execution, err.name, err.message, 'failed');
    this.deps.logger?.error({ err, executionId: execution.id }, 'background execution failed');
    return this.endedEarly(plan, execution, 'InternalError', 'internal error', 'failed');
  }

  private endedEarly(plan: ExecutePlan, execution: Execution, name: string, message: string, outcome: 'aborted' | 'failed'): ExecuteResult {
    const interp = execution.interpreterId ? this.deps.interpreters.own(execution.interpreterId, plan.tenant) : undefined;
    return {
      executionId: execution.id,
      interpreterId: execution.interpreterId,
      outcome,
      result: null,
      error: { name, message, stack: '' },
      logs: [],
      logsTruncated: false,
      wallTimeMs: execution.background ? 0 : performance.now() - plan.since,
      cpuTimeMs: 0,
      registrations: [],
      interpreter: interp?.infoWithHeap(0),
    };
  }
}
