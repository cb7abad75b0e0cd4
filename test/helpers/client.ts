import * as grpc from '@grpc/grpc-js';
import { createClient, pb, type CallOptions, type ExecuteInit, type IsogearClient, type PauseInit, type RegisterInit, type ReleaseInit, type TriggerInit, type Watch, type WatchInit } from '@isogear/client';

export type { CallOptions };

/**
 * The tests' client: the published client (@isogear/client, from its sources) behind the request and response
 * shapes the tests speak (proto messages, `Partial` requests), plus `raw`, the generated grpc-js
 * client, for what a typed client must not send.
 */
export class TestClient {
  readonly raw: pb.GearsServiceClient;
  private readonly api: IsogearClient;

  /**
   * `apiKey`: sent as `authorization: Bearer <key>` on every GearsService call. `credentials`:
   * the channel's (default plaintext); `options`: channel options (e.g. the TLS target name).
   */
  constructor(
    readonly address: string,
    readonly apiKey?: string,
    credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
    options: grpc.ChannelOptions = {},
  ) {
    this.raw = new pb.GearsServiceClient(address, credentials, options);
    this.api = createClient(address, { apiKey, credentials, channelOptions: options });
  }

  readonly execute = (req: Partial<pb.ExecuteRequest>, opts: CallOptions = {}): Promise<pb.ExecuteResponse> => this.api.execute(req as ExecuteInit, opts);
  readonly register = (req: Partial<pb.RegisterRequest>, opts: CallOptions = {}): Promise<pb.RegisterResponse> => this.api.register(req as RegisterInit, opts);
  readonly release = (req: Partial<pb.ReleaseRequest>, opts: CallOptions = {}): Promise<pb.ReleaseResponse> => this.api.release(req as ReleaseInit, opts);
  readonly pause = (req: Partial<pb.PauseRegistrationsRequest>, opts: CallOptions = {}): Promise<pb.PauseRegistrationsResponse> => this.api.pauseRegistrations(req as PauseInit, opts);
  readonly resume = (req: Partial<pb.ResumeRegistrationsRequest>, opts: CallOptions = {}): Promise<pb.ResumeRegistrationsResponse> => this.api.resumeRegistrations(req as PauseInit, opts);
  readonly trigger = (req: Partial<pb.TriggerRequest>, opts: CallOptions = {}): Promise<pb.TriggerResponse> => this.api.trigger(req as TriggerInit, opts);
  readonly getInterpreter = (req: Partial<pb.GetInterpreterRequest>, opts: CallOptions = {}): Promise<pb.GetInterpreterResponse> =>
    this.api.getInterpreter(req.interpreterId ?? '', opts);
  readonly listInterpreters = (req: Partial<pb.ListInterpretersRequest>, opts: CallOptions = {}): Promise<pb.ListInterpretersResponse> => this.api.listInterpreters(req, opts);
  readonly listRegistrations = (req: Partial<pb.ListRegistrationsRequest>, opts: CallOptions = {}): Promise<pb.ListRegistrationsResponse> => this.api.listRegistrations(req, opts);

  readonly startExecute = (req: Partial<pb.ExecuteRequest>, opts: CallOptions = {}): Promise<pb.Execution> => this.api.startExecute(req as ExecuteInit, opts);
  readonly startTrigger = (req: Partial<pb.TriggerRequest>, opts: CallOptions = {}): Promise<pb.Execution> => this.api.startTrigger(req as TriggerInit, opts);
  readonly getExecution = (req: Partial<pb.GetExecutionRequest>, opts: CallOptions = {}): Promise<pb.Execution> => this.api.getExecution(req.executionId ?? '', opts);
  readonly waitExecution = (req: Partial<pb.WaitExecutionRequest>, opts: CallOptions = {}): Promise<pb.Execution> =>
    this.api.waitExecution(req.executionId ?? '', { timeoutMs: req.timeoutMs }, opts);
  readonly listExecutions = (req: Partial<pb.ListExecutionsRequest>, opts: CallOptions = {}): Promise<pb.ListExecutionsResponse> => this.api.listExecutions(req, opts);
  readonly cancelExecution = (req: Partial<pb.CancelExecutionRequest>, opts: CallOptions = {}): Promise<pb.Execution> => this.api.cancelExecution(req.executionId ?? '', opts);
  readonly listVersions = (req: Partial<pb.ListVersionsRequest>, opts: CallOptions = {}): Promise<pb.ListVersionsResponse> => this.api.listVersions(req.name ?? '', opts);
  readonly rollback = (req: Partial<pb.RollbackRequest>, opts: CallOptions = {}): Promise<pb.ExecuteResponse> => this.api.rollback(req.name ?? '', req.version ?? 0, opts);

  readonly watch = (req: WatchInit = {}, opts: CallOptions = {}): Watch => this.api.watch(req, opts);

  /** grpc.health.v1 Check; resolves with the status name ('SERVING', 'NOT_SERVING', …). */
  healthCheck(service = '', opts: CallOptions = {}): Promise<string> {
    return this.api.health(service, opts);
  }

  close(): void {
    this.raw.close();
    this.api.close();
  }
}

/** Awaits a promise that must fail with a gRPC status; returns the error for further checks. */
export async function expectStatus(promise: Promise<unknown>, code: grpc.status, messagePattern?: RegExp): Promise<grpc.ServiceError> {
  let err: grpc.ServiceError | undefined;
  try {
    await promise;
  } catch (e) {
    err = e as grpc.ServiceError;
  }
  if (!err) throw new Error(`expected status ${grpc.status[code]}, but the call succeeded`);
  if (err.code !== code) {
    throw new Error(`expected status ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
  }
  if (messagePattern && !messagePattern.test(err.details)) {
    throw new Error(`status message ${JSON.stringify(err.details)} does not match ${messagePattern}`);
  }
  return err;
}

export { grpc, pb };
