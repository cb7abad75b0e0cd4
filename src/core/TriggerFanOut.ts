import type { Span } from '@opentelemetry/api';
import { errorType, failed, Tracing } from '../tracing/Tracing';
import type { Admission } from './Admission';
import { CancelledError, IsogearError } from './errors';
import { CancelReason, type Execution } from './Execution';
import type { ExecutionTable } from './ExecutionTable';
import type { Interpreter } from './Interpreter';
import type { Recorder } from './durability/Recorder';
import type { Interpreters } from './Interpreters';
import type { Reference } from './Reference';
import type { Registration } from './Registration';
import type { RegistrationIndex } from './RegistrationIndex';
import { invokeWork, type Runner } from './Runner';
import type { Slot } from './RunSlots';
import type { ScriptError, TriggerRunResult } from './types';

/** What a TriggerResult costs beyond its result, logs and error: ids, outcome, times. */
const RESULT_OVERHEAD_BYTES = 256;

export interface FanOutDeps {
  interpreters: Interpreters;
  index: RegistrationIndex;
  admission: Admission;
  runner: Runner;
  recorder: Recorder;
  executions: ExecutionTable;
  /** Results and logs one Trigger response may carry (ISOGEAR_MAX_RESPONSE_BYTES). */
  maxResponseBytes: number;
  /** In a traced Trigger each handler run is a span (`isogear.handler`), its queue wait and run inside. */
  tracing?: Tracing;
}

export interface FanOut {
  tenant: string;
  trigger: string;
  payloadJson: string;
  timeoutMs: number;
}

/**
 * One Trigger: runs every registration bound to a trigger, each under its own run slot, and
 * gathers one result each in registration order. The registrations are snapshotted, and each
 * run's execution reference taken, in one synchronous step, so a concurrent Release or upgrade
 * is seen entirely or not at all. A handler that calls gears.register commits its step like any
 * other run.
 */
export class TriggerFanOut {
  /** Tracing off unless the deps give it. */
  private readonly tracing: Tracing;

  constructor(private readonly deps: FanOutDeps) {
    this.tracing = deps.tracing ?? Tracing.off;
  }

  /** The registrations bound to the trigger, or undefined when there are none. */
  bound(tenant: string, trigger: string): readonly Registration[] | undefined {
    const bound = this.deps.index.bound(tenant, trigger);
    return bound && bound.length > 0 ? bound : undefined;
  }

  /**
   * Runs the fan-out as `execution` (a TRIGGER) and ends it DONE. `caller`: a synchronous caller's
   * signal (its cancel or deadline cancels the execution, and this rejects as before). A
   * cancelled fan-out answers ABORTED for every handler it did not run; a background fan-out
   * always resolves (a refusal becomes every handler's OUTCOME_FAILED).
   */
  async run(req: FanOut, bound: readonly Registration[], execution: Execution, caller?: AbortSignal): Promise<TriggerRunResult[]> {
    const forward = (): void => void execution.cancel(new CancelReason('client', 'the caller cancelled the run'));
    if (caller?.aborted) forward();
    else caller?.addEventListener('abort', forward, { once: true });
    let results: TriggerRunResult[];
    try {
      results = await this.fanOut(req, bound, execution);
    } catch (err) {
      const failed = bound.map((reg) => notRun(reg, 'failed', err instanceof IsogearError ? { name: err.name, message: err.message, stack: '' } : { name: 'InternalError', message: 'internal error', stack: '' }));
      execution.finish({ kind: 'trigger', results: failed });
      if (!execution.background) throw err;
      return failed;
    } finally {
      caller?.removeEventListener('abort', forward);
    }
    execution.finish({ kind: 'trigger', results });
    const reason = execution.cancelReason;
    if (reason?.cause === 'client' && !execution.background) throw new CancelledError(reason.message);
    return results;
  }

  private async fanOut(req: FanOut, bound: readonly Registration[], execution: Execution): Promise<TriggerRunResult[]> {
    // The snapshot and every run's execution reference are taken in this synchronous step; the
    // runs then start as run slots come free (ISOGEAR_MAX_CONCURRENT_RUNS).
    // paused registrations are skipped: not run, and absent from the results
    const snapshot = bound.filter((r) => !r.paused);
    const held: (Reference | undefined)[] = snapshot.map((reg) => {
      const interp = this.deps.interpreters.get(reg.interpreterId);
      return interp && interp.state !== 'failed' ? interp.acquire('execution') : undefined;
    });
    const signal = execution.signal;
    const runs: Promise<TriggerRunResult>[] = [];
    const budget = new ResponseBudget(this.deps.maxResponseBytes);
    try {
      for (let i = 0; i < snapshot.length; i++) {
        // The first slot is admitted like any request's; the rest wait behind it, one at a time.
        // A background fan-out waits behind every request, without a wait limit.
        let slot: Slot;
        const span = this.handlerSpan(snapshot[i], req);
        const wait = execution.background ? 'background' : i > 0 ? 'admitted' : 'request';
        try {
          slot = await this.tracing.within(span, () => this.deps.admission.acquire(req.tenant, signal, wait));
        } catch (err) {
          if (span) {
            failed(span, err instanceof CancelledError ? 'aborted' : errorType(err));
            this.tracing.end(span);
          }
          if (!(err instanceof CancelledError) || !signal.aborted) throw err;
          // Cancelled: the handlers not started yet are not run.
          const why = execution.cancelReason?.message ?? 'the run was cancelled';
          for (let j = i; j < snapshot.length; j++) {
            held[j]?.release();
            held[j] = undefined;
            runs.push(Promise.resolve(notRun(snapshot[j], 'aborted', { name: 'AbortError', message: `${why} before this handler ran`, stack: '' })));
          }
          break;
        }
        if (i === 0) execution.start();
        const ref = held[i];
        held[i] = undefined;
        runs.push(
          this.tracing
            .within(span, () => this.runHandler(snapshot[i], req, execution, ref, slot))
            .then(
              (r) => {
                if (span) endHandlerSpan(span, r);
                return budget.fit(r);
              },
              (err: unknown) => {
                failed(span, errorType(err));
                throw err;
              },
            )
            .finally(() => {
              if (span) this.tracing.end(span);
              slot.release();
            }),
        );
      }
      return await Promise.all(runs);
    } catch (err) {
      // (only a first slot can be refused: no handler runs yet, or those started are stopped)
      if (runs.length > 0) execution.cancel(new CancelReason('client', 'the fan-out failed'));
      await Promise.allSettled(runs);
      throw err;
    } finally {
      for (const ref of held) ref?.release();
    }
  }

