import { SandboxCallError, type LogSink, type RunTuple } from '../sandbox/Sandbox';
import { failed, Tracing } from '../tracing/Tracing';
import { IllegalStateError } from './errors';
import type { EventHub } from './EventHub';
import { CancelReason } from './Execution';
import { newExecutionId } from './ids';
import type { Interpreter } from './Interpreter';
import type { Reference } from './Reference';
import type { RegistrationIndex } from './RegistrationIndex';
import type { Slot } from './RunSlots';
import type { CoreLogger, IsolationMode, Outcome, RunEndEvent, RunReport } from './types';
import { decodeResult } from './validation';

/** isolated-vm stops synchronous code at the timeout itself; the host timer (for awaits) fires just after. */
const HOST_TIMER_SLACK_MS = 20;

/**
 * What a run executes: a load of a module (Execute, Register, their replays) or a call of a
 * handler (Trigger). `start` resolves with the sandbox's tuple or rejects with SandboxCallError;
 * `remainingMs()` is what is left of the run's budget, and `active()` turns false once the run
 * was settled by the host timer or an abort, so a slow compile does not start code nobody awaits.
 */
export interface RunWork {
  /** `sink`: gets each console line as it is written (someone watches the run's logs). */
  start(execId: string, remainingMs: () => number, active: () => boolean, sink?: LogSink): Promise<RunTuple>;
  /** Token of a pending load, so an abandoned run's driver hook is dropped too. */
  token?: string;
}

/** What a load runs: the main module and its modules, as an Execute or a Register. */
export interface LoadSpec {
  kind: 'execute' | 'register';
  source: string;
  /** TypeScript sources are stripped of their types first (absent: JavaScript). */
  language?: 'typescript';
  modules: Record<string, string>;
  argsJson?: string;
  trigger?: string;
  description?: string;
  /** A replayed run: the ids its registrations take, in order. */
  ids?: readonly string[];
}

/**
 * The interpreter's context went (it FAILED) between the run's admission and this call: with its
 * isolate (sorted like any call into a disposed isolate), or alone (the run fails).
 */
const gone = (interp: Interpreter): SandboxCallError =>
  interp.host.disposed
    ? new SandboxCallError('disposed', { name: 'IsolateDisposedError', message: 'the isolate was disposed while the script ran', stack: '' })
    : new SandboxCallError('script', { name: 'InterpreterFailedError', message: `interpreter ${interp.id} is ${interp.state.toUpperCase()}: ${interp.failureReason}`, stack: '' });

/** The one way to start a load: compile and link, then (if the run is still wanted) evaluate. */
export function loadWork(interp: Interpreter, spec: LoadSpec, token: string): RunWork {
  return {
    token,
    start: async (execId, remainingMs, active, sink) => {
      if (!interp.live) throw gone(interp);
      const prepared = await interp.sandbox.prepare(spec.source, spec.modules, token, spec.language ?? 'javascript');
      if (!active()) {
        // (a sandbox released meanwhile released its loads' modules with it)
        if (interp.live) interp.sandbox.discard(prepared);
        throw new SandboxCallError('script', { name: 'AbortError', message: 'the run ended before it started', stack: '' });
      }
      if (!interp.live) throw gone(interp);
      return interp.sandbox.load(prepared, execId, token, spec.kind, spec.argsJson ?? '', spec.trigger ?? '', spec.description ?? '', remainingMs(), spec.ids, sink);
    },
  };
}

/**
 * The one way to call a handler: registration `registrationId`'s, with `payloadJson`. `eventJson`:
 * what a schedule's or a consumer's handler finds in its event besides its ids ('' for a Trigger's:
 * `{trigger}`).
 */
export function invokeWork(interp: Interpreter, registrationId: string, payloadJson: string, trigger: string, ids?: readonly string[], eventJson = ''): RunWork {
  return {
    start: async (execId, remainingMs, _active, sink) => {
      if (!interp.live) throw gone(interp);
      return interp.sandbox.invoke(execId, registrationId, payloadJson, trigger, remainingMs(), ids, sink, eventJson);
    },
  };
}

