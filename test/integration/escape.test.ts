import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { assertNoHostPaths, limits, MODES, modeName, outcomeName, releaseInterpreters, SHARED, succeeded } from '../helpers/proto';
import type { TestServer } from '../helpers/server';

/** Runs `source` and requires it to succeed; returns the response. */
async function succeed(t: TestServer, req: Partial<pb.ExecuteRequest>): Promise<pb.ExecuteResponse> {
  const res = await t.client.execute(req);
  succeeded(res);
  return res;
}

/**
 * Collects, for every frame of the current stack, what a CallSite gives away: the type of
 * `this`, whether the function object is exposed (and whether it is the caller's own `mine`),
 * and the file name.
 */
const FRAME_PROBE = `
function probeFrames(mine) {
  const saved = Error.prepareStackTrace;
  Error.prepareStackTrace = (e, frames) => frames.map((f) => {
    const fn = f.getFunction();
    const self = f.getThis();
    return {
      this: self === undefined ? 'undefined' : self === globalThis ? 'global' : typeof self,
      fn: fn === undefined ? 'hidden' : fn === mine ? 'mine' : 'EXPOSED:' + typeof fn,
      file: String(f.getFileName()),
    };
  });
  try { return new Error().stack; } finally { Error.prepareStackTrace = saved; }
}
`;

/** With Error.prepareStackTrace inert, a probe gets V8's own text, free of host paths. */
function assertStackString(stack: unknown, what: string): void {
  assert.equal(typeof stack, 'string', `${what}: expected V8's formatted stack, got ${JSON.stringify(stack)}`);
  assert.match(stack as string, /^Error\n\s+at /, `${what}: ${String(stack)}`);
  assertNoHostPaths(stack, what);
}

