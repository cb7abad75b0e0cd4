import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import * as pb from './gen/isogear/v1/gears';

export { pb };

/** A JSON value: what `args`, `payload` and `result` carry (google.protobuf.Value on the wire). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface ClientOptions {
  /** Channel credentials (default plaintext): `grpc.credentials.createSsl(ca, key, cert)` for TLS or mTLS. */
  credentials?: grpc.ChannelCredentials;
  /** Sent as `authorization: Bearer <key>` on every GearsService call. */
  apiKey?: string;
  /** Default deadline of every call, in milliseconds (none by default); a call's own option wins. */
  deadlineMs?: number;
  /** grpc-js channel options, e.g. `{'grpc.ssl_target_name_override': 'localhost'}`. */
  channelOptions?: grpc.ChannelOptions;
}

export interface CallOptions {
  deadlineMs?: number;
  /** Cancels the call (the server aborts its run). */
  signal?: AbortSignal;
  /**
   * Extra metadata sent with the call: e.g. a W3C `traceparent` (and `tracestate`), which makes
   * the server's spans of the call children of the caller's span.
   */
  metadata?: Record<string, string>;
}

/** The mode of a new interpreter, as a name or the proto enum. */
export type Mode = 'shared' | 'isolate' | pb.IsolationMode;

export interface LimitsInit {
  /** Wall-clock limit of a run (0: the server default). */
  timeoutMs?: number;
  /** Heap limit of a dedicated isolate (0: the server default). */
  memoryLimitMb?: number;
}

/** What a request's sources are written in, as a name or the proto enum (unset: JavaScript). */
export type LanguageName = 'javascript' | 'typescript' | pb.Language;

export interface ExecuteInit {
  source: string;
  /** 'typescript': the source and modules are TypeScript (types are stripped, not checked). */
  language?: LanguageName;
  args?: Json;
  mode?: Mode;
  limits?: LimitsInit;
  modules?: Record<string, string>;
  interpreterId?: string;
  name?: string;
  replace?: boolean;
}

export interface RegisterInit {
  trigger: string;
  source: string;
  language?: LanguageName;
  mode?: Mode;
  limits?: LimitsInit;
  modules?: Record<string, string>;
  interpreterId?: string;
  description?: string;
}

export type ReleaseInit = { registrationId: string } | { interpreterId: string };

/** What PauseRegistrations and ResumeRegistrations act on: one selector. */
export type PauseInit = { registrationId: string } | { interpreterId: string } | { trigger: string };

export interface TriggerInit {
  trigger: string;
  payload?: Json;
  limits?: LimitsInit;
}

export interface ListInterpretersInit {
  pageSize?: number;
  pageToken?: string;
  name?: string;
  mode?: Mode;
}

export interface ListRegistrationsInit {
  pageSize?: number;
  pageToken?: string;
  trigger?: string;
  interpreterId?: string;
}

/** An execution state, as a name or the proto enum (a ListExecutions filter). */
export type ExecutionStateName = 'queued' | 'running' | 'done' | pb.ExecutionState;

export interface ListExecutionsInit {
  pageSize?: number;
  pageToken?: string;
  /** Only executions in this state (default: all). */
  state?: ExecutionStateName;
  /** Only executions running in this interpreter. */
  interpreterId?: string;
}

export interface WatchInit {
  /** Only events of this interpreter. */
  interpreterId?: string;
  /** Only runs, logs and registrations of handlers bound to this trigger. */
  trigger?: string;
  /** Only this registration's runs, logs and changes. */
  registrationId?: string;
  /** Also each console line as it is written. */
  includeLogs?: boolean;
}

/**
 * An open Watch: iterate it once (`for await (const event of watch)`) until it ends; leaving the
 * loop early closes it. `ready` resolves once the server has opened it (every event after that
 * is seen) and rejects with the server's refusal; `close()` ends it (the loop then simply stops).
 */
export interface Watch extends AsyncIterable<pb.WatchEvent> {
  readonly ready: Promise<void>;
  close(): void;
}

export interface WaitExecutionInit {
  /** Longest wait in ms (0 or unset: the server's maximum, ISOGEAR_MAX_TIMEOUT_MS). */
  timeoutMs?: number;
}

/**
 * Every failed call rejects with this: the gRPC status code (and its name), the server's
 * message, and, for RESOURCE_EXHAUSTED, the limit that was full and how long to back off.
 */
export class IsogearRpcError extends Error {
  readonly code: grpc.status;
  /** The status name, e.g. `NOT_FOUND`. */
  readonly codeName: string;
  readonly details: string;
  readonly metadata: grpc.Metadata;
  /** `isogear-limit` (RESOURCE_EXHAUSTED): which limit or quota was full. */
  readonly limit?: string;
  /** `retry-after-ms` (RESOURCE_EXHAUSTED), when backing off helps. */
  readonly retryAfterMs?: number;

