import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import * as pb from '../../src/gen/isogear/v1/gears';

type Unary<Req, Res> = (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall;

export interface CallOptions {
  deadlineMs?: number;
}

function callOptions(opts: CallOptions): Partial<grpc.CallOptions> {
  return opts.deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + opts.deadlineMs) };
}

/** Promise-based wrapper over the generated grpc-js client, as a client author would write it. */
export class TestClient {
  readonly raw: pb.GearsServiceClient;
  private readonly health: grpc.Client & Record<string, unknown>;

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
    const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'grpc.health.v1.Health');
    this.health = new HealthClient(address, credentials, options) as grpc.Client & Record<string, unknown>;
  }

  /** A promise-returning method for one unary RPC: `req` is completed with `type.fromPartial`. */
  private unary<Req, Res>(rpc: keyof pb.GearsServiceClient, type: { fromPartial(req: Partial<Req>): Req }) {
    return (req: Partial<Req>, opts: CallOptions = {}): Promise<Res> =>
      new Promise((resolve, reject) => {
        const method = this.raw[rpc] as unknown as Unary<Req, Res>;
        const metadata = new grpc.Metadata();
        if (this.apiKey !== undefined) metadata.set('authorization', `Bearer ${this.apiKey}`);
        method.call(this.raw, type.fromPartial(req), metadata, callOptions(opts), (err, res) => (err ? reject(err) : resolve(res)));
      });
  }

  readonly execute = this.unary<pb.ExecuteRequest, pb.ExecuteResponse>('execute', pb.ExecuteRequest);
  readonly register = this.unary<pb.RegisterRequest, pb.RegisterResponse>('register', pb.RegisterRequest);
  readonly release = this.unary<pb.ReleaseRequest, pb.ReleaseResponse>('release', pb.ReleaseRequest);
  readonly trigger = this.unary<pb.TriggerRequest, pb.TriggerResponse>('trigger', pb.TriggerRequest);
  readonly getInterpreter = this.unary<pb.GetInterpreterRequest, pb.GetInterpreterResponse>('getInterpreter', pb.GetInterpreterRequest);
  readonly listInterpreters = this.unary<pb.ListInterpretersRequest, pb.ListInterpretersResponse>('listInterpreters', pb.ListInterpretersRequest);
  readonly listRegistrations = this.unary<pb.ListRegistrationsRequest, pb.ListRegistrationsResponse>('listRegistrations', pb.ListRegistrationsRequest);

  /** grpc.health.v1 Check; resolves with the status name ('SERVING', 'NOT_SERVING', …). */
  healthCheck(service = '', opts: CallOptions = {}): Promise<string> {
    const check = this.health.check as (req: object, md: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void;
    return new Promise((resolve, reject) => {
      check.call(this.health, { service }, new grpc.Metadata(), callOptions(opts), (err, res) => (err ? reject(err) : resolve(String(res.status))));
    });
  }

  close(): void {
    this.raw.close();
    this.health.close();
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
