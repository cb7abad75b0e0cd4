import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { triggerLoops, versioned, versionOf } from '../helpers/upgrades';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, MODES, modeName, outcomeName, releaseInterpreters, succeeded, waitFor } from '../helpers/proto';

const { OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_TIMED_OUT } = pb.Outcome;
const { INTERPRETER_STATE_READY, INTERPRETER_STATE_DISPOSED } = pb.InterpreterState;

describe('Named interpreters and upgrade', () => {
  const server = useTestServer();

  it('Execute with name names the interpreter, and ListInterpreters finds it by name', async () => {
    const t = server();
    const other = await t.client.execute({ source: versioned('upg.other', 'x', 1) });
    succeeded(other);
    const named = await t.client.execute({ name: 'upg-alpha', source: versioned('upg.alpha', 'v1', 1) });
    succeeded(named);
    assert.equal(named.interpreter?.name, 'upg-alpha');
    assert.equal(named.interpreter?.state, INTERPRETER_STATE_READY);
    assert.equal(other.interpreter?.name, '');

    const found = await t.client.listInterpreters({ name: 'upg-alpha' });
    assert.deepEqual(found.interpreters.map((i) => [i.id, i.name]), [[named.interpreterId, 'upg-alpha']]);
    assert.deepEqual((await t.client.listInterpreters({ name: 'upg-alph' })).interpreters, [], 'names compare exactly');
    assert.equal((await t.client.getInterpreter({ interpreterId: named.interpreterId })).interpreter?.name, 'upg-alpha');
    await releaseInterpreters(t.client, other.interpreterId, named.interpreterId);
  });

  it('a live name without replace is ALREADY_EXISTS and creates nothing', async () => {
    const t = server();
    const first = await t.client.execute({ name: 'upg-taken', source: versioned('upg.taken', 'v1', 1) });
    succeeded(first);
    await expectStatus(
      t.client.execute({ name: 'upg-taken', source: versioned('upg.taken', 'v2', 1) }),
      grpc.status.ALREADY_EXISTS,
      /upg-taken/,
    );
    const all = await t.client.listInterpreters({});
    assert.deepEqual(all.interpreters.map((i) => i.id), [first.interpreterId]);
    assert.equal(t.manager.counters().interpreters, 1, 'the refused Execute left no interpreter behind');
    const fired = await t.client.trigger({ trigger: 'upg.taken' });
    assert.deepEqual(fired.results.map((r) => r.result), ['v1']);

    await expectStatus(t.client.execute({ replace: true, source: 'export default 1;' }), grpc.status.INVALID_ARGUMENT, /name/);
    await expectStatus(
      t.client.execute({ name: 'upg-taken', interpreterId: first.interpreterId, source: 'export default 1;' }),
      grpc.status.INVALID_ARGUMENT,
    );
    assert.deepEqual(await releaseInterpreters(t.client, first.interpreterId), first.registrations.map((r) => r.id), 'the refused calls attached nothing');
  });

  it('a name is free again once its interpreter is disposed', async () => {
    const t = server();
    const once = await t.client.execute({ name: 'upg-once', source: 'export default 1;' });
    succeeded(once);
    assert.equal(once.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    const again = await t.client.execute({ name: 'upg-once', source: versioned('upg.once', 'v1', 1) });
    succeeded(again);
    assert.equal(again.interpreter?.name, 'upg-once');
    await t.client.release({ interpreterId: again.interpreterId });
    const third = await t.client.execute({ name: 'upg-once', source: versioned('upg.once', 'v2', 1) });
    succeeded(third);
    assert.equal(third.interpreter?.name, 'upg-once');
    await releaseInterpreters(t.client, third.interpreterId);
  });

  it('a named Execute that fails leaves the name free', async () => {
    const t = server();
    const failed = await t.client.execute({ name: 'upg-doomed', source: versioned('upg.doomed', 'v1', 1, "throw new Error('no');") });
    assert.equal(failed.outcome, OUTCOME_FAILED);
    assert.equal(failed.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    assert.deepEqual((await t.client.listInterpreters({ name: 'upg-doomed' })).interpreters, []);
    const ok = await t.client.execute({ name: 'upg-doomed', source: versioned('upg.doomed', 'v2', 1) });
    succeeded(ok);
    assert.equal(ok.interpreter?.name, 'upg-doomed');
    await releaseInterpreters(t.client, ok.interpreterId);
  });

  it('two concurrent replaces of one name leave exactly one holder and one set of registrations', async () => {
    const t = server();
    const v1 = await t.client.execute({ name: 'upg-twice', source: versioned('upg.twice', 'v1', 2) });
    succeeded(v1);
    const [a, b] = await Promise.all([
      t.client.execute({ name: 'upg-twice', replace: true, source: versioned('upg.twice', 'a', 2) }),
      t.client.execute({ name: 'upg-twice', replace: true, source: versioned('upg.twice', 'b', 2) }),
    ]);
    succeeded(a);
    succeeded(b);
    const holders = (await t.client.listInterpreters({ name: 'upg-twice' })).interpreters;
    assert.equal(holders.length, 1, 'the name has exactly one holder');
    assert.ok([a.interpreterId, b.interpreterId].includes(holders[0].id));
    const live = (await t.client.listInterpreters({})).interpreters;
    assert.deepEqual(live.map((i) => i.id), [holders[0].id], 'the replaced interpreters are gone');
    const fired = await t.client.trigger({ trigger: 'upg.twice' });
    assert.equal(versionOf(fired, 2), holders[0].id === a.interpreterId ? 'a' : 'b');
    assert.equal((await releaseInterpreters(t.client, holders[0].id)).length, 2, 'one set of registrations');
  });

  it('two concurrent Executes with one name: exactly one gets it, the other is ALREADY_EXISTS', async () => {
    const t = server();
    const spinThenRegister = `const s = Date.now(); while (Date.now() - s < 100) {}\n${versioned('upg.race', 'v', 1)}`;
    const settled = await Promise.allSettled([
      t.client.execute({ name: 'upg-race', source: spinThenRegister }),
      t.client.execute({ name: 'upg-race', source: spinThenRegister }),
    ]);
    const won = settled.filter((s): s is PromiseFulfilledResult<pb.ExecuteResponse> => s.status === 'fulfilled');
    const lost = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.equal((lost[0].reason as grpc.ServiceError).code, grpc.status.ALREADY_EXISTS);
    assert.deepEqual((await t.client.listInterpreters({ name: 'upg-race' })).interpreters.map((i) => i.id), [won[0].value.interpreterId]);
    await releaseInterpreters(t.client, won[0].value.interpreterId);
  });

  for (const mode of MODES) {
    it(`replace releases the old registrations, activates the new ones and moves the name (${modeName(mode)})`, async () => {
      const t = server();
      const v1 = await t.client.execute({ name: 'upg-svc', mode, source: versioned('upg.t', 'v1', 2) });
      succeeded(v1);
      const v2 = await t.client.execute({ name: 'upg-svc', replace: true, mode, source: versioned('upg.t', 'v2', 2, 'export default "upgraded";') });
      succeeded(v2);
      assert.equal(v2.result, 'upgraded');
      assert.notEqual(v2.interpreterId, v1.interpreterId, 'the new script runs in a new interpreter');
      assert.equal(v2.registrations.length, 2);
      assert.equal(v2.interpreter?.name, 'upg-svc');
      assert.equal(v2.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(v2.interpreter?.registrationReferences, 2);

      const old = await t.client.getInterpreter({ interpreterId: v1.interpreterId });
      assert.equal(old.interpreter?.state, INTERPRETER_STATE_DISPOSED, 'nothing ran in the old interpreter, so it is disposed at once');
      assert.equal(old.interpreter?.references, 0);
      assert.equal(old.interpreter?.name, '', 'the name moved away');
      assert.deepEqual(old.registrations, []);
      for (const r of v1.registrations) await expectStatus(t.client.release({ registrationId: r.id }), grpc.status.NOT_FOUND);

      const fired = await t.client.trigger({ trigger: 'upg.t' });
      assert.deepEqual(
        fired.results.map((r) => [r.registrationId, r.interpreterId, r.result]),
        v2.registrations.map((r) => [r.id, v2.interpreterId, 'v2']),
      );
      const byName = await t.client.listInterpreters({ name: 'upg-svc' });
      assert.deepEqual(byName.interpreters.map((i) => i.id), [v2.interpreterId]);
      assert.deepEqual((await t.client.listInterpreters({})).interpreters.map((i) => i.id), [v2.interpreterId]);
      assert.deepEqual(
        (await t.client.listRegistrations({})).registrations.map((r) => r.id),
        v2.registrations.map((r) => r.id),
      );
      assert.deepEqual(await releaseInterpreters(t.client, v2.interpreterId), v2.registrations.map((r) => r.id));
    });

    it(`replace while an old handler runs: the old interpreter drains and finishes the run (${modeName(mode)})`, async () => {
      const t = server();
      const v1 = await t.client.execute({
        name: 'upg-busy',
        mode,
        source: "gears.register('upg.busy', () => { const s = Date.now(); while (Date.now() - s < 800) {} return 'v1'; }); export default null;",
      });
      succeeded(v1);
      let oldRunDone = false;
      const oldRun = t.client.trigger({ trigger: 'upg.busy' }).finally(() => {
        oldRunDone = true;
      });
      await waitFor('the old handler to start', () => t.manager.counters().executionsInFlight >= 1);

      const v2 = await t.client.execute({ name: 'upg-busy', replace: true, mode, source: versioned('upg.busy', 'v2', 1) });
      succeeded(v2);
      assert.equal(v2.interpreter?.name, 'upg-busy');
      assert.equal(oldRunDone, false, 'the upgrade does not wait for the old run');
      assert.equal(t.manager.counters().interpretersByState.draining, 1, 'the old interpreter is DRAINING while its run goes on');
      await expectStatus(t.client.release({ interpreterId: v1.interpreterId }), grpc.status.NOT_FOUND);

      const old = await oldRun;
      assert.deepEqual(old.results.map((r) => [r.interpreterId, r.outcome, r.result]), [[v1.interpreterId, OUTCOME_SUCCEEDED, 'v1']]);
      const after = await t.client.getInterpreter({ interpreterId: v1.interpreterId });
      assert.equal(after.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      assert.equal(after.interpreter?.references, 0);
      const fired = await t.client.trigger({ trigger: 'upg.busy' });
      assert.deepEqual(fired.results.map((r) => [r.interpreterId, r.result]), [[v2.interpreterId, 'v2']]);
      await releaseInterpreters(t.client, v2.interpreterId);
    });

    it(`upgrades under a concurrent Trigger loop are atomic: every Trigger sees all of one version, never a mix or none (${modeName(mode)})`, async () => {
      const t = server();
      const N = 3;
      // v1 -> v2 is the upgrade under test; the further ones put more swaps under the same load.
      const versions = ['v1', 'v2', 'v3', 'v4'];
      const v1 = await t.client.execute({ name: 'upg-atomic', mode, source: versioned('upg.atomic', 'v1', N) });
      succeeded(v1);
      const upgrades: pb.ExecuteResponse[] = [];
      const loops = triggerLoops(t.client, 'upg.atomic', 20);
      const started = Date.now();
      try {
        for (const version of versions.slice(1)) {
          const before = loops.count();
          await waitFor(`Triggers before ${version}`, () => loops.count() >= before + 40);
          upgrades.push(await t.client.execute({ name: 'upg-atomic', replace: true, mode, source: versioned('upg.atomic', version, N) }));
        }
        const before = loops.count();
        await waitFor('Triggers after the last upgrade', () => loops.count() >= before + 40 && Date.now() - started >= 1000);
      } finally {
        await loops.stop();
      }
      for (const up of upgrades) {
        succeeded(up);
        assert.equal(up.registrations.length, N);
        assert.equal(up.interpreter?.registrationReferences, N);
        assert.equal(up.interpreter?.name, 'upg-atomic');
      }

      const seen = new Set<string>();
      for (const answers of loops.perLoop) {
        const order = answers.map((res) => versions.indexOf(versionOf(res, N)));
        for (const v of order) seen.add(versions[v]);
        for (let i = 1; i < order.length; i++) {
          assert.ok(order[i] >= order[i - 1], `a loop saw ${versions[order[i]]} after ${versions[order[i - 1]]}: an upgrade went backwards`);
        }
      }
      assert.deepEqual([...seen].sort(), versions, 'Triggers ran between every pair of upgrades');

      const last = upgrades[upgrades.length - 1];
      for (const old of [v1, ...upgrades.slice(0, -1)]) {
        const gone = await t.client.getInterpreter({ interpreterId: old.interpreterId });
        assert.equal(gone.interpreter?.state, INTERPRETER_STATE_DISPOSED, 'a replaced interpreter is disposed once its runs ended');
        assert.equal(gone.interpreter?.name, '');
      }
      const live = await t.client.listInterpreters({});
      assert.deepEqual(live.interpreters.map((i) => [i.id, i.name]), [[last.interpreterId, 'upg-atomic']]);
      assert.deepEqual(await releaseInterpreters(t.client, last.interpreterId), last.registrations.map((r) => r.id));
    });
  }

  const failures = [
    { why: 'the script throws after registering', source: versioned('upg.f', 'v2', 3, "throw new Error('broken upgrade');"), outcome: OUTCOME_FAILED, message: /broken upgrade/ },
    {
      why: 'its default export rejects',
      source: versioned('upg.f', 'v2', 3, "export default async () => { throw new RangeError('rejected upgrade'); };"),
      outcome: OUTCOME_FAILED,
      message: /rejected upgrade/,
    },
    {
      why: 'it times out',
      source: versioned('upg.f', 'v2', 3, 'export default () => { for (;;) {} };'),
      outcome: OUTCOME_TIMED_OUT,
      message: /./,
      limits: limits(200),
    },
    { why: 'it does not compile', source: 'gears.register("upg.f", () => "v2");\nexport default (;', outcome: OUTCOME_FAILED, message: /./ },
  ];
  for (const f of failures) {
    it(`a failing upgrade (${f.why}) leaves the old interpreter untouched and no new one behind`, async () => {
      const t = server();
      const mode = ISOLATE;
      const v1 = await t.client.execute({ name: 'upg-fail', mode, source: versioned('upg.f', 'v1', 3) });
      succeeded(v1);
      const before = t.manager.counters();
      assert.equal(before.interpreters, 1);

      const loops = triggerLoops(t.client, 'upg.f', 5);
      let res: pb.ExecuteResponse;
      try {
        await waitFor('Triggers before the upgrade', () => loops.count() >= 10);
        res = await t.client.execute({ name: 'upg-fail', replace: true, mode, source: f.source, limits: f.limits });
        const after = loops.count();
        await waitFor('Triggers after the upgrade', () => loops.count() >= after + 10);
      } finally {
        await loops.stop();
      }
      assert.equal(res.outcome, f.outcome, `expected ${outcomeName(f.outcome)}, got ${outcomeName(res.outcome)}`);
      assert.match(res.error?.message ?? '', f.message);
      assert.deepEqual(res.registrations, [], 'a failed run keeps none of its registrations');
      assert.notEqual(res.interpreterId, v1.interpreterId);
      assert.equal(res.interpreter?.state, INTERPRETER_STATE_DISPOSED, 'the new interpreter is disposed');
      assert.equal(res.interpreter?.name, '', 'the name did not move');
      for (const answers of loops.perLoop) for (const a of answers) assert.equal(versionOf(a, 3), 'v1');

      const old = await t.client.getInterpreter({ interpreterId: v1.interpreterId });
      assert.equal(old.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(old.interpreter?.name, 'upg-fail');
      assert.equal(old.interpreter?.registrationReferences, 3);
      assert.deepEqual(old.registrations.map((r) => r.id), v1.registrations.map((r) => r.id));
      const fired = await t.client.trigger({ trigger: 'upg.f' });
      assert.deepEqual(fired.results.map((r) => r.result), ['v1', 'v1', 'v1']);
      assert.deepEqual((await t.client.listInterpreters({})).interpreters.map((i) => i.id), [v1.interpreterId]);
      assert.deepEqual((await t.client.listInterpreters({ name: 'upg-fail' })).interpreters.map((i) => i.id), [v1.interpreterId]);
      const c = t.manager.counters();
      assert.equal(c.interpreters, 1, 'no extra interpreter is left');
      assert.equal(c.dedicatedIsolates, 1, 'no extra isolate is left');
      assert.equal(c.registrations, 3);
      assert.deepEqual(await releaseInterpreters(t.client, v1.interpreterId), v1.registrations.map((r) => r.id));
    });
  }

  it('a successful replace whose script registers nothing releases the old registrations and frees the name', async () => {
    const t = server();
    const v1 = await t.client.execute({ name: 'upg-empty', source: versioned('upg.e', 'v1', 2) });
    succeeded(v1);
    const v2 = await t.client.execute({ name: 'upg-empty', replace: true, source: 'export default "nothing to register";' });
    succeeded(v2);
    assert.equal(v2.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    assert.equal((await t.client.getInterpreter({ interpreterId: v1.interpreterId })).interpreter?.state, INTERPRETER_STATE_DISPOSED);
    await expectStatus(t.client.trigger({ trigger: 'upg.e' }), grpc.status.NOT_FOUND);
    assert.deepEqual((await t.client.listInterpreters({ name: 'upg-empty' })).interpreters, []);
    const again = await t.client.execute({ name: 'upg-empty', source: versioned('upg.e', 'v3', 1) });
    succeeded(again);
    assert.equal(again.interpreter?.name, 'upg-empty');
    await releaseInterpreters(t.client, again.interpreterId);
  });

  it('replace with a free name behaves as a plain named Execute', async () => {
    const t = server();
    const res = await t.client.execute({ name: 'upg-fresh', replace: true, source: versioned('upg.fresh', 'v1', 1) });
    succeeded(res);
    assert.equal(res.interpreter?.name, 'upg-fresh');
    assert.deepEqual((await t.client.listInterpreters({ name: 'upg-fresh' })).interpreters.map((i) => i.id), [res.interpreterId]);
    await expectStatus(t.client.execute({ name: 'upg-fresh', source: 'export default 1;' }), grpc.status.ALREADY_EXISTS);
    await releaseInterpreters(t.client, res.interpreterId);
  });
});
