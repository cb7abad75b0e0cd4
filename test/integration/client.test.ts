import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createClient, IsogearRpcError, pb, type IsogearClient } from '../../src';
import { useTestServer } from '../helpers/fixture';
import { startTestServer } from '../helpers/server';

const rejectsWith = async (p: Promise<unknown>, code: grpc.status, pattern?: RegExp): Promise<IsogearRpcError> => {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof IsogearRpcError, `an IsogearRpcError, got ${String(err)}`);
    assert.equal(err.code, code, `${grpc.status[code]} expected, got ${err.codeName}: ${err.details}`);
    assert.equal(err.codeName, grpc.status[code]);
    if (pattern) assert.match(err.details, pattern);
    return err;
  }
  throw new Error('the call succeeded');
};

describe('TypeScript client (createClient)', () => {
  const server = useTestServer({ ISOGEAR_MAX_INTERPRETERS: '4' });
  let client: IsogearClient;
  beforeEach(() => {
    client = createClient(server().server.grpcAddress);
  });
  afterEach(() => client.close());

  it('runs every RPC with plain JS values in and out', async () => {
    assert.equal(await client.health(), 'SERVING');
    const res = await client.execute({
      source: `import twice from "twice";\ngears.register('c.add', (p) => ({ sum: p.a + p.b }));\nexport default (a) => ({ doubled: a.items.map(twice), name: a.name });`,
      modules: { twice: 'export default (x) => x * 2' },
      args: { items: [1, 2, 3], name: 'isogear' },
      mode: 'shared',
    });
    assert.equal(res.outcome, pb.Outcome.OUTCOME_SUCCEEDED);
    assert.deepEqual(res.result, { doubled: [2, 4, 6], name: 'isogear' });
    const interpreterId = res.interpreterId;
    const reg = await client.register({ interpreterId, trigger: 'c.add', source: 'export default (p) => p.a * p.b', description: 'product' });
    const fired = await client.trigger({ trigger: 'c.add', payload: { a: 3, b: 4 } });
    assert.deepEqual(fired.results.map((r) => r.result), [{ sum: 7 }, 12], 'in registration order');
    assert.equal((await client.getInterpreter(interpreterId)).registrations.length, 2);
    assert.deepEqual((await client.listInterpreters({ mode: 'shared' })).interpreters.map((i) => i.id), [interpreterId]);
    assert.deepEqual((await client.listRegistrations({ trigger: 'c.add' })).registrations.length, 2);
    assert.deepEqual((await client.release({ registrationId: reg.registration?.id as string })).releasedRegistrationIds, [reg.registration?.id]);
    const all = await client.release({ interpreterId });
    assert.equal(all.releasedRegistrationIds.length, 1);
  });

  it('starts, waits for, lists and cancels executions by id', async () => {
    const started = await client.startExecute({ source: 'export default (a) => a.n + 1', args: { n: 41 }, mode: 'isolate' });
    assert.equal(started.kind, pb.ExecutionKind.EXECUTION_KIND_EXECUTE);
    const done = await client.waitExecution(started.id, { timeoutMs: 5000 });
    assert.equal(done.state, pb.ExecutionState.EXECUTION_STATE_DONE);
    assert.equal(done.executeResponse?.result, 42);
    assert.deepEqual(await client.getExecution(started.id), done);
    assert.deepEqual((await client.listExecutions({ state: 'done' })).executions.map((e) => e.id), [started.id]);
    assert.deepEqual((await client.listExecutions({ state: 'running' })).executions, []);
    const hang = await client.startExecute({ source: 'export default () => new Promise(() => {})', limits: { timeoutMs: 10_000 } });
    const notYet = await client.waitExecution(hang.id, { timeoutMs: 100 });
    assert.notEqual(notYet.state, pb.ExecutionState.EXECUTION_STATE_DONE);
    const cancelled = await client.cancelExecution(hang.id);
    assert.equal(cancelled.executeResponse?.outcome, pb.Outcome.OUTCOME_ABORTED);
    const reg = await client.register({ trigger: 'c.bg', source: 'export default (p) => p * 2' });
    const fan = await client.startTrigger({ trigger: 'c.bg', payload: 21 });
    assert.deepEqual((await client.waitExecution(fan.id)).triggerResponse?.results.map((r) => r.result), [42]);
    await client.release({ registrationId: reg.registration?.id as string });
    await rejectsWith(client.getExecution('exe_nope'), grpc.status.INVALID_ARGUMENT, /not an execution id/);
    await assert.rejects(client.listExecutions({ state: 'finished' as never }), /state must be "queued", "running" or "done"/);
  });

  it('raises one error class carrying the status code, its name and the limit', async () => {
    await rejectsWith(client.getInterpreter('itp_nope'), grpc.status.NOT_FOUND, /not found/);
    await rejectsWith(client.execute({ source: '' }), grpc.status.INVALID_ARGUMENT, /source/);
    const held = [];
    for (let i = 0; i < 4; i++) held.push(await client.register({ trigger: `c.full${i}`, source: 'export default () => 1', mode: 'shared' }));
    const full = await rejectsWith(client.execute({ source: 'export default 1' }), grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(full.limit, 'max_interpreters');
    assert.match(full.message, /^RESOURCE_EXHAUSTED: /);
    // a background Execute is refused at once for the same reason
    assert.equal((await rejectsWith(client.startExecute({ source: 'export default 1' }), grpc.status.RESOURCE_EXHAUSTED)).limit, 'max_interpreters');
    for (const r of held) await client.release({ registrationId: r.registration?.id as string });
    await assert.rejects(client.execute({ source: 'export default 1', mode: 'fast' as never }), /mode must be "shared" or "isolate"/);
  });

  it('honours deadlines and abort signals, and refuses calls once closed', async () => {
    const slow = { source: 'await new Promise(() => {}); export default 0;', mode: 'shared' as const, limits: { timeoutMs: 3000 } };
    await rejectsWith(client.execute(slow, { deadlineMs: 100 }), grpc.status.DEADLINE_EXCEEDED);
    const ac = new AbortController();
    const cancelled = client.execute(slow, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(cancelled, grpc.status.CANCELLED);
    const withDefault = createClient(server().server.grpcAddress, { deadlineMs: 100 });
    try {
      await rejectsWith(withDefault.execute(slow), grpc.status.DEADLINE_EXCEEDED);
    } finally {
      withDefault.close();
    }
    client.close();
    client.close();
    await rejectsWith(client.health(), grpc.status.CANCELLED, /closed/);
  });

  it('an RPC the server does not know (a newer client\'s) is refused with the standard UNIMPLEMENTED', async () => {
    const raw = new grpc.Client(server().server.grpcAddress, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
        raw.makeUnaryRequest(
          '/isogear.v1.GearsService/SomeFutureRpc',
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.alloc(0),
          (e, res) => (e ? resolve(e) : reject(new Error(`answered ${String(res)}`))),
        );
      });
      assert.equal(err.code, grpc.status.UNIMPLEMENTED);
      assert.match(err.details, /SomeFutureRpc/);
      // and the server goes on serving what it knows
      assert.equal((await client.execute({ source: 'export default 1', mode: 'shared' })).result, 1);
    } finally {
      raw.close();
    }
  });

  it('a server that cannot be reached is UNAVAILABLE, in plain words naming its address', async () => {
    const refused = createClient('127.0.0.1:1');
    const unknown = createClient('nohost.invalid:50051');
    try {
      const err = await rejectsWith(refused.execute({ source: 'export default 1' }), grpc.status.UNAVAILABLE);
      assert.equal(err.details, 'cannot reach the isogear server at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1); is it running, and is the address right?');
      assert.equal(err.message, `UNAVAILABLE: ${err.details}`);
      await rejectsWith(refused.listVersions('svc'), grpc.status.UNAVAILABLE, /^cannot reach the isogear server at 127\.0\.0\.1:1 /);
      await rejectsWith(unknown.trigger({ trigger: 't' }), grpc.status.UNAVAILABLE, /^cannot reach the isogear server at nohost\.invalid:50051: its host name does not resolve/);
    } finally {
      refused.close();
      unknown.close();
    }
  });
});

describe('TypeScript client with an API key', () => {
  it('sends the key on GearsService calls (health needs none)', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-client-'));
    const keys = path.join(dir, 'keys.json');
    writeFileSync(keys, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: createHash('sha256').update('k-alpha').digest('hex') }] }));
    const t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keys });
    const keyed = createClient(t.server.grpcAddress, { apiKey: 'k-alpha' });
    const wrong = createClient(t.server.grpcAddress, { apiKey: 'k-wrong' });
    try {
      assert.equal((await keyed.execute({ source: 'export default 6 * 7', mode: 'isolate' })).result, 42);
      await rejectsWith(wrong.listInterpreters(), grpc.status.UNAUTHENTICATED, /not valid/);
      assert.equal(await wrong.health(), 'SERVING');
    } finally {
      keyed.close();
      wrong.close();
      await t.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