export interface RunRequest {
  interp: Interpreter;
  /** `execute` and `register` are loads; `trigger`, `schedule` and `stream` a handler call (the metrics' kind follows). */
  kind: 'execute' | 'register' | 'trigger' | 'schedule' | 'stream';
  timeoutMs: number;
  /** When the request started: reported wall time counts from here (interpreter creation included). */
  since: number;
  signal?: AbortSignal;
  work: RunWork;
  /** An execution reference taken earlier (a Trigger's snapshot); otherwise the run takes one. */
  held?: Reference;
  /** The run slot, held until the isolate call really returns. */
  slot?: Slot;
  /** The run's id when it was given out before the run began (its Execution's); otherwise a new one. */
  execId?: string;
  /** A handler run's registration and trigger (what watchers filter on). */
  registrationId?: string;
  trigger?: string;
  /** A replay rebuilding a stored interpreter: no client's run, so watchers do not hear of it. */
  replay?: boolean;
}

/**
 * A finished run, its execution reference still held: what happened (`report`, and the sandbox's
 * `tuple` when it returned one) and `end()`, which the caller must call exactly once, after it
 * committed what the run registered, so the commit is atomic with the run.
 */
export interface Run {
  readonly report: RunReport;
  readonly tuple?: RunTuple;
  /** Drops the run's execution reference and counts the run (with `report.outcome` as it is then). */
  end(): void;
}

type Settled = { kind: 'tuple'; tuple: RunTuple } | { kind: 'error'; error: unknown } | { kind: 'timeout' } | { kind: 'aborted'; why?: string };

export interface RunnerOptions {
  maxValueBytes: number;
  logger?: CoreLogger;
  /** Called once per run as it ends, for metrics. */
  onRunEnd?: (event: RunEndEvent) => void;
  /** After every run: the warm pool makes one entry, between requests. */
  afterRun(): void;
  /** True once the manager is shutting down (an isolate disposed then went for shutdown). */
  closed(): boolean;
  /** Watchers hear of every run that ended. */
  events?: EventHub;
  /** A traced request's run is a span (`isogear.run`), its module load and compile a child of it. */
  tracing?: Tracing;
}

/**
 * The run path, in one place: one run of code in an interpreter under an execution reference.
 * It enforces the wall-clock timeout (isolated-vm's own timeout stops synchronous code and
 * microtask loops; a host timer stops waits on promises), honours the abort signal, sorts how
 * the run ended into an outcome, and returns that with the reference still held (see Run).
 * The timeout counts from the start of the run.
 */
export class Runner {
  private running = 0;
  private readonly byMode: Record<IsolationMode, number> = { shared: 0, isolate: 0 };
  private readonly settling = new Set<Promise<unknown>>();

  /** Tracing off unless the options give it. */
  private readonly tracing: Tracing;

  constructor(
    private readonly options: RunnerOptions,
    private readonly index: RegistrationIndex,
  ) {
    this.tracing = options.tracing ?? Tracing.off;
  }

  /** Runs in progress (ended() not yet called). */
  get inFlight(): number {
    return this.running;
  }

  inFlightByMode(): Record<IsolationMode, number> {
    return { ...this.byMode };
  }

