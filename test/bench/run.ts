/**
 * `npm run bench`: every figure beside its limit measured in the same run, on the same machine.
 * Never part of `npm test`. The server runs as its own process (as `npm start` runs it); the
 * clients are grpc-js in this process; the raw isolated-vm limits run in a third process.
 *
 *   BENCH_SECONDS       measured seconds per figure, after a warm-up (default 3)
 *   BENCH_CONCURRENCY   comma-separated calls in flight (default "1,16")
 *   BENCH_DENSITY       idle interpreters per mode for the density figures (default 2000)
 *   BENCH_CAPACITY      isolate-mode,shared-mode registrations alive together for the capacity
 *                       figure (default "5000,20000"; "0" skips it)
 *   BENCH_RESTORE       shared-mode registrations (one interpreter each) stored, then restored by a
 *                       restarted server, for the restore figure (default 2000; 0 skips it)
 *
 * Prints a table and writes bench-results/bench.json.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pb, TestClient } from '../helpers/client';
import { logLines, scrapeMetrics as scrape, spawnServer } from '../helpers/process';
import { closedLoop, type LoopFigure } from './loop';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const CONCURRENCY = (process.env.BENCH_CONCURRENCY ?? '1,16').split(',').map(Number);
const DENSITY = Number(process.env.BENCH_DENSITY ?? 2000);
const CAPACITY = (process.env.BENCH_CAPACITY ?? '5000,20000').split(',').map(Number);
const RESTORE = Number(process.env.BENCH_RESTORE ?? 2000);
const SHARED_ISOLATES = 2;
const { ISOLATION_MODE_SHARED: SHARED, ISOLATION_MODE_ISOLATE: ISOLATE } = pb.IsolationMode;

interface RawLimits {
  newIsolate: LoopFigure[];
  newContext: LoopFigure[];
  warmCall: LoopFigure[];
  /** At 1 in flight: a context alone, and with the sandbox bootstrap, in a fresh isolate and in a shared one. */
  isolateContext: LoopFigure[];
  isolateBootstrap: LoopFigure[];
  sharedContext: LoopFigure[];
  sharedBootstrap: LoopFigure[];
  rssPerIsolateKiB: number;
  rssPerContextKiB: number;
  heapPerContextKiB: number;
}

async function rawLimits(): Promise<RawLimits> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--no-node-snapshot', '--expose-gc', '--import', 'tsx', path.join(__dirname, 'raw.ts'), String(SECONDS), CONCURRENCY.join(','), String(SHARED_ISOLATES), String(DENSITY)],
    { maxBuffer: 1 << 20 },
  );
  return JSON.parse(stdout) as RawLimits;
}

function nodeProcess(): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', '1'], { stdio: 'ignore' });
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`node -e exited ${code}`))));
  });
}


interface Row {
  figure: string;
  concurrency: number;
  medianMs: number;
  p99Ms: number;
  perSecond: number;
}

/** `n` calls one at a time, `gapMs` apart; latency of the calls alone (no throughput). */
async function paced(gapMs: number, n: number, fn: () => Promise<unknown>): Promise<LoopFigure> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    await new Promise((r) => setTimeout(r, gapMs));
    const t = performance.now();
    await fn();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return { concurrency: 1, calls: n, perSecond: NaN, medianMs: times[Math.floor(n / 2)], p99Ms: times[Math.min(n - 1, Math.floor(n * 0.99))] };
}

/** The server's CPU time (all its threads) per call, in µs, over `SECONDS` of calls at the highest concurrency. */
async function cpuPerCall(metricsAddress: string, fn: () => Promise<unknown>): Promise<number> {
  const cpuSeconds = async (): Promise<number> => (await scrape(metricsAddress)).get('process_cpu_seconds_total') ?? NaN;
  const before = await cpuSeconds();
  const figure = await closedLoop(Math.max(...CONCURRENCY), SECONDS, fn, 0);
  return ((await cpuSeconds()) - before) * 1e6 / figure.calls;
}

/**
 * A helper process of the benchmark (test/bench/NAME with `args`): resolves once `ready` finds
 * what it waits for in the helper's output; `stop` ends the helper and returns all it printed.
 */
