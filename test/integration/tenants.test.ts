import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, TestClient } from '../helpers/client';
import { ISOLATE, MODES, modeName, SHARED, succeeded } from '../helpers/proto';
import { releaseAll, startTestServer, type TestServer } from '../helpers/server';

const sha = (key: string): string => createHash('sha256').update(key).digest('hex');
const KEYS = { alpha: 'alpha-secret-key', beta: 'beta-secret-key' };

describe('Tenants: API keys and scoping', () => {
  let dir: string;
  let keysPath: string;
  let t: TestServer;
  let alpha: TestClient;
  let beta: TestClient;

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-tenants-'));
    keysPath = path.join(dir, 'keys.json');
    writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha(KEYS.alpha) }, { name: 'beta', keySha256: sha(KEYS.beta) }] }));
    t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keysPath });
    alpha = new TestClient(t.server.grpcAddress, KEYS.alpha);
    beta = new TestClient(t.server.grpcAddress, KEYS.beta);
  });

  afterEach(async () => {
    for (const c of [alpha, beta]) {
      await releaseAll(t, c);
      c.close();
    }
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe('authentication', () => {
    it('refuses GearsService calls without a valid key, before looking at the request', async () => {
      const wrong = new TestClient(t.server.grpcAddress, 'not-a-key');
      try {
        await expectStatus(t.client.execute({ source: 'export default 1' }), grpc.status.UNAUTHENTICATED, /missing credentials.*authorization: Bearer/);
        await expectStatus(wrong.execute({ source: 'export default 1' }), grpc.status.UNAUTHENTICATED, /the API key is not valid/);
        // even a malformed request: credentials come first
        await expectStatus(wrong.execute({ source: '' }), grpc.status.UNAUTHENTICATED);
        for (const call of [
          () => t.client.register({ trigger: 'x', source: 'export default () => 1' }),
          () => t.client.trigger({ trigger: 'x' }),
          () => t.client.release({ interpreterId: 'i' }),
          () => t.client.getInterpreter({ interpreterId: 'i' }),
          () => t.client.listInterpreters({}),
          () => t.client.listRegistrations({}),
        ]) {
          await expectStatus(call(), grpc.status.UNAUTHENTICATED);
        }
      } finally {
        wrong.close();
      }
      assert.equal(t.manager.counters().isolatesCreated.dedicated, 0, 'no refused call created an interpreter');
      const refused = t.logs.filter((l) => l.msg === 'rpc' && l.code === 'UNAUTHENTICATED');
      assert.equal(refused.length, 9);
      assert.ok(refused.every((l) => l.tenant === undefined));
      assert.doesNotMatch(JSON.stringify(t.logs), /not-a-key|alpha-secret-key|beta-secret-key/, 'keys never reach the log');
    });

    it('keeps health unauthenticated, so probes work', async () => {
      assert.equal(await t.client.healthCheck(), 'SERVING');
      assert.equal(await t.client.healthCheck('isogear.v1.GearsService'), 'SERVING');
    });

    it('logs which tenant made each call', async () => {
      succeeded(await alpha.execute({ source: 'export default 1', mode: SHARED }));
      const line = t.logs.filter((l) => l.msg === 'rpc' && l.method === 'Execute').at(-1);
      assert.equal(line?.tenant, 'alpha');
    });

    it('takes a changed keys file on reload, and keeps the old keys when the new file is bad', async () => {
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('rotated-alpha-key') }, { name: 'beta', keySha256: sha(KEYS.beta) }] }));
      assert.equal(await t.server.reloadKeys(), true);
      await expectStatus(alpha.listInterpreters({}), grpc.status.UNAUTHENTICATED, /not valid/);
      const rotated = new TestClient(t.server.grpcAddress, 'rotated-alpha-key');
      try {
        const res = await rotated.execute({ source: 'export default 2', mode: SHARED });
        succeeded(res);
        writeFileSync(keysPath, '{"tenants": "nope"}');
        assert.equal(await t.server.reloadKeys(), false);
        succeeded(await rotated.execute({ source: 'export default 3', mode: SHARED }));
        assert.ok(t.logs.some((l) => l.msg === 'API keys file rejected: the previous keys stay in force' && /"tenants" must be an array/.test(String(l.reason))));
      } finally {
        rotated.close();
      }
      // restore the original keys for cleanup
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha(KEYS.alpha) }, { name: 'beta', keySha256: sha(KEYS.beta) }] }));
      assert.equal(await t.server.reloadKeys(), true);
    });
  });

  describe('scoping', () => {
    for (const mode of MODES) {
      it(`hides one tenant's interpreters and registrations from another (${modeName(mode)})`, async () => {
        const res = await alpha.execute({
          mode,
          source: `gears.register('t.shared-name', (p) => 'alpha:' + p); export default 'ok';`,
        });
        succeeded(res);
        const interpreterId = res.interpreterId;
        const registrationId = res.registrations[0].id;

        // every way of reaching alpha's objects answers NOT_FOUND to beta, as for unknown ids
        await expectStatus(beta.getInterpreter({ interpreterId }), grpc.status.NOT_FOUND, new RegExp(`interpreter ${interpreterId} not found`));
        await expectStatus(beta.execute({ interpreterId, source: 'export default 1' }), grpc.status.NOT_FOUND);
        await expectStatus(beta.register({ interpreterId, trigger: 't.other', source: 'export default () => 1' }), grpc.status.NOT_FOUND);
        await expectStatus(beta.release({ interpreterId }), grpc.status.NOT_FOUND);
        await expectStatus(beta.release({ registrationId }), grpc.status.NOT_FOUND, /not found \(unknown or already released\)/);
        await expectStatus(beta.trigger({ trigger: 't.shared-name', payload: 1 }), grpc.status.NOT_FOUND, /no registration is bound/);
        assert.deepEqual((await beta.listInterpreters({})).interpreters, []);
        assert.deepEqual((await beta.listRegistrations({})).registrations, []);
        assert.deepEqual((await beta.listRegistrations({ interpreterId })).registrations, []);

        // beta's registration on the same trigger name is beta's alone
        const b = await beta.register({ mode, trigger: 't.shared-name', source: `export default (p) => 'beta:' + p` });
        const fired = await alpha.trigger({ trigger: 't.shared-name', payload: 1 });
        assert.deepEqual(fired.results.map((r) => r.result), ['alpha:1']);
        const firedB = await beta.trigger({ trigger: 't.shared-name', payload: 2 });
        assert.deepEqual(firedB.results.map((r) => r.result), ['beta:2']);

        // and alpha still sees and controls its own
        assert.equal((await alpha.getInterpreter({ interpreterId })).interpreter?.id, interpreterId);
        assert.deepEqual((await alpha.listRegistrations({})).registrations.map((r) => r.id), [registrationId]);
        await expectStatus(alpha.release({ registrationId: b.registration?.id }), grpc.status.NOT_FOUND);
        assert.deepEqual((await alpha.release({ registrationId })).releasedRegistrationIds, [registrationId]);
        // the tombstone of a disposed interpreter is its owner's too
        await expectStatus(beta.getInterpreter({ interpreterId }), grpc.status.NOT_FOUND);
        assert.ok((await alpha.getInterpreter({ interpreterId })).interpreter);
        await beta.release({ registrationId: b.registration?.id });
      });
    }

    it('keeps interpreter names per tenant: the same name in two tenants, upgraded separately', async () => {
      const source = (who: string, v: number): string => `gears.register('t.named', () => '${who}${v}'); export default ${v};`;
      const a1 = await alpha.execute({ name: 'svc', mode: ISOLATE, source: source('a', 1) });
      const b1 = await beta.execute({ name: 'svc', mode: SHARED, source: source('b', 1) });
      succeeded(a1);
      succeeded(b1);
      await expectStatus(alpha.execute({ name: 'svc', source: source('a', 9) }), grpc.status.ALREADY_EXISTS);
      const a2 = await alpha.execute({ name: 'svc', replace: true, mode: ISOLATE, source: source('a', 2) });
      succeeded(a2);
      assert.deepEqual((await alpha.trigger({ trigger: 't.named' })).results.map((r) => r.result), ['a2']);
      assert.deepEqual((await beta.trigger({ trigger: 't.named' })).results.map((r) => r.result), ['b1'], "alpha's upgrade left beta's alone");
      assert.deepEqual((await beta.listInterpreters({ name: 'svc' })).interpreters.map((i) => i.id), [b1.interpreterId]);
    });
  });
});
