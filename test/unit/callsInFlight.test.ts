import assert from 'node:assert/strict';
import { CallsInFlight } from '../../src/api/CallsInFlight';
import { IllegalStateError, UnavailableError } from '../../src/core/errors';

describe('CallsInFlight: the calls a service may have to end early', () => {
  it('endAll ends each call tracked once, with the reason, and only those not answered yet', () => {
    const calls = new CallsInFlight();
    const heard: string[] = [];
    const track = (name: string): (() => void) => {
      const untrack = calls.track((reason) => {
        heard.push(`${name}: ${reason.message}`);
        untrack(); // an ended call is answered, and untracks itself as any answer does
      });
      return untrack;
    };
    track('a');
    const answered = track('b');
    track('c');
    answered();
    assert.equal(calls.size, 2);
    assert.equal(calls.endAll(new UnavailableError('exiting')), 2);
    assert.deepEqual(heard, ['a: exiting', 'c: exiting']);
    assert.equal(calls.size, 0, 'nothing left tracked');
    assert.equal(calls.endAll(new UnavailableError('again')), 0);
  });

  it('one function tracked twice is two calls; untracking one twice throws', () => {
    const calls = new CallsInFlight();
    const end = (): void => undefined;
    const first = calls.track(end);
    calls.track(end);
    assert.equal(calls.size, 2);
    first();
    assert.equal(calls.size, 1);
    assert.throws(first, IllegalStateError);
  });
});
