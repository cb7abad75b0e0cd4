import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { scratchDataDir } from '../helpers/process';
import { pb, TestClient } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, limits, MODES, modeName, releaseInterpreters, SHARED, stateName, succeeded } from '../helpers/proto';
import { assertRun, assertServing, WASM_ADD, WASM_IMPORTS_MEMORY, WASM_INFINITE_LOOP, wasmBytes, wasmWithMemory } from './harness';

/**
 * Attacks on the server's resources: the stack, the heap, the thread (blocking waits, WebAssembly
 * loops, endless microtasks), code that would run outside any run (engine-posted tasks), and the
 * console. Each must end the attacker's run with a precise outcome while the server keeps serving.
 */

const TIMEOUT_MS = 300;
const timedOut = (ms = TIMEOUT_MS) =>
  ({ outcome: 'OUTCOME_TIMED_OUT', name: 'TimeoutError', message: new RegExp(`^(script execution timed out after|script did not finish within) ${ms} ms$`) }) as const;
const STACK_OVERFLOW = { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'Maximum call stack size exceeded' } as const;
const NO_WASM_MEMORY = 'WebAssembly memories live outside the heap that memory_limit_mb bounds, so isogear does not offer them';

function logBytes(logs: pb.LogEntry[]): number {
  return logs.reduce((n, e) => n + Buffer.byteLength(e.message, 'utf8'), 0);
}

