/**
 * `npm run stress`: rounds of concurrent module loading against a fresh server process each, the
 * load under which isolated-vm's unpatched module bookkeeping aborted the process (see
 * scripts/patch-isolated-vm.js). Each round drives STRESS_CLIENTS loops of: shared- and
 * isolate-mode Executes with and without imports, shared-mode Executes importing 24 fresh modules
 * each (their bookkeeping dropped on the Node.js thread while other loads compile: an unpatched
 * isolated-vm 7.0.2 aborted in round 3), modules that fail to link (a missing export),
 * top-level await and `import.meta`, attached Executes into long-lived interpreters of both kinds,
 * and Register/Trigger/Release churn. Then it releases everything, checks that nothing is left,
 * sends SIGTERM and requires exit code 0. Exits 1 on the first round that fails.
 * Never part of `npm test`; CI runs it briefly.
 *
 *   STRESS_ROUNDS    rounds, each on a new server (default 6)
 *   STRESS_SECONDS   load per round (default 10)
 *   STRESS_CLIENTS   concurrent client loops (default 16)
 */
import assert from 'node:assert/strict';
import { grpc, pb, TestClient } from '../helpers/client';
import { scrapeMetrics, spawnServer } from '../helpers/process';

const ROUNDS = Number(process.env.STRESS_ROUNDS ?? 6);
const SECONDS = Number(process.env.STRESS_SECONDS ?? 10);
const CLIENTS = Number(process.env.STRESS_CLIENTS ?? 16);
const { ISOLATION_MODE_SHARED: SHARED, ISOLATION_MODE_ISOLATE: ISOLATE } = pb.IsolationMode;
const { OUTCOME_SUCCEEDED: SUCCEEDED, OUTCOME_FAILED: FAILED } = pb.Outcome;

/** Modules per load in the many-modules call. */
const MANY = 24;
const modules = { m: 'export default (x) => x + 1;', n: 'import m from "m"; export const twice = (x) => m(m(x));' };

/** Each kind of call, with what its response must say. */
const calls: { name: string; weight: number; run: (c: TestClient, ctx: RoundContext) => Promise<void> }[] = [
  {
    name: 'execute',
    weight: 3,
    run: async (c, { mode }) => {
      const res = await c.execute({ source: 'export default (a) => a + 1', args: 1, mode: mode() });
      assert.equal(res.outcome, SUCCEEDED, res.error?.message);
      assert.equal(res.result, 2);
    },
  },
  {
    name: 'execute with imports',
    weight: 3,
    run: async (c, { mode }) => {
      const res = await c.execute({ source: 'import { twice } from "n"; export default (a) => twice(a)', modules, args: 1, mode: mode() });
      assert.equal(res.outcome, SUCCEEDED, res.error?.message);
      assert.equal(res.result, 3);
    },
  },
  {
    // Many module bookkeeping entries made on a shared isolate's thread while a finished
    // interpreter's (24 at once) are dropped on the Node.js thread: the race the patch closes.
    name: 'execute with many modules',
    weight: 2,
    run: async (c) => {
      const nonce = Math.random().toString(36).slice(2);
      const many: Record<string, string> = {};
      for (let k = 0; k < MANY; k++) many[`m${k}`] = `export const v = ${k}; // ${nonce}`;
      const source = `${Object.keys(many).map((s, k) => `import { v as v${k} } from "${s}";`).join('\n')}\nexport default ${Object.keys(many).map((_, k) => `v${k}`).join(' + ')};`;
      const res = await c.execute({ source, modules: many, mode: SHARED });
      assert.equal(res.outcome, SUCCEEDED, res.error?.message);
      assert.equal(res.result, (MANY * (MANY - 1)) / 2);
    },
  },
  {
    name: 'link failure',
    weight: 1,
    run: async (c, { mode }) => {
      const res = await c.execute({ source: 'import { absent } from "m"; export default absent', modules, mode: mode() });
      assert.equal(res.outcome, FAILED);
      assert.match(res.error?.message ?? '', /absent/);
    },
  },
  {
    name: 'top-level await and import.meta',
    weight: 1,
    run: async (c, { mode }) => {
      const res = await c.execute({ source: 'await Promise.resolve(); export default typeof import.meta', mode: mode() });
      assert.equal(res.outcome, SUCCEEDED, res.error?.message);
      assert.equal(res.result, 'object');
    },
  },
  {
    name: 'attached execute',
    weight: 2,
    run: async (c, { attached }) => {
      const interpreterId = attached[Math.floor(Math.random() * attached.length)];
      const res = await c.execute({ source: 'import m from "m"; export default m(41)', modules, interpreterId });
      assert.equal(res.outcome, SUCCEEDED, res.error?.message);
      assert.equal(res.result, 42);
    },
  },
  {
    name: 'register, trigger, release',
    weight: 2,
    run: async (c, { mode, trigger }) => {
      const reg = await c.register({ trigger, source: 'import m from "m"; export default (p) => m(p)', modules, mode: mode() });
      const id = reg.registration?.id ?? '';
      const out = await c.trigger({ trigger, payload: 1 });
      const mine = out.results.find((r) => r.registrationId === id);
      // The trigger name is this loop's own, so the one result is this registration's.
      assert.ok(mine, 'the new registration ran');
      assert.equal(mine.outcome, SUCCEEDED, mine.error?.message);
      await c.release({ registrationId: id });
    },
  },
];