  /** `address`: the server's, named in the message when it cannot be reached. */
  constructor(err: grpc.ServiceError, address?: string) {
    const codeName = grpc.status[err.code] ?? String(err.code);
    const details = address !== undefined ? unreachable(err, address) ?? err.details : err.details;
    super(`${codeName}: ${details}`);
    this.name = 'IsogearRpcError';
    this.code = err.code;
    this.codeName = codeName;
    this.details = details;
    this.metadata = err.metadata ?? new grpc.Metadata();
    const limit = this.metadata.get('isogear-limit')[0];
    if (limit !== undefined) this.limit = String(limit);
    const retry = this.metadata.get('retry-after-ms')[0];
    if (retry !== undefined && Number.isFinite(Number(retry))) this.retryAfterMs = Number(retry);
  }
}

/**
 * What a connection-level UNAVAILABLE (grpc-js found no server: refused, unresolvable, dropped
 * before an answer) says in plain words, naming the address; undefined for any other error,
 * which keeps the server's own message.
 */
function unreachable(err: grpc.ServiceError, address: string): string | undefined {
  if (err.code !== grpc.status.UNAVAILABLE) return undefined;
  const d = err.details ?? '';
  const m = /^No connection established\. Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/s.exec(d);
  if (m) return `cannot reach the isogear server at ${address} (${m[1].trim() || 'no connection'}); is it running, and is the address right?`;
  if (/^Name resolution failed/.test(d)) return `cannot reach the isogear server at ${address}: its host name does not resolve (${d}); is the address right?`;
  return undefined;
}

export interface IsogearClient {
  execute(req: ExecuteInit, opts?: CallOptions): Promise<pb.ExecuteResponse>;
  register(req: RegisterInit, opts?: CallOptions): Promise<pb.RegisterResponse>;
  release(req: ReleaseInit, opts?: CallOptions): Promise<pb.ReleaseResponse>;
  /** Pauses registrations (one, an interpreter's, or a trigger's): Trigger skips them. Answers with those it changed. */
  pauseRegistrations(req: PauseInit, opts?: CallOptions): Promise<pb.PauseRegistrationsResponse>;
  /** Resumes paused registrations. Answers with those it changed. */
  resumeRegistrations(req: PauseInit, opts?: CallOptions): Promise<pb.ResumeRegistrationsResponse>;
  trigger(req: TriggerInit, opts?: CallOptions): Promise<pb.TriggerResponse>;
  getInterpreter(interpreterId: string, opts?: CallOptions): Promise<pb.GetInterpreterResponse>;
  listInterpreters(req?: ListInterpretersInit, opts?: CallOptions): Promise<pb.ListInterpretersResponse>;
  listRegistrations(req?: ListRegistrationsInit, opts?: CallOptions): Promise<pb.ListRegistrationsResponse>;
  /** Queues an Execute and answers at once (QUEUED or RUNNING); the run goes on if the client goes away. */
  startExecute(req: ExecuteInit, opts?: CallOptions): Promise<pb.Execution>;
  /** Starts a Trigger's fan-out in the background and answers at once. */
  startTrigger(req: TriggerInit, opts?: CallOptions): Promise<pb.Execution>;
  getExecution(executionId: string, opts?: CallOptions): Promise<pb.Execution>;
  /**
   * Waits until the execution is DONE, `timeoutMs` passes or the call's deadline nears; answers
   * its state either way (check `state`).
   */
  waitExecution(executionId: string, req?: WaitExecutionInit, opts?: CallOptions): Promise<pb.Execution>;
  listExecutions(req?: ListExecutionsInit, opts?: CallOptions): Promise<pb.ListExecutionsResponse>;
  /** Cancels a queued or running execution (its run ends OUTCOME_ABORTED); a DONE one is returned unchanged. */
  cancelExecution(executionId: string, opts?: CallOptions): Promise<pb.Execution>;
  /** The versions of a named interpreter, oldest first (the current one has `current` and its `interpreterId`). */
  listVersions(name: string, opts?: CallOptions): Promise<pb.ListVersionsResponse>;
  /**
   * Re-creates `version` of the named interpreter in a new one and moves the name to it, as an
   * upgrade does; answers as Execute does (`result` is `{ version, rolledBackFrom }`).
   */
  rollback(name: string, version: number, opts?: CallOptions): Promise<pb.ExecuteResponse>;
  /** Streams the caller's events from now on (see Watch); a failure ends the iteration with IsogearRpcError. */
  watch(req?: WatchInit, opts?: CallOptions): Watch;
  /** grpc.health.v1 Check: 'SERVING', 'NOT_SERVING', … ('' asks about the server as a whole). */
  health(service?: string, opts?: CallOptions): Promise<string>;
  /** Closes the channel; calls after it fail. Idempotent. */
  close(): void;
}