describe('security: resource exhaustion', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      it('unbounded recursion, uncaught, at top level, in the default export and in a handler: OUTCOME_FAILED RangeError', async () => {
        const t = server();
        for (const source of ['const f = () => f(); f();', 'const f = () => f(); export default () => f();', 'async function f() { await f(); } export default () => f();']) {
          assertRun(await t.client.execute({ mode, source }), STACK_OVERFLOW, source);
        }
        const setup = await t.client.execute({ mode, source: "const f = (n) => f(n + 1); gears.register('deep.t', () => f(0)); gears.register('deep.ok', () => 'ok');" });
        succeeded(setup);
        const trig = await t.client.trigger({ trigger: 'deep.t' });
        assertRun(trig.results[0], STACK_OVERFLOW, 'handler');
        const ok = await t.client.trigger({ trigger: 'deep.ok' });
        succeeded(ok.results[0]);
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('recursion caught inside the script is just a RangeError it handled; recursing again inside every catch runs out the timeout', async () => {
        const t = server();
        const caught = await t.client.execute({
          mode,
          source: 'let depth = 0; const f = () => { depth++; f(); }; let err; try { f(); } catch (e) { err = [e.name, e.message]; } export default [err, depth > 1000];',
        });
        succeeded(caught);
        assert.deepEqual(caught.result, [['RangeError', 'Maximum call stack size exceeded'], true]);
        const exponential = await t.client.execute({ mode, source: 'function f() { try { f(); } catch (e) { f(); } } export default () => f();', limits: limits(TIMEOUT_MS) });
        assertRun(exponential, timedOut());
        await assertServing(t);
      });

      it('recursion inside the bootstrap’s own work (copying a result, formatting a log argument) is contained', async () => {
        const t = server();
        const getter = await t.client.execute({ mode, source: 'const f = () => f(); export default { get x() { return f(); } };' });
        assertRun(getter, STACK_OVERFLOW, 'result getter');
        const logged = await t.client.execute({ mode, source: "const o = { toJSON() { return o.toJSON(); } }; console.log('x', o); export default 'logged';" });
        succeeded(logged);
        assert.equal(logged.result, 'logged');
        assert.deepEqual(logged.logs, [{ level: 'log', message: 'x [object Object]' }]);
        await assertServing(t);
      });

      it('hoarding ArrayBuffers fails at the isolate’s limit with a catchable RangeError, not a dead server', async () => {
        const t = server();
        const caught = await t.client.execute({
          mode,
          limits: limits(10_000, 16),
          source: 'const keep = []; let err; try { for (;;) keep.push(new ArrayBuffer(4 << 20)); } catch (e) { err = [e.name, e.message]; } export default [err, keep.length > 0];',
        });
        succeeded(caught);
        assert.deepEqual(caught.result, [['RangeError', 'Array buffer allocation failed'], true]);
        const uncaught = await t.client.execute({ mode, limits: limits(10_000, 16), source: 'const keep = []; for (;;) keep.push(new SharedArrayBuffer(4 << 20));' });
        assertRun(uncaught, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'Array buffer allocation failed' });
        const huge = await t.client.execute({ mode, source: 'export default new ArrayBuffer(2 ** 32).byteLength;' });
        assertRun(huge, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'Array buffer allocation failed' });
        await assertServing(t);
      });

      it('a string built by doubling hits V8’s length limit: OUTCOME_FAILED RangeError', async () => {
        const t = server();
        const res = await t.client.execute({ mode, source: "let s = 'x'; for (;;) s += s;" });
        assertRun(res, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'Invalid string length' });
        await assertServing(t);
      });

      it('endless loops and a catastrophically backtracking regular expression end OUTCOME_TIMED_OUT, in Execute and in a handler; the interpreter keeps serving', async () => {
        const t = server();
        const spinners = {
          'a for loop': 'for (;;) {}',
          'a while loop with work': 'let n = 0; while (true) n = (n + 1) % 7;',
          'a loop in a microtask': 'await Promise.resolve(); for (;;) {}',
          'a regular expression backtracking over 40 characters': "/^(a+)+$/.test('a'.repeat(40) + 'b');",
          'a regular expression with nested alternatives': "/^(a|a|ab)*c$/.test('a'.repeat(64));",
        };
        for (const [what, source] of Object.entries(spinners)) assertRun(await t.client.execute({ mode, limits: limits(TIMEOUT_MS), source }), timedOut(), what);
        const setup = await t.client.execute({
          mode,
          source: "gears.register('spin.regex', (s) => /^(a+)+$/.test(s)); gears.register('spin.loop', () => { for (;;) {} }); gears.register('spin.ok', () => 'ok');",
        });
        succeeded(setup);
        const regex = await t.client.trigger({ trigger: 'spin.regex', payload: `${'a'.repeat(40)}b`, limits: limits(TIMEOUT_MS) });
        assertRun(regex.results[0], timedOut(), 'handler regex');
        const loop = await t.client.trigger({ trigger: 'spin.loop', limits: limits(TIMEOUT_MS) });
        assertRun(loop.results[0], timedOut(), 'handler loop');
        const fine = await t.client.trigger({ trigger: 'spin.regex', payload: 'aaa' });
        assert.equal(fine.results[0].result, true, 'the same handler answers a harmless input');
        const ok = await t.client.trigger({ trigger: 'spin.ok' });
        assert.equal(ok.results[0].result, 'ok', 'the interpreter keeps serving');
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('a result with a toJSON (spinning, throwing, or returning a BigInt) is refused without running it', async () => {
        const t = server();
        const TOJSON = { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: 'result.toJSON is a function, which JSON cannot represent' } as const;
        for (const body of ['for (;;) {}', "throw new TypeError('no JSON for you');", 'return 10n;']) {
          assertRun(await t.client.execute({ mode, limits: limits(TIMEOUT_MS), source: `export default { toJSON() { ${body} } };` }), TOJSON, body);
        }
        const setup = await t.client.execute({
          mode,
          source: "let calls = 0; gears.register('tojson.t', () => ({ toJSON() { calls += 1; for (;;) {} } })); gears.register('tojson.calls', () => calls);",
        });
        succeeded(setup);
        const refused = await t.client.trigger({ trigger: 'tojson.t', limits: limits(TIMEOUT_MS) });
        assertRun(refused.results[0], TOJSON, 'handler');
        const calls = await t.client.trigger({ trigger: 'tojson.calls' });
        assert.equal(calls.results[0].result, 0, 'the toJSON never ran');
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('Atomics.wait on a SharedArrayBuffer nobody notifies ends OUTCOME_TIMED_OUT; the interpreter keeps serving', async () => {
        const t = server();
        const blocked = await t.client.execute({ mode, limits: limits(TIMEOUT_MS), source: 'Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);' });
        assertRun(blocked, timedOut());
        const setup = await t.client.execute({
          mode,
          source: "const ia = new Int32Array(new SharedArrayBuffer(4)); gears.register('wait.t', () => Atomics.wait(ia, 0, 0)); gears.register('wait.short', () => Atomics.wait(ia, 0, 0, 5));",
        });
        succeeded(setup);
        const trig = await t.client.trigger({ trigger: 'wait.t', limits: limits(TIMEOUT_MS) });
        assertRun(trig.results[0], timedOut());
        const short = await t.client.trigger({ trigger: 'wait.short' });
        succeeded(short.results[0]);
        assert.equal(short.results[0].result, 'timed-out', 'a bounded wait is fine');
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('Atomics.waitAsync is absent: with a timeout it used to abort the whole server process', async () => {
        const t = server();
        const res = await t.client.execute({ mode, source: 'const ia = new Int32Array(new SharedArrayBuffer(4)); Atomics.waitAsync(ia, 0, 0, 10);' });
        assertRun(res, { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: 'Atomics.waitAsync is not a function' });
        const probe = await t.client.execute({ mode, source: "export default ['waitAsync' in Atomics, typeof Atomics.wait];" });
        succeeded(probe);
        assert.deepEqual(probe.result, [false, 'function']);
        await assertServing(t);
      });

      it('a WebAssembly infinite loop ends OUTCOME_TIMED_OUT, in Execute and in a handler; WebAssembly otherwise works, synchronously and asynchronously', async () => {
        const t = server();
        const loop = await t.client.execute({
          mode,
          limits: limits(TIMEOUT_MS),
          source: `const { f } = new WebAssembly.Instance(new WebAssembly.Module(${wasmBytes(WASM_INFINITE_LOOP)})).exports; export default () => f();`,
        });
        assertRun(loop, timedOut());
        const setup = await t.client.execute({
          mode,
          source: `
            const { instance } = await WebAssembly.instantiate(${wasmBytes(WASM_INFINITE_LOOP)});
            const add = (await WebAssembly.instantiate(await WebAssembly.compile(${wasmBytes(WASM_ADD)}))).exports.add;
            gears.register('wasm.loop', () => instance.exports.f());
            gears.register('wasm.add', ([a, b]) => add(a, b));
            export default add(40, 2);`,
        });
        succeeded(setup);
        assert.equal(setup.result, 42);
        const trig = await t.client.trigger({ trigger: 'wasm.loop', limits: limits(TIMEOUT_MS) });
        assertRun(trig.results[0], timedOut());
        const add = await t.client.trigger({ trigger: 'wasm.add', payload: [2, 3] });
        succeeded(add.results[0]);
        assert.equal(add.results[0].result, 5);
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('WebAssembly memories are refused with a clear error (they bypass memory_limit_mb: a 16 MB isolate committed 1 GiB)', async () => {
        const t = server();
        const ctor = await t.client.execute({ mode, limits: limits(5000, 16), source: 'const m = new WebAssembly.Memory({ initial: 16384 }); new Uint8Array(m.buffer).fill(1);' });
        assertRun(ctor, { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: `WebAssembly.Memory is not available: ${NO_WASM_MEMORY}` });
        const refused = `WebAssembly.Module(): the module defines or imports a memory; ${NO_WASM_MEMORY}`;
        for (const bytes of [wasmWithMemory(1), WASM_IMPORTS_MEMORY]) {
          const sync = await t.client.execute({ mode, source: `new WebAssembly.Module(${wasmBytes(bytes)});` });
          assertRun(sync, { outcome: 'OUTCOME_FAILED', name: 'CompileError', message: refused });
          const async = await t.client.execute({ mode, source: `await WebAssembly.instantiate(${wasmBytes(bytes)}, { m: {} });` });
          assertRun(async, { outcome: 'OUTCOME_FAILED', name: 'CompileError', message: refused });
        }
        const streaming = await t.client.execute({ mode, source: 'export default [typeof WebAssembly.compileStreaming, typeof WebAssembly.instantiateStreaming];' });
        succeeded(streaming);
        assert.deepEqual(streaming.result, ['undefined', 'undefined']);
        await assertServing(t);
      });

      it('code scheduled to run after the run ends (WebAssembly.compile continuations, FinalizationRegistry callbacks) never runs unguarded', async () => {
        const t = server();
        const neighbour = await t.client.execute({ mode, source: "gears.register('later.neighbour', () => 'alive');" });
        succeeded(neighbour);
        const setup = await t.client.execute({
          mode,
          source: `
            globalThis.cleanups = 0;
            const registry = new FinalizationRegistry(() => { globalThis.cleanups += 1; for (;;) {} });
            gears.register('later.wasm', () => { WebAssembly.compile(${wasmBytes(WASM_ADD)}).then(() => { for (;;) {} }); return 'returned'; });
            gears.register('later.gc', () => {
              for (let i = 0; i < 2000; i++) registry.register({ payload: new Array(64) }, i);
              const churn = [];
              for (let i = 0; i < 200000; i++) churn.push({ x: new Array(16) });
              return churn.length;
            });
            gears.register('later.count', () => globalThis.cleanups);`,
        });
        succeeded(setup);
        // the continuation now runs inside the handler's own run, under its timeout
        const wasm = await t.client.trigger({ trigger: 'later.wasm', limits: limits(TIMEOUT_MS) });
        assertRun(wasm.results[0], timedOut());
        for (let i = 0; i < 3; i++) {
          const gc = await t.client.trigger({ trigger: 'later.gc', limits: limits(5000) });
          succeeded(gc.results[0]);
        }
        const count = await t.client.trigger({ trigger: 'later.count' });
        succeeded(count.results[0]);
        assert.equal(count.results[0].result, 0, 'a cleanup callback ran');
        const alive = await t.client.trigger({ trigger: 'later.neighbour', limits: limits(2000) });
        succeeded(alive.results[0]);
        assert.equal(alive.results[0].result, 'alive');
        assert.equal(t.manager.counters().isolatesDisposed.shared, 0, 'no shared isolate was wedged and disposed');
        await assertServing(t);
        await releaseInterpreters(t.client, neighbour.interpreterId, setup.interpreterId);
      });

      it('endless microtask chains: a handler that starts one ends OUTCOME_TIMED_OUT; one left behind by a finished Execute is cut off at its timeout', async () => {
        const t = server();
        const setup = await t.client.execute({
          mode,
          source: "gears.register('micro.t', () => { const f = () => { Promise.resolve().then(f); }; f(); return 'returned'; }); gears.register('micro.ok', () => 'ok');",
        });
        succeeded(setup);
        const trig = await t.client.trigger({ trigger: 'micro.t', limits: limits(TIMEOUT_MS) });
        assertRun(trig.results[0], timedOut());
        const ok = await t.client.trigger({ trigger: 'micro.ok' });
        succeeded(ok.results[0]);
        // the result is settled before the chain is stopped at the timeout: the run succeeded, the
        // leftover chain is cut off and does not come back in the interpreter's next run
        const started = await t.client.execute({
          mode,
          limits: limits(TIMEOUT_MS),
          source: "let spins = 0; const f = () => { spins++; Promise.resolve().then(f); }; f(); gears.register('micro.after', () => [spins > 1, 'after']); export default 'done';",
        });
        succeeded(started);
        assert.equal(started.result, 'done');
        const after = await t.client.trigger({ trigger: 'micro.after', limits: limits(TIMEOUT_MS) });
        succeeded(after.results[0]);
        assert.deepEqual(after.results[0].result, [true, 'after']);
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId, started.interpreterId);
      });
    });
  }

  it('isolate mode: heap bombs (arrays, flat strings) end OUTCOME_MEMORY_EXCEEDED; only that interpreter goes FAILED', async () => {
    const t = server();
    const bystander = await t.client.execute({ mode: ISOLATE, source: "gears.register('bomb.bystander', () => 'alive');" });
    succeeded(bystander);
    const bombs = [
      'const hoard = []; for (;;) hoard.push(new Array(10000).fill(Math.random()));',
      "const keep = []; for (let i = 0;; i++) keep.push(('x'.repeat(1 << 20) + i).slice(1));",
      'const a = []; for (;;) a.push({});',
    ];
    for (const source of bombs) {
      const res = await t.client.execute({ mode: ISOLATE, limits: limits(15_000, 16), source });
      assertRun(res, { outcome: 'OUTCOME_MEMORY_EXCEEDED', name: 'MemoryLimitError', message: /^the isolate exceeded its memory limit of 16 MB and was disposed; interpreter itp_\w+ is FAILED$/ }, source);
      assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_FAILED');
    }
    const trig = await t.client.trigger({ trigger: 'bomb.bystander' });
    succeeded(trig.results[0]);
    assert.equal(t.manager.counters().dedicatedIsolates, 1, 'only the bystander’s isolate is left');
    await assertServing(t);
    await releaseInterpreters(t.client, bystander.interpreterId);
  });

  /**
   * Growing a Map or a dictionary-mode object past the heap limit (`const m = new Map(); for (let
   * i = 0;; i++) m.set(i, {i});` with memory_limit_mb 16 or 64) is a *catastrophic* OOM on Node 24
   * (V8 13; so it was with isolated-vm 5.0.4 on Node 20), not a memory kill: the isolate thread
   * calls onCatastrophicError and then sleeps forever. process.exit() would wait for that thread
   * for good (the process neither served nor exited), so the handler logs at fatal and aborts: the
   * process ends at once and its supervisor restarts it. This is the one script that takes the
   * server down with it. On Node 26 (V8 14) the same growth (Maps, Sets, dictionary objects) is an
   * ordinary memory kill.
   */
  it('Map growth past the limit never hangs the process: a catastrophic OOM aborts it at once (V8 13, Node 24), or it is an ordinary memory kill (V8 14, Node 26)', async function () {
    this.timeout(40_000);
    const child = spawn(process.execPath, ['--no-node-snapshot', '--import', 'tsx', path.join(__dirname, '../../src/main.ts')], {
      env: { ...process.env, ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0', ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0', ISOGEAR_SHARED_ISOLATES: '1', ISOGEAR_DATA_DIR: scratchDataDir(), ISOGEAR_LOG_LEVEL: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(`code ${code} signal ${signal}`)));
    let client: TestClient | undefined;
    try {
      const address = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const line = out.split('\n').find((l) => l.includes('"isogear started"'));
          if (line) resolve(String((JSON.parse(line) as { grpcAddress: string }).grpcAddress));
        });
        child.on('exit', () => reject(new Error(`exited before starting: ${out}`)));
        setTimeout(() => reject(new Error(`did not start within 15 s: ${out}`)), 15_000);
      });
      client = new TestClient(address);
      const c = client;
      const call = c.execute({ mode: ISOLATE, limits: limits(10_000, 16), source: 'const m = new Map(); for (let i = 0;; i++) m.set(i, { i });' }).catch(() => undefined);
      // a call the dying process never answered settles nothing here: the exit decides
      const answered = call.then((res) => (res ? { res } : new Promise<never>(() => undefined)));
      const outcome = await Promise.race([exited, answered, new Promise<string>((resolve) => setTimeout(() => resolve('still running after 10 s'), 10_000))]);
      assert.notEqual(outcome, 'still running after 10 s', 'the process hung after a catastrophic OOM');
      if (typeof outcome === 'object') {
        // V8 stopped the growth as it stops any other: the isolate is disposed, the server serves on
        assertRun(outcome.res, { outcome: 'OUTCOME_MEMORY_EXCEEDED', name: 'MemoryLimitError', message: /^the isolate exceeded its memory limit of 16 MB and was disposed; interpreter itp_\w+ is FAILED$/ });
        assert.equal(await c.healthCheck(), 'SERVING');
        succeeded(await c.execute({ mode: ISOLATE, source: 'export default 1' }));
      } else {
        assert.ok(['code null signal SIGABRT', 'code 134 signal null'].includes(String(outcome)), `aborted, not ${String(outcome)}`);
      }
      await call;
    } finally {
      client?.close();
      child.kill('SIGKILL');
      await exited;
    }
  });
});

