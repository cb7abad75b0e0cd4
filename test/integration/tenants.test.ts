import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, pb, TestClient } from '../helpers/client';
import { ISOLATE, MODES, modeName, releaseInterpreters, SHARED, succeeded } from '../helpers/proto';
import { scrape, value } from '../helpers/metrics';
import { startTestServer, type TestServer } from '../helpers/server';

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

  // close() asserts nothing leaked: each test releases, as its tenant, what it registered
  afterEach(async () => {
    for (const c of [alpha, beta]) c.close();
    try {
      await t.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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
      await expectStatus(beta.release({ interpreterId: a2.interpreterId }), grpc.status.NOT_FOUND);
      // versions are per tenant too: beta's "svc" has one, and alpha's version 2 is not beta's to roll back to
      assert.deepEqual((await alpha.listVersions({ name: 'svc' })).versions.map((v) => v.version), [1, 2]);
      assert.deepEqual((await beta.listVersions({ name: 'svc' })).versions.map((v) => v.version), [1]);
      await expectStatus(beta.rollback({ name: 'svc', version: 2 }), grpc.status.NOT_FOUND, /"svc" has no version 2/);
      const a3 = await alpha.rollback({ name: 'svc', version: 1 });
      succeeded(a3);
      assert.deepEqual((await alpha.trigger({ trigger: 't.named' })).results.map((r) => r.result), ['a1']);
      assert.deepEqual((await beta.trigger({ trigger: 't.named' })).results.map((r) => r.result), ['b1'], "alpha's rollback left beta's alone");
      await releaseInterpreters(alpha, a3.interpreterId);
      await releaseInterpreters(beta, b1.interpreterId);
    });
  });

  describe('quotas', () => {
    const quotaKeys = (alphaQuotas: Record<string, number>): string =>
      JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha(KEYS.alpha), quotas: alphaQuotas }, { name: 'beta', keySha256: sha(KEYS.beta) }] });
    const limitOf = (err: grpc.ServiceError): unknown => err.metadata.get('isogear-limit')[0];

    beforeEach(async () => {
      // a server of its own: quotas in the keys file, defaults and server limits from the env
      for (const c of [alpha, beta]) c.close();
      await t.close();
      writeFileSync(keysPath, quotaKeys({ interpreters: 2, registrations: 3, concurrentRuns: 2, dedicatedMemoryMb: 96 }));
      t = await startTestServer({
        ISOGEAR_API_KEYS_FILE: keysPath,
        ISOGEAR_MAX_CONCURRENT_RUNS: '4',
        ISOGEAR_MAX_QUEUE_WAIT_MS: '1000',
        ISOGEAR_TENANT_MAX_INTERPRETERS: '50',
      });
      alpha = new TestClient(t.server.grpcAddress, KEYS.alpha);
      beta = new TestClient(t.server.grpcAddress, KEYS.beta);
    });

    it('holds a tenant to its interpreters quota, leaves the others alone, and takes a reloaded quota at once', async () => {
      const handler = { source: 'export default () => 1', mode: SHARED };
      const first = await alpha.register({ ...handler, trigger: 'q.one' });
      const second = await alpha.register({ ...handler, trigger: 'q.two' });
      const refused = await expectStatus(alpha.register({ ...handler, trigger: 'q.three' }), grpc.status.RESOURCE_EXHAUSTED, /tenant "alpha" holds its quota of 2 interpreters/);
      assert.equal(limitOf(refused), 'tenant_interpreters');
      // every new interpreter counts, even one an Execute would drop at its end
      await expectStatus(alpha.execute({ source: 'export default 1' }), grpc.status.RESOURCE_EXHAUSTED, /quota interpreters/);
      // beta has the config default (50)
      const betas: string[] = [];
      for (let i = 0; i < 3; i++) betas.push((await beta.register({ ...handler, trigger: `q.b${i}` })).interpreter?.id ?? '');

      await alpha.release({ registrationId: second.registration?.id });
      succeeded(await alpha.execute({ source: 'export default 1', mode: SHARED }));

      writeFileSync(keysPath, quotaKeys({ interpreters: 3, registrations: 10, concurrentRuns: 2, dedicatedMemoryMb: 96 }));
      assert.equal(await t.server.reloadKeys(), true);
      const two = await alpha.register({ ...handler, trigger: 'q.two' });
      const three = await alpha.register({ ...handler, trigger: 'q.three' });
      await expectStatus(alpha.register({ ...handler, trigger: 'q.four' }), grpc.status.RESOURCE_EXHAUSTED, /quota of 3 interpreters/);
      await releaseInterpreters(alpha, first.interpreter?.id, two.interpreter?.id, three.interpreter?.id);
      await releaseInterpreters(beta, ...betas);
    });

    it('holds a tenant to its registrations quota, keeping nothing of a run that would pass it', async () => {
      const res = await alpha.execute({ mode: SHARED, source: `gears.register('q.r', () => 1); gears.register('q.r', () => 2); export default 0;` });
      succeeded(res);
      await alpha.register({ interpreterId: res.interpreterId, trigger: 'q.r', source: 'export default () => 3' });
      const refused = await expectStatus(
        alpha.register({ interpreterId: res.interpreterId, trigger: 'q.r', source: 'export default () => 4' }),
        grpc.status.RESOURCE_EXHAUSTED,
        /tenant "alpha" holds 3 registrations; 1 more would pass its quota of 3/,
      );
      assert.equal(limitOf(refused), 'tenant_registrations');
      // an Execute that registers is refused as a whole, after it ran: nothing it registered stays
      await expectStatus(alpha.execute({ interpreterId: res.interpreterId, source: `gears.register('q.x', () => 5); export default 0;` }), grpc.status.RESOURCE_EXHAUSTED, /quota registrations/);
      assert.equal((await alpha.listRegistrations({})).registrations.length, 3);
      await expectStatus(alpha.trigger({ trigger: 'q.x' }), grpc.status.NOT_FOUND);
      // a handler that registers more while it runs fails; the Trigger itself answers
      const grower = await beta.execute({ mode: SHARED, source: `gears.register('q.grow', () => { gears.register('q.grown', () => 1); return 'grew'; }); export default 0;` });
      succeeded(grower);
      assert.deepEqual((await beta.trigger({ trigger: 'q.grow' })).results.map((r) => r.result), ['grew'], 'beta is within its default quota');
      await alpha.release({ interpreterId: res.interpreterId });
      const alphaGrower = await alpha.execute({ mode: SHARED, source: `gears.register('q.grow', () => { for (let i = 0; i < 3; i++) gears.register('q.grown', () => 1); return 'grew'; }); export default 0;` });
      succeeded(alphaGrower);
      const fired = await alpha.trigger({ trigger: 'q.grow' });
      assert.equal(fired.results[0].outcome, pb.Outcome.OUTCOME_FAILED);
      assert.match(fired.results[0].error?.message ?? '', /quota of 3 \(quota registrations\)/);
      assert.equal((await alpha.listRegistrations({})).registrations.length, 1);
      assert.equal((await releaseInterpreters(alpha, alphaGrower.interpreterId)).length, 1);
      assert.equal((await releaseInterpreters(beta, grower.interpreterId)).length, 2, "beta's handler registered one more");
    });

    it('holds a tenant to its dedicated-isolate memory quota; shared mode does not count', async () => {
      const big = await alpha.register({ mode: ISOLATE, trigger: 'q.m', source: 'export default () => 1', limits: { timeoutMs: 0, memoryLimitMb: 64 } });
      const refused = await expectStatus(
        alpha.register({ mode: ISOLATE, trigger: 'q.m', source: 'export default () => 1', limits: { timeoutMs: 0, memoryLimitMb: 64 } }),
        grpc.status.RESOURCE_EXHAUSTED,
        /64 MB of heap limits; 64 MB more would pass its quota of 96 MB/,
      );
      assert.equal(limitOf(refused), 'tenant_dedicated_memory_mb');
      const small = await alpha.register({ mode: ISOLATE, trigger: 'q.m', source: 'export default () => 1', limits: { timeoutMs: 0, memoryLimitMb: 32 } });
      assert.equal((await alpha.trigger({ trigger: 'q.m' })).results.length, 2);
      // releasing gives the memory back; a shared interpreter takes none of it
      await alpha.release({ registrationId: small.registration?.id });
      await expectStatus(alpha.execute({ mode: ISOLATE, source: 'export default 1', limits: { timeoutMs: 0, memoryLimitMb: 40 } }), grpc.status.RESOURCE_EXHAUSTED, /quota of 96 MB/);
      succeeded(await alpha.execute({ mode: ISOLATE, source: 'export default 1', limits: { timeoutMs: 0, memoryLimitMb: 32 } }));
      succeeded(await alpha.execute({ mode: SHARED, source: 'export default 1' }));
      await releaseInterpreters(alpha, big.interpreter?.id);
    });

    it('holds a tenant at its concurrent-runs quota without slowing another tenant', async () => {
      writeFileSync(keysPath, quotaKeys({ interpreters: 10, registrations: 10, concurrentRuns: 2, dedicatedMemoryMb: 96 }));
      assert.equal(await t.server.reloadKeys(), true);
      // four runs that hold their slot until their own timeout, without using CPU
      const hold = { mode: SHARED, source: 'await new Promise(() => {}); export default 0;', limits: { timeoutMs: 2500, memoryLimitMb: 0 } };
      let alphaAnswered = 0;
      const alphaRuns = [1, 2, 3, 4].map(() => alpha.execute(hold).then((r) => ((alphaAnswered += 1), r)));
      const until = Date.now() + 5000;
      while (t.manager.counters().runSlotsInUse < 2 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(t.manager.counters().runSlotsInUse, 2, 'alpha holds 2 of the server\'s 4 slots, its quota');
      // beta gets the two slots alpha may not take, while alpha's runs still hold theirs
      const betaRuns = await Promise.all([1, 2, 3, 4].map((v) => beta.execute({ source: `export default ${v}`, mode: SHARED })));
      assert.deepEqual(betaRuns.map((r) => r.result), [1, 2, 3, 4]);
      assert.equal(alphaAnswered, 0, "beta's runs all finished while alpha's held their slots");
      const settled = await Promise.allSettled(alphaRuns);
      const timedOut = settled.filter((r) => r.status === 'fulfilled' && r.value.outcome === pb.Outcome.OUTCOME_TIMED_OUT);
      const refused = settled.flatMap((r) => (r.status === 'rejected' ? [r.reason as grpc.ServiceError] : []));
      assert.equal(timedOut.length, 2);
      assert.equal(refused.length, 2, 'the two beyond the quota waited for it, then were refused');
      for (const err of refused) {
        assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
        assert.equal(limitOf(err), 'tenant_concurrent_runs');
        assert.match(err.details, /none of tenant "alpha"'s 2 runs \(quota concurrentRuns\) ended within 1000 ms/);
      }
    });
  });

  describe('metrics', () => {
    const metricsText = async (): Promise<string> => (await fetch(`http://${t.server.metricsAddress}/metrics`)).text();

    it('never shows keys or digests, carries no tenant label by default, and counts key reloads', async () => {
      succeeded(await alpha.execute({ source: 'export default 1', mode: SHARED }));
      writeFileSync(keysPath, 'not json');
      assert.equal(await t.server.reloadKeys(), false);
      const text = await metricsText();
      for (const secret of [KEYS.alpha, KEYS.beta, sha(KEYS.alpha), sha(KEYS.beta)]) assert.ok(!text.includes(secret), 'a key or digest in /metrics');
      assert.doesNotMatch(text, /tenant="/);
      // (as a word: the reflection service's package, grpc.reflection.v1alpha, is no tenant)
      assert.doesNotMatch(text, /\b(alpha|beta)\b/, 'no tenant name either');
      const s = await scrape(t);
      assert.equal(value(s, 'isogear_api_key_tenants'), 2);
      assert.equal(value(s, 'isogear_api_keys_reloads_total', { result: 'rejected' }), 1);
      assert.equal(value(s, 'isogear_api_keys_reloads_total', { result: 'applied' }), 0);
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha(KEYS.alpha) }, { name: 'beta', keySha256: sha(KEYS.beta) }] }));
      assert.equal(await t.server.reloadKeys(), true);
      assert.equal(value(await scrape(t), 'isogear_api_keys_reloads_total', { result: 'applied' }), 1);
    });

    it('labels run metrics by tenant and exports per-tenant gauges where the operator enables it', async () => {
      for (const c of [alpha, beta]) c.close();
      await t.close();
      t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keysPath, ISOGEAR_METRICS_TENANT_LABEL: 'true' });
      alpha = new TestClient(t.server.grpcAddress, KEYS.alpha);
      beta = new TestClient(t.server.grpcAddress, KEYS.beta);
      const kept = await alpha.execute({ mode: SHARED, source: `gears.register('m.t', () => 1); gears.register('m.t', () => 2); export default 0;` });
      succeeded(kept);
      succeeded(await beta.execute({ source: 'export default 1', mode: ISOLATE }));
      await alpha.trigger({ trigger: 'm.t' });
      const s = await scrape(t);
      assert.equal(value(s, 'isogear_executions_total', { mode: 'shared', kind: 'execute', outcome: 'succeeded', tenant: 'alpha' }), 1);
      assert.equal(value(s, 'isogear_executions_total', { mode: 'shared', kind: 'trigger', outcome: 'succeeded', tenant: 'alpha' }), 2);
      assert.equal(value(s, 'isogear_executions_total', { mode: 'isolate', kind: 'execute', outcome: 'succeeded', tenant: 'beta' }), 1);
      assert.equal(value(s, 'isogear_tenant_interpreters', { tenant: 'alpha' }), 1);
      assert.equal(value(s, 'isogear_tenant_registrations', { tenant: 'alpha' }), 2);
      assert.equal(value(s, 'isogear_tenant_interpreters', { tenant: 'beta' }), 0);
      const text = await metricsText();
      for (const secret of [KEYS.alpha, KEYS.beta, sha(KEYS.alpha), sha(KEYS.beta)]) assert.ok(!text.includes(secret));
      await releaseInterpreters(alpha, kept.interpreterId);
      assert.equal(value(await scrape(t), 'isogear_tenant_registrations', { tenant: 'alpha' }), 0);
    });
  });
});