interface RoundContext {
  mode: () => pb.IsolationMode;
  attached: string[];
  trigger: string;
}

function pickCall(): (typeof calls)[number] {
  const total = calls.reduce((s, k) => s + k.weight, 0);
  let r = Math.random() * total;
  for (const k of calls) if ((r -= k.weight) < 0) return k;
  return calls[0];
}

const sumOf = (m: Map<string, number>, name: string): number => [...m].filter(([k]) => k === name || k.startsWith(`${name}{`)).reduce((s, [, v]) => s + v, 0);

async function round(n: number): Promise<boolean> {
  const server = await spawnServer({ ISOGEAR_SHARED_ISOLATES: '2' }, false);
  const client = new TestClient(server.grpcAddress);
  const tally = new Map<string, number>();
  const failures: string[] = [];
  let died: string | undefined;
  void server.exited.then((how) => (died = how));
  try {
    // Long-lived interpreters, one of each kind, that attached Executes load modules into.
    const attached: string[] = [];
    for (const mode of [SHARED, ISOLATE]) {
      const res = await client.execute({ source: 'gears.register("stress.keep", () => 1);', mode });
      attached.push(res.interpreterId);
    }
    const ctx: RoundContext = { mode: () => (Math.random() < 0.7 ? SHARED : ISOLATE), attached, trigger: `stress.t${n}` };
    const until = performance.now() + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: CLIENTS }, async (_, i) => {
        const own: RoundContext = { ...ctx, trigger: `${ctx.trigger}.${i}` };
        while (performance.now() < until && died === undefined) {
          const call = pickCall();
          try {
            await call.run(client, own);
            tally.set(call.name, (tally.get(call.name) ?? 0) + 1);
          } catch (err) {
            const e = err as grpc.ServiceError;
            failures.push(`${call.name}: ${e.code !== undefined ? `${grpc.status[e.code]} ` : ''}${e.message}`);
            if (died !== undefined || failures.length > 20) return;
          }
        }
      }),
    );
    if (died === undefined) {
      for (const interpreterId of attached) await client.release({ interpreterId });
      const m = await scrapeMetrics(server.metricsAddress);
      const left = { interpreters: sumOf(m, 'isogear_interpreters'), registrations: sumOf(m, 'isogear_registrations'), dedicated: m.get('isogear_isolates{kind="dedicated"}') ?? 0 };
      if (left.interpreters + left.registrations + left.dedicated > 0) failures.push(`left alive after releasing everything: ${JSON.stringify(left)}`);
    }
  } finally {
    client.close();
  }
  if (died === undefined) server.child.kill('SIGTERM');
  const how = await server.exited;
  const calls = [...tally.values()].reduce((s, v) => s + v, 0);
  const ok = how === 'code 0 signal null' && failures.length === 0;
  console.log(`round ${n + 1}/${ROUNDS}: ${calls} calls (${[...tally].map(([k, v]) => `${k} ${v}`).join(', ')}), exit ${how}${ok ? '' : ' FAILED'}`);
  if (!ok) {
    for (const f of failures.slice(0, 10)) console.log(`  ${f}`);
    const { stderr } = server.output();
    if (stderr) console.log(`  server stderr: ${stderr.slice(-2000)}`);
  }
  return ok;
}

async function main(): Promise<void> {
  console.log(`stress: ${ROUNDS} rounds × ${SECONDS} s, ${CLIENTS} clients, 2 shared isolates`);
  for (let n = 0; n < ROUNDS; n++) {
    if (!(await round(n))) {
      process.exitCode = 1;
      return;
    }
  }
  console.log(`stress: all ${ROUNDS} rounds passed`);
}

void main();
