import { setMaxListeners } from 'node:events';
import type { Admission } from './Admission';
import { ResourceExhaustedError } from './errors';
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
  /** Results and logs one Trigger response may carry (ISOGEAR_MAX_RESPONSE_BYTES). */
  maxResponseBytes: number;
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
  constructor(private readonly deps: FanOutDeps) {}

  /** The registrations bound to the trigger, or undefined when there are none. */
  bound(tenant: string, trigger: string): readonly Registration[] | undefined {
    const bound = this.deps.index.bound(tenant, trigger);
    return bound && bound.length > 0 ? bound : undefined;
  }

  async run(req: FanOut, bound: readonly Registration[], signal?: AbortSignal): Promise<TriggerRunResult[]> {
    // The snapshot and every run's execution reference are taken in this synchronous step; the
    // runs then start as run slots come free (ISOGEAR_MAX_CONCURRENT_RUNS).
    const snapshot = bound.slice();
    const held: (Reference | undefined)[] = snapshot.map((reg) => {
      const interp = this.deps.interpreters.get(reg.interpreterId);
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
    const budget = new ResponseBudget(this.deps.maxResponseBytes);
    try {
      for (let i = 0; i < snapshot.length; i++) {
        // The first slot is admitted like any request's; the rest wait behind it, one at a time.
        const slot = await this.deps.admission.acquire(req.tenant, fanOut.signal, i > 0);
        const ref = held[i];
        held[i] = undefined;
        runs.push(
          this.runHandler(snapshot[i], req, fanOut.signal, ref, slot)
            .then((r) => budget.fit(r))
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

  private async runHandler(reg: Registration, req: FanOut, signal: AbortSignal, held: Reference | undefined, slot: Slot): Promise<TriggerRunResult> {
    const { interpreters, index, runner, recorder } = this.deps;
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
    const run = await runner.run({
      interp,
      kind: 'trigger',
      timeoutMs: req.timeoutMs,
      since: performance.now(),
      signal,
      work: invokeWork(interp, reg.id, req.payloadJson, req.trigger),
      held,
      slot,
    });
    const r = run.report;
    try {
      const tuple = run.tuple;
      if (r.outcome === 'succeeded' && tuple && tuple.registrations.length > 0) {
        // the handler registered: its step is committed (and stored) like any run's
        const fail = (name: string, message: string): void => {
          r.outcome = 'failed';
          r.result = null;
          r.error = { name, message, stack: '' };
        };
        const step = { kind: 'trigger' as const, handlerId: reg.id, trigger: req.trigger, payloadJson: req.payloadJson, timeoutMs: req.timeoutMs };
        await recorder.commitStep(interp, tuple, r.executionId, step).catch((err: unknown) => {
          const message = err instanceof Error ? err.message : String(err);
          fail(err instanceof ResourceExhaustedError ? 'ResourceExhaustedError' : 'StoreError', message);
        });
      }
    } finally {
      run.end();
    }
    reg.recordRun(r.outcome === 'succeeded', r.wallTimeMs, r.error);
    return { ...r, registrationId: reg.id };
  }
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
