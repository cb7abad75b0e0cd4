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
};

/**
 * The one place where errors become gRPC statuses. Errors isogear raises about a request carry
 * their own message to the client; anything else is a bug: the client gets INTERNAL with a
 * generic message and the stack goes to the server log.
 */
export function toStatus(err: unknown, logger: ErrorLogger, method: string): Partial<ServiceError> {
  if (err instanceof IsogearError) {
    const metadata = new Metadata();
    if (err instanceof ResourceExhaustedError) metadata.set('isogear-limit', err.limit);
    return { code: CODES[err.kind], details: err.message, metadata };
  }
  logger.error({ err, method }, 'internal error');
  return { code: status.INTERNAL, details: 'internal error; the server log has details' };
}