  /** Resolves once every run started so far has settled (shutdown waits for this after disposing isolates). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.settling]);
  }

  async run(req: RunRequest): Promise<Run> {
    const { interp, kind, timeoutMs, since, signal, work, slot } = req;
    const execId = req.execId ?? newExecutionId();
    const ref = req.held ?? interp.acquire('execution');
    const host = interp.host;
    this.running += 1;
    this.byMode[interp.mode] += 1;
    host.inFlight += 1;
    let ended = false;
    const end = (outcome: Outcome): void => {
      if (ended) throw new IllegalStateError(`run ${execId} in interpreter ${interp.id} was ended twice`);
      ended = true;
      this.running -= 1;
      this.byMode[interp.mode] -= 1;
      host.inFlight -= 1;
      ref.release();
      this.options.afterRun();
      this.options.onRunEnd?.({ tenant: interp.tenant, mode: interp.mode, kind: kind === 'register' ? 'execute' : kind, outcome, wallTimeMs: performance.now() - since });
    };
    const span = this.tracing.start('isogear.run', {
      'isogear.execution.id': execId,
      'isogear.interpreter.id': interp.id,
      'isogear.interpreter.mode': interp.mode,
      'isogear.run.kind': kind === 'trigger' ? 'handler' : kind,
    });
    const started = performance.now();
    const cpuStart = host.cpuTimeMs();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let active = true;
    const remainingMs = (): number => Math.max(1, Math.ceil(timeoutMs - (performance.now() - started)));
    const settling = new Promise<Settled>((resolve) => {
      const settle = (s: Settled): void => {
        active = false;
        resolve(s);
      };
      timer = setTimeout(() => settle({ kind: 'timeout' }), timeoutMs + HOST_TIMER_SLACK_MS);
      if (signal) {
        const aborted = (): Settled => ({ kind: 'aborted', why: signal.reason instanceof CancelReason ? signal.reason.message : undefined });
        if (signal.aborted) settle(aborted());
        onAbort = () => settle(aborted());
        signal.addEventListener('abort', onAbort, { once: true });
      }
      if (!active) return;
      const sink = this.logSink(req, execId);
      const call = this.tracing.within(span, () => work.start(execId, remainingMs, () => active, sink));
      // The slot stays taken until the isolate call really returns: a run the caller gave up on
      // keeps its isolate busy until its own timeout (isolated-vm cannot interrupt it otherwise).
      slot?.holdUntil(call);
      call.then(
        (tuple) => settle({ kind: 'tuple', tuple }),
        (error: unknown) => settle({ kind: 'error', error }),
      );
    });
    this.settling.add(settling);
    let report: RunReport;
    let tuple: RunTuple | undefined;
    try {
      const settled = await settling;
      const cpuTimeMs = Math.max(0, host.cpuTimeMs() - cpuStart);
      interp.cpuTimeMs += cpuTimeMs;
      report = { executionId: execId, interpreterId: interp.id, outcome: 'succeeded', result: null, logs: [], logsTruncated: false, wallTimeMs: performance.now() - since, cpuTimeMs };
      tuple = settled.kind === 'tuple' ? settled.tuple : undefined;
      this.sort(settled, report, interp, timeoutMs, work.token);
    } catch (err) {
      if (span) {
        failed(span, 'internal');
        this.tracing.end(span);
      }
      end('failed');
      throw err;
    } finally {
      clearTimeout(timer);
      if (signal && onAbort) signal.removeEventListener('abort', onAbort);
      this.settling.delete(settling);
    }
    if (span) {
      span.setAttributes({ 'isogear.outcome': report.outcome, 'isogear.run.cpu_time_ms': report.cpuTimeMs });
      // the outcome, never the script's message: a message may quote what the script was given
      if (report.outcome !== 'succeeded') failed(span, report.outcome);
      this.tracing.end(span);
    }
    // A run the sandbox finished but the host refused (late, invalid result) leaves nothing behind.
    if (report.outcome !== 'succeeded' && tuple?.ok) interp.abandonRun(execId);
    if (report.logs.length > 0) {
      this.options.logger?.debug({ executionId: execId, interpreterId: interp.id, logs: report.logs, truncated: report.logsTruncated }, 'script console');
    }
    const done = report;
    return {
      report: done,
      tuple,
      end: () => {
        // watchers hear of the run before the disposal its reference's release may cause
        if (!req.replay) this.options.events?.publish({ tenant: interp.tenant, interpreterId: interp.id, registrationId: req.registrationId, trigger: req.trigger }, 'run', () => ({
          kind: 'run',
          run: {
            executionId: done.executionId,
            interpreterId: interp.id,
            registrationId: req.registrationId ?? '',
            trigger: req.trigger ?? '',
            outcome: done.outcome,
            error: done.error,
            wallTimeMs: done.wallTimeMs,
            cpuTimeMs: done.cpuTimeMs,
          },
        }));
        end(done.outcome);
        if (kind !== 'register' && done.outcome !== 'succeeded') {
          this.options.logger?.debug({ executionId: execId, interpreterId: interp.id, outcome: done.outcome }, 'run did not succeed');
        }
      },
    };
  }

  /** Where a run's console lines go as they are written: to watchers, when one of the tenant wants logs. */
  private logSink(req: RunRequest, execId: string): LogSink | undefined {
    const events = this.options.events;
    const { interp } = req;
    if (req.replay || !events?.wantsLogs(interp.tenant)) return undefined;
    const source = { tenant: interp.tenant, interpreterId: interp.id, registrationId: req.registrationId, trigger: req.trigger };
    return (level, message) =>
      events.publish(source, 'log', () => ({ kind: 'log', log: { executionId: execId, interpreterId: interp.id, registrationId: req.registrationId ?? '', entry: { level, message } } }));
  }