describe('escape attempts', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      it('host globals are absent: require, process, setTimeout, fetch, Buffer, module, …', async () => {
        const t = server();
        const names = ['require', 'process', 'setTimeout', 'setInterval', 'setImmediate', 'queueMicrotask', 'fetch', 'Buffer', 'module', 'exports', '__dirname', 'global', 'ivm', '_ivm'];
        const res = await succeed(t, {
          mode,
          source: `export default Object.fromEntries(${JSON.stringify(names)}.map((n) => [n, typeof globalThis[n]]));`,
        });
        assert.deepEqual(res.result, Object.fromEntries(names.map((n) => [n, 'undefined'])));

        const free = await succeed(t, {
          mode,
          source: 'export default [typeof require, typeof process, typeof setTimeout, typeof fetch];',
        });
        assert.deepEqual(free.result, ['undefined', 'undefined', 'undefined', 'undefined']);
      });

      it('the only non-standard globals are gears, console and the loader hook', async () => {
        const t = server();
        const res = await succeed(t, { mode, source: 'export default Object.getOwnPropertyNames(globalThis);' });
        const names = res.result as string[];
        const standard = new Set([
          ...'AggregateError Array ArrayBuffer Atomics BigInt BigInt64Array BigUint64Array Boolean DataView Date Error EvalError FinalizationRegistry'.split(' '),
          ...'Float32Array Float64Array Function Infinity Int16Array Int32Array Int8Array Intl JSON Map Math NaN Number Object Promise Proxy RangeError'.split(' '),
          ...'ReferenceError Reflect RegExp Set SharedArrayBuffer String Symbol SyntaxError TypeError URIError Uint16Array Uint32Array Uint8Array'.split(' '),
          ...'Uint8ClampedArray WeakMap WeakRef WeakSet WebAssembly decodeURI decodeURIComponent encodeURI encodeURIComponent escape eval globalThis'.split(' '),
          ...'isFinite isNaN parseFloat parseInt undefined unescape Iterator'.split(' '),
          // ES2025 and ES2026, in V8 since Node 24
          ...'Float16Array DisposableStack AsyncDisposableStack SuppressedError'.split(' '),
          // ES2026, in V8 since Node 26 (reads the clock and time zones, as Date does)
          'Temporal',
        ]);
        const extra = names.filter((n) => !standard.has(n)).sort();
        assert.deepEqual(extra, ['__isogear_loaded__', 'console', 'gears']);
      });

      it('constructor chains reach the sandbox global, never the host', async () => {
        const t = server();
        const res = await succeed(t, {
          mode,
          source: `
            const F = ({}).constructor.constructor;
            const tryRun = (f) => { try { const v = f(); return typeof v === 'object' && v !== null ? 'object' : typeof v; } catch (e) { return e.name; } };
            const g = F('return this')();
            export default {
              globalIsSandbox: g === globalThis && g.gears === gears,
              processViaObject: tryRun(() => F('return process')()),
              processViaGlobal: tryRun(() => globalThis.constructor.constructor('return process')()),
              processViaRegister: tryRun(() => gears.register.constructor('return process')()),
              processViaConsole: tryRun(() => console.log.constructor('return process')()),
              requireViaRegister: tryRun(() => gears.register.constructor('return require')()),
              registerIsSandboxFunction: gears.register.constructor === Function && Object.getPrototypeOf(gears) === Object.prototype,
              asyncCtor: await (async () => {}).constructor('return typeof process')(),
              evalProcess: eval('typeof process'),
              importMetaKeys: Object.keys(import.meta),
            };`,
        });
        assert.deepEqual(res.result, {
          globalIsSandbox: true,
          processViaObject: 'ReferenceError',
          processViaGlobal: 'ReferenceError',
          processViaRegister: 'ReferenceError',
          processViaConsole: 'ReferenceError',
          requireViaRegister: 'ReferenceError',
          registerIsSandboxFunction: true,
          asyncCtor: 'undefined',
          evalProcess: 'undefined',
          importMetaKeys: [],
        });
      });

      it('strict bootstrap functions expose no caller: .caller throws, a sloppy handler sees caller null', async () => {
        const t = server();
        const res = await succeed(t, {
          mode,
          source: `
            const read = (f) => { try { return typeof f(); } catch (e) { return e.name; } };
            gears.register('sloppy.caller', Function('payload', 'const c = arguments.callee.caller; return c === null ? "null" : typeof c;'));
            export default {
              registerCaller: read(() => gears.register.caller),
              logCaller: read(() => console.log.caller),
              logArguments: read(() => console.log.arguments),
            };`,
        });
        assert.deepEqual(res.result, { registerCaller: 'TypeError', logCaller: 'TypeError', logArguments: 'TypeError' });
        const trig = await t.client.trigger({ trigger: 'sloppy.caller' });
        succeeded(trig.results[0]);
        assert.equal(trig.results[0].result, 'null');
        await releaseInterpreters(t.client, res.interpreterId);
      });

      it('Error.prepareStackTrace is inert: no CallSite ever reaches a script (in Execute, in handlers, inside result copying and console)', async () => {
        const t = server();
        const setup = await succeed(t, {
          mode,
          source: `${FRAME_PROBE}
            const strict = () => probeFrames(strict);
            const sloppy = Function('probe', 'return probe(arguments.callee);');
            gears.register('frames.strict', strict);
            gears.register('frames.sloppy', () => sloppy(probeFrames));
            gears.register('frames.getter', () => ({ get frames() { return probeFrames(); } }));
            let fromLog;
            console.log({ toJSON() { fromLog = probeFrames(); return 'x'; } });
            Error.prepareStackTrace = () => 'hijacked';
            export default { top: probeFrames(), inDefault: strict(), fromLog, reads: typeof Error.prepareStackTrace };`,
        });
        const r = setup.result as Record<string, unknown>;
        assert.equal(r.reads, 'undefined', 'an assigned Error.prepareStackTrace reads back as undefined');
        for (const key of ['top', 'inDefault', 'fromLog']) assertStackString(r[key], key);

        for (const trigger of ['frames.strict', 'frames.sloppy']) {
          const trig = await t.client.trigger({ trigger });
          succeeded(trig.results[0]);
          assertStackString(trig.results[0].result, trigger);
        }
        const getter = await t.client.trigger({ trigger: 'frames.getter' });
        assertStackString((getter.results[0].result as Record<string, unknown>).frames, 'handler result copying');

        // a getter on the returned object runs inside the bootstrap's copier
        const direct = await succeed(t, {
          mode,
          source: `${FRAME_PROBE} export default { get frames() { return probeFrames(); } };`,
        });
        assertStackString((direct.result as Record<string, unknown>).frames, 'getter during copy');

        const fresh = await succeed(t, { mode, source: 'export default new Error("plain").stack.split("\\n")[0];' });
        assert.equal(fresh.result, 'Error: plain', 'the server is fine afterwards');
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('Error.captureStackTrace and stack tricks reveal no host frames', async () => {
        const t = server();
        const res = await succeed(t, {
          mode,
          source: `
            Error.stackTraceLimit = Infinity;
            const holder = {};
            Error.captureStackTrace(holder);
            const inner = {};
            gears.register('capture.t', function handler() { const o = {}; Error.captureStackTrace(o); return o.stack; });
            const hidden = {};
            Error.captureStackTrace(hidden, Error.captureStackTrace);
            let fromCatch;
            try { null.f(); } catch (e) { fromCatch = e.stack; }
            export default { holder: holder.stack, hidden: hidden.stack, fromCatch, inner: (() => { Error.captureStackTrace(inner); return inner.stack; })() };`,
        });
        for (const [k, v] of Object.entries(res.result as Record<string, unknown>)) {
          assert.equal(typeof v, 'string', k);
          assertNoHostPaths(v, k);
        }
        const trig = await t.client.trigger({ trigger: 'capture.t' });
        assert.equal(typeof trig.results[0].result, 'string');
        assertNoHostPaths(trig.results[0].result, 'handler stack');
        await releaseInterpreters(t.client, res.interpreterId);
      });

      it('a hostile Error.prepareStackTrace (throws, returns non-strings) cannot break error reporting', async () => {
        const t = server();
        const throwing = await t.client.execute({
          mode,
          source: 'Error.prepareStackTrace = () => { throw new Error("nope"); }; export default () => { throw new Error("original"); };',
        });
        assert.equal(outcomeName(throwing.outcome), 'OUTCOME_FAILED');
        assert.equal(throwing.error?.message, 'original');
        assertNoHostPaths(throwing.error?.stack, 'stack');

        const weird = await t.client.execute({
          mode,
          source: 'Error.prepareStackTrace = () => ({ toString() { return "/work/secret.ts:1"; } }); throw new Error("x");',
        });
        assert.equal(outcomeName(weird.outcome), 'OUTCOME_FAILED');
        assert.equal(weird.error?.message, 'x');

        await succeed(t, { mode, source: 'export default 1;' });
      });

      it('tampering with gears and console fails or has no effect, and registration still works', async () => {
        const t = server();
        const res = await succeed(t, {
          mode,
          source: `
            const r = {};
            const attempt = (k, f) => { try { f(); r[k] = 'no error'; } catch (e) { r[k] = e.name; } };
            const original = gears.register;
            attempt('assignRegister', () => { gears.register = () => 'hacked'; });
            attempt('addProperty', () => { gears.x = 1; });
            attempt('assignInterpreterId', () => { gears.interpreterId = 'itp_other'; });
            attempt('deleteRegister', () => { delete gears.register; });
            attempt('setPrototype', () => { Object.setPrototypeOf(gears, { evil: true }); });
            attempt('deleteGears', () => { delete globalThis.gears; });
            attempt('assignGears', () => { globalThis.gears = {}; });
            attempt('defineGears', () => { Object.defineProperty(globalThis, 'gears', { value: {} }); });
            attempt('defineGearsGetter', () => { Object.defineProperty(globalThis, 'gears', { get() { return {}; } }); });
            attempt('assignConsole', () => { globalThis.console = { log() {} }; });
            attempt('assignConsoleLog', () => { console.log = () => {}; });
            attempt('deleteConsole', () => { delete globalThis.console; });
            attempt('assignHook', () => { globalThis.__isogear_loaded__ = () => {}; });
            r.frozen = Object.isFrozen(gears) && Object.isFrozen(console);
            r.unchanged = gears.register === original && gears.x === undefined && globalThis.gears === gears && gears.interpreterId.startsWith('itp_');
            r.registered = gears.register('tamper.t', (p) => 'still ' + p);
            console.log('still captured');
            export default r;`,
        });
        const r = res.result as Record<string, unknown>;
        for (const k of [
          'assignRegister',
          'addProperty',
          'assignInterpreterId',
          'deleteRegister',
          'setPrototype',
          'deleteGears',
          'assignGears',
          'defineGears',
          'defineGearsGetter',
          'assignConsole',
          'assignConsoleLog',
          'deleteConsole',
          'assignHook',
        ]) {
          assert.equal(r[k], 'TypeError', `${k} must fail: ${JSON.stringify(r)}`);
        }
        assert.equal(r.frozen, true);
        assert.equal(r.unchanged, true);
        assert.equal(r.registered, res.registrations[0]?.id);
        assert.deepEqual(res.logs, [{ level: 'log', message: 'still captured' }]);

        const trig = await t.client.trigger({ trigger: 'tamper.t', payload: 'works' });
        assert.equal(trig.results[0].result, 'still works');
        const later = await succeed(t, {
          source: 'console.log("later"); export default gears.register("tamper.u", () => 1);',
          interpreterId: res.interpreterId,
        });
        assert.deepEqual(later.logs, [{ level: 'log', message: 'later' }]);
        assert.equal(later.registrations.length, 1);
        assert.deepEqual(await releaseInterpreters(t.client, res.interpreterId), [res.registrations[0].id, later.registrations[0].id]);
      });

      it('calling the loader hook with a guessed token changes nothing', async () => {
        const t = server();
        const res = await succeed(t, {
          mode,
          source: `
            __isogear_loaded__('guess');
            __isogear_loaded__('guess', { default: () => 'hijacked' });
            __isogear_loaded__(undefined, undefined);
            export default 'mine';`,
        });
        assert.equal(res.result, 'mine');
        const again = await succeed(t, { mode, source: 'export default "next";' });
        assert.equal(again.result, 'next');
      });

      it('dynamic import() cannot load anything', async () => {
        const t = server();
        const caught = await succeed(t, {
          mode,
          source: `
            const out = [];
            for (const s of ['fs', 'node:fs', 'child_process', './main.js', 'isogear:main', 'isogear:bootstrap', 'data:text/javascript,export default 1']) {
              try { const m = await import(s); out.push(s + ': loaded ' + typeof m); } catch (e) { out.push(s + ': ' + e.name); }
            }
            export default out;`,
        });
        for (const line of caught.result as string[]) assert.doesNotMatch(line, /loaded/, line);

        const uncaught = await t.client.execute({ mode, source: 'const fs = await import("fs"); export default typeof fs.readFileSync;' });
        assert.equal(outcomeName(uncaught.outcome), 'OUTCOME_FAILED');
        assertNoHostPaths(uncaught.error, 'error');
      });

      for (const specifier of ['fs', 'node:fs', 'child_process', 'isolated-vm', 'not-a-module']) {
        it(`importing "${specifier}" statically fails with ModuleNotFoundError`, async () => {
          const t = server();
          const res = await t.client.execute({ mode, source: `import x from ${JSON.stringify(specifier)}; export default typeof x;` });
          assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED');
          assert.equal(res.error?.name, 'ModuleNotFoundError');
          assert.ok(res.error?.message.includes(specifier), res.error?.message);
          assertNoHostPaths(res.error, 'error');
        });
      }

      const UNCOPYABLE: { what: string; source: string; message: RegExp }[] = [
        { what: 'a cyclic object', source: 'const a = { b: {} }; a.b.back = a; export default a;', message: /result\.b\.back is a circular reference/ },
        { what: 'a BigInt', source: 'export default { n: 10n };', message: /result\.n is a BigInt/ },
        { what: 'a Symbol', source: 'export default { s: Symbol("x") };', message: /result\.s is a Symbol/ },
        { what: 'a function', source: 'export default { a: () => 1 };', message: /result\.a is a function/ },
        { what: 'a function as the whole result', source: 'export default () => () => 1;', message: /result is a function/ },
        { what: 'a Map', source: 'export default { m: new Map([[1, 2]]) };', message: /result\.m is a Map/ },
        { what: 'a Set', source: 'export default [new Set()];', message: /result\[0\] is a Set/ },
        { what: 'a Date', source: 'export default { when: new Date(0) };', message: /result\.when is a Date/ },
        { what: 'NaN', source: 'export default { xs: [1, NaN] };', message: /result\.xs\[1\] is NaN/ },
        { what: 'Infinity', source: 'export default -Infinity;', message: /result is -Infinity/ },
        { what: 'a class instance', source: 'class Point { constructor() { this.x = 1; } } export default { p: new Point() };', message: /result\.p is a Point/ },
        { what: 'a typed array', source: 'export default { bytes: new Uint8Array(2) };', message: /result\.bytes is a Uint8Array/ },
      ];
      for (const c of UNCOPYABLE) {
        it(`a result holding ${c.what} is OUTCOME_FAILED naming where`, async () => {
          const t = server();
          const res = await t.client.execute({ mode, source: c.source });
          assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED', JSON.stringify(res.result));
          assert.match(res.error?.message ?? '', c.message);
          assert.equal(res.result, undefined);
        });
      }

      it('an uncopyable handler result is OUTCOME_FAILED naming where, and the registration keeps working', async () => {
        const t = server();
        const setup = await succeed(t, {
          mode,
          source: 'gears.register("bad.result", (p) => (p === "fn" ? { deep: [{ f() {} }] } : { ok: p }));',
        });
        const bad = await t.client.trigger({ trigger: 'bad.result', payload: 'fn' });
        assert.equal(outcomeName(bad.results[0].outcome), 'OUTCOME_FAILED');
        assert.match(bad.results[0].error?.message ?? '', /result\.deep\[0\]\.f is a function/);
        const good = await t.client.trigger({ trigger: 'bad.result', payload: 'fine' });
        assert.deepEqual(good.results[0].result, { ok: 'fine' });
        await releaseInterpreters(t.client, setup.interpreterId);
      });
    });
  }
});

