import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestClient } from '../helpers/client';
import { spawnServer, type ServerProcess } from '../helpers/process';
import { requireRedis, startRedis, type TestRedis } from '../helpers/redis';

const ROUNDS = Number(process.env.CRASH_ROUNDS ?? 5);
const WORKERS = 4;

/** Every live registration: id → trigger. */
async function liveRegistrations(client: TestClient): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  let pageToken = '';
  do {
    const page = await client.listRegistrations({ pageSize: 1000, pageToken });
    for (const r of page.registrations) out.set(r.id, r.trigger);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return out;
}


/**
 * Kills the server with SIGKILL at a random moment of a Register/Release load, restarts it on
 * the same data directory, and checks the store's promise: what was acknowledged is there (and
 * runs), what was acknowledged released is gone. Calls the kill cut off may land either way;
 * the next round reads from the server which way they went.
 */
for (const kind of ['sqlite', 'redis'] as const) describe(`durable registrations survive SIGKILL under load (${kind} store)`, function () {
  this.timeout(180_000);
  let dataDir: string;
  let redis: TestRedis | undefined;
  /** The server, on the same store each time (the Redis outlives every server). */
  const start = (): Promise<ServerProcess> =>
    spawnServer({ ISOGEAR_DATA_DIR: dataDir, ISOGEAR_DEFAULT_MODE: 'shared', ...(redis ? { ISOGEAR_STORE: redis.url } : {}) });
  before(async function () {
    dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-crash-'));
    if (kind === 'redis') {
      requireRedis(this);
      redis = await startRedis();
    }
  });
  after(async () => {
    rmSync(dataDir, { recursive: true, force: true });
    await redis?.stop();
  });

  it(`${ROUNDS} kills at random moments: every acknowledged registration triggers, every acknowledged release stays released`, async () => {
    /** Acknowledged and not released: id → trigger. */
    const live = new Map<string, string>();
    /** Acknowledged released. */
    const released = new Set<string>();
    /** Releases the kill cut off (id → trigger), and triggers of Registers it cut off. */
    const cutReleases = new Map<string, string>();
    const cutRegisters = new Set<string>();
    let serial = 0;
    let registers = 0;
    let releases = 0;

    for (let round = 0; round <= ROUNDS; round++) {
      const p = await start();
      const client = new TestClient(p.grpcAddress);
      try {
        // ---- what the last round left
        const found = await liveRegistrations(client);
        for (const [id, trigger] of live) assert.equal(found.get(id), trigger, `round ${round}: acknowledged registration ${id} (${trigger}) came back`);
        for (const id of released) assert.ok(!found.has(id), `round ${round}: acknowledged release of ${id} stayed released`);
        for (const [id, trigger] of cutReleases) {
          if (found.has(id)) live.set(id, trigger);
          else released.add(id);
        }
        for (const [id, trigger] of found) {
          if (live.has(id)) continue;
          assert.ok(cutRegisters.has(trigger), `round ${round}: ${id} (${trigger}) is a registration someone asked for`);
          live.set(id, trigger);
        }
        cutReleases.clear();
        cutRegisters.clear();
        for (const [id, trigger] of live) {
          const res = await client.trigger({ trigger });
          assert.deepEqual(res.results.map((r) => [r.registrationId, r.result]), [[id, trigger]], `round ${round}: ${trigger} runs its handler`);
        }
        if (round === ROUNDS) {
          for (const id of live.keys()) await client.release({ registrationId: id });
          break;
        }

        // ---- load, and a kill at a random moment of it
        let killed = false;
        const worker = async (): Promise<void> => {
          while (!killed) {
            const ids = [...live.keys()];
            if (ids.length > 0 && Math.random() < 0.35) {
              const id = ids[Math.floor(Math.random() * ids.length)];
              const trigger = live.get(id) as string;
              live.delete(id);
              try {
                await client.release({ registrationId: id });
                released.add(id);
                releases += 1;
              } catch (err) {
                if (!killed) throw err;
                cutReleases.set(id, trigger);
              }
            } else {
              const trigger = `c.${++serial}`;
              try {
                const res = await client.register({ trigger, source: `export default () => ${JSON.stringify(trigger)};` });
                live.set(res.registration?.id ?? '', trigger);
                registers += 1;
              } catch (err) {
                if (!killed) throw err;
                cutRegisters.add(trigger);
              }
            }
          }
        };
        const load = Promise.all(Array.from({ length: WORKERS }, worker));
        await new Promise((r) => setTimeout(r, 300 + Math.random() * 1200));
        killed = true;
        p.child.kill('SIGKILL');
        await p.exited;
        if (process.env.CRASH_DEBUG) console.log(`round ${round}: killed; live ${live.size}, released ${released.size}`);
        await load;
        if (process.env.CRASH_DEBUG) console.log(`round ${round}: load ended`);
      } finally {
        client.close();
        if (p.child.exitCode === null && p.child.signalCode === null) {
          p.child.kill('SIGTERM');
          await p.exited;
        }
      }
    }
    assert.ok(registers > 20 && releases > 5, `the load ran (${registers} registrations and ${releases} releases acknowledged)`);

    // released everything: a restart brings nothing back
    const p = await start();
    const client = new TestClient(p.grpcAddress);
    try {
      assert.equal((await client.listInterpreters({})).interpreters.length, 0);
    } finally {
      client.close();
      p.child.kill('SIGTERM');
      await p.exited;
    }
  });
});