describe('security: a memory bomb in shared mode', () => {
  // one small shared isolate, so the attacker and its neighbour share it
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1', ISOGEAR_SHARED_MEMORY_MB: '32' });

  it('kills its shared isolate (OUTCOME_MEMORY_EXCEEDED): neighbours on it go FAILED as DESIGN says, isolate-mode ones live, new shared work gets a fresh isolate', async () => {
    const t = server();
    const sharedNeighbour = await t.client.execute({ mode: SHARED, source: "gears.register('fate.t', () => 'shared neighbour');" });
    const isolateNeighbour = await t.client.execute({ mode: ISOLATE, source: "gears.register('fate.t', () => 'isolate neighbour');" });
    succeeded(sharedNeighbour);
    succeeded(isolateNeighbour);

    const bomb = await t.client.execute({ mode: SHARED, limits: limits(15_000), source: "const keep = []; for (let i = 0;; i++) keep.push(('x'.repeat(1 << 20) + i).slice(1));" });
    assertRun(bomb, { outcome: 'OUTCOME_MEMORY_EXCEEDED', name: 'MemoryLimitError', message: /^the isolate exceeded its memory limit of 32 MB and was disposed; interpreter itp_\w+ is FAILED$/ });

    const trig = await t.client.trigger({ trigger: 'fate.t' });
    const byInterpreter = new Map(trig.results.map((r) => [r.interpreterId, r]));
    const shared = byInterpreter.get(sharedNeighbour.interpreterId);
    assert.ok(shared);
    assertRun(shared, { outcome: 'OUTCOME_FAILED', name: 'InterpreterFailedError', message: /is FAILED \(its isolate exceeded its memory limit\); release this registration$/ });
    const isolated = byInterpreter.get(isolateNeighbour.interpreterId);
    assert.ok(isolated);
    succeeded(isolated);
    assert.equal(isolated.result, 'isolate neighbour');

    const c = t.manager.counters();
    assert.equal(c.isolatesDisposed.shared, 1);
    assert.equal(c.sharedIsolates, 1, 'a fresh shared isolate took the slot');
    const listed = await t.client.listRegistrations({ interpreterId: sharedNeighbour.interpreterId });
    assert.deepEqual(
      listed.registrations.map((r) => r.broken),
      [true],
    );
    await releaseInterpreters(t.client, sharedNeighbour.interpreterId, isolateNeighbour.interpreterId);
    await assertServing(t);
  });
});

