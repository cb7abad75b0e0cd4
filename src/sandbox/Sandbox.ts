import ivm from 'isolated-vm';
import type { Tracing } from '../tracing/Tracing';
import type { CodeCache } from './CodeCache';
import { ModuleLoader, ModuleNotFoundError, UNINSTANTIATED, type PreparedLoad } from './ModuleLoader';
import { HOUSEKEEPING_TIMEOUT_MS, type CallTracker } from './tracking';
import { mapPositions, type Language, type Transpiler } from './Transpiler';

export type { CallTracker } from './tracking';

export type SandboxLevel = 'log' | 'info' | 'warn' | 'error' | 'debug';

/** What the sandbox reports for one run (validated copy of the bootstrap's RunTuple). */
export interface RunTuple {
  ok: boolean;
  /** JSON text of the result when ok. */
  valueJson: string | null;
  logs: { level: SandboxLevel; message: string }[];
  logsTruncated: boolean;
  /** What the run registered: triggers (gears.register), schedules and consumers. */
  registrations: TupleRegistration[];
  error: { name: string; message: string; stack: string } | null;
  /** '' | 'script' | 'handler' | 'result' | 'abandoned' */
  code: string;
}

/** One registration a run made, as the sandbox reported it (the host checks it again). */
export interface TupleRegistration {
  id: string;
  kind: 'trigger' | 'schedule' | 'stream';
  /** The trigger; '' for a schedule or a consumer. */
  trigger: string;
  description: string;
  cron?: string;
  timezone?: string;
  stream?: string;
  group?: string;
}

/** How a call into the isolate ended when it did not return a RunTuple. */
export type CallFailureKind = 'timeout' | 'memory' | 'disposed' | 'script';

/** A call into the isolate failed; `kind` says why, `scriptError` is safe to show the client. */
export class SandboxCallError extends Error {
  constructor(
    readonly kind: CallFailureKind,
    readonly scriptError: { name: string; message: string; stack: string },
  ) {
    super(`${kind}: ${scriptError.message}`);
    this.name = 'SandboxCallError';
  }
}

/**
 * A Sandbox was used after it was released: a bug in its owner (the API reports it as INTERNAL).
 * The message names the call that was misused and the interpreter.
 */
export class SandboxReleasedError extends Error {
  constructor(call: string, interpreterId: string) {
    super(`sandbox of interpreter ${interpreterId} used after it was released: ${call}`);
    this.name = 'SandboxReleasedError';
  }
}

export interface SandboxOptions {
  track?: CallTracker;
  interpreterId: string;
  registrationPrefix: string;
  maxLogChars: number;
  triggerPattern: string;
  maxResultChars: number;
  maxRegistrations: number;
  /** The server's code cache for module sources, shared by every interpreter. */
  codeCache?: CodeCache;
  /** Where a traced run's module load span goes. */
  tracing?: Tracing;
  /** TypeScript to JavaScript, shared by every interpreter (its cache is the server's). */
  transpiler?: Transpiler;
  /**
   * Called synchronously by gears.schedule and gears.consume with (kind, cron|stream,
   * timezone|group): '' to accept, else the message the call throws with.
   */
  checkSource?: (kind: string, a: string, b: string) => string;
}

/** How long a finished run's sink still takes its late console lines (see dropSinkAfter). */
const SINK_LINGER_MS = 1000;

/** Where a run's console lines go as they are written (a live watcher), besides its tuple. */
export type LogSink = (level: SandboxLevel, message: string) => void;

const LEVELS = new Set<string>(['log', 'info', 'warn', 'error', 'debug']);
const BOUNDARY = '    at (<isolated-vm boundary>)';
/** isolated-vm's message for a thrown value it cannot copy (an object or symbol that is not an Error). */
const NON_ERROR_THROWN = 'An object was thrown from supplied code within isolated-vm, but that object was not an instance of `Error`.';

/**
 * isolated-vm appends the host's stack below an `<isolated-vm boundary>` frame to errors it
 * copies out. Host frames (file paths, line numbers) must never reach a client.
 */
