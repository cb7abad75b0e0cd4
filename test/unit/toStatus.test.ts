import assert from 'node:assert/strict';
import { status } from '@grpc/grpc-js';
import { toStatus } from '../../src/api/toStatus';
import {
  AlreadyExistsError,
  CancelledError,
  DeadlineExceededError,
  FailedPreconditionError,
  IllegalStateError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../../src/core/errors';

function recorder(): { logged: { obj: object; msg?: string }[]; error(obj: object, msg?: string): void } {
  const logged: { obj: object; msg?: string }[] = [];
  return { logged, error: (obj, msg) => logged.push({ obj, msg }) };
}

describe('toStatus: the one error → gRPC status mapping', () => {
  const cases: [Error, status][] = [
    [new InvalidArgumentError('source must not be empty'), status.INVALID_ARGUMENT],
    [new NotFoundError('registration reg_x not found'), status.NOT_FOUND],
    [new AlreadyExistsError('name taken'), status.ALREADY_EXISTS],
    [new FailedPreconditionError('interpreter is FAILED'), status.FAILED_PRECONDITION],
    [new ResourceExhaustedError('max_interpreters', 'full (ISOGEAR_MAX_INTERPRETERS)'), status.RESOURCE_EXHAUSTED],
    [new UnavailableError('shutting down'), status.UNAVAILABLE],
    [new CancelledError('cancelled by the client'), status.CANCELLED],
    [new DeadlineExceededError('deadline exceeded'), status.DEADLINE_EXCEEDED],
  ];
  for (const [err, code] of cases) {
    it(`${err.name} → ${status[code]} with its own message`, () => {
      const log = recorder();
      const s = toStatus(err, log, 'Execute');
      assert.equal(s.code, code);
      assert.equal(s.details, err.message);
      assert.equal(log.logged.length, 0, 'request errors are not logged as internal errors');
    });
  }

  it('names the exhausted limit in the isogear-limit trailer', () => {
    const s = toStatus(new ResourceExhaustedError('max_interpreters', 'full'), recorder(), 'Execute');
    assert.deepEqual(s.metadata?.get('isogear-limit'), ['max_interpreters']);
  });

  for (const err of [new IllegalStateError('count went negative'), new TypeError('cannot read x of undefined'), 'a thrown string']) {
    it(`anything else (${err instanceof Error ? err.name : typeof err}) → INTERNAL with a generic message; the details go to the log`, () => {
      const log = recorder();
      const s = toStatus(err, log, 'Trigger');
      assert.equal(s.code, status.INTERNAL);
      assert.equal(s.details, 'internal error; the server log has details');
      assert.ok(!String(s.details).includes('negative') && !String(s.details).includes('undefined'), 'no internal text leaks');
      assert.equal(log.logged.length, 1);
      assert.deepEqual(log.logged[0].obj, { err, method: 'Trigger' });
    });
  }
});
