import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import * as pb from '../../src/gen/isogear/v1/gears';

type Unary<Req, Res> = (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall;

export interface CallOptions {
  deadlineMs?: number;
}

/** Promise-based wrapper over the generated grpc-js client, as a client author would write it. */
export class TestClient {
  readonly raw: pb.GearsServiceClient;
  private readonly health: grpc.Client & Record<string, unknown>;

  constructor(readonly address: string) {
    this.raw = new pb.GearsServiceClient(address, grpc.credentials.createInsecure());
    const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'grpc.health.v1.Health');
    this.health = new HealthClient(address, grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>;
  }

  private call<Req, Res>(method: Unary<Req, Res>, req: Req, opts: CallOptions = {}): Promise<Res> {
    const options: Partial<grpc.CallOptions> = {};
    if (opts.deadlineMs !== undefined) options.deadline = new Date(Date.now() + opts.deadlineMs);
    return new Promise((resolve, reject) => {
      method.call(this.raw, req, new grpc.Metadata(), options, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  execute(req: Partial<pb.ExecuteRequest>, opts?: CallOptions): Promise<pb.ExecuteResponse> {
    return this.call<pb.ExecuteRequest, pb.ExecuteResponse>(this.raw.execute as never, pb.ExecuteRequest.fromPartial(req), opts);
  }

  register(req: Partial<pb.RegisterRequest>, opts?: CallOptions): Promise<pb.RegisterResponse> {
    return this.call<pb.RegisterRequest, pb.RegisterResponse>(this.raw.register as never, pb.RegisterRequest.fromPartial(req), opts);
  }

  release(req: Partial<pb.ReleaseRequest>, opts?: CallOptions): Promise<pb.ReleaseResponse> {
    return this.call<pb.ReleaseRequest, pb.ReleaseResponse>(this.raw.release as never, pb.ReleaseRequest.fromPartial(req), opts);
  }

  trigger(req: Partial<pb.TriggerRequest>, opts?: CallOptions): Promise<pb.TriggerResponse> {
    return this.call<pb.TriggerRequest, pb.TriggerResponse>(this.raw.trigger as never, pb.TriggerRequest.fromPartial(req), opts);
  }

  getInterpreter(req: Partial<pb.GetInterpreterRequest>, opts?: CallOptions): Promise<pb.GetInterpreterResponse> {
    return this.call<pb.GetInterpreterRequest, pb.GetInterpreterResponse>(this.raw.getInterpreter as never, pb.GetInterpreterRequest.fromPartial(req), opts);
  }

  listInterpreters(req: Partial<pb.ListInterpretersRequest>, opts?: CallOptions): Promise<pb.ListInterpretersResponse> {
    return this.call<pb.ListInterpretersRequest, pb.ListInterpretersResponse>(this.raw.listInterpreters as never, pb.ListInterpretersRequest.fromPartial(req), opts);
  }

  listRegistrations(req: Partial<pb.ListRegistrationsRequest>, opts?: CallOptions): Promise<pb.ListRegistrationsResponse> {
    return this.call<pb.ListRegistrationsRequest, pb.ListRegistrationsResponse>(this.raw.listRegistrations as never, pb.ListRegistrationsRequest.fromPartial(req), opts);
  }

  /** grpc.health.v1 Check; resolves with the status name ('SERVING', 'NOT_SERVING', …). */
  healthCheck(service = '', opts: CallOptions = {}): Promise<string> {
    const options: Partial<grpc.CallOptions> = {};
    if (opts.deadlineMs !== undefined) options.deadline = new Date(Date.now() + opts.deadlineMs);
    const check = this.health.check as (req: object, md: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void;
    return new Promise((resolve, reject) => {
      check.call(this.health, { service }, new grpc.Metadata(), options, (err, res) => (err ? reject(err) : resolve(String(res.status))));
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
