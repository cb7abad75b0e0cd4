import { Metadata, status, type sendUnaryData, type Server, type ServerUnaryCall, type ServerWritableStream, type ServiceError } from '@grpc/grpc-js';
import type { Span, TextMapGetter } from '@opentelemetry/api';
import { OPEN_ACCESS, type Authenticator } from '../auth/ApiKeys';
import { CancelledError, DeadlineExceededError, InvalidArgumentError, UnavailableError, type IsogearError } from '../core/errors';
import type { ExecuteSpec, IsolateManager, JsonValue, PauseTarget, TriggerSpec, WatchEvent, WatchStream } from '../core/types';
import { pb } from '@isogear/client';
import {
  executeResponseToProto,
  executionStateFromProto,
  executionToProto,
  interpreterToProto,
  limitsFromProto,
  languageFromProto,
  modeFromProto,
  registrationToProto,
  watchEventToProto,
  triggerResultToProto,
  versionToProto,
} from './convert';
import { toStatus, type ErrorLogger } from './toStatus';
import { CallsInFlight } from './CallsInFlight';
import { failed, Tracing } from '../tracing/Tracing';

export interface ServiceLogger extends ErrorLogger {
  info(obj: object, msg?: string): void;
}

/** `deadline`: when the client's deadline passes (ms since the epoch), if it set one. */
type Handler<Req, Res> = (request: Req, signal: AbortSignal, tenant: string, deadline: number | undefined) => Promise<Res> | Res;
/** Ids (never payloads) an RPC's log line carries, from its request and, when it succeeded, its response. */
type LogFields<Req, Res> = (request: Req, response: Res | undefined) => Record<string, unknown>;

/**
 * GearsService: validates requests, hands them to the isolate manager, maps results to proto.
 * It never creates the server; `addToServer` mounts it on one.
 */
export class GearsService {
  private readonly protoOf = new WeakMap<WatchEvent, pb.WatchEvent>();
  private readonly calls = new CallsInFlight();

  constructor(
    private readonly manager: IsolateManager,
    private readonly logger: ServiceLogger,
    private readonly auth: Authenticator = OPEN_ACCESS,
    private readonly tracing: Tracing = Tracing.off,
  ) {}