export function stripHostFrames(stack: string): string {
  const i = stack.indexOf(BOUNDARY);
  if (i >= 0) return stack.slice(0, i).trimEnd();
  // Errors raised on the host side of a call (resolver, linker) have only host frames: absolute
  // paths, node: or file: URLs. (A module specifier such as ./lib.js has a slash too: its frames stay.)
  const nl = stack.indexOf('\n');
  return nl >= 0 && /^\s+at /.test(stack.slice(nl + 1)) && /(\(|at )(\/|node:|file:)/.test(stack.slice(nl + 1)) ? stack.slice(0, nl) : stack;
}

/** Turns an error thrown by an isolated-vm call into a classified SandboxCallError. */
export function classifyCallError(err: unknown, isolate: ivm.Isolate): SandboxCallError {
  const e = err instanceof Error ? err : new Error(String(err));
  const message = typeof e.message === 'string' ? e.message : String(e);
  const scriptError = {
    name: typeof e.name === 'string' ? e.name : 'Error',
    message,
    stack: stripHostFrames(typeof e.stack === 'string' ? e.stack : ''),
  };
  if (message.includes('disposed during execution due to memory limit')) {
    return new SandboxCallError('memory', { name: 'MemoryLimitError', message: 'the isolate ran out of memory and was disposed', stack: '' });
  }
  if (message === 'Script execution timed out.') {
    return new SandboxCallError('timeout', { ...scriptError, name: 'TimeoutError', message: 'script execution timed out' });
  }
  if (isolate.isDisposed || message === 'Isolate is disposed' || message.startsWith('Isolate was disposed')) {
    return new SandboxCallError('disposed', { name: 'IsolateDisposedError', message: 'the isolate was disposed while the script ran', stack: '' });
  }
  if (message === NON_ERROR_THROWN) {
    // A module threw an object or symbol that is not an Error at its top level; isolated-vm's own
    // message would name the tool the server is built on and say nothing useful.
    return new SandboxCallError('script', {
      name: 'Error',
      message: 'a non-Error value was thrown at the top level of the module (an object or symbol that is not an Error instance)',
      stack: '',
    });
  }
  if (e instanceof ModuleNotFoundError) {
    return new SandboxCallError('script', { name: e.name, message, stack: '' });
  }
  return new SandboxCallError('script', scriptError);
}

/** The longest prefix of `s` whose UTF-8 encoding fits in `maxBytes`, never splitting a character. */
export function truncateUtf8(s: string, maxBytes: number): string {
  if (maxBytes <= 0) return '';
  const buf = Buffer.from(s, 'utf8');
  if (buf.length <= maxBytes) return s;
  let end = maxBytes;
  while (end > 0 && (buf[end] & 0xc0) === 0x80) end -= 1;
  return buf.subarray(0, end).toString('utf8');
}

/** A tuple that does not parse means the script tampered with the sandbox: a script failure. */
function parseOrFail(raw: unknown, maxLogBytes: number): RunTuple {
  try {
    return parseRunTuple(raw, maxLogBytes);
  } catch {
    throw new SandboxCallError('script', {
      name: 'Error',
      message: 'the interpreter returned a malformed run report (the script tampered with the sandbox)',
      stack: '',
    });
  }
}

function asString(v: unknown, max: number): string {
  const s = typeof v === 'string' ? v : '';
  return s.length > max ? s.slice(0, max) : s;
}

/** Validates the tuple the bootstrap returned: it comes from a context user code shares. */
export function parseRunTuple(boxed: unknown, maxLogBytes: number): RunTuple {
  const raw = boxed !== null && typeof boxed === 'object' ? (boxed as { t?: unknown }).t : undefined;
  if (!Array.isArray(raw) || raw.length !== 7) throw new Error('sandbox returned a malformed run tuple');
  const [ok, valueJson, logs, truncated, regs, error, code] = raw as unknown[];
  const out: RunTuple = {
    ok: ok === true,
    valueJson: typeof valueJson === 'string' ? valueJson : null,
    logs: [],
    logsTruncated: truncated === true,
    registrations: [],
    error: null,
    code: typeof code === 'string' ? code : 'script',
  };
  if (Array.isArray(logs)) {
    // The sandbox bounds characters; the contract bounds UTF-8 bytes, enforced here. As in the
    // sandbox, an entry costs one byte more than its message, so empty entries cannot pile up.
    let budget = maxLogBytes;
    for (const entry of logs) {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || typeof entry[1] !== 'string') continue;
      if (budget <= 0) {
        out.logsTruncated = true;
        break;
      }
      const level = LEVELS.has(entry[0]) ? (entry[0] as SandboxLevel) : 'log';
      let message = entry[1];
      let bytes = Buffer.byteLength(message, 'utf8');
      if (bytes + 1 > budget) {
        message = truncateUtf8(message, budget - 1);
        bytes = Buffer.byteLength(message, 'utf8');
        out.logsTruncated = true;
        if (message === '') break;
      }
      budget -= bytes + 1;
      out.logs.push({ level, message });
    }
  }
  if (Array.isArray(regs)) {
    // [id, trigger, description, kind, cron|stream, timezone|group]
    for (const r of regs) {
      if (!Array.isArray(r) || typeof r[0] !== 'string' || typeof r[1] !== 'string') continue;
      const base = { id: r[0], trigger: r[1], description: asString(r[2], 1024) };
      const kind = r[3] === undefined ? 'trigger' : r[3];
      if (kind === 'trigger') out.registrations.push({ ...base, kind });
      else if (kind === 'schedule') out.registrations.push({ ...base, kind, cron: asString(r[4], 1024), timezone: asString(r[5], 128) });
      else if (kind === 'stream') out.registrations.push({ ...base, kind, stream: asString(r[4], 1024), group: asString(r[5], 256) });
      else throw new Error('sandbox reported a registration of an unknown kind');
    }
  }
  if (Array.isArray(error)) {
    out.error = { name: asString(error[0], 200) || 'Error', message: asString(error[1], 8192), stack: stripHostFrames(asString(error[2], 16384)) };
  }
  if (out.ok && out.valueJson === null) throw new Error('sandbox returned success without a value');
  return out;
}

