import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, MODES, modeName, releaseInterpreters, runsInFlight, SHARED, succeeded } from '../helpers/proto';
import type { TestServer } from '../helpers/server';

const { INTERPRETER_STATE_READY, INTERPRETER_STATE_DISPOSED } = pb.InterpreterState;

/**
 * The first interpreter changes its globals and built-ins and stays alive through a registration
 * that reports what it sees.
 */
const POLLUTER = `
  globalThis.x = 1;
  Object.prototype.polluted = 'yes';
  Array.prototype.map = function () { return 'hijacked'; };
  gears.register('iso.keep', () => [globalThis.x, ({}).polluted, [1].map((v) => v)]);
  export default [globalThis.x, ({}).polluted, [1].map((v) => v)];
`;

/** What a second interpreter sees of those changes. */
const OBSERVER = `
  export default () => ({
    x: typeof globalThis.x,
    xInGlobal: 'x' in globalThis,
    polluted: ({}).polluted === undefined,
    pollutedIn: 'polluted' in {},
    protoKeys: Object.getOwnPropertyNames(Object.prototype).includes('polluted'),
    map: [1, 2].map((v) => v * 2),
  });
`;

const CLEAN = { x: 'undefined', xInGlobal: false, polluted: true, pollutedIn: false, protoKeys: false, map: [2, 4] };

/** Checks that a change in one interpreter never shows in another one created after it. */
async function assertGlobalsIsolated(t: TestServer, firstMode: pb.IsolationMode, secondMode: pb.IsolationMode): Promise<void> {
  const first = await t.client.execute({ mode: firstMode, source: POLLUTER });
  succeeded(first);
  assert.deepEqual(first.result, [1, 'yes', 'hijacked'], 'the change is visible where it was made');
  assert.equal(first.interpreter?.state, INTERPRETER_STATE_READY, 'the registration keeps the first interpreter alive');

  const second = await t.client.execute({ mode: secondMode, source: OBSERVER });
  succeeded(second);
  assert.notEqual(second.interpreterId, first.interpreterId);
  assert.deepEqual(second.result, CLEAN, `a ${modeName(secondMode)} interpreter saw another interpreter's changes`);

  const kept = await t.client.trigger({ trigger: 'iso.keep' });
  assert.deepEqual(kept.results[0].result, [1, 'yes', 'hijacked'], 'the first interpreter keeps its own changes');

  const released = await t.client.release({ interpreterId: first.interpreterId });
  assert.equal(released.interpreter?.state, INTERPRETER_STATE_DISPOSED);
}

/** A script that busy-loops for `ms` and returns the Date.now() window it ran in. */
const spinWindow = (ms: number): string => `
  export default () => { const start = Date.now(); while (Date.now() - start < ${ms}) {} return { start, end: Date.now() }; };
`;