  /** Sorts how a run settled into its outcome, error and result (on `report`); tidies what a refused run left in the sandbox. */
  private sort(settled: Settled, report: RunReport, interp: Interpreter, timeoutMs: number, token: string | undefined): void {
    const execId = report.executionId;
    const host = interp.host;
    switch (settled.kind) {
      case 'tuple': {
        const tuple = settled.tuple;
        report.logs = tuple.logs;
        report.logsTruncated = tuple.logsTruncated;
        const invalid = tuple.ok ? this.index.invalid(interp, tuple) : undefined;
        if (invalid) {
          report.outcome = 'failed';
          report.error = { name: 'Error', message: invalid, stack: '' };
          interp.abandonRun(execId);
        } else if (tuple.ok) {
          const parsed = decodeResult(tuple.valueJson as string, this.options.maxValueBytes);
          if (parsed.ok) {
            report.result = parsed.value;
            report.resultBytes = Buffer.byteLength(tuple.valueJson as string, 'utf8');
          } else {
            report.outcome = 'failed';
            report.error = parsed.error;
            interp.abandonRun(execId);
          }
        } else if (tuple.code === 'abandoned') {
          report.outcome = 'aborted';
          report.error = { name: 'AbortError', message: 'the run was abandoned', stack: '' };
        } else {
          report.outcome = 'failed';
          report.error = tuple.error ?? { name: 'Error', message: 'the script failed', stack: '' };
        }
        return;
      }
      case 'error': {
        const err = settled.error;
        if (!(err instanceof SandboxCallError)) throw err;
        switch (err.kind) {
          case 'timeout':
            report.outcome = 'timed_out';
            report.error = { ...err.scriptError, message: `script execution timed out after ${timeoutMs} ms` };
            interp.abandonRun(execId, token);
            return;
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
            return;
          case 'disposed':
            host.noteDeath(this.options.closed() ? 'shutdown' : 'failed');
            // a dedicated isolate's memory kill was this run's; a shared one's may be a neighbour's
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
            return;
          case 'script':
            report.outcome = 'failed';
            report.error = err.scriptError;
            interp.abandonRun(execId, token);
            return;
        }
        return;
      }
      case 'timeout':
        report.outcome = 'timed_out';
        report.error = { name: 'TimeoutError', message: `script did not finish within ${timeoutMs} ms`, stack: '' };
        interp.abandonRun(execId, token);
        return;
      case 'aborted':
        report.outcome = 'aborted';
        report.error = { name: 'AbortError', message: settled.why ?? 'the caller cancelled the run', stack: '' };
        interp.abandonRun(execId, token);
        return;
    }
  }
}