/**
 * One interpreter's V8 context with the bootstrap installed: `gears`, `console`, the module
 * loader, and the calls that run code in it. Every call that runs user code carries a timeout;
 * only async isolated-vm calls are used.
 */
export class Sandbox {
  private released = false;

  private constructor(
    readonly isolate: ivm.Isolate,
    private readonly context: ivm.Context,
    private readonly dispatch: ivm.Reference<(...args: unknown[]) => unknown>,
    private readonly loader: ModuleLoader,
    private readonly options: SandboxOptions,
    private readonly track: CallTracker,
    /** Runs started with a sink: their console lines, as the context's log tap hands them over. */
    private readonly sinks: Map<string, LogSink>,
  ) {}

  /**
   * Creates a context and runs the bootstrap in it: `bootstrap` is the isolate's compiled
   * bootstrap Script (IsolateHost.bootstrapScript), whose completion value is the dispatcher.
   * Two calls are waited for: creating the context (queued with the compile when the isolate is
   * new) and running the script. The interpreter's settings follow as `init`, not waited for:
   * isolated-vm runs an isolate's calls in the order they were made, so it has run before any
   * later call reaches the context, and it cannot fail but with the isolate, which every later
   * call reports.
   */
  static async create(isolate: ivm.Isolate, options: SandboxOptions, bootstrap: Promise<ivm.Script>): Promise<Sandbox> {
    const track: CallTracker = options.track ?? ((p) => p);
    const context = await track(isolate.createContext(), HOUSEKEEPING_TIMEOUT_MS);
    let dispatch: ivm.Reference<(...args: unknown[]) => unknown> | undefined;
    try {
      const script = await track(bootstrap, HOUSEKEEPING_TIMEOUT_MS);
      dispatch = (await track(script.run(context, { reference: true, timeout: 1000 }), HOUSEKEEPING_TIMEOUT_MS)) as ivm.Reference<(...args: unknown[]) => unknown>;
      // The log tap: called only for runs started with a sink, and never waited for by the isolate.
      const sinks = new Map<string, LogSink>();
      const tap = new ivm.Callback(
        (execId: unknown, level: unknown, message: unknown) => {
          if (typeof execId === 'string' && typeof level === 'string' && LEVELS.has(level) && typeof message === 'string') sinks.get(execId)?.(level as SandboxLevel, message);
        },
        { ignored: true },
      );
      // gears.schedule and gears.consume ask the host, synchronously, whether their cron or stream is good
      const check = options.checkSource;
      const checkSource = new ivm.Callback((kind: unknown, a: unknown, b: unknown) =>
        typeof kind === 'string' && typeof a === 'string' && typeof b === 'string' ? (check ? check(kind, a, b) : 'this server does not take schedules or consumers') : 'malformed check',
      );
      dispatch.applyIgnored(
        undefined,
        ['init', options.interpreterId, options.registrationPrefix, options.maxLogChars, options.triggerPattern, options.maxResultChars, options.maxRegistrations, tap, checkSource],
        { timeout: 1000 },
      );
      return new Sandbox(isolate, context, dispatch, new ModuleLoader(isolate, context, track, options.codeCache, options.tracing, options.transpiler), options, track, sinks);
    } catch (err) {
      dispatch?.release();
      context.release();
      throw err;
    }
  }

