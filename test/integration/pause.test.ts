import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, pb, TestClient } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { spawnServer } from '../helpers/process';
import { startTestServer } from '../helpers/server';

/** The registration ids a Trigger ran, in its results' order. */
const ran = async (client: TestClient, trigger: string): Promise<string[]> => (await client.trigger({ trigger, payload: 1 })).results.map((r) => r.registrationId);

describe('PauseRegistrations and ResumeRegistrations', () => {
  describe('on one server', () => {
    const server = useTestServer();

    it('a paused registration is skipped by Trigger, listed as paused, and runs again once resumed; each call answers what it changed', async () => {
      const t = server();
      const made = await t.client.execute({ source: 'for (const n of [1, 2, 3]) gears.register("p.fan", (p) => p * n);' });
      const [a, b, c] = made.registrations.map((r) => r.id);
      assert.deepEqual(await ran(t.client, 'p.fan'), [a, b, c]);

      assert.deepEqual((await t.client.pause({ registrationId: b })).registrationIds, [b]);
      assert.deepEqual(await ran(t.client, 'p.fan'), [a, c], 'the paused one is absent from the results');
      assert.deepEqual((await t.client.pause({ registrationId: b })).registrationIds, [], 'pausing what is paused changes nothing');
      const listed = (await t.client.listRegistrations({ trigger: 'p.fan' })).registrations;
      assert.deepEqual(listed.map((r) => [r.id, r.paused]), [[a, false], [b, true], [c, false]]);
      assert.equal(listed[1].stats?.runs, 1, 'it ran once, before the pause');

      // by trigger: the rest; a Trigger with every registration paused answers OK with no results
      assert.deepEqual((await t.client.pause({ trigger: 'p.fan' })).registrationIds, [a, c]);
      assert.deepEqual((await t.client.trigger({ trigger: 'p.fan' })).results, []);
      // paused registrations still hold their interpreter
      assert.equal((await t.client.getInterpreter({ interpreterId: made.interpreterId })).interpreter?.registrationReferences, 3);

      // by interpreter: all of them, in creation order
      assert.deepEqual((await t.client.resume({ interpreterId: made.interpreterId })).registrationIds, [a, b, c]);
      assert.deepEqual((await t.client.resume({ interpreterId: made.interpreterId })).registrationIds, []);
      assert.deepEqual(await ran(t.client, 'p.fan'), [a, b, c]);

      // a paused registration can be released like any other
      await t.client.pause({ registrationId: c });
      assert.deepEqual((await t.client.release({ registrationId: c })).releasedRegistrationIds, [c]);
      await expectStatus(t.client.resume({ registrationId: c }), grpc.status.NOT_FOUND, /registration reg_\S+ not found/);
      await t.client.release({ interpreterId: made.interpreterId });
    });

    it('pausing spans interpreters by trigger, and a background StartTrigger skips paused registrations too', async () => {
      const t = server();
      const one = await t.client.register({ trigger: 'p.multi', source: 'export default () => "one";', mode: pb.IsolationMode.ISOLATION_MODE_SHARED });
      const two = await t.client.register({ trigger: 'p.multi', source: 'export default () => "two";', mode: pb.IsolationMode.ISOLATION_MODE_ISOLATE });
      assert.deepEqual((await t.client.pause({ registrationId: one.registration?.id })).registrationIds, [one.registration?.id]);
      const started = await t.client.startTrigger({ trigger: 'p.multi' });
      const done = await t.client.waitExecution({ executionId: started.id, timeoutMs: 5000 });
      assert.deepEqual(done.triggerResponse?.results.map((r) => r.registrationId), [two.registration?.id]);
      assert.deepEqual((await t.client.pause({ trigger: 'p.multi' })).registrationIds, [two.registration?.id]);
      assert.deepEqual((await t.client.resume({ trigger: 'p.multi' })).registrationIds, [one.registration?.id, two.registration?.id]);
      for (const r of [one, two]) await t.client.release({ interpreterId: r.interpreter?.id });
    });

    it('watchers see each pause and resume as a registration event carrying the paused state', async () => {
      const t = server();
      const reg = await t.client.register({ trigger: 'p.watch', source: 'export default () => 1;' });
      const id = reg.registration?.id as string;
      const watch = t.client.watch({ registrationId: id });
      await watch.ready;
      const events = watch[Symbol.asyncIterator]();
      await t.client.pause({ registrationId: id });
      await t.client.pause({ registrationId: id }); // no change: no event
      await t.client.resume({ registrationId: id });
      const first = (await events.next()).value as pb.WatchEvent;
      const second = (await events.next()).value as pb.WatchEvent;
      assert.deepEqual(
        [first, second].map((e) => [e.registration?.registration?.id, e.registration?.registration?.paused, e.registration?.released, e.registration?.change]),
        [
          [id, true, false, pb.RegistrationChange.REGISTRATION_CHANGE_PAUSED],
          [id, false, false, pb.RegistrationChange.REGISTRATION_CHANGE_RESUMED],
        ],
      );
      watch.close();
      await t.client.release({ registrationId: id });
    });

    it('refuses bad input with the right status, and changes nothing', async () => {
      const t = server();
      const reg = await t.client.register({ trigger: 'p.bad', source: 'export default () => 1;' });
      const id = reg.registration?.id as string;
      for (const call of [(r: Partial<pb.PauseRegistrationsRequest>) => t.client.pause(r), (r: Partial<pb.PauseRegistrationsRequest>) => t.client.resume(r)]) {
        await expectStatus(call({}), grpc.status.INVALID_ARGUMENT, /set one of registration_id, interpreter_id or trigger/);
        await expectStatus(call({ registrationId: id, trigger: 'p.bad' }), grpc.status.INVALID_ARGUMENT, /set exactly one of registration_id, interpreter_id or trigger, not registration_id and trigger/);
        await expectStatus(call({ trigger: 'not a trigger!' }), grpc.status.INVALID_ARGUMENT, /trigger must match/);
        await expectStatus(call({ registrationId: 'reg_nope' }), grpc.status.NOT_FOUND, /registration reg_nope not found/);
        await expectStatus(call({ interpreterId: 'itp_nope' }), grpc.status.NOT_FOUND, /interpreter itp_nope not found/);
        await expectStatus(call({ trigger: 'p.nothing' }), grpc.status.NOT_FOUND, /no registration is bound to trigger "p.nothing"/);
        await expectStatus(call({ registrationId: 'reg_' + 'x'.repeat(300) }), grpc.status.INVALID_ARGUMENT, /registration_id is 304 characters long/);
      }
      assert.deepEqual(await ran(t.client, 'p.bad'), [id], 'nothing was paused');
      await t.client.release({ registrationId: id });
    });
  });

  it("another tenant's registrations, interpreters and triggers are NOT_FOUND, exactly as unknown ones", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-pause-'));
    const keys = path.join(dir, 'keys.json');
    const sha = (k: string): string => createHash('sha256').update(k).digest('hex');
    writeFileSync(keys, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('alpha-key-1') }, { name: 'beta', keySha256: sha('beta-key-2') }] }));
    const t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keys });
    const alpha = new TestClient(t.server.grpcAddress, 'alpha-key-1');
    const beta = new TestClient(t.server.grpcAddress, 'beta-key-2');
    try {
      const reg = await alpha.register({ trigger: 'p.tenant', source: 'export default () => 1;' });
      await expectStatus(beta.pause({ registrationId: reg.registration?.id }), grpc.status.NOT_FOUND, /not found \(unknown or already released\)/);
      await expectStatus(beta.pause({ interpreterId: reg.interpreter?.id }), grpc.status.NOT_FOUND, /not found \(unknown or already disposed\)/);
      await expectStatus(beta.pause({ trigger: 'p.tenant' }), grpc.status.NOT_FOUND, /no registration is bound/);
      assert.deepEqual((await alpha.trigger({ trigger: 'p.tenant' })).results.length, 1, "alpha's registration still runs");
      await alpha.release({ registrationId: reg.registration?.id });
    } finally {
      alpha.close();
      beta.close();
      await t.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('pausing is durable: a restarted server keeps what was paused, and resumes it on request', async function () {
    this.timeout(60_000);
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-pause-durable-'));
    const run = async <T>(fn: (client: TestClient) => Promise<T>): Promise<T> => {
      const p = await spawnServer({ ISOGEAR_DATA_DIR: dataDir });
      const client = new TestClient(p.grpcAddress);
      try {
        return await fn(client);
      } finally {
        client.close();
        p.child.kill('SIGTERM');
        await p.exited;
      }
    };
    try {
      const ids = await run(async (client) => {
        const made = await client.execute({ source: 'gears.register("p.d", () => "a"); gears.register("p.d", () => "b");', name: 'paused-ones' });
        const [a, b] = made.registrations.map((r) => r.id);
        await client.pause({ registrationId: a });
        // paused then resumed before the restart: it comes back running
        await client.pause({ registrationId: b });
        await client.resume({ registrationId: b });
        return [a, b];
      });
      await run(async (client) => {
        const listed = (await client.listRegistrations({ trigger: 'p.d' })).registrations;
        assert.deepEqual(listed.map((r) => [r.id, r.paused]), [
          [ids[0], true],
          [ids[1], false],
        ]);
        assert.deepEqual(await ran(client, 'p.d'), [ids[1]]);
        assert.deepEqual((await client.resume({ trigger: 'p.d' })).registrationIds, [ids[0]]);
      });
      await run(async (client) => {
        assert.deepEqual(await ran(client, 'p.d'), ids, 'the resume was stored too');
        for (const i of (await client.listInterpreters({})).interpreters) await client.release({ interpreterId: i.id });
        assert.equal((await client.listInterpreters({})).interpreters.length, 0);
      });
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
