/**
 * `npm run soak`: mixed load against a real server process for a set time, twice, with a full
 * release after each round. Samples the server's own metrics (RSS, Node heap, isolate heaps,
 * live isolates and interpreters) over time, prints them, writes bench-results/soak.json, and
 * exits 1 unless memory after the last round's release is back on the plateau of the earlier
 * rounds (within 10 %) and nothing is left alive.
 * Never part of `npm test`.
 *
 *   SOAK_SECONDS   length of each load round (default 60)
 *   SOAK_CLIENTS   concurrent client loops (default 8)
 *   SOAK_LIVE      registrations kept alive during load (default 200)
 *   SOAK_ROUNDS    load rounds, each followed by a full release (default 3)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { pb, TestClient } from '../helpers/client';
import { scrapeMetrics as scrape, spawnServer } from '../helpers/process';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 60);
const CLIENTS = Number(process.env.SOAK_CLIENTS ?? 8);
const LIVE = Number(process.env.SOAK_LIVE ?? 200);
const ROUNDS = Math.max(2, Number(process.env.SOAK_ROUNDS ?? 3));
const SAMPLE_MS = Math.max(1000, (SECONDS * 1000) / 15);
const MiB = 2 ** 20;
const { ISOLATION_MODE_SHARED: SHARED, ISOLATION_MODE_ISOLATE: ISOLATE } = pb.IsolationMode;

interface Sample {
  phase: string;
  t: number;
  rssMiB: number;
  nodeHeapMiB: number;
  isolateHeapMiB: number;
  dedicatedIsolates: number;
  interpreters: number;
  registrations: number;
}


const sum = (m: Map<string, number>, name: string): number => [...m].filter(([k]) => k === name || k.startsWith(`${name}{`)).reduce((s, [, v]) => s + v, 0);

async function sample(address: string, phase: string, t0: number): Promise<Sample> {
  const m = await scrape(address);
  return {
    phase,
    t: Math.round((performance.now() - t0) / 1000),
    rssMiB: sum(m, 'process_resident_memory_bytes') / MiB,
    nodeHeapMiB: sum(m, 'nodejs_heap_size_used_bytes') / MiB,
    isolateHeapMiB: sum(m, 'isogear_heap_used_bytes') / MiB,
    dedicatedIsolates: m.get('isogear_isolates{kind="dedicated"}') ?? 0,
    interpreters: sum(m, 'isogear_interpreters'),
    registrations: sum(m, 'isogear_registrations'),
  };
}

const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)];

/** One client loop: a weighted mix of every RPC, including failures, timeouts and memory kills. */
async function loop(client: TestClient, until: number, live: string[], tally: Map<string, number>): Promise<void> {
  const count = (k: string): void => void tally.set(k, (tally.get(k) ?? 0) + 1);
  while (performance.now() < until) {
    const r = Math.random();
    const mode = pick([SHARED, ISOLATE]);
    try {
      if (r < 0.3) {
        await client.execute({ source: 'import m from "m"; export default (a) => m(a)', modules: { m: 'export default (a) => ({ n: a.n * 2, s: "x".repeat(100) })' }, args: { n: 21 }, mode });
        count('execute');
      } else if (r < 0.45) {
        const k = 1 + Math.floor(Math.random() * 3);
        const res = await client.execute({ source: `let state = 0; for (let i = 0; i < ${k}; i++) gears.register("soak.t", (p) => ({ p, state: ++state }));`, mode });
        for (const reg of res.registrations) live.push(reg.id);
        count('execute+register');
      } else if (r < 0.55) {
        const res = await client.register({ trigger: 'soak.t', source: 'export default (p) => p', mode });
        if (res.registration) live.push(res.registration.id);
        count('register');
      } else if (r < 0.8) {
        if (live.length > 0) await client.trigger({ trigger: 'soak.t', payload: { at: Date.now() }, limits: { timeoutMs: 2000, memoryLimitMb: 0 } });
        count('trigger');
      } else if (r < 0.9) {
        if (live.length > 0) await client.release({ registrationId: live.splice(Math.floor(Math.random() * live.length), 1)[0] }).catch(() => undefined);
        count('release');
      } else if (r < 0.95) {
        await client.execute({ source: 'throw new TypeError("soak failure")', mode });
        count('failure');
      } else if (r < 0.98) {
        await client.execute({ source: 'for (;;) {}', mode, limits: { timeoutMs: 50, memoryLimitMb: 0 } });
        count('timeout');
      } else {
        await client.execute({ source: 'const a = []; for (;;) a.push(new Array(1e5).fill(1));', mode: ISOLATE, limits: { timeoutMs: 5000, memoryLimitMb: 16 } });
        count('memory kill');
      }
      while (live.length > LIVE) await client.release({ registrationId: live.shift() as string }).catch(() => undefined);
    } catch (err) {
      count(`error ${(err as { code?: number }).code ?? '?'}`);
    }
  }
}