async function helper(name: string, args: string[], ready: (out: string) => string | undefined): Promise<{ ready: string; stop(): Promise<string> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, name), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const found = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const value = ready(out);
      if (value !== undefined) resolve(value);
    });
    child.on('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready`)));
  });
  return {
    ready: found,
    stop: async () => {
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGTERM');
      await exited;
      return out;
    },
  };
}

/** `n` Watch streams read by a process of their own (test/bench/watchers.ts); `stop` ends it and says how many events it read. */
async function startWatchers(address: string, n: number): Promise<{ stop(): Promise<number> }> {
  const watchers = await helper('watchers.ts', [address, String(n)], (out) => (out.includes('ready') ? 'ready' : undefined));
  return { stop: async () => Number(/events (\d+)/.exec(await watchers.stop())?.[1] ?? 0) };
}

async function main(): Promise<void> {
  console.error('measuring raw isolated-vm limits and node -e processes…');
  const raw = await rawLimits();
  const nodeE: LoopFigure[] = [];
  for (const c of CONCURRENCY) nodeE.push(await closedLoop(c, SECONDS, nodeProcess));

  const server = await spawnServer({ ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_MAX_INTERPRETERS: String(4 * DENSITY + 1000) }, false, true);
  const client = new TestClient(server.grpcAddress);
  const rows: Row[] = [];
  const cpu: { figure: string; usPerCall: number }[] = [];
  const measure = async (figure: string, fn: () => Promise<unknown>, concurrencies = CONCURRENCY): Promise<void> => {
    console.error(`measuring ${figure}…`);
    for (const c of concurrencies) rows.push({ figure, ...(await closedLoop(c, SECONDS, fn)) });
  };

  const trivial = 'export default (a) => a + 1';
  const modules = Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`m${i}`, `export default (x) => x + ${i};`]));
  const tenImports = `${Array.from({ length: 10 }, (_, i) => `import m${i} from "m${i}";`).join('\n')}\nexport default (a) => [${Array.from({ length: 10 }, (_, i) => `m${i}`).join(', ')}].reduce((s, f) => f(s), a);`;
  await measure('health Check (no-op call)', () => client.healthCheck());
  await measure('Execute, shared', () => client.execute({ source: trivial, args: 1, mode: SHARED }));
  await measure('Execute, isolate', () => client.execute({ source: trivial, args: 1, mode: ISOLATE }));
  // Calls 10 ms apart: the warm pool refills between them, so each is a pool hit (a closed loop
  // leaves no idle time, and every refill's synchronous isolate constructor lands on a request).
  // Idle gaps cost on their own here (threads and vCPUs wake up), so the no-op call is paced too.
  const n = Math.max(100, SECONDS * 60);
  console.error('measuring paced calls, 10 ms apart…');
  rows.push({ figure: 'health Check, 10 ms apart', ...(await paced(10, n, () => client.healthCheck())) });
  rows.push({ figure: 'Execute, isolate, 10 ms apart', ...(await paced(10, n, () => client.execute({ source: trivial, args: 1, mode: ISOLATE }))) });
  rows.push({ figure: 'Execute, shared, 10 ms apart', ...(await paced(10, n, () => client.execute({ source: trivial, args: 1, mode: SHARED }))) });
  await measure('Execute, 10 modules, shared', () => client.execute({ source: tenImports, modules, args: 1, mode: SHARED }));
  await measure('Execute, 10 modules, isolate', () => client.execute({ source: tenImports, modules, args: 1, mode: ISOLATE }));
  const one = await client.register({ trigger: 'bench.one', source: 'export default (p) => p', mode: SHARED });
  await measure('Trigger, 1 warm registration', () => client.trigger({ trigger: 'bench.one', payload: 1 }));
  // The same with Watch streams open (no logs), read as fast as they come by a process of their
  // own (a watcher is another program): what watching costs a Trigger. On this machine the
  // watchers' process takes CPU from the server and the load alike, so the server's own CPU per
  // Trigger is measured too.
  cpu.push({ figure: 'Trigger, 1 warm registration', usPerCall: await cpuPerCall(server.metricsAddress, () => client.trigger({ trigger: 'bench.one', payload: 1 })) });
  for (const n of [1, 16]) {
    const figure = `Trigger, 1 warm registration, ${n} watcher${n > 1 ? 's' : ''}`;
    const watchers = await startWatchers(server.grpcAddress, n);
    await measure(figure, () => client.trigger({ trigger: 'bench.one', payload: 1 }));
    cpu.push({ figure, usPerCall: await cpuPerCall(server.metricsAddress, () => client.trigger({ trigger: 'bench.one', payload: 1 })) });
    const read = await watchers.stop();
    if (read === 0) throw new Error('the watchers read no event');
  }
  const fan: string[] = [];
  for (let i = 0; i < 100; i++) fan.push((await client.register({ trigger: 'bench.fan', source: 'export default (p) => p', mode: i % 2 ? ISOLATE : SHARED })).registration?.id as string);
  await measure('Trigger, fan-out to 100', () => client.trigger({ trigger: 'bench.fan', payload: 1 }));
  for (const [name, mode] of [
    ['Register + Release, shared', SHARED],
    ['Register + Release, isolate', ISOLATE],
  ] as const) {
    await measure(name, async () => {
      const r = await client.register({ trigger: 'bench.churn', source: 'export default (p) => p', mode });
      await client.release({ registrationId: r.registration?.id });
    });
  }
  // A large module (about 200 KB of functions), with the server's code cache here, and below in a
  // second server without it: the cache's effect beside its own absence.
  const big = `${Array.from({ length: 2000 }, (_, i) => `function f${i}(x) { const y = x * ${i} + ${i % 7}; return y > ${i} ? f${(i + 1) % 2000}.name.length + y : [y, ${i}, 'v${i}'].length; }`).join('\n')}\nexport default (a) => f0(a) + f1999(a);`;
  await measure('Execute, 200 KB module, isolate', () => client.execute({ source: big, args: 1, mode: ISOLATE }), [1]);
  await client.release({ registrationId: one.registration?.id });
  for (const id of fan) await client.release({ registrationId: id });
  client.close();
  server.child.kill('SIGTERM');
  await server.exited;

  {
    // The same churn on a server that stores nothing (ISOGEAR_STORE=memory): what durability costs.
    const volatile = await spawnServer({ ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_STORE: 'memory' }, false, true);
    const c = new TestClient(volatile.grpcAddress);
    for (const [name, mode] of [
      ['Register + Release, shared, memory', SHARED],
      ['Register + Release, isolate, memory', ISOLATE],
    ] as const) {
      await measure(name, async () => {
        const r = await c.register({ trigger: 'bench.churn', source: 'export default (p) => p', mode });
        await c.release({ registrationId: r.registration?.id });
      });
    }
    c.close();
    volatile.child.kill('SIGTERM');
    await volatile.exited;
  }
  const restore = RESTORE > 0 ? await measureRestore(RESTORE) : undefined;

  {
    const uncached = await spawnServer({ ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_CODE_CACHE_BYTES: '0' }, false, true);
    const c = new TestClient(uncached.grpcAddress);
    await measure('Execute, 200 KB module, isolate, no code cache', () => c.execute({ source: big, args: 1, mode: ISOLATE }), [1]);
    c.close();
    uncached.child.kill('SIGTERM');
    await uncached.exited;
  }

  // Tracing: two fresh servers, one without tracing and one sampling every call (its spans going
  // over OTLP/gRPC to a receiver in a process of its own that decodes and counts them): what
  // tracing costs.
  const receiver = await helper('receiver.ts', [], (out) => /^http:\S+/m.exec(out)?.[0]);
  for (const [label, env] of [
    ['tracing off', {}],
    ['tracing on', { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.ready, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_TRACES_SAMPLER: 'always_on' }],
  ] as const) {
    const s = await spawnServer({ ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ...env }, false, true);
    const c = new TestClient(s.grpcAddress);
    await measure(`Execute, shared, ${label}`, () => c.execute({ source: trivial, args: 1, mode: SHARED }));
    cpu.push({ figure: `Execute, shared, ${label}`, usPerCall: await cpuPerCall(s.metricsAddress, () => c.execute({ source: trivial, args: 1, mode: SHARED })) });
    const reg = await c.register({ trigger: 'bench.traced', source: 'export default (p) => p', mode: SHARED });
    await measure(`Trigger, 1 warm registration, ${label}`, () => c.trigger({ trigger: 'bench.traced', payload: 1 }));
    cpu.push({ figure: `Trigger, 1 warm registration, ${label}`, usPerCall: await cpuPerCall(s.metricsAddress, () => c.trigger({ trigger: 'bench.traced', payload: 1 })) });
    await c.release({ registrationId: reg.registration?.id });
    c.close();
    s.child.kill('SIGTERM');
    await s.exited;
  }
  if (Number(/requests (\d+)/.exec(await receiver.stop())?.[1] ?? 0) === 0) throw new Error('the traced server exported no spans');

  // Density: marginal RSS and isolate heap per idle interpreter holding one registration, each
  // mode in a fresh server process (memory freed by an earlier phase would be reused and hide
  // the cost).
  const density: Record<string, { rssKiB: number; heapKiB: number; interpreters: number }> = {};
  for (const [name, mode] of [
    ['isolate', ISOLATE],
    ['shared', SHARED],
  ] as const) {
    console.error(`measuring density, ${name} mode…`);
    const fresh = await spawnServer({ ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_MAX_INTERPRETERS: String(DENSITY + 100) }, false, true);
    const c = new TestClient(fresh.grpcAddress);
    for (let i = 0; i < 20; i++) await c.release({ registrationId: (await c.register({ trigger: 'warm', source: 'export default (p) => p', mode })).registration?.id });
    await new Promise((r) => setTimeout(r, 1000));
    const before = await scrape(fresh.metricsAddress);
    for (let i = 0; i < DENSITY; i++) await c.register({ trigger: `density.${name}`, source: 'export default (p) => p', mode });
    await new Promise((r) => setTimeout(r, 1000));
    const after = await scrape(fresh.metricsAddress);
    const delta = (key: string): number => (after.get(key) ?? 0) - (before.get(key) ?? 0);
    density[name] = {
      interpreters: DENSITY,
      rssKiB: delta('process_resident_memory_bytes') / DENSITY / 1024,
      heapKiB: (delta('isogear_heap_used_bytes{kind="dedicated"}') + delta('isogear_heap_used_bytes{kind="shared"}')) / DENSITY / 1024,
    };
    const trig = await c.trigger({ trigger: `density.${name}`, payload: 1 });
    if (trig.results.length !== DENSITY || trig.results.some((r) => r.outcome !== pb.Outcome.OUTCOME_SUCCEEDED)) throw new Error(`a ${name}-mode registration failed to run`);
    c.close();
    fresh.child.kill('SIGTERM');
    await fresh.exited;
  }

  const capacity = CAPACITY[0] > 0 ? await measureCapacity(CAPACITY[0], CAPACITY[1] ?? 0) : undefined;

  // ---- the table
  const at = (figure: string, c: number): Row | undefined => rows.find((r) => r.figure === figure && r.concurrency === c);
  const rawAt = (figs: LoopFigure[], c: number): LoopFigure | undefined => figs.find((f) => f.concurrency === c);
  const fmt = (n: number | undefined, digits = 2): string => (n === undefined || Number.isNaN(n) ? '-' : n.toFixed(digits));
  console.log(`\n${SECONDS} s per figure after a warm-up; server with ${SHARED_ISOLATES} shared isolates; limits measured in this run\n`);
  console.log(`${'figure'.padEnd(32)}${'in flight'.padStart(10)}${'median ms'.padStart(11)}${'p99 ms'.padStart(9)}${'per s'.padStart(9)}`);
  const limitRows: [string, LoopFigure[]][] = [
    ['raw: new isolate+context+run+dispose', raw.newIsolate],
    ['raw: new context in shared isolate', raw.newContext],
    ['raw: warm function call', raw.warmCall],
    ['raw: fresh isolate, context alone', raw.isolateContext],
    ['raw: fresh isolate, context+bootstrap', raw.isolateBootstrap],
    ['raw: shared isolate, context alone', raw.sharedContext],
    ['raw: shared isolate, context+bootstrap', raw.sharedBootstrap],
    ['node -e per run (a process each)', nodeE],
  ];
  for (const [name, figs] of limitRows) for (const f of figs) console.log(`${name.padEnd(32).slice(0, 32)}${String(f.concurrency).padStart(10)}${fmt(f.medianMs).padStart(11)}${fmt(f.p99Ms).padStart(9)}${fmt(f.perSecond, 0).padStart(9)}`);
  for (const r of rows) console.log(`${r.figure.padEnd(32)}${String(r.concurrency).padStart(10)}${fmt(r.medianMs).padStart(11)}${fmt(r.p99Ms).padStart(9)}${fmt(r.perSecond, 0).padStart(9)}`);

  const hi = Math.max(...CONCURRENCY);
  const noop1 = at('health Check (no-op call)', 1);
  const noopHi = at('health Check (no-op call)', hi);
  const bootstrapMs = (alone: LoopFigure[], withIt: LoopFigure[]): number | undefined => (alone[0] && withIt[0] ? withIt[0].medianMs - alone[0].medianMs : undefined);
  const targets = [
    { target: `Execute isolate, per s at ${hi} ≥ 0.8 × raw new isolate`, value: at('Execute, isolate', hi)?.perSecond, limit: rawAt(raw.newIsolate, hi)?.perSecond, ok: (v: number, l: number) => v / l >= 0.8 },
    { target: `Execute shared, per s at ${hi} ≥ 0.8 × raw new context`, value: at('Execute, shared', hi)?.perSecond, limit: rawAt(raw.newContext, hi)?.perSecond, ok: (v: number, l: number) => v / l >= 0.8 },
    { target: `Execute shared, per s at ${hi} ≥ 0.5 × raw new context`, value: at('Execute, shared', hi)?.perSecond, limit: rawAt(raw.newContext, hi)?.perSecond, ok: (v: number, l: number) => v / l >= 0.5 },
    { target: 'Execute isolate, median at 1 ≤ no-op + 0.5 ms', value: at('Execute, isolate', 1)?.medianMs, limit: noop1?.medianMs, ok: (v: number, l: number) => v <= l + 0.5 },
    {
      target: 'Execute isolate, 10 ms apart (pool hits), median ≤ no-op 10 ms apart + 0.5 ms',
      value: at('Execute, isolate, 10 ms apart', 1)?.medianMs,
      limit: at('health Check, 10 ms apart', 1)?.medianMs,
      ok: (v: number, l: number) => v <= l + 0.5,
    },
    {
      target: 'Execute isolate, 10 ms apart, median ≤ no-op 10 ms apart + 1.0 ms',
      value: at('Execute, isolate, 10 ms apart', 1)?.medianMs,
      limit: at('health Check, 10 ms apart', 1)?.medianMs,
      ok: (v: number, l: number) => v <= l + 1.0,
    },
    {
      // median(context + bootstrap) − median(context alone), at 1 in flight, in a fresh isolate
      target: 'bootstrap per new context (fresh isolate) ≤ 0.4 ms',
      value: bootstrapMs(raw.isolateContext, raw.isolateBootstrap),
      limit: 0.4,
      ok: (v: number, l: number) => v <= l,
    },
    {
      target: 'bootstrap per new context (shared isolate) ≤ 0.4 ms',
      value: bootstrapMs(raw.sharedContext, raw.sharedBootstrap),
      limit: 0.4,
      ok: (v: number, l: number) => v <= l,
    },
    {
      target: 'Register+Release shared, stored (sqlite), median at 1 ≤ memory store + 2 ms',
      value: at('Register + Release, shared', 1)?.medianMs,
      limit: at('Register + Release, shared, memory', 1)?.medianMs,
      ok: (v: number, l: number) => v <= l + 2,
    },
    {
      target: `restore: ${RESTORE} stored interpreters back in ≤ 10 s`,
      value: restore?.seconds,
      limit: restore ? 10 : undefined,
      ok: (v: number, l: number) => v <= l,
    },
    { target: 'Trigger, median at 1 ≤ 1.5 × no-op', value: at('Trigger, 1 warm registration', 1)?.medianMs, limit: noop1?.medianMs, ok: (v: number, l: number) => v <= 1.5 * l },
    { target: `Trigger, per s at ${hi} ≥ 0.6 × no-op`, value: at('Trigger, 1 warm registration', hi)?.perSecond, limit: noopHi?.perSecond, ok: (v: number, l: number) => v / l >= 0.6 },
    {
      target: `Trigger, per s at ${hi} with 16 watchers ≥ 0.9 × without`,
      value: at('Trigger, 1 warm registration, 16 watchers', hi)?.perSecond,
      limit: at('Trigger, 1 warm registration', hi)?.perSecond,
      ok: (v: number, l: number) => v / l >= 0.9,
    },
    {
      target: `tracing on (100 %): Trigger per s at ${hi} ≥ 0.8 × off`,
      value: at('Trigger, 1 warm registration, tracing on', hi)?.perSecond,
      limit: at('Trigger, 1 warm registration, tracing off', hi)?.perSecond,
      ok: (v: number, l: number) => v / l >= 0.8,
    },
    {
      target: `tracing on (100 %): Execute shared per s at ${hi} ≥ 0.8 × off`,
      value: at('Execute, shared, tracing on', hi)?.perSecond,
      limit: at('Execute, shared, tracing off', hi)?.perSecond,
      ok: (v: number, l: number) => v / l >= 0.8,
    },
    { target: 'RSS per idle interpreter, isolate ≤ 1.25 × raw isolate', value: density.isolate.rssKiB, limit: raw.rssPerIsolateKiB, ok: (v: number, l: number) => v <= 1.25 * l },
    { target: 'RSS per idle interpreter, shared ≤ 1.5 × raw context', value: density.shared.rssKiB, limit: raw.rssPerContextKiB, ok: (v: number, l: number) => v <= 1.5 * l },
    {
      target: `capacity: ${CAPACITY[0]} isolate + ${CAPACITY[1] ?? 0} shared registrations alive, all triggered`,
      value: capacity ? capacity.succeeded : undefined,
      limit: capacity ? capacity.registrations : undefined,
      ok: (v: number, l: number) => v === l,
    },
  ].map((t) => ({ target: t.target, value: t.value, limit: t.limit, ratio: t.value !== undefined && t.limit ? t.value / t.limit : undefined, met: t.value !== undefined && t.limit !== undefined ? t.ok(t.value, t.limit) : undefined }));
  console.log(`\n${'target'.padEnd(58)}${'value'.padStart(10)}${'limit'.padStart(10)}${'ratio'.padStart(8)}  met`);
  for (const t of targets) console.log(`${t.target.padEnd(58)}${fmt(t.value).padStart(10)}${fmt(t.limit).padStart(10)}${fmt(t.ratio).padStart(8)}  ${t.met === undefined ? 'not measured' : t.met ? 'yes' : 'NO'}`);
  console.log(`\ndensity (KiB per idle interpreter with one registration, ${DENSITY} each): isolate RSS ${fmt(density.isolate.rssKiB, 0)} heap ${fmt(density.isolate.heapKiB, 0)}; shared RSS ${fmt(density.shared.rssKiB, 0)} heap ${fmt(density.shared.heapKiB, 0)}`);
  console.log(`raw: RSS per idle isolate with a context ${fmt(raw.rssPerIsolateKiB, 0)} KiB; per extra context ${fmt(raw.rssPerContextKiB, 0)} KiB (heap ${fmt(raw.heapPerContextKiB, 0)} KiB)`);
  if (capacity) {
    console.log(
      `capacity: ${capacity.registrations} registrations (${CAPACITY[0]} isolate, ${CAPACITY[1] ?? 0} shared) registered in ${fmt(capacity.registerSeconds, 1)} s, ` +
        `${capacity.succeeded} triggered successfully in ${fmt(capacity.triggerSeconds, 1)} s, RSS ${fmt(capacity.rssMiB, 0)} MiB, ${capacity.leftAfterRelease} left after releasing all`,
    );
  }
  if (restore) {
    console.log(`restore: ${restore.interpreters} stored shared-mode interpreters rebuilt in ${fmt(restore.seconds, 2)} s (${fmt(restore.interpreters / restore.seconds, 0)} per s, ISOGEAR_RESTORE_CONCURRENCY 4), all ${restore.triggered} triggered after`);
  }
  console.log(`\nserver CPU per call at ${hi} in flight (all its threads): ${cpu.map((c) => `${c.figure} ${fmt(c.usPerCall, 0)} µs`).join('; ')}`);
  mkdirSync('bench-results', { recursive: true });
  writeFileSync('bench-results/bench.json', `${JSON.stringify({ seconds: SECONDS, concurrency: CONCURRENCY, sharedIsolates: SHARED_ISOLATES, raw, nodeE, rows, cpu, density, capacity, restore, targets }, null, 2)}\n`);
}

