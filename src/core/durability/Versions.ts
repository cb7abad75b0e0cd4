import type { RunTuple } from '../../sandbox/Sandbox';
import type { Admission } from '../Admission';
import { CancelledError, FailedPreconditionError, InvalidArgumentError, IsogearError, NotFoundError, UnavailableError } from '../errors';
import { CancelReason, type Execution } from '../Execution';
import type { ExecutionTable } from '../ExecutionTable';
import { newStepId, newToken } from '../ids';
import type { Interpreter } from '../Interpreter';
import type { Interpreters } from '../Interpreters';
import { describeSource, type Registration, type RegistrationSpec } from '../Registration';
import type { RegistrationIndex } from '../RegistrationIndex';
import { invokeWork, loadWork, type Runner } from '../Runner';
import { DEFAULT_TENANT } from '../tenants';
import type { ExecuteResult, LogEntry, RollbackSpec, RunReport, VersionInfo } from '../types';
import { checkName, outcomeText } from '../validation';
import { storedSpec, type InterpreterRecipe, type RecipeStep } from './RecipeStore';
import type { Recorder } from './Recorder';

export interface VersionsDeps {
  admission: Admission;
  interpreters: Interpreters;
  index: RegistrationIndex;
  runner: Runner;
  recorder: Recorder;
  executions: ExecutionTable;
  /** The heap limit of a recipe that does not say (a shared-mode one). */
  defaultMemoryMb: number;
  /** Throws UNAVAILABLE once the server is shutting down. */
  assertOpen(): void;
}

/** What a rollback's replay made of the version's recipe, before anything of it is live. */
interface Replayed {
  steps: RecipeStep[];
  /** Every registration the steps made, in order (their sandbox has them; the index not yet). */
  made: RegistrationSpec[];
  /** The version's registration ids → the replay's. */
  ids: Map<string, string>;
  logs: LogEntry[];
  logsTruncated: boolean;
  cpuTimeMs: number;
}

/** A step whose replay did not give what the step first gave: the run's report, and why. */
interface Diverged {
  report: RunReport;
  why: string;
}

/**
 * The versions of named interpreters: what ListVersions lists (the store keeps each recipe that
 * held a name, up to ISOGEAR_MAX_VERSIONS) and Rollback, which re-creates one of them. A rollback
 * replays the version's steps in a new interpreter, as a restore does but with new registration
 * ids (the version it re-creates may be the current one, whose ids are live); each registration
 * must be made again, bound as it was. Its registrations stay in the sandbox only until the
 * whole recipe is stored; then they go live and the name moves to the new interpreter in one
 * synchronous step, as an upgrade's do: a Trigger sees the old handlers or the new ones, never
 * both, never neither. Anything that fails before that changes nothing.
 */
export class Versions {
  /** Rollbacks answered: the name moved (succeeded), or a replay did not make it (failed; nothing changed). */
  readonly rollbacks = { succeeded: 0, failed: 0 };

  constructor(private readonly deps: VersionsDeps) {}

  /** The versions of `name`, oldest first; NOT_FOUND when it has none. */
  async list(tenant: string | undefined, name: string): Promise<VersionInfo[]> {
    this.checkNameGiven(name);
    const versions = await this.read(() => this.store().versions(tenant || DEFAULT_TENANT, name));
    if (versions.length === 0) throw noVersions(name);
    return versions;
  }