  addToServer(server: Server): void {
    const implementation: pb.GearsServiceServer = {
      execute: this.unary(
        'Execute',
        (req: pb.ExecuteRequest, signal, tenant) => this.execute(req, signal, tenant),
        (req, res) => ({
          interpreterId: res?.interpreterId || req.interpreterId || undefined,
          executionId: res?.executionId,
          outcome: res ? pb.outcomeToJSON(res.outcome) : undefined,
          registrationIds: res?.registrations.length ? res.registrations.map((r) => r.id) : undefined,
          name: req.name || undefined,
        }),
      ),
      register: this.unary(
        'Register',
        (req: pb.RegisterRequest, signal, tenant) => this.register(req, signal, tenant),
        (req, res) => ({
          trigger: req.trigger,
          interpreterId: res?.interpreter?.id ?? (req.interpreterId || undefined),
          registrationId: res?.registration?.id,
        }),
      ),
      release: this.unary(
        'Release',
        (req: pb.ReleaseRequest, _signal, tenant) => this.release(req, tenant),
        (req, res) => ({
          interpreterId: res?.interpreter?.id ?? req.interpreterId,
          registrationIds: res?.releasedRegistrationIds ?? (req.registrationId ? [req.registrationId] : undefined),
        }),
      ),
      trigger: this.unary(
        'Trigger',
        (req: pb.TriggerRequest, signal, tenant) => this.trigger(req, signal, tenant),
        (req, res) => ({
          trigger: req.trigger,
          registrationIds: res?.results.map((r) => r.registrationId),
          executionIds: res?.results.map((r) => r.executionId),
        }),
      ),
      getInterpreter: this.unary(
        'GetInterpreter',
        (req: pb.GetInterpreterRequest, _signal, tenant) => this.getInterpreter(req, tenant),
        (req) => ({ interpreterId: req.interpreterId }),
      ),
      listInterpreters: this.unary('ListInterpreters', (req: pb.ListInterpretersRequest, _signal, tenant) => this.listInterpreters(req, tenant)),
      listRegistrations: this.unary('ListRegistrations', (req: pb.ListRegistrationsRequest, _signal, tenant) => this.listRegistrations(req, tenant)),
      startExecute: this.unary(
        'StartExecute',
        async (req: pb.ExecuteRequest, _signal, tenant) => executionToProto(await this.manager.startExecute(this.executeSpec(req, tenant))),
        (req, res) => ({ executionId: res?.id, interpreterId: req.interpreterId || undefined, name: req.name || undefined }),
      ),
      startTrigger: this.unary(
        'StartTrigger',
        async (req: pb.TriggerRequest, _signal, tenant) => executionToProto(await this.manager.startTrigger(this.triggerSpec(req, tenant))),
        (req, res) => ({ trigger: req.trigger, executionId: res?.id }),
      ),
      getExecution: this.unary(
        'GetExecution',
        (req: pb.GetExecutionRequest, _signal, tenant) => executionToProto(this.manager.getExecution(req.executionId, tenant)),
        (req) => ({ executionId: req.executionId }),
      ),
      waitExecution: this.unary(
        'WaitExecution',
        async (req: pb.WaitExecutionRequest, signal, tenant, deadline) =>
          executionToProto(await this.manager.waitExecution(req.executionId, req.timeoutMs, { tenant, signal, capMs: answerBefore(deadline) })),
        (req, res) => ({ executionId: req.executionId, state: res ? pb.executionStateToJSON(res.state) : undefined }),
      ),
      listExecutions: this.unary('ListExecutions', (req: pb.ListExecutionsRequest, _signal, tenant) => this.listExecutions(req, tenant)),
      watch: (call: ServerWritableStream<pb.WatchRequest, pb.WatchEvent>) => void this.watch(call),
      pauseRegistrations: this.unary(
        'PauseRegistrations',
        async (req: pb.PauseRegistrationsRequest, _signal, tenant) => ({ registrationIds: await this.manager.setPaused(pauseTarget(req, tenant), true) }),
        (req, res) => ({ ...pauseFields(req), registrationIds: res?.registrationIds }),
      ),
      resumeRegistrations: this.unary(
        'ResumeRegistrations',
        async (req: pb.ResumeRegistrationsRequest, _signal, tenant) => ({ registrationIds: await this.manager.setPaused(pauseTarget(req, tenant), false) }),
        (req, res) => ({ ...pauseFields(req), registrationIds: res?.registrationIds }),
      ),
      listVersions: this.unary(
        'ListVersions',
        async (req: pb.ListVersionsRequest, _signal, tenant) => ({ versions: (await this.manager.listVersions(req.name, tenant)).map(versionToProto) }),
        (req, res) => ({ name: req.name, versions: res?.versions.length }),
      ),
      rollback: this.unary(
        'Rollback',
        async (req: pb.RollbackRequest, signal, tenant) => executeResponseToProto(await this.manager.rollback({ name: req.name, version: req.version, tenant }, signal)),
        (req, res) => ({
          name: req.name,
          version: req.version,
          interpreterId: res?.interpreterId || undefined,
          executionId: res?.executionId,
          outcome: res ? pb.outcomeToJSON(res.outcome) : undefined,
        }),
      ),
      cancelExecution: this.unary(
        'CancelExecution',
        async (req: pb.CancelExecutionRequest, _signal, tenant) => executionToProto(await this.manager.cancelExecution(req.executionId, tenant)),
        (req, res) => ({ executionId: req.executionId, state: res ? pb.executionStateToJSON(res.state) : undefined }),
      ),
    };
    // One event goes to every watcher that wants it: it is converted and encoded once, not once
    // per stream (the watchers' share of a Trigger's cost is then their HTTP/2 writes).
    const encoded = new WeakMap<pb.WatchEvent, Buffer>();
    const watch = pb.GearsServiceService.watch;
    const definition = {
      ...pb.GearsServiceService,
      watch: {
        ...watch,
        responseSerialize: (e: pb.WatchEvent): Buffer => {
          let bytes = encoded.get(e);
          if (!bytes) {
            bytes = watch.responseSerialize(e);
            encoded.set(e, bytes);
          }
          return bytes;
        },
      },
    };
    server.addService(definition, implementation);
  }