describe('escape attempts: prototype pollution stays inside its interpreter', () => {
  // one shared isolate, so shared-mode interpreters are contexts of the same isolate
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1' });

  const POLLUTE = `
    Object.prototype.x = 'polluted';
    Array.prototype.push = function () { throw new Error('push hijacked'); };
    JSON.stringify = () => '"hijacked"';
    JSON.parse = () => 'hijacked';
    Object.keys = () => [];
    Object.getPrototypeOf = () => null;
    Object.defineProperty = () => { throw new Error('defineProperty hijacked'); };
    Array.isArray = () => false;
    Map.prototype.get = () => undefined; Map.prototype.set = function () { return this; };
    Map.prototype.delete = () => false; Map.prototype.has = () => false;
    Set.prototype.has = () => true; Set.prototype.add = function () { return this; }; Set.prototype.delete = () => false;
    String.prototype.slice = () => 'hijacked'; String.prototype.split = () => [];
    Number.prototype.toString = () => 'NaN'; Number.isFinite = () => false;
    Reflect.apply = () => 'hijacked';
    RegExp.prototype.test = () => false;
    Function.prototype.toString = () => 'hijacked';
  `;

  for (const mode of MODES) {
    it(`a polluted script still returns its own result and logs, and its handlers still work (${modeName(mode)})`, async () => {
      const t = server();
      const res = await succeed(t, {
        mode,
        source: `${POLLUTE}
          console.log('kept', { a: 1 }, [1, 2], 3.5);
          gears.register('polluted.t', (p) => ({ list: [1, 2], echo: p }));
          export default { list: [1, 2, 3], nested: { ok: true, n: 1.5 }, s: 'str' };`,
      });
      assert.deepEqual(res.result, { list: [1, 2, 3], nested: { ok: true, n: 1.5 }, s: 'str' });
      assert.deepEqual(res.logs, [{ level: 'log', message: 'kept {"a":1} [1,2] 3.5' }]);
      assert.equal(res.registrations.length, 1);

      const trig = await t.client.trigger({ trigger: 'polluted.t', payload: { k: [true] } });
      succeeded(trig.results[0]);
      assert.deepEqual(trig.results[0].result, { list: [1, 2], echo: { k: [true] } });

      // the polluted interpreter is alive (it holds a registration) while others run
      for (const other of MODES) {
        const clean = await succeed(t, {
          mode: other,
          source: `export default [({}).x, typeof [].push, [].push.toString().includes('native code'), JSON.stringify({ a: 1 }), Object.keys({ b: 1 }), Array.isArray([]), 'abc'.slice(1)];`,
        });
        assert.deepEqual(clean.result, [null, 'function', true, '{"a":1}', ['b'], true, 'bc'], `pollution reached a ${modeName(other)} interpreter`);
      }
      await releaseInterpreters(t.client, res.interpreterId);
    });

    it(`a handler that pollutes affects only its own interpreter (${modeName(mode)})`, async () => {
      const t = server();
      const polluter = await succeed(t, {
        mode,
        source: `gears.register('pollute.now', () => { ${POLLUTE} return 'done'; });`,
      });
      const other = await succeed(t, { mode, source: 'gears.register("probe.other", () => [({}).x ?? null, JSON.stringify([1])]);' });
      const polluting = await t.client.trigger({ trigger: 'pollute.now' });
      assert.equal(polluting.results[0].result, 'done');
      const probe = await t.client.trigger({ trigger: 'probe.other' });
      assert.deepEqual(probe.results[0].result, [null, '[1]']);
      assert.equal(probe.results[0].interpreterId, other.interpreterId);
      await releaseInterpreters(t.client, polluter.interpreterId, other.interpreterId);
    });

    it(`index setters on Array.prototype do not swallow the script's logs or registrations (${modeName(mode)})`, async () => {
      const t = server();
      const res = await succeed(t, {
        mode,
        source: `
          for (let i = 0; i < 8; i++) {
            Object.defineProperty(Array.prototype, i, { set(v) {}, get() { return 'hijacked'; }, configurable: true });
          }
          console.log('kept');
          const id = gears.register('setter.t', () => 'handled');
          export default { id };`,
      });
      assert.deepEqual(res.logs, [{ level: 'log', message: 'kept' }], 'console output was swallowed');
      assert.equal(res.registrations.length, 1, 'gears.register returned an id but the registration was dropped');
      assert.equal((res.result as { id: string }).id, res.registrations[0]?.id);
      const trig = await t.client.trigger({ trigger: 'setter.t' });
      assert.equal(trig.results[0].result, 'handled');
      assert.deepEqual(await releaseInterpreters(t.client, res.interpreterId), [res.registrations[0].id]);
    });

    it(`replacing Promise.prototype.then does not change how the default export is awaited (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        limits: limits(1000),
        source: 'Promise.prototype.then = function () { return "hijacked"; }; export default async () => 42;',
      });
      assert.equal(outcomeName(res.outcome), 'OUTCOME_SUCCEEDED', `the run did not settle: ${JSON.stringify(res.error)}`);
      assert.equal(res.result, 42);
    });

    it(`replacing RegExp.prototype.exec cannot get an invalid trigger registered, and is a script failure, not INTERNAL (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        source: 'RegExp.prototype.exec = function () { return []; }; export default gears.register("not a valid trigger!", () => 1);',
      });
      assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED', JSON.stringify(res));
      assert.deepEqual(res.registrations, []);
      assert.equal(t.manager.counters().registrations, 0);
    });
  }

  it('a looping Error.prepareStackTrace on a top-level throw does not wedge the shared isolate', async () => {
    const t = server();
    const res = await t.client.execute(
      { mode: SHARED, limits: limits(300), source: 'Error.prepareStackTrace = () => { for (;;) {} }; throw new Error("x");' },
      { deadlineMs: 5000 },
    );
    assert.ok(
      [pb.Outcome.OUTCOME_TIMED_OUT, pb.Outcome.OUTCOME_FAILED].includes(res.outcome),
      `unexpected outcome ${outcomeName(res.outcome)}`,
    );
    // the next shared-mode script must not wait forever behind the loop
    const next = await t.client.execute({ mode: SHARED, limits: limits(1000), source: 'export default "next";' }, { deadlineMs: 5000 });
    assert.equal(next.result, 'next');
  });
});