describe('security: console floods', () => {
  const LIMIT = 4096;
  const server = useTestServer({ ISOGEAR_MAX_LOG_BYTES: String(LIMIT) });

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      it('a million console.log calls: a prefix in order, logs_truncated, within ISOGEAR_MAX_LOG_BYTES', async () => {
        const t = server();
        const res = await t.client.execute({ mode, limits: limits(10_000), source: "for (let i = 0; i < 1e6; i++) console.log('line', i); export default 'done';" });
        succeeded(res);
        assert.equal(res.result, 'done');
        assert.equal(res.logsTruncated, true);
        assert.ok(logBytes(res.logs) + res.logs.length <= LIMIT, `${logBytes(res.logs)} bytes in ${res.logs.length} entries`);
        res.logs.slice(0, -1).forEach((l, i) => assert.equal(l.message, `line ${i}`));
        await assertServing(t);
      });

      it('a flood of empty messages is bounded too (it used to return 200 000 entries untruncated)', async () => {
        const t = server();
        const res = await t.client.execute({ mode, limits: limits(10_000), source: "for (let i = 0; i < 200000; i++) console.error(''); export default 'done';" });
        succeeded(res);
        assert.equal(res.logsTruncated, true);
        assert.equal(res.logs.length, LIMIT, 'each entry costs one byte more than its message');
        assert.ok(res.logs.every((l) => l.level === 'error' && l.message === ''));
        await assertServing(t);
      });

      it('one 16 MiB message, multi-byte characters and unprintable arguments: cut at the limit, never a split character, never a failure', async () => {
        const t = server();
        const huge = await t.client.execute({ mode, source: "console.warn('w'.repeat(16 << 20)); console.log('after'); export default 1;" });
        succeeded(huge);
        assert.equal(huge.logsTruncated, true);
        assert.deepEqual(
          huge.logs.map((l) => [l.level, l.message.length]),
          [['warn', LIMIT - 1]],
        );
        const wide = await t.client.execute({ mode, source: "console.log('😀'.repeat(5000)); export default 1;" });
        succeeded(wide);
        assert.equal(wide.logsTruncated, true);
        assert.match(wide.logs[0].message, /^(😀)+$/u);
        assert.ok(Buffer.byteLength(wide.logs[0].message) <= LIMIT - 1);
        const odd = await t.client.execute({
          mode,
          source: "console.log(Object.create(null), { toString() { throw 1; } }, Symbol('s'), 10n, function named() {}, undefined, new RangeError('r')); export default 1;",
        });
        succeeded(odd);
        assert.equal(odd.logs.length, 1);
        assert.match(odd.logs[0].message, /^\{\} \{\} Symbol\(s\) 10n \[Function named\] undefined RangeError: r\n\s+at main\.js/);
        await assertServing(t);
      });

      it('a handler run has its own bounded budget; the interpreter’s next run starts fresh', async () => {
        const t = server();
        const setup = await t.client.execute({ mode, source: "gears.register('flood.t', (n) => { for (let i = 0; i < n; i++) console.info('x'.repeat(100)); return n; });" });
        succeeded(setup);
        const flood = await t.client.trigger({ trigger: 'flood.t', payload: 100000 });
        succeeded(flood.results[0]);
        assert.equal(flood.results[0].logsTruncated, true);
        assert.ok(logBytes(flood.results[0].logs) + flood.results[0].logs.length <= LIMIT);
        const quiet = await t.client.trigger({ trigger: 'flood.t', payload: 2 });
        assert.equal(quiet.results[0].logsTruncated, false);
        assert.equal(quiet.results[0].logs.length, 2);
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });
    });
  }
});
