import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../src/config';
import { TestPki, type Issued } from '../helpers/certs';
import { grpc, pb, TestClient } from '../helpers/client';
import { SHARED, succeeded } from '../helpers/proto';
import { startTestServer, type TestServer } from '../helpers/server';

/** TLS clients check the server's name as localhost (its certificate also holds IP 127.0.0.1, but Node.js deprecates IP server names). */
const NAME = { 'grpc.ssl_target_name_override': 'localhost' };

/** A call that must fail at the connection, before any RPC is served. */
async function refused(client: TestClient): Promise<grpc.ServiceError> {
  try {
    await client.execute({ source: 'export default 1', mode: SHARED }, { deadlineMs: 5000 });
  } catch (err) {
    const e = err as grpc.ServiceError;
    assert.equal(e.code, grpc.status.UNAVAILABLE, `expected UNAVAILABLE, got ${grpc.status[e.code]}: ${e.details}`);
    return e;
  }
  throw new Error('the call was served');
}

describe('TLS and mTLS', function () {
  this.timeout(20_000);
  let pki: TestPki;
  let ca: Issued;
  let otherCa: Issued;
  let server: Issued;
  const clients: TestClient[] = [];
  let t: TestServer | undefined;
  const client = (...args: ConstructorParameters<typeof TestClient>): TestClient => {
    const c = new TestClient(...args);
    clients.push(c);
    return c;
  };
  const tls = (opts: { ca?: Issued; cert?: Issued } = {}): grpc.ChannelCredentials =>
    grpc.credentials.createSsl((opts.ca ?? ca).cert, opts.cert?.key ?? null, opts.cert?.cert ?? null);

  before(() => {
    pki = new TestPki();
    ca = pki.ca('test-ca');
    otherCa = pki.ca('other-ca');
    server = pki.issue(ca, 'server', 'isogear', true);
  });
  after(() => pki.close());
  // close() asserts nothing leaked: each test releases what it registered
  afterEach(async () => {
    const running = t;
    t = undefined;
    try {
      await running?.close();
    } finally {
      for (const c of clients.splice(0)) c.close();
    }
  });

  it('serves gRPC over TLS and refuses plaintext clients and clients that do not trust its CA', async () => {
    t = await startTestServer({ ISOGEAR_TLS_CERT_FILE: server.certFile, ISOGEAR_TLS_KEY_FILE: server.keyFile });
    const good = client(t.server.grpcAddress, undefined, tls(), NAME);
    assert.equal(await good.healthCheck(), 'SERVING');
    succeeded(await good.execute({ source: 'export default 41 + 1', mode: SHARED }));
    await refused(client(t.server.grpcAddress));
    await refused(client(t.server.grpcAddress, undefined, tls({ ca: otherCa }), NAME));
  });

  it('with a client CA, requires a client certificate that chains to it (mTLS)', async () => {
    t = await startTestServer({ ISOGEAR_TLS_CERT_FILE: server.certFile, ISOGEAR_TLS_KEY_FILE: server.keyFile, ISOGEAR_TLS_CLIENT_CA_FILE: ca.certFile });
    const alphaCert = pki.issue(ca, 'alpha', 'alpha');
    const rogueCert = pki.issue(otherCa, 'rogue', 'alpha');
    const good = client(t.server.grpcAddress, undefined, tls({ cert: alphaCert }), NAME);
    succeeded(await good.execute({ source: 'export default 1', mode: SHARED }));
    await refused(client(t.server.grpcAddress, undefined, tls(), NAME));
    await refused(client(t.server.grpcAddress, undefined, tls({ cert: rogueCert }), NAME));
    await refused(client(t.server.grpcAddress));
  });

  it('maps the client certificate CN to the tenant, checking it against the keys file', async () => {
    const keysFile = path.join(pki.dir, 'keys.json');
    const sha = (k: string): string => createHash('sha256').update(k).digest('hex');
    writeFileSync(keysFile, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('alpha-key') }, { name: 'beta', keySha256: sha('beta-key') }] }));
    t = await startTestServer({
      ISOGEAR_TLS_CERT_FILE: server.certFile,
      ISOGEAR_TLS_KEY_FILE: server.keyFile,
      ISOGEAR_TLS_CLIENT_CA_FILE: ca.certFile,
      ISOGEAR_TLS_CLIENT_TENANT: 'cn',
      ISOGEAR_API_KEYS_FILE: keysFile,
    });
    const alpha = client(t.server.grpcAddress, undefined, tls({ cert: pki.issue(ca, 'alpha-cn', 'alpha') }), NAME);
    const beta = client(t.server.grpcAddress, undefined, tls({ cert: pki.issue(ca, 'beta-cn', 'beta') }), NAME);
    const res = await alpha.execute({ mode: SHARED, source: `gears.register('tls.t', () => 'alpha'); export default 0;` });
    succeeded(res);
    assert.deepEqual((await alpha.listInterpreters({})).interpreters.map((i) => i.id), [res.interpreterId]);
    assert.deepEqual((await beta.listInterpreters({})).interpreters, [], "beta's certificate sees only beta's");
    assert.equal(t.logs.filter((l) => l.msg === 'rpc' && l.method === 'Execute').at(-1)?.tenant, 'alpha');

    // a key sent along must be the same tenant's
    const mixed = client(t.server.grpcAddress, 'beta-key', tls({ cert: pki.issue(ca, 'alpha-2', 'alpha') }), NAME);
    await assert.rejects(mixed.listInterpreters({}), (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED && /another tenant than the client certificate \("alpha"\)/.test(e.details));
    const matching = client(t.server.grpcAddress, 'alpha-key', tls({ cert: pki.issue(ca, 'alpha-3', 'alpha') }), NAME);
    assert.equal((await matching.listInterpreters({})).interpreters.length, 1);
    // a CN that is not a tenant of the keys file
    const stranger = client(t.server.grpcAddress, undefined, tls({ cert: pki.issue(ca, 'gamma', 'gamma') }), NAME);
    await assert.rejects(stranger.listInterpreters({}), (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED && /CN "gamma" is not a tenant/.test(e.details));
    assert.deepEqual((await alpha.release({ interpreterId: res.interpreterId })).releasedRegistrationIds, res.registrations.map((r) => r.id));
  });

  it('answers probes on a plaintext health-only port while gRPC needs mTLS', async () => {
    t = await startTestServer({
      ISOGEAR_TLS_CERT_FILE: server.certFile,
      ISOGEAR_TLS_KEY_FILE: server.keyFile,
      ISOGEAR_TLS_CLIENT_CA_FILE: ca.certFile,
      ISOGEAR_HEALTH_ADDRESS: '127.0.0.1:0',
    });
    const address = t.server.healthAddress as string;
    assert.match(address, /^127\.0\.0\.1:\d+$/);
    assert.notEqual(address, t.server.grpcAddress);
    const probe = client(address);
    assert.equal(await probe.healthCheck(), 'SERVING');
    assert.equal(await probe.healthCheck('isogear.v1.GearsService'), 'SERVING');
    // health alone: GearsService is not on that port
    await assert.rejects(probe.execute({ source: 'export default 1' }), (e: grpc.ServiceError) => e.code === grpc.status.UNIMPLEMENTED);
    await refused(client(t.server.grpcAddress));
    // draining (a call still in flight) shows on the probe port too
    const good = client(t.server.grpcAddress, undefined, tls({ cert: pki.issue(ca, 'probe-test', 'alpha') }), NAME);
    const inFlight = good.execute({ mode: SHARED, source: 'await new Promise(() => {}); export default 0;', limits: { timeoutMs: 1000, memoryLimitMb: 0 } });
    while (t.manager.counters().executionsInFlight === 0) await new Promise((r) => setTimeout(r, 10));
    const shutdown = t.server.shutdown(5000);
    assert.equal(await probe.healthCheck('isogear.v1.GearsService'), 'NOT_SERVING');
    assert.equal((await inFlight).outcome, pb.Outcome.OUTCOME_TIMED_OUT);
    await shutdown;
    t = undefined;
  });

  it('refuses TLS settings that do not fit together, naming them', () => {
    const base = { ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0' };
    assert.throws(() => loadConfig({ ...base, ISOGEAR_TLS_CERT_FILE: '/x.crt' }), /ISOGEAR_TLS_CERT_FILE and ISOGEAR_TLS_KEY_FILE go together/);
    assert.throws(() => loadConfig({ ...base, ISOGEAR_TLS_CLIENT_CA_FILE: '/ca.crt' }), /ISOGEAR_TLS_CLIENT_CA_FILE needs TLS/);
    assert.throws(
      () => loadConfig({ ...base, ISOGEAR_TLS_CERT_FILE: '/x.crt', ISOGEAR_TLS_KEY_FILE: '/x.key', ISOGEAR_TLS_CLIENT_TENANT: 'cn' }),
      /ISOGEAR_TLS_CLIENT_TENANT=cn needs verified client certificates/,
    );
    assert.throws(() => loadConfig({ ...base, ISOGEAR_TLS_CLIENT_TENANT: 'subject' }), /ISOGEAR_TLS_CLIENT_TENANT must be one of none, cn/);
  });

  it('stops start-up on an unreadable certificate file, naming the setting', async () => {
    await assert.rejects(
      startTestServer({ ISOGEAR_TLS_CERT_FILE: path.join(pki.dir, 'missing.crt'), ISOGEAR_TLS_KEY_FILE: server.keyFile }),
      /ISOGEAR_TLS_CERT_FILE: cannot read .*missing\.crt: ENOENT/,
    );
  });
});