/**
 * Capacity: `isolateN` isolate-mode and `sharedN` shared-mode registrations (one interpreter each)
 * alive together in one server, every one triggered once; then all released.
 */
async function measureCapacity(isolateN: number, sharedN: number): Promise<{ registrations: number; succeeded: number; registerSeconds: number; triggerSeconds: number; rssMiB: number; leftAfterRelease: number }> {
  console.error(`measuring capacity: ${isolateN} isolate-mode and ${sharedN} shared-mode registrations…`);
  // Shared isolates sized for their share at the placement budget (256 KiB per context, 75 % fill).
  const sharedMb = Math.max(512, Math.ceil((sharedN / SHARED_ISOLATES) * 0.25 / 0.75) + 64);
  const server = await spawnServer(
    { ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_SHARED_MEMORY_MB: String(sharedMb), ISOGEAR_MAX_MEMORY_MB: String(Math.max(512, sharedMb)), ISOGEAR_MAX_INTERPRETERS: String(isolateN + sharedN + 100) },
    false,
    true,
  );
  const client = new TestClient(server.grpcAddress);
  const ids: string[] = [];
  const t0 = performance.now();
  for (const [n, mode, trigger] of [
    [isolateN, ISOLATE, 'cap.isolate'],
    [sharedN, SHARED, 'cap.shared'],
  ] as const) {
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < n) {
          next += 1;
          const r = await client.register({ trigger, source: 'let n = 0; export default (p) => p + (++n)', mode });
          ids.push(r.registration?.id as string);
        }
      }),
    );
  }
  const registerSeconds = (performance.now() - t0) / 1000;
  const rssMiB = ((await scrape(server.metricsAddress)).get('process_resident_memory_bytes') ?? 0) / 2 ** 20;
  const t1 = performance.now();
  let succeeded = 0;
  for (const trigger of ['cap.isolate', 'cap.shared']) {
    const res = await client.trigger({ trigger, payload: 1 });
    succeeded += res.results.filter((r) => r.outcome === pb.Outcome.OUTCOME_SUCCEEDED && r.result === 2).length;
  }
  const triggerSeconds = (performance.now() - t1) / 1000;
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < ids.length) await client.release({ registrationId: ids[next++] });
    }),
  );
  const after = await scrape(server.metricsAddress);
  const leftAfterRelease = [...after].filter(([k]) => k.startsWith('isogear_interpreters{')).reduce((sum, [, v]) => sum + v, 0);
  client.close();
  server.child.kill('SIGTERM');
  await server.exited;
  return { registrations: isolateN + sharedN, succeeded, registerSeconds, triggerSeconds, rssMiB, leftAfterRelease };
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);