async function main(): Promise<void> {
  // As the container image runs it (deploy/Dockerfile explains MALLOC_ARENA_MAX).
  const server = await spawnServer({ MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2', ISOGEAR_SHARED_ISOLATES: '2', ISOGEAR_MAX_INTERPRETERS: '20000' }, false);
  const client = new TestClient(server.grpcAddress);
  const t0 = performance.now();
  const samples: Sample[] = [await sample(server.metricsAddress, 'start', t0)];
  const tally = new Map<string, number>();
  const afterRelease: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const live: string[] = [];
    const until = performance.now() + SECONDS * 1000;
    const sampler = setInterval(() => void sample(server.metricsAddress, `load ${round}`, t0).then((s) => samples.push(s)), SAMPLE_MS);
    await Promise.all(Array.from({ length: CLIENTS }, () => loop(client, until, live, tally)));
    clearInterval(sampler);
    for (const id of live) await client.release({ registrationId: id }).catch(() => undefined);
    // Everything this round made is released: let V8 and the allocator settle, then sample.
    await new Promise((r) => setTimeout(r, 5000));
    const s = await sample(server.metricsAddress, `released ${round}`, t0);
    samples.push(s);
    afterRelease.push(s.rssMiB);
  }
  client.close();
  server.child.kill('SIGTERM');
  const exit = await server.exited;

  console.log(`\nsoak: ${CLIENTS} clients, ${ROUNDS} rounds of ${SECONDS} s, up to ${LIVE} live registrations\n`);
  console.log(['phase', 't s', 'RSS MiB', 'Node heap', 'isolate heap', 'dedicated', 'interpreters', 'registrations'].map((h, i) => (i === 0 ? h.padEnd(12) : h.padStart(13))).join(''));
  for (const s of samples) {
    console.log(
      [s.phase.padEnd(12), s.t, s.rssMiB.toFixed(0), s.nodeHeapMiB.toFixed(1), s.isolateHeapMiB.toFixed(1), s.dedicatedIsolates, s.interpreters, s.registrations]
        .map((v, i) => (i === 0 ? String(v) : String(v).padStart(13)))
        .join(''),
    );
  }
  console.log(`\noperations: ${[...tally].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  const leftover = samples[samples.length - 1];
  const last = afterRelease[afterRelease.length - 1];
  const plateau = last <= Math.max(...afterRelease.slice(0, -1)) * 1.1;
  const clean = leftover.interpreters === 0 && leftover.dedicatedIsolates === 0 && leftover.registrations === 0;
  console.log(`RSS after each release (MiB): ${afterRelease.map((v) => v.toFixed(0)).join(', ')} -> ${plateau ? 'plateau' : 'STILL GROWING'}`);
  console.log(`after release: ${leftover.interpreters} interpreters, ${leftover.dedicatedIsolates} dedicated isolates, ${leftover.registrations} registrations; server ${exit}`);
  mkdirSync('bench-results', { recursive: true });
  writeFileSync('bench-results/soak.json', `${JSON.stringify({ seconds: SECONDS, rounds: ROUNDS, clients: CLIENTS, live: LIVE, operations: Object.fromEntries(tally), samples, plateau, clean }, null, 2)}\n`);
  if (!plateau || !clean || exit !== 'code 0 signal null') process.exit(1);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