  /**
   * Re-creates version `spec.version` of `spec.name` in a new interpreter and moves the name to
   * it; the answer is the rollback's, as an Execute's would be, its result `{ version,
   * rolledBackFrom }`. A replay that fails answers with that step's outcome and error, and
   * nothing changed. Bad input and refusals are errors (see the API contract).
   */
  async rollback(spec: RollbackSpec, caller?: AbortSignal): Promise<ExecuteResult> {
    const since = performance.now();
    this.deps.assertOpen();
    this.checkNameGiven(spec.name);
    if (!Number.isInteger(spec.version) || spec.version < 1) {
      throw new InvalidArgumentError(`version must be 1 or more (ListVersions lists the versions of "${spec.name}"), got ${spec.version}`);
    }
    const tenant = spec.tenant || DEFAULT_TENANT;
    const recipe = await this.read(() => this.store().loadVersion(tenant, spec.name, spec.version));
    if (!recipe) throw await this.unknownVersion(tenant, spec.name, spec.version);
    if (recipe.steps.every((s) => s.registrations.every((r) => recipe.released.includes(r.id)))) {
      throw new FailedPreconditionError(`version ${spec.version} of "${spec.name}" holds no registrations to re-create (every one it made was released)`);
    }

    const execution = this.deps.executions.open({ tenant, kind: 'execute', background: false });
    const forward = (): void => void execution.cancel(new CancelReason('client', 'the caller cancelled the rollback'));
    if (caller?.aborted) forward();
    else caller?.addEventListener('abort', forward, { once: true });
    let result: ExecuteResult | undefined;
    try {
      result = await this.admitted(recipe, spec, tenant, since, execution);
      if (result.outcome === 'succeeded') this.rollbacks.succeeded += 1;
      else this.rollbacks.failed += 1;
      return result;
    } catch (err) {
      const reason = execution.cancelReason;
      if (err instanceof CancelledError && reason && reason.cause !== 'client') {
        result = this.answer(execution, since, { outcome: 'aborted', error: { name: 'AbortError', message: `${reason.message} before the rollback started`, stack: '' } });
        this.rollbacks.failed += 1;
        return result;
      }
      throw err;
    } finally {
      caller?.removeEventListener('abort', forward);
      execution.finish({ kind: 'execute', result: result ?? this.answer(execution, since, { outcome: 'failed', error: { name: 'Error', message: 'the request was refused', stack: '' } }) });
    }
  }

  private async admitted(recipe: InterpreterRecipe, spec: RollbackSpec, tenant: string, since: number, execution: Execution): Promise<ExecuteResult> {
    const { admission, interpreters, recorder, index } = this.deps;
    const slot = await admission.acquire(tenant, execution.signal, 'request');
    try {
      execution.start();
      this.deps.assertOpen();
      const interp = await interpreters.create(recipe.mode, recipe.memoryMb || this.deps.defaultMemoryMb, '', tenant);
      execution.interpreterId = interp.id;
      // held through the replay and the commit: a step that registers nothing must not dispose it
      const hold = interp.acquire('execution');
      try {
        const replayed = await this.replay(interp, recipe, execution);
        if ('why' in replayed) {
          const { report, why } = replayed;
          const error = { name: report.error?.name ?? 'Error', message: `version ${spec.version} of "${spec.name}" could not be re-created, so nothing changed: ${why}`, stack: report.error?.stack ?? '' };
          // a run that succeeded but registered something else failed the rollback all the same
          const outcome = report.outcome === 'succeeded' ? 'failed' : report.outcome;
          return { ...this.answer(execution, since, { outcome, error, logs: report.logs, logsTruncated: report.logsTruncated, cpuTimeMs: report.cpuTimeMs }), interpreter: interp.infoWithHeap(0) };
        }
        const released = recipe.released.flatMap((id) => replayed.ids.get(id) ?? []);
        const paused = recipe.paused.flatMap((id) => replayed.ids.get(id) ?? []);
        const gone = new Set(released);
        // the released ones are not made again: the sandbox lets go of them now
        interp.unregister(released);
        const live = replayed.made.filter((r) => !gone.has(r.id));
        const { registrations, version } = await recorder.commitVersion(
          interp,
          { name: spec.name, steps: replayed.steps, released, paused, rolledBackFrom: spec.version },
          live.length,
          () => index.adopt(interp, live, { paused: new Set(paused), released: new Set() }),
        );
        return {
          ...this.answer(execution, since, { outcome: 'succeeded', logs: replayed.logs, logsTruncated: replayed.logsTruncated, cpuTimeMs: replayed.cpuTimeMs }),
          result: { version: version ?? 0, rolledBackFrom: spec.version },
          registrations: registrations.map((r: Registration) => r.info(false)),
          interpreter: await interp.info(),
        };
      } finally {
        hold.release();
      }
    } finally {
      slot.release();
    }
  }