const MODES: Record<string, pb.IsolationMode> = {
  shared: pb.IsolationMode.ISOLATION_MODE_SHARED,
  isolate: pb.IsolationMode.ISOLATION_MODE_ISOLATE,
};

/** A name from `names` or the proto enum value itself; undefined: the enum's 0 (unspecified). */
function toEnum<E extends number>(names: Record<string, E>, value: string | E | undefined, what: string): E | 0 {
  if (value === undefined) return 0;
  if (typeof value === 'number') return value;
  const e = names[value];
  if (e === undefined) throw new TypeError(`${what} must be ${Object.keys(names).map((n) => `"${n}"`).join(', ').replace(/, ([^,]*)$/, ' or $1')}, got ${JSON.stringify(value)}`);
  return e;
}

const toMode = (mode: Mode | undefined): pb.IsolationMode => toEnum(MODES, mode, 'mode');

const LANGUAGES: Record<string, pb.Language> = { javascript: pb.Language.LANGUAGE_JAVASCRIPT, typescript: pb.Language.LANGUAGE_TYPESCRIPT };
const toLanguage = (language: LanguageName | undefined): pb.Language => toEnum(LANGUAGES, language, 'language');

const EXECUTION_STATES: Record<string, pb.ExecutionState> = {
  queued: pb.ExecutionState.EXECUTION_STATE_QUEUED,
  running: pb.ExecutionState.EXECUTION_STATE_RUNNING,
  done: pb.ExecutionState.EXECUTION_STATE_DONE,
};

const toExecutionState = (state: ExecutionStateName | undefined): pb.ExecutionState => toEnum(EXECUTION_STATES, state, 'state');

const toLimits = (l: LimitsInit | undefined): pb.Limits | undefined => (l ? { timeoutMs: l.timeoutMs ?? 0, memoryLimitMb: l.memoryLimitMb ?? 0 } : undefined);

