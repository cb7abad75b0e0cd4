/**
 * The engine's own limits, measured in a process of their own (spawned by `npm run bench`):
 * raw isolated-vm with nothing of isogear around it. Prints one JSON object on stdout.
 * One figure is isogear's own: its sandbox bootstrap per new context (SandboxMaker.make, the
 * server's code path) against the context alone, in a fresh isolate and in a shared one.
 *
 *   argv[2]  seconds per figure
 *   argv[3]  comma-separated concurrencies (e.g. "1,16")
 *   argv[4]  shared isolates to spread new contexts over (the server's ISOGEAR_SHARED_ISOLATES)
 *   argv[5]  isolates and contexts to hold for the density figures
 */
import ivm from 'isolated-vm';
import { IsolateHost } from '../../src/core/IsolateHost';
import { SandboxMaker } from '../../src/core/SandboxMaker';
import { CodeCache } from '../../src/sandbox/CodeCache';
import { closedLoop, type LoopFigure } from './loop';

const seconds = Number(process.argv[2] ?? 2);
const concurrencies = (process.argv[3] ?? '1,16').split(',').map(Number);
const sharedCount = Number(process.argv[4] ?? 2);
const densityCount = Number(process.argv[5] ?? 1000);

async function newIsolateRun(): Promise<void> {
  const isolate = new ivm.Isolate({ memoryLimit: 64 });
  const context = await isolate.createContext();
  await context.eval('1 + 1', { timeout: 1000 });
  context.release();
  isolate.dispose();
}

async function main(): Promise<void> {
  const out: Record<string, LoopFigure[] | number> = {};
  out.newIsolate = [];
  for (const c of concurrencies) out.newIsolate.push(await closedLoop(c, seconds, newIsolateRun));

  const shared = Array.from({ length: sharedCount }, () => new ivm.Isolate({ memoryLimit: 128 }));
  let next = 0;
  out.newContext = [];
  for (const c of concurrencies) {
    out.newContext.push(
      await closedLoop(c, seconds, async () => {
        const isolate = shared[next++ % shared.length];
        const context = await isolate.createContext();
        await context.eval('1 + 1', { timeout: 1000 });
        context.release();
      }),
    );
  }

  // The bootstrap per new context: the context alone, then the context with isogear's bootstrap
  // (the server's limits and code path), each at 1 in flight; the difference is the bootstrap.
  const maker = new SandboxMaker({ maxLogBytes: 64 * 1024, maxValueBytes: 1024 * 1024, maxRegistrationsPerInterpreter: 10_000 }, new CodeCache(32 * 1024 * 1024));
  const noDeath = (): void => undefined;
  out.isolateContext = [
    await closedLoop(1, seconds, async () => {
      const isolate = new ivm.Isolate({ memoryLimit: 64 });
      (await isolate.createContext()).release();
      isolate.dispose();
    }),
  ];
  out.isolateBootstrap = [
    await closedLoop(1, seconds, async () => {
      const host = IsolateHost.create('dedicated', 64, noDeath);
      (await maker.make(host, 'itp_bench', 'b')).release();
      host.isolate.dispose();
    }),
  ];
  const sharedHosts = Array.from({ length: sharedCount }, () => IsolateHost.create('shared', 128, noDeath));
  out.sharedContext = [
    await closedLoop(1, seconds, async () => {
      (await sharedHosts[next++ % sharedHosts.length].isolate.createContext()).release();
    }),
  ];
  out.sharedBootstrap = [
    await closedLoop(1, seconds, async () => {
      (await maker.make(sharedHosts[next++ % sharedHosts.length], 'itp_bench', 'b')).release();
    }),
  ];
  for (const h of sharedHosts) h.isolate.dispose();

  const warmIsolate = new ivm.Isolate({ memoryLimit: 64 });
  const warmContext = await warmIsolate.createContext();
  const fn = (await warmContext.eval('(function (p) { return p; })', { reference: true })) as ivm.Reference<(p: number) => number>;
  out.warmCall = [];
  for (const c of concurrencies) out.warmCall.push(await closedLoop(c, seconds, () => fn.apply(undefined, [1], { timeout: 1000, result: { copy: true } })));

  // Density: RSS per idle isolate holding one context, and per extra context in one isolate.
  const settle = async (): Promise<number> => {
    global.gc?.();
    await new Promise((r) => setTimeout(r, 300));
    return process.memoryUsage().rss;
  };
  const before = await settle();
  const isolates: { isolate: ivm.Isolate; context: ivm.Context }[] = [];
  for (let i = 0; i < densityCount; i++) {
    const isolate = new ivm.Isolate({ memoryLimit: 64 });
    const context = await isolate.createContext();
    await context.eval('globalThis.handler = (p) => p;');
    isolates.push({ isolate, context });
  }
  out.rssPerIsolateKiB = (await settle() - before) / densityCount / 1024;
  for (const { isolate } of isolates) isolate.dispose();
  const host = new ivm.Isolate({ memoryLimit: 1024 });
  const beforeContexts = await settle();
  const contexts: ivm.Context[] = [];
  for (let i = 0; i < densityCount; i++) {
    const context = await host.createContext();
    await context.eval('globalThis.handler = (p) => p;');
    contexts.push(context);
  }
  out.rssPerContextKiB = (await settle() - beforeContexts) / densityCount / 1024;
  out.heapPerContextKiB = (host.getHeapStatisticsSync().used_heap_size / densityCount) / 1024;
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