  /**
   * Answers every call still in flight (unary and Watch) with `reason`'s status now, for a
   * process about to exit: runs are not waited for, nor told. Returns how many there were.
   */
  endCallsInFlight(reason: IsogearError): number {
    return this.calls.endAll(reason);
  }

  private async execute(req: pb.ExecuteRequest, signal: AbortSignal, tenant: string): Promise<pb.ExecuteResponse> {
    return executeResponseToProto(await this.manager.execute(this.executeSpec(req, tenant), signal));
  }

  private executeSpec(req: pb.ExecuteRequest, tenant: string): ExecuteSpec {
    return {
      tenant,
      source: req.source,
      language: languageFromProto(req.language),
      args: jsonValue(req.args, 'args'),
      mode: modeFromProto(req.mode),
      limits: limitsFromProto(req.limits),
      modules: req.modules,
      interpreterId: req.interpreterId || undefined,
      name: req.name || undefined,
      replace: req.replace,
    };
  }

  private triggerSpec(req: pb.TriggerRequest, tenant: string): TriggerSpec {
    return { tenant, trigger: req.trigger, payload: jsonValue(req.payload, 'payload'), limits: limitsFromProto(req.limits) };
  }

  private listExecutions(req: pb.ListExecutionsRequest, tenant: string): pb.ListExecutionsResponse {
    const page = this.manager.listExecutions({
      tenant,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      state: executionStateFromProto(req.state),
      interpreterId: req.interpreterId || undefined,
    });
    return { executions: page.items.map(executionToProto), nextPageToken: page.nextPageToken };
  }

  private async register(req: pb.RegisterRequest, signal: AbortSignal, tenant: string): Promise<pb.RegisterResponse> {
    const result = await this.manager.register(
      {
        tenant,
        trigger: req.trigger,
        source: req.source,
        language: languageFromProto(req.language),
        mode: modeFromProto(req.mode),
        limits: limitsFromProto(req.limits),
        modules: req.modules,
        interpreterId: req.interpreterId || undefined,
        description: req.description,
      },
      signal,
    );
    return { registration: registrationToProto(result.registration), interpreter: interpreterToProto(result.interpreter) };
  }

  private async release(req: pb.ReleaseRequest, tenant: string): Promise<pb.ReleaseResponse> {
    const byRegistration = req.registrationId !== undefined;
    const byInterpreter = req.interpreterId !== undefined;
    if (byRegistration === byInterpreter) {
      throw new InvalidArgumentError('set exactly one of registration_id or interpreter_id');
    }
    const target = byRegistration ? req.registrationId : req.interpreterId;
    if (!target) throw new InvalidArgumentError(`${byRegistration ? 'registration_id' : 'interpreter_id'} must not be empty`);
    const result = await this.manager.release(byRegistration ? { registrationId: target, tenant } : { interpreterId: target, tenant });
    return { releasedRegistrationIds: result.releasedRegistrationIds, interpreter: interpreterToProto(result.interpreter) };
  }

  private async trigger(req: pb.TriggerRequest, signal: AbortSignal, tenant: string): Promise<pb.TriggerResponse> {
    const results = await this.manager.trigger(this.triggerSpec(req, tenant), signal);
    return { results: results.map(triggerResultToProto) };
  }