type Unary<Req, Res> = (req: Req, md: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall;

/**
 * A client for one isogear server: promise-based, typed methods for every RPC, plain JS values
 * for `args`, `payload` and `result`, and one error class (IsogearRpcError) for every failure.
 *
 *   const client = createClient('127.0.0.1:50051', { apiKey: process.env.ISOGEAR_API_KEY });
 *   const res = await client.execute({ source: 'export default (a) => a.x * 2', args: { x: 21 } });
 *   res.result; // 42
 *   client.close();
 */
export function createClient(address: string, options: ClientOptions = {}): IsogearClient {
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const gears = new pb.GearsServiceClient(address, credentials, options.channelOptions ?? {});
  const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'grpc.health.v1.Health');
  const health = new HealthClient(address, credentials, options.channelOptions ?? {}) as grpc.Client & Record<string, unknown>;
  let closed = false;

  const metadata = (extra: Record<string, string> = {}): grpc.Metadata => {
    const md = new grpc.Metadata();
    for (const [key, value] of Object.entries(extra)) md.set(key, value);
    if (options.apiKey !== undefined) md.set('authorization', `Bearer ${options.apiKey}`);
    return md;
  };

  const call = <Req, Res>(client: grpc.Client, method: string, req: Req, opts: CallOptions = {}, withKey = true): Promise<Res> =>
    new Promise<Res>((resolve, reject) => {
      if (closed) {
        reject(new IsogearRpcError({ code: grpc.status.CANCELLED, details: 'the client is closed', metadata: new grpc.Metadata(), name: 'Error', message: '' }));
        return;
      }
      const md = new grpc.Metadata();
      for (const [key, value] of Object.entries(opts.metadata ?? {})) md.set(key, value);
      if (withKey && options.apiKey !== undefined) md.set('authorization', `Bearer ${options.apiKey}`);
      const deadlineMs = opts.deadlineMs ?? options.deadlineMs;
      const callOptions: Partial<grpc.CallOptions> = deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + deadlineMs) };
      const fn = (client as unknown as Record<string, Unary<Req, Res>>)[method];
      const c = fn.call(client, req, md, callOptions, (err, res) => {
        opts.signal?.removeEventListener('abort', onAbort);
        if (err) reject(new IsogearRpcError(err, address));
        else resolve(res);
      });
      const onAbort = (): void => c.cancel();
      if (opts.signal?.aborted) c.cancel();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });

  const executeRequest = (req: ExecuteInit): pb.ExecuteRequest =>
    pb.ExecuteRequest.fromPartial({
      source: req.source,
      language: toLanguage(req.language),
      args: req.args,
      mode: toMode(req.mode),
      limits: toLimits(req.limits),
      modules: req.modules ?? {},
      interpreterId: req.interpreterId ?? '',
      name: req.name ?? '',
      replace: req.replace ?? false,
    });
  const triggerRequest = (req: TriggerInit): pb.TriggerRequest => pb.TriggerRequest.fromPartial({ trigger: req.trigger, payload: req.payload, limits: toLimits(req.limits) });

  return {
    execute: async (req, opts) => call(gears, 'execute', executeRequest(req), opts),
    register: async (req, opts) =>
      call(
        gears,
        'register',
        pb.RegisterRequest.fromPartial({
          trigger: req.trigger,
          source: req.source,
          language: toLanguage(req.language),
          mode: toMode(req.mode),
          limits: toLimits(req.limits),
          modules: req.modules ?? {},
          interpreterId: req.interpreterId ?? '',
          description: req.description ?? '',
        }),
        opts,
      ),
    release: async (req, opts) => call(gears, 'release', pb.ReleaseRequest.fromPartial(req), opts),
    pauseRegistrations: async (req, opts) => call(gears, 'pauseRegistrations', pb.PauseRegistrationsRequest.fromPartial(req), opts),
    resumeRegistrations: async (req, opts) => call(gears, 'resumeRegistrations', pb.ResumeRegistrationsRequest.fromPartial(req), opts),
    trigger: async (req, opts) => call(gears, 'trigger', triggerRequest(req), opts),
    getInterpreter: async (interpreterId, opts) => call(gears, 'getInterpreter', pb.GetInterpreterRequest.fromPartial({ interpreterId }), opts),
    listInterpreters: async (req = {}, opts) =>
      call(gears, 'listInterpreters', pb.ListInterpretersRequest.fromPartial({ pageSize: req.pageSize, pageToken: req.pageToken, name: req.name, mode: toMode(req.mode) }), opts),
    listRegistrations: async (req = {}, opts) => call(gears, 'listRegistrations', pb.ListRegistrationsRequest.fromPartial(req), opts),
    startExecute: async (req, opts) => call(gears, 'startExecute', executeRequest(req), opts),
    startTrigger: async (req, opts) => call(gears, 'startTrigger', triggerRequest(req), opts),
    getExecution: async (executionId, opts) => call(gears, 'getExecution', pb.GetExecutionRequest.fromPartial({ executionId }), opts),
    waitExecution: async (executionId, req = {}, opts) => call(gears, 'waitExecution', pb.WaitExecutionRequest.fromPartial({ executionId, timeoutMs: req.timeoutMs ?? 0 }), opts),
    listExecutions: async (req = {}, opts) =>
      call(
        gears,
        'listExecutions',
        pb.ListExecutionsRequest.fromPartial({ pageSize: req.pageSize, pageToken: req.pageToken, state: toExecutionState(req.state), interpreterId: req.interpreterId }),
        opts,
      ),
    cancelExecution: async (executionId, opts) => call(gears, 'cancelExecution', pb.CancelExecutionRequest.fromPartial({ executionId }), opts),
    listVersions: async (name, opts) => call(gears, 'listVersions', pb.ListVersionsRequest.fromPartial({ name }), opts),
    rollback: async (name, version, opts) => call(gears, 'rollback', pb.RollbackRequest.fromPartial({ name, version }), opts),
    watch: (req = {}, opts = {}) => {
      const deadlineMs = opts.deadlineMs ?? options.deadlineMs;
      const stream = gears.watch(pb.WatchRequest.fromPartial(req), metadata(opts.metadata), deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + deadlineMs) });
      let closedHere = false;
      const close = (): void => {
        closedHere = true;
        stream.cancel();
      };
      if (opts.signal?.aborted) close();
      else opts.signal?.addEventListener('abort', close, { once: true });
      const ready = new Promise<void>((resolve, reject) => {
        stream.once('metadata', () => resolve());
        stream.once('error', (err: grpc.ServiceError) => reject(new IsogearRpcError(err, address)));
      });
      ready.catch(() => undefined);
      let ended = false;
      stream.once('end', () => (ended = true));
      // Leaving the loop early (break, return, throw) closes the watch.
      async function* events(): AsyncGenerator<pb.WatchEvent> {
        try {
          for await (const event of stream as AsyncIterable<pb.WatchEvent>) yield event;
        } catch (err) {
          if (closedHere) return;
          throw new IsogearRpcError(err as grpc.ServiceError, address);
        } finally {
          opts.signal?.removeEventListener('abort', close);
          if (!ended && !closedHere) close();
        }
      }
      return { ready, close, [Symbol.asyncIterator]: () => events() };
    },
    health: async (service = '', opts) => {
      const res = await call<object, { status: string | number }>(health, 'check', { service }, opts, false);
      return String(res.status);
    },
    close: () => {
      if (closed) return;
      closed = true;
      gears.close();
      health.close();
    },
  };
}
