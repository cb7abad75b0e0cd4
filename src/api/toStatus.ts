import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { IsogearError, ResourceExhaustedError } from '../core/errors';

/** The subset of a logger this module needs. */
export interface ErrorLogger {
  error(obj: object, msg?: string): void;
}

const CODES: Record<IsogearError['kind'], status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  failed_precondition: status.FAILED_PRECONDITION,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  cancelled: status.CANCELLED,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  unauthenticated: status.UNAUTHENTICATED,
};

/**
 * The one place where errors become gRPC statuses. Errors isogear raises about a request carry
 * their own message to the client; anything else is a bug: the client gets INTERNAL with a
 * generic message and the stack goes to the server log.
 */
export function toStatus(err: unknown, logger: ErrorLogger, method: string): Partial<ServiceError> {
  if (err instanceof IsogearError) {
    const metadata = new Metadata();
    if (err instanceof ResourceExhaustedError) {
      metadata.set('isogear-limit', err.limit);
      if (err.retryAfterMs !== undefined) {
        metadata.set('retry-after-ms', String(err.retryAfterMs));
        metadata.set('grpc-status-details-bin', richStatus(CODES[err.kind], err.message, err.retryAfterMs));
      }
    }
    return { code: CODES[err.kind], details: err.message, metadata };
  }
  logger.error({ err, method }, 'internal error');
  return { code: status.INTERNAL, details: 'internal error; the server log has details' };
}

/**
 * A `google.rpc.Status` with one `google.rpc.RetryInfo` detail, as gRPC's rich error model
 * carries it in the `grpc-status-details-bin` trailer (clients: `status.from_call` in Python,
 * `StatusProto.fromThrowable` in Java, `status.FromError(...).Details()` in Go).
 */
export function richStatus(code: status, message: string, retryAfterMs: number): Buffer {
  const seconds = Math.floor(retryAfterMs / 1000);
  const nanos = (retryAfterMs % 1000) * 1_000_000;
  // google.protobuf.Duration { int64 seconds = 1; int32 nanos = 2; }
  const duration = new BinaryWriter();
  if (seconds) duration.tag(1, WireType.Varint).int64(seconds);
  if (nanos) duration.tag(2, WireType.Varint).int32(nanos);
  // google.rpc.RetryInfo { google.protobuf.Duration retry_delay = 1; }
  const retryInfo = new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(duration.finish()).finish();
  // google.protobuf.Any { string type_url = 1; bytes value = 2; }
  const any = new BinaryWriter().tag(1, WireType.LengthDelimited).string('type.googleapis.com/google.rpc.RetryInfo').tag(2, WireType.LengthDelimited).bytes(retryInfo).finish();
  // google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
  const out = new BinaryWriter().tag(1, WireType.Varint).int32(code).tag(2, WireType.LengthDelimited).string(message).tag(3, WireType.LengthDelimited).bytes(any).finish();
  return Buffer.from(out);
}
