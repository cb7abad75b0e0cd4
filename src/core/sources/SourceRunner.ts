import { errorType, failed, Tracing } from '../../tracing/Tracing';
import type { Admission } from '../Admission';
import type { Recorder } from '../durability/Recorder';
import { ResourceExhaustedError } from '../errors';
import type { ExecutionTable } from '../ExecutionTable';
import type { Interpreters } from '../Interpreters';
import type { Registration } from '../Registration';
import type { RegistrationIndex } from '../RegistrationIndex';
import { invokeWork, type Runner } from '../Runner';
import type { CoreLogger, Outcome, ScriptError } from '../types';

export interface SourceRunnerDeps {
  interpreters: Interpreters;
  index: RegistrationIndex;
  admission: Admission;
  runner: Runner;
  recorder: Recorder;
  executions: ExecutionTable;
  /** The time limit of a schedule's or a consumer's run (the server's default timeout). */
  timeoutMs: number;
  tracing: Tracing;
  logger?: CoreLogger;
}

/** One handler run a source asks for: a schedule's tick or a stream entry. */
export interface SourceCall {
  reg: Registration;
  kind: 'schedule' | 'stream';
  /** The handler's first argument, as JSON ('null' for a schedule). */
  payloadJson: string;
  /** What the handler's event holds besides its ids, as a JSON object. */
  event: Record<string, string>;
  /** Span attributes of the run's trace, and (a stream entry's fields) where a caller's trace context may be. */
  attributes: Record<string, string>;
  carrier?: Record<string, string>;
}

/** How a source's run ended. */
export interface SourceOutcome {
  outcome: Outcome;
  error?: ScriptError;
  executionId: string;
}

/**
 * Runs the handler of a schedule or a consumer as an ordinary run: under a run slot (waiting like
 * a background run, behind requests) and the tenant's quotas, listed as a HANDLER execution while
 * it runs (so CancelExecution reaches it), counted in the metrics with its kind, reported to
 * watchers, traced, and in the registration's stats. A handler that registers commits its step
 * like a Trigger's handler does.
 */
export class SourceRunner {
  constructor(private readonly deps: SourceRunnerDeps) {}

  run(call: SourceCall): Promise<SourceOutcome> {
    const { tracing } = this.deps;
    if (!tracing.on) return this.runNow(call);
    return tracing.begin(`isogear.${call.kind}`, call.kind === 'stream' ? 'consumer' : 'internal', call.carrier, { 'isogear.registration.id': call.reg.id, 'isogear.tenant': call.reg.tenant, ...call.attributes }, (span) =>
      this.runNow(call).then(
        (r) => {
          if (span) {
            span.setAttributes({ 'isogear.outcome': r.outcome, 'isogear.execution.id': r.executionId });
            if (r.outcome !== 'succeeded') failed(span, r.outcome);
            tracing.end(span);
          }
          return r;
        },
        (err: unknown) => {
          if (span) {
            failed(span, errorType(err));
            tracing.end(span);
          }
          throw err;
        },
      ),
    );
  }

  private async runNow(call: SourceCall): Promise<SourceOutcome> {
    const { interpreters, index, admission, runner, recorder, executions, timeoutMs } = this.deps;
    const { reg } = call;
    const interp = interpreters.get(reg.interpreterId);
    if (!interp || interp.state === 'failed' || !index.has(reg.id)) {
      const error: ScriptError = {
        name: 'InterpreterFailedError',
        message: `interpreter ${reg.interpreterId} is FAILED${interp ? ` (${interp.failureReason})` : ''}; release this registration`,
        stack: '',
      };
      if (index.has(reg.id)) reg.recordRun(false, 0, error);
      return { outcome: 'failed', error, executionId: '' };
    }
    const eventJson = JSON.stringify(call.event);
    // The reference is taken before the wait: a Release meanwhile lets the run finish first. From
    // here it is released on every path: by the refusal below, or by the runner (run.end, or its own failure).
    const held = interp.acquire('execution');
    const execution = executions.open({ tenant: reg.tenant, kind: 'handler', background: false, interpreterId: interp.id, registrationId: reg.id });
    let slot;
    try {
      slot = await admission.acquire(reg.tenant, execution.signal, 'background');
    } catch (err) {
      held.release();
      const error: ScriptError = { name: err instanceof ResourceExhaustedError ? 'ResourceExhaustedError' : 'AbortError', message: err instanceof Error ? err.message : String(err), stack: '' };
      execution.finish({ kind: 'trigger', results: [] });
      reg.recordRun(false, 0, error);
      return { outcome: err instanceof ResourceExhaustedError ? 'failed' : 'aborted', error, executionId: execution.id };
    }
    execution.start();
    const since = performance.now();
    try {
      const run = await runner.run({
        interp,
        kind: call.kind,
        timeoutMs,
        since,
        signal: execution.signal,
        work: invokeWork(interp, reg.id, call.payloadJson, '', undefined, eventJson),
        held,
        slot,
        execId: execution.id,
        registrationId: reg.id,
      });
      const r = run.report;
      try {
        // a handler that registered: its step is stored (and replayed) like a Trigger handler's
        await recorder.commitHandlerRun(interp, r, run.tuple, { kind: 'trigger', handlerId: reg.id, trigger: '', payloadJson: call.payloadJson, eventJson, timeoutMs });
      } finally {
        run.end();
      }
      reg.recordRun(r.outcome === 'succeeded', r.wallTimeMs, r.error);
      execution.finish({ kind: 'trigger', results: [{ ...r, registrationId: reg.id }] });
      return { outcome: r.outcome, error: r.error, executionId: r.executionId };
    } catch (err) {
      execution.finish({ kind: 'trigger', results: [] });
      throw err;
    } finally {
      slot.release();
    }
  }
}