  private async getInterpreter(req: pb.GetInterpreterRequest, tenant: string): Promise<pb.GetInterpreterResponse> {
    if (!req.interpreterId) throw new InvalidArgumentError('interpreter_id must not be empty');
    const found = await this.manager.getInterpreter(req.interpreterId, tenant);
    return { interpreter: interpreterToProto(found.interpreter), registrations: found.registrations.map(registrationToProto) };
  }

  private async listInterpreters(req: pb.ListInterpretersRequest, tenant: string): Promise<pb.ListInterpretersResponse> {
    const page = await this.manager.listInterpreters({
      tenant,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      name: req.name || undefined,
      mode: modeFromProto(req.mode),
    });
    return { interpreters: page.items.map(interpreterToProto), nextPageToken: page.nextPageToken };
  }

  private listRegistrations(req: pb.ListRegistrationsRequest, tenant: string): pb.ListRegistrationsResponse {
    const page = this.manager.listRegistrations({
      tenant,
      pageSize: req.pageSize,
      pageToken: req.pageToken,
      trigger: req.trigger || undefined,
      interpreterId: req.interpreterId || undefined,
    });
    return { registrations: page.items.map(registrationToProto), nextPageToken: page.nextPageToken };
  }

  /**
   * Watch: checks the caller and the filter, then writes each event as the client takes it. The
   * client's pace never reaches the server: while a write waits for the client, events gather in
   * the watch's bounded buffer (dropped past it, and counted). Ends when the client cancels, or
   * with UNAVAILABLE when the server shuts down. One log line when the stream ends.
   */
  private async watch(call: ServerWritableStream<pb.WatchRequest, pb.WatchEvent>): Promise<void> {
    const started = performance.now();
    let tenant: string | undefined;
    let events = 0;
    let stream: WatchStream | undefined;
    let finished = false;
    // Ends the stream early (the process is exiting); the loop below then finds it closed.
    const untrack = this.calls.track((reason) => {
      stream?.close();
      finish(toStatus(reason, this.logger, 'Watch'));
    });
    const finish = (err?: Partial<ServiceError>): void => {
      if (finished) return;
      finished = true;
      untrack();
      if (err) call.emit('error', err);
      else if (!call.cancelled) call.end();
      const req = call.request;
      this.logger.info(
        {
          method: 'Watch',
          code: status[err?.code ?? (call.cancelled ? status.CANCELLED : status.OK)],
          durationMs: Math.round(performance.now() - started),
          tenant,
          interpreterId: req.interpreterId || undefined,
          registrationId: req.registrationId || undefined,
          trigger: req.trigger || undefined,
          events,
        },
        'rpc',
      );
    };
    try {
      tenant = this.auth.authenticate(call.metadata.get('authorization'), call.getAuthContext()?.sslPeerCertificate).name;
      const restoring = this.manager.restoreProgress();
      if (restoring) throw new UnavailableError(`the server is rebuilding its stored interpreters (${restoring.done} of ${restoring.total} done); retry shortly`);
      const req = call.request;
      stream = this.manager.watch({ tenant, interpreterId: req.interpreterId || undefined, trigger: req.trigger || undefined, registrationId: req.registrationId || undefined, includeLogs: req.includeLogs });
    } catch (err) {
      finish(toStatus(err, this.logger, 'Watch'));
      return;
    }
    const watching = stream;
    const close = (): void => watching.close();
    call.on('cancelled', close);
    // The headers go at once: a client knows the watch is open (and sees every event after it).
    call.sendMetadata(new Metadata());
    try {
      for (let event = await watching.next(); event; event = await watching.next()) {
        events += 1;
        if (!call.write(this.toProto(event))) await drained(call);
      }
    } catch (err) {
      watching.close();
      finish(toStatus(err, this.logger, 'Watch'));
      return;
    } finally {
      call.removeListener('cancelled', close);
    }
    finish(watching.closeReason ? toStatus(watching.closeReason, this.logger, 'Watch') : undefined);
  }