/**
 * Restore: `n` shared-mode registrations stored by one server, then rebuilt by a new server on the
 * same data directory; the figure is the restore's own time (its log line), and every handler is
 * triggered after.
 */
async function measureRestore(n: number): Promise<{ interpreters: number; seconds: number; triggered: number }> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-bench-'));
  try {
    const env = { ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES), ISOGEAR_DATA_DIR: dataDir, ISOGEAR_MAX_INTERPRETERS: String(n + 100) };
    let p = await spawnServer(env, false, true);
    let c = new TestClient(p.grpcAddress);
    console.error(`restore: storing ${n} registrations…`);
    for (let i = 0; i < n; i += 16) {
      await Promise.all(Array.from({ length: Math.min(16, n - i) }, (_, k) => c.register({ trigger: 'bench.restore', source: `let n = ${i + k}; export default () => n;`, mode: SHARED })));
    }
    c.close();
    p.child.kill('SIGTERM');
    await p.exited;
    p = await spawnServer(env, true, true);
    const line = logLines(p.output().stdout).find((l) => l.msg === 'restore: stored interpreters are back') as { ms: number; restored: number } | undefined;
    c = new TestClient(p.grpcAddress);
    const runs = (await c.trigger({ trigger: 'bench.restore' })).results.filter((r) => r.outcome === pb.Outcome.OUTCOME_SUCCEEDED).length;
    c.close(); // the data directory goes with its registrations
    p.child.kill('SIGTERM');
    await p.exited;
    return { interpreters: line?.restored ?? 0, seconds: (line?.ms ?? NaN) / 1000, triggered: runs };
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}
