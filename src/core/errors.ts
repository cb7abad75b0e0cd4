/**
 * Errors the core raises about a *request* (never about what a script did: script failures are
 * outcomes). Each class names one gRPC-independent condition; `src/api/toStatus.ts` is the one
 * place that maps them to status codes.
 */
export abstract class IsogearError extends Error {
  abstract readonly kind:
    | 'invalid_argument'
    | 'not_found'
    | 'already_exists'
    | 'failed_precondition'
    | 'resource_exhausted'
    | 'unavailable'
    | 'cancelled'
    | 'deadline_exceeded'
    | 'unauthenticated';

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The request is malformed: the message says which field and why. */
export class InvalidArgumentError extends IsogearError {
  readonly kind = 'invalid_argument';
}

/** An id, name or trigger that does not exist (or no longer exists). */
export class NotFoundError extends IsogearError {
  readonly kind = 'not_found';
}

/** A live interpreter already has the requested name. */
export class AlreadyExistsError extends IsogearError {
  readonly kind = 'already_exists';
}

/** The target exists but is in a state that cannot take the request (DISPOSED, FAILED, DRAINING). */
export class FailedPreconditionError extends IsogearError {
  readonly kind = 'failed_precondition';
}

/**
 * A capacity limit is full; `limit` names it so clients and operators can tell which, and
 * `retryAfterMs`, when set, is how long a client should back off before trying again.
 */
export class ResourceExhaustedError extends IsogearError {
  readonly kind = 'resource_exhausted';
  constructor(
    readonly limit: string,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/** The manager is shutting down or destroyed and takes no new work. */
export class UnavailableError extends IsogearError {
  readonly kind = 'unavailable';
}

/** The caller gave up (client cancel). */
export class CancelledError extends IsogearError {
  readonly kind = 'cancelled';
}

/** The caller's deadline passed. */
export class DeadlineExceededError extends IsogearError {
  readonly kind = 'deadline_exceeded';
}

/** The call carries no valid credentials (missing, malformed or unknown API key). */
export class UnauthenticatedError extends IsogearError {
  readonly kind = 'unauthenticated';
}

/**
 * A broken invariant inside isogear (use after dispose, a count going negative). It is a bug:
 * the API layer reports it as INTERNAL with a generic message.
 */
export class IllegalStateError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'IllegalStateError';
  }
}
