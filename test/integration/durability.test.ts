import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { expectStatus, TestClient } from '../helpers/client';
import { freePort, logLines, portAccepts, spawnServer, type ServerProcess } from '../helpers/process';

async function stop(p: ServerProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  p.child.kill(signal);
  await p.exited;
}

/** Starts a server on `dataDir`, runs `fn` with a client, then stops it (SIGTERM) whatever happened. */
async function withServer<T>(dataDir: string, fn: (client: TestClient, p: ServerProcess) => Promise<T>): Promise<T> {
  const p = await spawnServer({ ISOGEAR_DATA_DIR: dataDir });
  const client = new TestClient(p.grpcAddress);
  try {
    return await fn(client, p);
  } finally {
    client.close();
    await stop(p);
  }
}

describe('durable registrations: a restarted server keeps them (embedded store)', function () {
  this.timeout(60_000);
  let dataDir: string;
  beforeEach(() => {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-durable-'));
  });
  afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

  it('registrations, ids and names survive a restart; released ones stay released; the store ends empty', async () => {
    const { ids, itp } = await withServer(dataDir, async (client) => {
      const ex = await client.execute({
        source: 'globalThis.n = 41; gears.register("d.one", () => ++n); gears.register("d.two", () => "two");',
        name: 'durable',
      });
      const reg = await client.register({ trigger: 'd.three', source: 'export default (p) => ({ got: p });' });
      await client.release({ registrationId: ex.registrations[1].id });
      return { ids: [...ex.registrations.map((r) => r.id), reg.registration?.id ?? ''], itp: ex.interpreter?.id ?? '' };
    });

    await withServer(dataDir, async (client, p) => {
      const live = (await client.listRegistrations({})).registrations.map((r) => r.id).sort();
      assert.deepEqual(live, [ids[0], ids[2]].sort());
      assert.equal((await client.trigger({ trigger: 'd.one' })).results[0].result, 42, 'the script ran again: its globals are rebuilt, not carried over');
      assert.deepEqual((await client.trigger({ trigger: 'd.three', payload: 'x' })).results[0].result, { got: 'x' });
      await expectStatus(client.trigger({ trigger: 'd.two' }), grpc.status.NOT_FOUND);
      const found = await client.listInterpreters({ name: 'durable' });
      assert.equal(found.interpreters[0].id, itp);
      const restored = logLines(p.output().stdout).find((l) => l.msg === 'restore: stored interpreters are back');
      assert.equal(restored?.restored, 2);
      assert.equal(restored?.broken, 0);
      const progress = logLines(p.output().stdout).filter((l) => l.msg === 'restore: rebuilding stored interpreters');
      assert.deepEqual(progress.at(-1) && [progress.at(-1)?.done, progress.at(-1)?.total], [2, 2], 'progress is logged, up to the end');
      for (const i of (await client.listInterpreters({})).interpreters) await client.release({ interpreterId: i.id });
    });

    await withServer(dataDir, async (client, p) => {
      assert.equal((await client.listInterpreters({})).interpreters.length, 0, 'released everything: nothing comes back');
      assert.equal(logLines(p.output().stdout).find((l) => l.msg === 'restore: stored interpreters are back')?.restored, 0);
    });
  });

  it("a name's versions survive a restart, and a rollback after it re-creates one (ISOGEAR_MAX_VERSIONS trims the oldest)", async () => {
    const v1Source = 'gears.register("d.ver", () => "v1");';
    const v1 = await withServer(dataDir, async (client) => {
      const first = await client.execute({ source: v1Source, name: 'versioned' });
      for (const v of ['v2', 'v3']) await client.execute({ source: `gears.register("d.ver", () => "${v}");`, name: 'versioned', replace: true });
      return first;
    });
    await withServer(dataDir, async (client) => {
      const listed = await client.listVersions({ name: 'versioned' });
      assert.deepEqual(
        listed.versions.map((v) => [v.version, v.current]),
        [
          [1, false],
          [2, false],
          [3, true],
        ],
      );
      assert.equal(listed.versions[0].sourceBytes, Buffer.byteLength(v1Source));
      const back = await client.rollback({ name: 'versioned', version: 1 });
      assert.deepEqual(back.result, { version: 4, rolledBackFrom: 1 });
      assert.notEqual(back.interpreterId, v1.interpreterId);
      assert.deepEqual((await client.trigger({ trigger: 'd.ver' })).results.map((r) => r.result), ['v1']);
    });
    // a restart with a smaller ISOGEAR_MAX_VERSIONS keeps the rollback and trims at the next change
    const p = await spawnServer({ ISOGEAR_DATA_DIR: dataDir, ISOGEAR_MAX_VERSIONS: '2' });
    const client = new TestClient(p.grpcAddress);
    try {
      assert.deepEqual((await client.trigger({ trigger: 'd.ver' })).results.map((r) => r.result), ['v1'], 'the rolled-back version was restored');
      const current = (await client.listVersions({ name: 'versioned' })).versions.at(-1);
      assert.deepEqual([current?.version, current?.current, current?.rolledBackFrom], [4, true, 1]);
      const next = await client.execute({ source: 'gears.register("d.ver", () => "v5");', name: 'versioned', replace: true });
      assert.deepEqual(
        (await client.listVersions({ name: 'versioned' })).versions.map((v) => v.version),
        [4, 5],
      );
      await client.release({ interpreterId: next.interpreterId });
    } finally {
      client.close();
      await stop(p);
    }
  });

  it('health says NOT_SERVING and calls are UNAVAILABLE until the restore has finished', async () => {
    await withServer(dataDir, async (client) => {
      // replaying this step takes about 1.5 s
      await client.execute({ source: 'const t = Date.now(); while (Date.now() - t < 1500); gears.register("slow", () => "back");', limits: { timeoutMs: 5000, memoryLimitMb: 0 } });
    });

    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    const starting = spawnServer({ ISOGEAR_DATA_DIR: dataDir, ISOGEAR_GRPC_ADDRESS: address });
    let startedAt = 0;
    void starting.then(() => (startedAt = Date.now()));
    // The client connects once the port is open: a channel that failed to connect before backs
    // off for a second or more, and could sleep through the whole restore.
    while (startedAt === 0 && !(await portAccepts(port))) await new Promise((r) => setTimeout(r, 20));
    const client = new TestClient(address);
    const seen = new Set<string>();
    let refused: grpc.ServiceError | undefined;
    try {
      while (startedAt === 0) {
        const status = await client.healthCheck('', { deadlineMs: 500 }).catch(() => 'UNREACHABLE');
        seen.add(status);
        if (status === 'NOT_SERVING' && !refused) {
          refused = await expectStatus(client.trigger({ trigger: 'slow' }), grpc.status.UNAVAILABLE, /rebuilding its stored interpreters/);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      await starting;
      assert.ok(seen.has('NOT_SERVING'), `health answered NOT_SERVING during the restore (saw ${[...seen].join(', ')})`);
      assert.ok(refused, 'a call during the restore was refused');
      assert.equal(await client.healthCheck(), 'SERVING');
      assert.equal((await client.trigger({ trigger: 'slow' })).results[0].result, 'back');
      for (const i of (await client.listInterpreters({})).interpreters) await client.release({ interpreterId: i.id });
    } finally {
      client.close();
      await stop(await starting);
    }
  });

  it('a second server on the same data directory refuses to start, naming it', async () => {
    const p = await spawnServer({ ISOGEAR_DATA_DIR: dataDir });
    try {
      await assert.rejects(spawnServer({ ISOGEAR_DATA_DIR: dataDir }), /in use by another isogear process/);
    } finally {
      await stop(p);
    }
  });
});
