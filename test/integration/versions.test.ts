import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape, value } from '../helpers/metrics';
import { MODES, modeName, releaseInterpreters, succeeded, waitFor } from '../helpers/proto';
import { triggerLoops, versioned, versionOf } from '../helpers/upgrades';

const { OUTCOME_ABORTED, OUTCOME_FAILED } = pb.Outcome;
const { INTERPRETER_STATE_DISPOSED } = pb.InterpreterState;

/** Polls `probe` until it gives something (bounded); resolves with it. */
async function until<T>(what: string, probe: () => Promise<T | undefined | false>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got) return got;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const shape = (r: pb.ListVersionsResponse): string[] => r.versions.map((v) => `${v.version}${v.current ? '*' : ''}${v.rolledBackFrom ? `<${v.rolledBackFrom}` : ''}`);

describe('Versions and rollback of named interpreters (ListVersions, Rollback)', () => {
  const server = useTestServer();

  it('lists every version with its source digest; a rollback re-creates one and becomes the next version', async () => {
    const t = server();
    const one = versioned('ver.t', 'v1', 2);
    const v1 = await t.client.execute({ name: 'ver-svc', source: one });
    succeeded(v1);
    const before = Date.now();
    const v2 = await t.client.execute({ name: 'ver-svc', replace: true, source: versioned('ver.t', 'v2', 2) });
    succeeded(v2);

    const listed = await t.client.listVersions({ name: 'ver-svc' });
    assert.deepEqual(shape(listed), ['1', '2*']);
    const [first, second] = listed.versions;
    assert.equal(first.interpreterId, '', 'only the current version names its interpreter');
    assert.equal(second.interpreterId, v2.interpreterId);
    assert.equal(first.sourceSha256, createHash('sha256').update(one).digest('hex'));
    assert.equal(first.sourceBytes, Buffer.byteLength(one));
    assert.ok(first.createdAt && second.createdAt && first.createdAt <= second.createdAt);
    assert.ok(Math.abs(second.createdAt.getTime() - before) < 5000);

    const back = await t.client.rollback({ name: 'ver-svc', version: 1 });
    succeeded(back);
    assert.deepEqual(back.result, { version: 3, rolledBackFrom: 1 });
    assert.equal(back.interpreter?.name, 'ver-svc');
    assert.equal(back.registrations.length, 2);
    assert.ok(back.executionId);
    assert.deepEqual(
      (await t.client.trigger({ trigger: 'ver.t' })).results.map((r) => r.result),
      ['v1', 'v1'],
    );
    const after = await t.client.listVersions({ name: 'ver-svc' });
    assert.deepEqual(shape(after), ['1', '2', '3*<1']);
    assert.equal(after.versions[2].sourceSha256, first.sourceSha256);
    assert.equal(after.versions[2].interpreterId, back.interpreterId);
    // the replaced one drained and went
    await until('v2 disposed', async () => (await t.client.getInterpreter({ interpreterId: v2.interpreterId })).interpreter?.state === INTERPRETER_STATE_DISPOSED);
    await releaseInterpreters(t.client, back.interpreterId);
    // released: its versions stay, none current, and Rollback brings one back
    assert.deepEqual(shape(await t.client.listVersions({ name: 'ver-svc' })), ['1', '2', '3<1']);
    const revived = await t.client.rollback({ name: 'ver-svc', version: 2 });
    succeeded(revived);
    assert.deepEqual(revived.result, { version: 4, rolledBackFrom: 2 });
    assert.equal(value(await scrape(t), 'isogear_rollbacks_total', { result: 'succeeded' }), 2);
    await releaseInterpreters(t.client, revived.interpreterId);
  });

  for (const mode of MODES) {
    it(`a rollback under a concurrent Trigger loop is atomic: every Trigger sees all of one version, never a mix or none (${modeName(mode)})`, async () => {
      const t = server();
      const N = 3;
      succeeded(await t.client.execute({ name: 'ver-atomic', mode, source: versioned('ver.atomic', 'v1', N) }));
      succeeded(await t.client.execute({ name: 'ver-atomic', mode, replace: true, source: versioned('ver.atomic', 'v2', N) }));
      const loops = triggerLoops(t.client, 'ver.atomic', 20);
      const rollbacks: pb.ExecuteResponse[] = [];
      try {
        // v2 → v1 → v2 → v1: each rollback swaps the set under load
        for (const version of [1, 2, 3]) {
          const before = loops.count();
          await waitFor(`Triggers before rolling back to ${version}`, () => loops.count() >= before + 40);
          rollbacks.push(await t.client.rollback({ name: 'ver-atomic', version }));
        }
        const before = loops.count();
        await waitFor('Triggers after the last rollback', () => loops.count() >= before + 40);
      } finally {
        await loops.stop();
      }
      for (const r of rollbacks) {
        succeeded(r);
        assert.equal(r.registrations.length, N);
      }
      const expected = ['v2', 'v1', 'v2', 'v1'];
      for (const answers of loops.perLoop) {
        // each loop sees the versions in order, every answer one whole version
        const seen = answers.map((res) => versionOf(res, N));
        const runs = seen.filter((v, i) => i === 0 || v !== seen[i - 1]);
        assert.ok(expected.join().includes(runs.join()), `a loop saw ${runs.join(' → ')}, out of order`);
      }
      assert.deepEqual(shape(await t.client.listVersions({ name: 'ver-atomic' })), ['1', '2', '3<1', '4<2', '5*<3']);
      const live = await t.client.listInterpreters({});
      assert.deepEqual(
        live.interpreters.map((i) => i.id),
        [rollbacks[2].interpreterId],
      );
      await releaseInterpreters(t.client, rollbacks[2].interpreterId);
    });
  }

  it('a rollback that fails changes nothing: the step, the reason and its logs in the answer', async () => {
    const t = server();
    const moment = Date.now() + 1000;
    const expiring = `${versioned('ver.fail', 'v1', 1, '')}\nexport default () => {\n  console.log('checking');\n  if (Date.now() > ${moment}) throw new RangeError('expired');\n};`;
    succeeded(await t.client.execute({ name: 'ver-fail', source: expiring }));
    const v2 = await t.client.execute({ name: 'ver-fail', replace: true, source: versioned('ver.fail', 'v2', 1) });
    succeeded(v2);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, moment + 20 - Date.now())));
    const failed = await t.client.rollback({ name: 'ver-fail', version: 1 });
    assert.equal(failed.outcome, OUTCOME_FAILED);
    const metrics = await scrape(t);
    assert.equal(value(metrics, 'isogear_rollbacks_total', { result: 'failed' }), 1);
    assert.equal(value(metrics, 'isogear_rollbacks_total', { result: 'succeeded' }), 0);
    assert.equal(failed.error?.name, 'RangeError');
    assert.match(failed.error?.message ?? '', /^version 1 of "ver-fail" could not be re-created, so nothing changed: step 1 of 1 \(execute\) failed: RangeError: expired/);
    assert.match(failed.error?.stack ?? '', /main\.js:5:/);
    assert.deepEqual(failed.logs.map((l) => l.message), ['checking']);
    assert.deepEqual((await t.client.trigger({ trigger: 'ver.fail' })).results.map((r) => r.result), ['v2']);
    assert.deepEqual(shape(await t.client.listVersions({ name: 'ver-fail' })), ['1', '2*']);
    assert.deepEqual((await t.client.listInterpreters({})).interpreters.map((i) => i.id), [v2.interpreterId]);
    await releaseInterpreters(t.client, v2.interpreterId);
  });

  it('CancelExecution stops a rollback in its replay, and nothing changes', async () => {
    const t = server();
    // the script waits when it runs again later (its replay), so the rollback is caught in it
    const moment = Date.now() + 1000;
    const source = `${versioned('ver.slow', 'v1', 1, '')}\nexport default async () => { if (Date.now() > ${moment}) await new Promise(() => undefined); };`;
    succeeded(await t.client.execute({ name: 'ver-slow', source, limits: { timeoutMs: 30_000, memoryLimitMb: 0 } }));
    const v2 = await t.client.execute({ name: 'ver-slow', replace: true, source: versioned('ver.slow', 'v2', 1) });
    succeeded(v2);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, moment + 20 - Date.now())));
    const rollback = t.client.rollback({ name: 'ver-slow', version: 1 });
    const running = await until('the rollback to run', async () => (await t.client.listExecutions({})).executions.find((e) => e.state === pb.ExecutionState.EXECUTION_STATE_RUNNING));
    await t.client.cancelExecution({ executionId: running.id });
    const answer = await rollback;
    assert.equal(answer.outcome, OUTCOME_ABORTED, pb.outcomeToJSON(answer.outcome));
    assert.equal(answer.executionId, running.id);
    assert.match(answer.error?.message ?? '', /could not be re-created, so nothing changed: step 1 of 1 \(execute\) aborted/);
    assert.deepEqual((await t.client.trigger({ trigger: 'ver.slow' })).results.map((r) => r.result), ['v2']);
    assert.deepEqual(shape(await t.client.listVersions({ name: 'ver-slow' })), ['1', '2*']);
    await releaseInterpreters(t.client, v2.interpreterId);
  });

  it('refuses bad input: INVALID_ARGUMENT for no name or version 0, NOT_FOUND for an unknown name or version', async () => {
    const t = server();
    const v1 = await t.client.execute({ name: 'ver-bad', source: versioned('ver.bad', 'v1', 1) });
    succeeded(v1);
    await expectStatus(t.client.listVersions({ name: '' }), grpc.status.INVALID_ARGUMENT, /name is required/);
    await expectStatus(t.client.rollback({ name: '', version: 1 }), grpc.status.INVALID_ARGUMENT, /name is required/);
    await expectStatus(t.client.rollback({ name: 'ver-bad', version: 0 }), grpc.status.INVALID_ARGUMENT, /version must be 1 or more/);
    await expectStatus(t.client.listVersions({ name: 'not a name' }), grpc.status.INVALID_ARGUMENT, /name must be/);
    await expectStatus(t.client.listVersions({ name: 'ver-none' }), grpc.status.NOT_FOUND, /no interpreter named "ver-none"/);
    await expectStatus(t.client.rollback({ name: 'ver-none', version: 1 }), grpc.status.NOT_FOUND, /no interpreter named "ver-none"/);
    await expectStatus(t.client.rollback({ name: 'ver-bad', version: 9 }), grpc.status.NOT_FOUND, /"ver-bad" has no version 9: it keeps version 1/);
    assert.deepEqual(shape(await t.client.listVersions({ name: 'ver-bad' })), ['1*']);
    await releaseInterpreters(t.client, v1.interpreterId);
  });
});