  /** An event's proto message, made once for all the watchers it goes to. */
  private toProto(event: WatchEvent): pb.WatchEvent {
    let message = this.protoOf.get(event);
    if (!message) {
      message = watchEventToProto(event);
      this.protoOf.set(event, message);
    }
    return message;
  }

  /**
   * Wraps a handler: one AbortSignal per call (fired when the client cancels, disconnects or its
   * deadline passes), exactly one callback, errors through `toStatus`, one log line per call.
   */
  private unary<Req, Res>(method: string, handler: Handler<Req, Res>, fields?: LogFields<Req, Res>) {
    const serve = this.serveUnary(method, handler, fields);
    const rpc = `${SERVICE}/${method}`;
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      if (!this.tracing.on) serve(call, callback, undefined);
      // The call's span continues the caller's trace (W3C traceparent in its metadata).
      else this.tracing.serve(rpc, call.metadata, METADATA, { 'rpc.system.name': 'grpc', 'rpc.method': rpc }, (span) => serve(call, callback, span));
    };
  }

  private serveUnary<Req, Res>(method: string, handler: Handler<Req, Res>, fields?: LogFields<Req, Res>) {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>, span: Span | undefined): void => {
      const started = performance.now();
      const controller = new AbortController();
      const onCancel = (): void => controller.abort();
      call.on('cancelled', onCancel);
      let answered = false;
      let tenant: string | undefined;
      // Answered early when the process must exit first; the handler's result is then ignored.
      const untrack = this.calls.track((reason) => finish(toStatus(reason, this.logger, method)));
      const finish = (err: Partial<ServiceError> | null, res?: Res): void => {
        if (answered) return;
        answered = true;
        untrack();
        call.removeListener('cancelled', onCancel);
        let ids: Record<string, unknown> = {};
        try {
          ids = fields ? fields(call.request, err ? undefined : res) : {};
        } catch {
          // a log field is never worth failing a call for
        }
        const line = { method, code: status[err?.code ?? status.OK], durationMs: Math.round((performance.now() - started) * 1000) / 1000, tenant, ...ids };
        // The response goes first: the line is a synchronous write to stdout, which the client
        // would otherwise wait for (about 0.04 ms of a 0.2 ms Trigger in the server's profile).
        if (err) callback(err, null);
        else callback(null, res);
        this.logger.info(line, 'rpc');
        if (span) {
          rpcOutcome(span, err?.code ?? status.OK, tenant);
          this.tracing.end(span);
        }
      };
      Promise.resolve()
        .then(() => {
          // Credentials first: an unauthenticated call learns nothing about its request.
          tenant = this.auth.authenticate(call.metadata.get('authorization'), call.getAuthContext()?.sslPeerCertificate).name;
          const restoring = this.manager.restoreProgress();
          if (restoring) {
            throw new UnavailableError(`the server is rebuilding its stored interpreters (${restoring.done} of ${restoring.total} done); retry shortly`);
          }
          return handler(call.request, controller.signal, tenant, deadlineMs(call));
        })
        .then(
          (res) => {
            if (controller.signal.aborted) finish(toStatus(cancelError(call), this.logger, method));
            else finish(null, res);
          },
          (err: unknown) => finish(toStatus(controller.signal.aborted ? cancelError(call) : err, this.logger, method)),
        );
    };
  }
}

/** A Pause/ResumeRegistrations request's one selector; INVALID_ARGUMENT for none or several. */
function pauseTarget(req: pb.PauseRegistrationsRequest, tenant: string): PauseTarget {
  const set = (['registrationId', 'interpreterId', 'trigger'] as const).filter((k) => req[k] !== '');
  if (set.length !== 1) {
    throw new InvalidArgumentError(
      set.length === 0 ? 'set one of registration_id, interpreter_id or trigger' : `set exactly one of registration_id, interpreter_id or trigger, not ${set.map(snake).join(' and ')}`,
    );
  }
  const key = set[0];
  return key === 'registrationId' ? { registrationId: req.registrationId, tenant } : key === 'interpreterId' ? { interpreterId: req.interpreterId, tenant } : { trigger: req.trigger, tenant };
}