  /** The span of one handler's run in a traced Trigger (undefined when untraced). */
  private handlerSpan(reg: Registration, req: FanOut): Span | undefined {
    return this.tracing.start('isogear.handler', {
      // (the interpreter is on the run span below, the tenant on the call's span: each attribute
      // once per trace, as each costs its encoding in every export)
      'isogear.registration.id': reg.id,
      'isogear.trigger': req.trigger,
    });
  }

  private async runHandler(reg: Registration, req: FanOut, fanOut: Execution, held: Reference | undefined, slot: Slot): Promise<TriggerRunResult> {
    const { interpreters, index, executions } = this.deps;
    const interp = interpreters.get(reg.interpreterId);
    const released = !index.has(reg.id);
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
      return notRun(reg, released ? 'aborted' : 'failed', error);
    }
    // Each handler run is an execution of its own while it runs: listed, and cancellable alone.
    const execution = executions.open({ tenant: req.tenant, kind: 'handler', background: fanOut.background, interpreterId: interp.id, registrationId: reg.id, trigger: req.trigger, parent: fanOut });
    execution.start();
    let result: TriggerRunResult | undefined;
    try {
      result = await this.invoke(reg, req, interp, execution, held, slot);
      return result;
    } finally {
      execution.finish({ kind: 'trigger', results: result ? [result] : [notRun(reg, 'failed', { name: 'InternalError', message: 'internal error', stack: '' })] });
    }
  }

  private async invoke(reg: Registration, req: FanOut, interp: Interpreter, execution: Execution, held: Reference, slot: Slot): Promise<TriggerRunResult> {
    const { runner, recorder } = this.deps;
    const run = await runner.run({
      interp,
      kind: 'trigger',
      timeoutMs: req.timeoutMs,
      since: performance.now(),
      signal: execution.signal,
      work: invokeWork(interp, reg.id, req.payloadJson, req.trigger),
      held,
      slot,
      execId: execution.id,
      registrationId: reg.id,
      trigger: req.trigger,
    });
    const r = run.report;
    try {
      // a handler that registered: its step is committed (and stored) like any run's
      await recorder.commitHandlerRun(interp, r, run.tuple, { kind: 'trigger', handlerId: reg.id, trigger: req.trigger, payloadJson: req.payloadJson, timeoutMs: req.timeoutMs });
    } finally {
      run.end();
    }
    reg.recordRun(r.outcome === 'succeeded', r.wallTimeMs, r.error);
    return { ...r, registrationId: reg.id };
  }
}

/** A handler's span ends with its run's outcome and execution id. */
function endHandlerSpan(span: Span, r: TriggerRunResult): void {
  span.setAttributes({ 'isogear.outcome': r.outcome, 'isogear.execution.id': r.executionId });
  if (r.outcome !== 'succeeded') failed(span, r.outcome);
}

/** The result of a handler that was not run: released, broken, cancelled before it began, or refused. */
function notRun(reg: Registration, outcome: 'aborted' | 'failed', error: ScriptError): TriggerRunResult {
  return {
    registrationId: reg.id,
    executionId: '',
    interpreterId: reg.interpreterId,
    outcome,
    result: null,
    error,
    logs: [],
    logsTruncated: false,
    wallTimeMs: 0,
    cpuTimeMs: 0,
  };
}

/**
 * Each result is bounded (ISOGEAR_MAX_VALUE_BYTES, ISOGEAR_MAX_LOG_BYTES), but a fan-out to
 * thousands of handlers is not: results and logs past the response budget are withheld as they
 * arrive, so the response (and what is held to build it) stays bounded.
 */
class ResponseBudget {
  private left: number;

  constructor(private readonly max: number) {
    this.left = max;
  }

  fit(r: TriggerRunResult): TriggerRunResult {
    const bytes = RESULT_OVERHEAD_BYTES + (r.resultBytes ?? 0) + r.logs.reduce((n, l) => n + l.message.length + 8, 0) + (r.error ? r.error.message.length + r.error.stack.length : 0);
    if (bytes <= this.left) {
      this.left -= bytes;
      return r;
    }
    this.left = Math.max(0, this.left - RESULT_OVERHEAD_BYTES);
    return {
      ...r,
      result: null,
      resultBytes: 0,
      logs: [],
      logsTruncated: r.logsTruncated || r.logs.length > 0,
      error: {
        name: 'ResponseTooLargeError',
        message: `the handler's result and logs were withheld: the Trigger response reached its limit of ${this.max} bytes (ISOGEAR_MAX_RESPONSE_BYTES); the outcome is what the handler did`,
        stack: '',
      },
    };
  }
}
