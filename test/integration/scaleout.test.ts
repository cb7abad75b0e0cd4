import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { expectStatus, TestClient } from '../helpers/client';
import { spawnServer, type ServerProcess } from '../helpers/process';
import { requireRedis, startRedis, type TestRedis } from '../helpers/redis';

/** How long a change on one replica may take to reach the others (the store feed blocks ~1 s per read). */
const PROPAGATION_MS = 5000;

/** Polls `check` until it holds; fails with `what` after PROPAGATION_MS. Returns how long it took. */
async function eventually(what: string, check: () => Promise<boolean>): Promise<number> {
  const since = Date.now();
  for (;;) {
    if (await check().catch(() => false)) return Date.now() - since;
    if (Date.now() - since > PROPAGATION_MS) throw new Error(`not within ${PROPAGATION_MS} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function triggerResults(client: TestClient, trigger: string): Promise<unknown[] | undefined> {
  try {
    return (await client.trigger({ trigger })).results.map((r) => r.result);
  } catch (err) {
    if ((err as grpc.ServiceError).code === grpc.status.NOT_FOUND) return undefined;
    throw err;
  }
}

describe('scale-out: three servers on one Redis serve the same registrations', function () {
  this.timeout(120_000);
  let redis: TestRedis;
  let servers: ServerProcess[] = [];
  let clients: TestClient[] = [];

  const startReplica = async (): Promise<TestClient> => {
    const p = await spawnServer({ ISOGEAR_STORE: redis.url, ISOGEAR_DEFAULT_MODE: 'shared' });
    servers.push(p);
    const c = new TestClient(p.grpcAddress);
    clients.push(c);
    return c;
  };

  before(async function () {
    requireRedis(this);
    redis = await startRedis();
    for (let i = 0; i < 3; i++) await startReplica();
  });

  after(async () => {
    try {
      // nothing leaked anywhere: every replica holds no interpreter once all is released
      if (clients.length > 0) {
        for (const i of (await clients[0].listInterpreters({})).interpreters) {
          if (i.registrationReferences > 0) await clients[0].release({ interpreterId: i.id });
        }
        for (const [k, c] of clients.entries()) {
          await eventually(`replica ${k} holds no interpreter`, async () => (await c.listInterpreters({})).interpreters.length === 0);
        }
      }
    } finally {
      for (const c of clients) c.close();
      for (const p of servers) {
        p.child.kill('SIGTERM');
        await p.exited;
      }
      await redis?.stop();
      servers = [];
      clients = [];
    }
  });

  it('a Register on one replica triggers on every replica, with the same ids; references are per replica', async () => {
    const [a, b, c] = clients;
    const reg = await a.register({ trigger: 'so.hello', source: 'let n = 0; export default () => ++n;' });
    const id = reg.registration?.id;
    const took = await eventually('b and c run so.hello', async () => (await triggerResults(b, 'so.hello')) !== undefined && (await triggerResults(c, 'so.hello')) !== undefined);
    assert.ok(took <= PROPAGATION_MS);
    for (const client of [a, b, c]) {
      const regs = (await client.listRegistrations({ trigger: 'so.hello' })).registrations;
      assert.deepEqual(regs.map((r) => r.id), [id], 'the id is global');
      const itp = await client.getInterpreter({ interpreterId: reg.interpreter?.id });
      assert.equal(itp.interpreter?.registrationReferences, 1, 'each replica counts its own references');
    }
    // each replica has its own JavaScript state: the counter is per replica
    assert.deepEqual(await triggerResults(a, 'so.hello'), [1], 'a ran it first here');
    const [onC] = (await triggerResults(c, 'so.hello')) as number[];
    assert.deepEqual(await triggerResults(a, 'so.hello'), [2]);
    assert.deepEqual(await triggerResults(c, 'so.hello'), [onC + 1], "a's runs do not move c's counter");
  });

  it("an interpreter made on one replica answers at once on another: a client's next call may land anywhere", async () => {
    const [a, b, c] = clients;
    for (let k = 0; k < 5; k++) {
      const made = await a.execute({ source: `globalThis.k = ${k}; gears.register("so.ryw.${k}", () => k);` });
      const id = made.interpreter?.id;
      // no waiting for the changes feed: each call goes straight to another replica
      const seen = await c.getInterpreter({ interpreterId: id });
      assert.equal(seen.interpreter?.registrationReferences, 1, `c knows ${id} at once`);
      assert.deepEqual(seen.registrations.map((r) => r.trigger), [`so.ryw.${k}`]);
      const attached = await b.execute({ source: 'export default () => k * 10;', interpreterId: id });
      assert.equal(attached.result, k * 10, `b attaches to ${id} at once`);
      const released = await c.release({ interpreterId: id });
      assert.equal(released.releasedRegistrationIds.length, 1, `c releases ${id} at once`);
    }
    // an id no replica ever made is still NOT_FOUND, on every path
    const unknown = 'itp_00000000000000000000';
    await expectStatus(c.getInterpreter({ interpreterId: unknown }), grpc.status.NOT_FOUND);
    await expectStatus(b.execute({ source: '1', interpreterId: unknown }), grpc.status.NOT_FOUND);
    await expectStatus(b.register({ trigger: 'so.ryw.none', source: 'export default () => 1;', interpreterId: unknown }), grpc.status.NOT_FOUND);
    await expectStatus(c.release({ interpreterId: unknown }), grpc.status.NOT_FOUND);
    for (const [k, client] of [a, b, c].entries()) {
      await eventually(`replica ${k} holds no so.ryw interpreter`, async () => (await client.listRegistrations({ pageSize: 1000 })).registrations.every((r) => !r.trigger.startsWith('so.ryw.')));
    }
  });

  it('a Release on one replica takes effect on all', async () => {
    const [a, b, c] = clients;
    const reg = await b.register({ trigger: 'so.gone', source: 'export default () => "here";' });
    await eventually('a and c run so.gone', async () => (await triggerResults(a, 'so.gone'))?.[0] === 'here' && (await triggerResults(c, 'so.gone'))?.[0] === 'here');
    await c.release({ registrationId: reg.registration?.id });
    await eventually('so.gone is gone on a and b', async () => (await triggerResults(a, 'so.gone')) === undefined && (await triggerResults(b, 'so.gone')) === undefined);
    await expectStatus(a.release({ registrationId: reg.registration?.id }), grpc.status.NOT_FOUND);
  });

  it('an upgrade on one replica swaps the set everywhere; names are global', async () => {
    const [a, b, c] = clients;
    await a.execute({ source: 'gears.register("so.v", () => 1);', name: 'so-svc' });
    await eventually('c sees v1', async () => (await triggerResults(c, 'so.v'))?.[0] === 1);
    await expectStatus(c.execute({ source: 'gears.register("so.v", () => 9);', name: 'so-svc' }), grpc.status.ALREADY_EXISTS);
    const v2 = await b.execute({ source: 'gears.register("so.v", () => 2);', name: 'so-svc', replace: true });
    for (const [k, client] of [a, b, c].entries()) {
      await eventually(`replica ${k} runs only v2`, async () => JSON.stringify(await triggerResults(client, 'so.v')) === '[2]');
      await eventually(`replica ${k} names v2`, async () => (await client.listInterpreters({ name: 'so-svc' })).interpreters.map((i) => i.id).join() === v2.interpreter?.id);
    }
  });

  it('a replica following an upgrade never shows both sets, nor neither', async () => {
    const [a, b] = clients;
    await a.execute({ source: 'gears.register("so.swap", () => "old");', name: 'so-swap' });
    await eventually('b runs old', async () => JSON.stringify(await triggerResults(b, 'so.swap')) === '["old"]');
    const seen = new Map<string, number>();
    let done = false;
    const watch = (async () => {
      while (!done) {
        const key = JSON.stringify((await triggerResults(b, 'so.swap')) ?? null);
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
    })();
    await a.execute({ source: 'gears.register("so.swap", () => "new");', name: 'so-swap', replace: true });
    await eventually('b runs new', async () => JSON.stringify(await triggerResults(b, 'so.swap')) === '["new"]');
    done = true;
    await watch;
    assert.deepEqual([...seen.keys()].filter((k) => k !== '["old"]' && k !== '["new"]'), [], `b only ever ran one set (${JSON.stringify([...seen])})`);
  });

  it('handlers a handler registers, and attached steps, reach the other replicas', async () => {
    const [a, b, c] = clients;
    const ex = await a.execute({ source: 'globalThis.tag = "t1"; gears.register("so.spawn", (p) => { gears.register("so.child." + p, () => tag + ":" + p); });' });
    await eventually('b has so.spawn', async () => (await triggerResults(b, 'so.spawn')) !== undefined);
    await c.execute({ source: 'globalThis.tag = "t2";', interpreterId: ex.interpreter?.id });
    await b.trigger({ trigger: 'so.spawn', payload: 'x' });
    for (const [k, client] of [a, b, c].entries()) {
      await eventually(`replica ${k} runs so.child.x with the attached step applied`, async () => (await triggerResults(client, 'so.child.x'))?.[0] === 't2:x');
    }
  });

  it('a pause on one replica reaches the others, and so does the resume; a replica started later starts with it paused', async () => {
    const [a, b, c] = clients;
    const made = await a.execute({ source: 'gears.register("so.pause", () => "x"); gears.register("so.pause", () => "y");' });
    const [x, y] = made.registrations.map((r) => r.id);
    await eventually('c runs both so.pause', async () => (await triggerResults(c, 'so.pause'))?.length === 2);
    assert.deepEqual((await b.pause({ registrationId: x })).registrationIds, [x]);
    for (const [k, client] of [a, b, c].entries()) {
      await eventually(`replica ${k} skips the paused one`, async () => JSON.stringify(await triggerResults(client, 'so.pause')) === '["y"]');
      const listed = (await client.listRegistrations({ trigger: 'so.pause' })).registrations;
      assert.deepEqual(listed.map((r) => r.paused), [true, false]);
    }
    assert.deepEqual((await c.pause({ interpreterId: made.interpreter?.id })).registrationIds, [y], 'c knows x is paused: only y changes');
    const late = await startReplica();
    assert.deepEqual(await triggerResults(late, 'so.pause'), [], 'a replica started later has both paused');
    assert.deepEqual((await late.resume({ trigger: 'so.pause' })).registrationIds, [x, y]);
    for (const [k, client] of clients.entries()) {
      await eventually(`replica ${k} runs both again`, async () => (await triggerResults(client, 'so.pause'))?.length === 2);
    }
    await a.release({ interpreterId: made.interpreter?.id });
  });

  it('a replica started later materialises every registration before it says SERVING', async () => {
    const late = await startReplica();
    assert.equal(await late.healthCheck(), 'SERVING');
    const mine = (await late.listRegistrations({ pageSize: 1000 })).registrations.map((r) => r.id).sort();
    const theirs = (await clients[0].listRegistrations({ pageSize: 1000 })).registrations.map((r) => r.id).sort();
    assert.deepEqual(mine, theirs);
    assert.deepEqual(await triggerResults(late, 'so.v'), [2]);
  });

  it("a name's versions are the same on every replica, and a rollback on one moves the name everywhere", async () => {
    const [a, b, c] = clients;
    await a.execute({ source: 'gears.register("so.ver", () => 1);', name: 'so-ver' });
    await b.execute({ source: 'gears.register("so.ver", () => 2);', name: 'so-ver', replace: true });
    const listed = (await c.listVersions({ name: 'so-ver' })).versions.map((v) => [v.version, v.current]);
    assert.deepEqual(listed, [
      [1, false],
      [2, true],
    ]);
    const back = await c.rollback({ name: 'so-ver', version: 1 });
    assert.deepEqual(back.result, { version: 3, rolledBackFrom: 1 });
    for (const [k, client] of [a, b, c].entries()) {
      await eventually(`replica ${k} runs only the rolled-back v1`, async () => JSON.stringify(await triggerResults(client, 'so.ver')) === '[1]');
      assert.deepEqual((await client.listVersions({ name: 'so-ver' })).versions.at(-1)?.interpreterId, back.interpreterId);
    }
  });

  it('two replicas racing for one name: one holder, the other ALREADY_EXISTS, everywhere the same', async () => {
    const [a, b] = clients;
    const results = await Promise.allSettled([
      a.execute({ source: 'gears.register("so.race", () => "a");', name: 'so-race' }),
      b.execute({ source: 'gears.register("so.race", () => "b");', name: 'so-race' }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1, 'exactly one Execute took the name');
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.equal((lost.reason as grpc.ServiceError).code, grpc.status.ALREADY_EXISTS);
    for (const [k, client] of clients.entries()) {
      await eventually(`replica ${k} runs one so.race`, async () => (await triggerResults(client, 'so.race'))?.length === 1);
    }
  });
});