describe('Isolation between interpreters', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    it(`globals and prototype changes of one interpreter are invisible to another (${modeName(mode)})`, async () => {
      const t = server();
      await assertGlobalsIsolated(t, mode, mode);
    });

    it(`many concurrent Executes each get their own implementation of module "lib" (${modeName(mode)})`, async () => {
      const t = server();
      const n = 16;
      const runs = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          t.client.execute({
            mode,
            args: i,
            modules: {
              lib: `export default ${i}; export const tag = 'impl-${i}'; export function twice(v) { return v * 2 + ${i}; }`,
              helper: `import base from 'lib'; export const viaHelper = base;`,
            },
            source: `
              import base, { tag, twice } from 'lib';
              import { viaHelper } from 'helper';
              export default (i) => ({ i, base, tag, twice: twice(10), viaHelper });
            `,
          }),
        ),
      );
      runs.forEach((res, i) => {
        succeeded(res);
        assert.deepEqual(res.result, { i, base: i, tag: `impl-${i}`, twice: 20 + i, viaHelper: i });
        assert.equal(res.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      });
      assert.equal(new Set(runs.map((r) => r.interpreterId)).size, n);
    });

    it(`concurrent attached Executes importing the same modules into one interpreter all link and share them (${modeName(mode)})`, async () => {
      const t = server();
      const keep = await t.client.execute({ mode, source: 'gears.register("iso.link", () => 1);' });
      succeeded(keep);
      const interpreterId = keep.interpreterId;
      // Each round imports a module source this interpreter has not linked yet, from 16 loads at once.
      for (let round = 0; round < 5; round++) {
        const modules = {
          shared: `let n = 0; export const next = () => ++n; export const round = ${round};`,
          mid: `import { next } from 'shared'; export const viaMid = () => next(); // round ${round}`,
        };
        const runs = await Promise.all(
          Array.from({ length: 16 }, () =>
            t.client.execute({ interpreterId, modules, source: "import { next, round } from 'shared'; import { viaMid } from 'mid'; export default [round, next(), viaMid()];" }),
          ),
        );
        for (const res of runs) {
          succeeded(res);
          assert.equal((res.result as number[])[0], round);
        }
        const counts = runs.flatMap((r) => (r.result as number[]).slice(1)).sort((a, b) => a - b);
        assert.deepEqual(counts, Array.from({ length: 32 }, (_, i) => i + 1), 'one instance of "shared" per source, shared by every load');
      }
      await releaseInterpreters(t.client, interpreterId);
    });

    it(`module state is per interpreter (${modeName(mode)})`, async () => {
      const t = server();
      const modules = { counter: 'let n = 0; export function next() { n += 1; return n; }' };
      const source = `
        import { next } from 'counter';
        gears.register('iso.count', () => next());
        export default next();
      `;
      const [a, b] = await Promise.all([t.client.execute({ mode, modules, source }), t.client.execute({ mode, modules, source })]);
      succeeded(a);
      succeeded(b);
      assert.equal(a.result, 1);
      assert.equal(b.result, 1, 'the second interpreter starts from its own module instance');
      assert.equal(a.registrations.length, 1);
      assert.equal(b.registrations.length, 1);

      for (const expected of [2, 3, 4]) {
        const fired = await t.client.trigger({ trigger: 'iso.count' });
        assert.equal(fired.results.length, 2);
        assert.deepEqual(
          fired.results.map((r) => r.result),
          [expected, expected],
          'each interpreter counts its own calls',
        );
      }
      const c = await t.client.execute({ mode, modules, source: "import { next } from 'counter'; export default next();" });
      succeeded(c);
      assert.equal(c.result, 1, 'a new interpreter gets a fresh instance');
      await releaseInterpreters(t.client, a.interpreterId, b.interpreterId);
    });
  }

  it('globals set in an isolate-mode interpreter are invisible to a shared-mode one, and the other way round', async () => {
    const t = server();
    await assertGlobalsIsolated(t, ISOLATE, SHARED);
    await assertGlobalsIsolated(t, SHARED, ISOLATE);
  });

  it('two isolate-mode runs execute in parallel', async () => {
    const t = server();
    const [a, b] = await Promise.all([
      t.client.execute({ mode: ISOLATE, source: spinWindow(400) }),
      t.client.execute({ mode: ISOLATE, source: spinWindow(400) }),
    ]);
    succeeded(a);
    succeeded(b);
    const wa = a.result as { start: number; end: number };
    const wb = b.result as { start: number; end: number };
    assert.ok(wa.end - wa.start >= 400 && wb.end - wb.start >= 400);
    assert.ok(
      wa.start < wb.end && wb.start < wa.end,
      `the runs did not overlap: [${wa.start}, ${wa.end}] and [${wb.start}, ${wb.end}]`,
    );
  });

  for (const mode of MODES) {
    it(`the health check answers SERVING while a script spins (${modeName(mode)})`, async () => {
      const t = server();
      let executeDone = false;
      const spinning = t.client
        .execute({ mode, limits: limits(5000), source: spinWindow(1500) })
        .finally(() => {
          executeDone = true;
        });
      await runsInFlight(t);
      const health = await t.client.healthCheck('', { deadlineMs: 1000 });
      assert.equal(health, 'SERVING');
      assert.equal(executeDone, false, 'the health check answered before the spinning script finished');
      succeeded(await spinning);
    });
  }
});

describe('Isolation between interpreters on one shared isolate', () => {
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1' });

  it('a second interpreter on the same shared isolate does not see the first one’s globals or prototype changes', async () => {
    const t = server();
    assert.equal(t.manager.counters().sharedIsolates, 1);
    await assertGlobalsIsolated(t, SHARED, SHARED);
    assert.equal(t.manager.counters().sharedIsolates, 1, 'both interpreters lived on the one shared isolate');
  });

  it('concurrent Executes on the same shared isolate each get their own module "lib"', async () => {
    const t = server();
    const n = 16;
    const runs = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        t.client.execute({
          mode: SHARED,
          modules: { lib: `let calls = 0; export default function () { calls += 1; return ['impl-${i}', calls]; }` },
          source: "import lib from 'lib'; gears.register('iso.lib', () => lib()); export default lib();",
        }),
      ),
    );
    runs.forEach((res, i) => {
      succeeded(res);
      assert.deepEqual(res.result, [`impl-${i}`, 1]);
    });
    const fired = await t.client.trigger({ trigger: 'iso.lib' });
    assert.equal(fired.results.length, n);
    const byInterpreter = new Map(runs.map((r, i) => [r.interpreterId, i]));
    for (const r of fired.results) {
      succeeded(r);
      assert.deepEqual(r.result, [`impl-${byInterpreter.get(r.interpreterId)}`, 2], 'each handler calls its own module instance');
    }
    await releaseInterpreters(t.client, ...runs.map((r) => r.interpreterId));
  });
});