  /** Compiles and links a main module; see ModuleLoader.prepare. Throws SandboxCallError. */
  async prepare(source: string, modules: Record<string, string>, token: string, language: Language = 'javascript'): Promise<PreparedLoad> {
    this.assertUsable('prepare');
    try {
      return await this.loader.prepare(source, modules, token, language);
    } catch (err) {
      throw this.mapped(classifyCallError(err, this.isolate));
    }
  }

  /**
   * An error whose stack and message point into TypeScript this interpreter loaded, pointing at
   * the lines and columns the user wrote instead (see Transpiler.mapPositions).
   */
  private mapped<E extends SandboxCallError | RunTuple>(x: E): E {
    const maps = this.loader.sourceMaps;
    if (maps.size === 0) return x;
    const error = x instanceof SandboxCallError ? x.scriptError : x.error;
    if (error) {
      error.message = mapPositions(error.message, maps);
      error.stack = mapPositions(error.stack, maps);
    }
    return x;
  }

  /**
   * Starts a load: registers the pending run, then evaluates the driver. Resolves with the run's
   * tuple; rejects with SandboxCallError when evaluation throws, times out or the isolate dies.
   */
  load(
    prepared: PreparedLoad,
    execId: string,
    token: string,
    kind: 'execute' | 'register',
    argsJson: string,
    trigger: string,
    description: string,
    timeoutMs: number,
    /** A replayed run: the ids its registrations take, in order. */
    ids: readonly string[] = [],
    /** Gets each console line as it is written (a live watcher). */
    sink?: LogSink,
  ): Promise<RunTuple> {
    this.assertUsable('load');
    if (sink) this.sinks.set(execId, sink);
    // Order matters: `load` makes the run current, and the driver's evaluation must be the very
    // next call into the isolate (isolated-vm runs them in order; nothing runs in between), so
    // the two are sent back to back, with nothing awaited between them.
    const tuple = this.track(
      this.dispatch.apply(undefined, ['load', execId, token, kind, argsJson, trigger, description, ids.join(','), sink !== undefined], {
        timeout: timeoutMs,
        result: { promise: true, copy: true },
      }),
      timeoutMs,
    );
    const { driver } = prepared;
    const evaluated = this.evaluate(prepared, token, timeoutMs);
    if (sink) this.dropSinkAfter(execId, tuple);
    return new Promise<RunTuple>((resolve, reject) => {
      let done = false;
      evaluated.then(
        () => this.loader.finish(driver),
        (err: unknown) => {
          this.loader.finish(driver);
          if (done) return;
          done = true;
          reject(this.mapped(classifyCallError(err, this.isolate)));
        },
      );
      tuple.then(
        (raw) => {
          if (done) return;
          done = true;
          try {
            resolve(this.mapped(parseOrFail(raw, this.options.maxLogChars)));
          } catch (err) {
            reject(err);
          }
        },
        (err: unknown) => {
          if (done) return;
          done = true;
          reject(this.mapped(classifyCallError(err, this.isolate)));
        },
      );
    });
  }

