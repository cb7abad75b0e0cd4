import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, releaseInterpreters, SHARED, succeeded, waitFor } from '../helpers/proto';

/**
 * isolated-vm copies an error thrown out of module evaluation after the call's timeout stopped
 * guarding it, reading `message` and `stack` through the object's own getters. A getter that
 * never returns wedges the isolate; the manager's watchdog must notice and dispose it.
 */
describe('watchdog: an isolate stuck where no timeout reaches', function () {
  this.timeout(30_000);
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1' });

  it('a thrown object whose getter loops wedges its shared isolate only until the watchdog disposes it', async () => {
    const t = server();
    const bystander = await t.client.register({ trigger: 'wd.bystander', source: 'export default () => "alive";', mode: SHARED });
    const stuck = await t.client.execute({
      mode: SHARED,
      limits: limits(300),
      source: 'throw { get message() { for (;;) {} } };',
    });
    assert.equal(stuck.outcome, pb.Outcome.OUTCOME_TIMED_OUT, JSON.stringify(stuck.error));

    // the next shared-mode run does not wait behind the wedged isolate: an added one takes it
    const since = Date.now();
    const next = await t.client.execute({ mode: SHARED, source: 'export default "next";' }, { deadlineMs: 15_000 });
    succeeded(next);
    assert.equal(next.result, 'next');
    assert.ok(Date.now() - since < 2000, 'not held up by the wedged isolate');
    assert.equal(t.manager.counters().extraSharedIsolates, 1);
    // the watchdog disposes the wedged isolate
    await waitFor('the watchdog disposed the wedged isolate', () => t.logs.some((l) => l.msg === 'isolate stopped responding; disposing it'), 15_000);

    // everything that lived on the disposed isolate is FAILED, its registration listed as broken
    const info = await t.client.getInterpreter({ interpreterId: bystander.interpreter?.id });
    assert.equal(info.interpreter?.state, pb.InterpreterState.INTERPRETER_STATE_FAILED);
    assert.match(info.interpreter?.failureReason ?? '', /stopped responding/);
    assert.equal(info.registrations[0].broken, true);
    const trig = await t.client.trigger({ trigger: 'wd.bystander' });
    assert.equal(trig.results[0].outcome, pb.Outcome.OUTCOME_FAILED);
    assert.ok(t.logs.some((l) => l.msg === 'isolate stopped responding; disposing it'), 'the disposal is logged');
    const c = t.manager.counters();
    assert.equal(c.sharedIsolates - c.extraSharedIsolates, 1, 'a fresh shared isolate took the slot');
    // the broken registration is still held until released, and releasing it frees the FAILED interpreter
    assert.deepEqual(await releaseInterpreters(t.client, bystander.interpreter?.id), [bystander.registration?.id]);
  });

  it('a dedicated isolate wedged the same way is disposed with its interpreter', async () => {
    const t = server();
    const res = await t.client.execute({
      mode: ISOLATE,
      limits: limits(300),
      source: 'throw { get message() { for (;;) {} } };',
    });
    assert.equal(res.outcome, pb.Outcome.OUTCOME_TIMED_OUT);
    assert.equal(res.interpreter?.state, pb.InterpreterState.INTERPRETER_STATE_DISPOSED);
  });
});