  /**
   * Runs the version's steps in `interp`, in order, with new registration ids: each must register
   * what it first registered (the same kinds, triggers, schedules and streams, in order). What a
   * step registered is committed in the sandbox only (a later trigger step calls its handlers).
   */
  private async replay(interp: Interpreter, recipe: InterpreterRecipe, execution: Execution): Promise<Replayed | Diverged> {
    const out: Replayed = { steps: [], made: [], ids: new Map(), logs: [], logsTruncated: false, cpuTimeMs: 0 };
    const total = recipe.steps.length;
    for (let k = 0; k < total; k++) {
      const step = recipe.steps[k];
      const where = `step ${k + 1} of ${total} (${step.kind})`;
      const handlerId = step.kind === 'trigger' ? out.ids.get(step.handlerId ?? '') : undefined;
      if (step.kind === 'trigger' && !handlerId) {
        return { report: this.noRun(interp, execution), why: `${where} could not run: its handler ${step.handlerId ?? ''} was not made again` };
      }
      const work =
        step.kind === 'trigger'
          ? invokeWork(interp, handlerId ?? '', step.payloadJson ?? '', step.trigger ?? '', undefined, step.eventJson)
          : loadWork(
              interp,
              { kind: step.kind, source: step.source ?? '', modules: step.modules ?? {}, argsJson: step.argsJson, trigger: step.trigger, description: step.description, language: step.language },
              newToken(),
            );
      const run = await this.deps.runner.run({ interp, kind: step.kind, timeoutMs: step.timeoutMs, since: performance.now(), signal: execution.signal, work, replay: true });
      try {
        const { report, tuple } = run;
        out.logs.push(...report.logs);
        out.logsTruncated ||= report.logsTruncated;
        out.cpuTimeMs += report.cpuTimeMs;
        const why = this.divergence(step, report, tuple);
        if (why || !tuple) {
          if (tuple) interp.abandonRun(report.executionId);
          return { report: { ...report, logs: out.logs, logsTruncated: out.logsTruncated, cpuTimeMs: out.cpuTimeMs }, why: `${where} ${why ?? 'gave no result'}` };
        }
        interp.commitRun(report.executionId);
        tuple.registrations.forEach((r, i) => out.ids.set(step.registrations[i].id, r.id));
        out.made.push(...tuple.registrations);
        out.steps.push({ ...step, id: newStepId(), ...(handlerId ? { handlerId } : {}), registrations: tuple.registrations.map(storedSpec) });
      } finally {
        run.end();
      }
    }
    return out;
  }

  /** Why a replayed run differs from its step (it failed, or registered something else), or undefined. */
  private divergence(step: RecipeStep, r: RunReport, tuple: RunTuple | undefined): string | undefined {
    if (r.outcome !== 'succeeded' || !tuple) return `${outcomeText(r.outcome)}: ${r.error ? `${r.error.name}: ${r.error.message}` : 'no result'}`;
    const label = (rs: readonly RegistrationSpec[]): string => `[${rs.map(describeSource).join(', ')}]`;
    if (label(tuple.registrations) !== label(step.registrations)) {
      return `registered ${label(tuple.registrations)} where it first registered ${label(step.registrations)}`;
    }
    return undefined;
  }

  /** The report of a step that did not run. */
  private noRun(interp: Interpreter, execution: Execution): RunReport {
    return { executionId: execution.id, interpreterId: interp.id, outcome: 'failed', result: null, logs: [], logsTruncated: false, wallTimeMs: 0, cpuTimeMs: 0 };
  }

  private answer(execution: Execution, since: number, over: Partial<ExecuteResult> & Pick<ExecuteResult, 'outcome'>): ExecuteResult {
    return {
      executionId: execution.id,
      interpreterId: execution.interpreterId,
      result: null,
      logs: [],
      logsTruncated: false,
      wallTimeMs: performance.now() - since,
      cpuTimeMs: 0,
      registrations: [],
      ...over,
    };
  }

  /** NOT_FOUND for a version the name does not have, saying which it has. */
  private async unknownVersion(tenant: string, name: string, version: number): Promise<NotFoundError> {
    const versions = await this.read(() => this.store().versions(tenant, name));
    if (versions.length === 0) return noVersions(name);
    const first = versions[0].version;
    const last = versions[versions.length - 1].version;
    return new NotFoundError(`"${name}" has no version ${version}: it keeps ${first === last ? `version ${first}` : `versions ${first} to ${last}`} (ISOGEAR_MAX_VERSIONS)`);
  }

  private checkNameGiven(name: string): void {
    if (!name) throw new InvalidArgumentError('name is required: the name of the interpreter whose versions to use');
    checkName(name);
  }

  private store(): NonNullable<Recorder['store']> {
    const store = this.deps.recorder.store;
    if (!store) throw new FailedPreconditionError('versions need a recipe store');
    return store;
  }

  /** A store read; a store that cannot answer is UNAVAILABLE. */
  private async read<T>(work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      if (err instanceof IsogearError) throw err;
      throw new UnavailableError(`the versions could not be read from the store: ${err instanceof Error ? err.message : String(err)}; retry when the store is back`, { cause: err });
    }
  }
}

/** NOT_FOUND for a name that has no versions (never held, or another tenant's). */
function noVersions(name: string): NotFoundError {
  return new NotFoundError(`no interpreter named "${name}": it has no versions`);
}