  /**
   * Evaluates a prepared load's driver; the first evaluation is sent at once (see load). A link
   * still running (ModuleLoader's fast path) has run before it; if it failed, its error is the
   * load's, as when loads waited for their link. Should isolated-vm ever queue that link after
   * the evaluation, the evaluation is refused as uninstantiated and sent again once it is done.
   */
  private async evaluate(prepared: PreparedLoad, token: string, timeoutMs: number): Promise<unknown> {
    const first = this.track(prepared.driver.evaluate({ timeout: timeoutMs }), timeoutMs);
    try {
      return await first;
    } catch (err) {
      await prepared.linked;
      if (!(err instanceof Error && err.message === UNINSTANTIATED)) throw err;
      // other calls may have run meanwhile: the run is made current again, right before
      this.fireAndForget(['enter', token]);
      return await this.track(prepared.driver.evaluate({ timeout: timeoutMs }), timeoutMs);
    }
  }

  /**
   * A run's sink goes a while after its call settled: the tap is never waited for, and its last
   * lines can arrive after the run's result, later than the next turn under load (a line was seen
   * lost when the sink went one turn after). Lines are tied to their run by id, so a late one
   * still lands right; SINK_LINGER_MS only bounds how long the map holds a finished run.
   */
  private dropSinkAfter(execId: string, call: Promise<unknown>): void {
    const drop = (): void => void setTimeout(() => this.sinks.delete(execId), SINK_LINGER_MS).unref();
    call.then(drop, drop);
  }

  /**
   * A prepared load that will not be run (its run ended before it started): its driver's handle
   * is released once its link, if still running, has settled.
   */
  discard(prepared: PreparedLoad): void {
    this.assertUsable('discard');
    const done = (): void => this.loader.finish(prepared.driver);
    prepared.linked.then(done, done);
  }

  /**
   * Runs one handler. Resolves with its tuple; rejects with SandboxCallError. `sink`: as load's.
   * `eventJson`: a JSON object the handler's event is made of besides its ids ('' for `{trigger}`).
   */
  async invoke(
    execId: string,
    registrationId: string,
    payloadJson: string,
    trigger: string,
    timeoutMs: number,
    ids: readonly string[] = [],
    sink?: LogSink,
    eventJson = '',
  ): Promise<RunTuple> {
    this.assertUsable('invoke');
    if (sink) this.sinks.set(execId, sink);
    let raw: unknown;
    try {
      const call = this.track(
        this.dispatch.apply(undefined, ['invoke', execId, registrationId, payloadJson, trigger, ids.join(','), sink !== undefined, eventJson], {
          timeout: timeoutMs,
          result: { promise: true, copy: true },
        }),
        timeoutMs,
      );
      if (sink) this.dropSinkAfter(execId, call);
      raw = await call;
    } catch (err) {
      throw this.mapped(classifyCallError(err, this.isolate));
    }
    return this.mapped(parseOrFail(raw, this.options.maxLogChars));
  }

  /** The host accepted the run: its registrations become callable. Fire and forget. */
  commit(execId: string): void {
    this.assertUsable('commit');
    this.fireAndForget(['commit', execId]);
  }

  /** The host gave up on, or refused, a run: settle it and drop what it registered. */
  abandon(execId: string, token = ''): void {
    this.assertUsable('abandon');
    this.fireAndForget(['abandon', execId, token]);
  }

  /** Forget handlers of released registrations. */
  unregister(ids: string[]): void {
    this.assertUsable('unregister');
    if (ids.length > 0) this.fireAndForget(['unregister', ids.join(',')]);
  }

  /** Calls after release are bugs, and loud; an isolate that died under a live sandbox is not. */
  private assertUsable(call: string): void {
    if (this.released) throw new SandboxReleasedError(call, this.options.interpreterId);
  }

  private fireAndForget(args: (string | number)[]): void {
    if (this.isolate.isDisposed) return;
    try {
      this.dispatch.applyIgnored(undefined, args, { timeout: 1000 });
    } catch {
      // the isolate is going away; nothing left to tidy
    }
  }

  /** Drops the context (its globals, modules and handlers). A second release is a bug and throws. */
  release(): void {
    this.assertUsable('release');
    this.released = true;
    this.loader.release();
    if (this.isolate.isDisposed) return;
    try {
      this.dispatch.release();
      this.context.release();
    } catch {
      // disposed concurrently
    }
  }
}