const snake = (field: string): string => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** A pause or resume's log fields: its selector. */
const pauseFields = (req: pb.PauseRegistrationsRequest): Record<string, unknown> => ({
  registrationId: req.registrationId || undefined,
  interpreterId: req.interpreterId || undefined,
  trigger: req.trigger || undefined,
});

const SERVICE = 'isogear.v1.GearsService';

/** Reads W3C trace context headers from a call's metadata. */
const METADATA: TextMapGetter<Metadata> = {
  get: (metadata, key) => {
    const values = metadata.get(key);
    return values.length === 0 ? undefined : values.map(String);
  },
  keys: (metadata) => Object.keys(metadata.getMap()),
};

/** Codes that say the server failed (OpenTelemetry's gRPC conventions): only these mark a server span failed. */
const SERVER_FAULTS = new Set<number>([status.UNKNOWN, status.DEADLINE_EXCEEDED, status.UNIMPLEMENTED, status.INTERNAL, status.UNAVAILABLE, status.DATA_LOSS]);

function rpcOutcome(span: Span, code: number, tenant: string | undefined): void {
  span.setAttribute('rpc.status_code', status[code]);
  if (tenant !== undefined) span.setAttribute('isogear.tenant', tenant);
  if (SERVER_FAULTS.has(code)) failed(span, status[code]);
  else if (code !== status.OK) span.setAttribute('error.type', status[code]);
}

/** Resolves once the stream can take writes again, or the client went away. */
function drained(call: ServerWritableStream<unknown, unknown>): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      call.removeListener('drain', done);
      call.removeListener('cancelled', done);
      resolve();
    };
    call.once('drain', done);
    call.once('cancelled', done);
  });
}

/** The call's deadline in ms since the epoch, or undefined when it has none. */
function deadlineMs(call: ServerUnaryCall<unknown, unknown>): number | undefined {
  const deadline = call.getDeadline();
  const ms = deadline instanceof Date ? deadline.getTime() : Number(deadline);
  return Number.isFinite(ms) ? ms : undefined;
}

/**
 * How long a wait may last so its answer reaches the client before its deadline: the time left,
 * less a margin for the answer's way back (a tenth of it, 10 to 250 ms).
 */
function answerBefore(deadline: number | undefined): number | undefined {
  if (deadline === undefined) return undefined;
  const left = deadline - Date.now();
  return Math.max(0, left - Math.min(250, Math.max(10, left / 10)));
}

/** The error for a call the client gave up on: its deadline passed, or it cancelled. */
function cancelError(call: ServerUnaryCall<unknown, unknown>): CancelledError | DeadlineExceededError {
  const ms = deadlineMs(call);
  return ms !== undefined && ms <= Date.now() ? new DeadlineExceededError('deadline exceeded') : new CancelledError('cancelled by the client');
}

/** `google.protobuf.Value` arrives as a plain JS value; reject what JSON cannot carry. */
function jsonValue(value: unknown, field: string): JsonValue | undefined {
  if (value === undefined) return undefined;
  const check = (v: unknown, path: string): void => {
    if (typeof v === 'number' && !Number.isFinite(v)) {
      throw new InvalidArgumentError(`${path} is ${String(v)}; only finite numbers are JSON values`);
    }
    if (Array.isArray(v)) v.forEach((x, i) => check(x, `${path}[${i}]`));
    else if (v !== null && typeof v === 'object') for (const [k, x] of Object.entries(v)) check(x, `${path}.${k}`);
  };
  check(value, field);
  return value as JsonValue;
}
