import assert from 'node:assert/strict';
import { useTestServer } from '../helpers/fixture';
import { assertNoHostPaths, limits, MODES, modeName, releaseInterpreters, succeeded } from '../helpers/proto';
import { assertRun, assertServing, assertSandboxStack } from './harness';

/**
 * Attacks that try to leave the sandbox: constructor chains and Function constructors reached from
 * every object the sandbox hands out, stack-trace machinery that might expose host frames or
 * CallSites, and Proxy/getter traps on everything the host reads back (results, thrown values,
 * handlers, registration options).
 */

/** Reaching `process` must be a ReferenceError inside the sandbox, never the host's process. */
const NO_PROCESS = { outcome: 'OUTCOME_FAILED', name: 'ReferenceError', message: 'process is not defined' } as const;

/** Each expression tries to build a Function whose body is `return process` from another starting object. */
const CHAINS: { via: string; source: string }[] = [
  { via: 'the global object (sloppy Function this)', source: "export default Function('return this')().constructor.constructor('return process')();" },
  { via: 'gears.register', source: "export default gears.register.constructor('return process')();" },
  { via: 'the frozen gears object', source: "export default gears.constructor.constructor('return process')();" },
  { via: 'the gears.executionId getter', source: "export default Object.getOwnPropertyDescriptor(gears, 'executionId').get.constructor('return process')();" },
  { via: 'console.log', source: "export default console.log.constructor('return process')();" },
  { via: 'the frozen console object', source: "export default console.constructor.constructor('return process')();" },
  { via: 'the loader hook', source: "export default __isogear_loaded__.constructor('return process')();" },
  {
    via: 'an error thrown by a bootstrap callback (gears.register)',
    source: "let e; try { gears.register('not a trigger!', () => 1); } catch (x) { e = x; } export default e.constructor.constructor('return process')();",
  },
  {
    via: 'an error raised by the engine for a refused dynamic import()',
    source: "let e; try { await import('fs'); } catch (x) { e = x; } export default e.constructor.constructor('return process')();",
  },
  { via: 'the AsyncFunction constructor', source: "export default await (async () => {}).constructor('return process')();" },
  { via: 'the GeneratorFunction constructor', source: "export default (function* () {}).constructor('yield process')().next().value;" },
  {
    via: 'the AsyncGeneratorFunction constructor',
    source: "export default (await (async function* () {}).constructor('yield process')().next()).value;",
  },
  { via: 'indirect eval', source: "export default (0, eval)('process');" },
  { via: 'a Proxy trap the result copier calls (ownKeys target)', source: "export default new Proxy({}, { ownKeys(target) { return target.constructor.constructor('return process')(); } });" },
  { via: 'a getter the result copier calls', source: "export default { get leak() { return this.constructor.constructor('return process')(); } };" },
];

describe('security: escapes', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      for (const c of CHAINS) {
        it(`a Function built via ${c.via} sees no process: ReferenceError`, async () => {
          const t = server();
          const res = await t.client.execute({ mode, source: c.source, limits: limits(1000) });
          assertRun(res, NO_PROCESS, c.via);
          await assertServing(t, c.via);
        });
      }

      it('the handler event object and a sloppy handler `this` lead back to the sandbox global, not the host', async () => {
        const t = server();
        const setup = await t.client.execute({
          mode,
          source: `
            gears.register('esc.event', (payload, event) => event.constructor.constructor('return process')());
            gears.register('esc.this', Function('return [this === globalThis, typeof this.process, typeof this.require, Object.getPrototypeOf(this) === Object.getPrototypeOf(globalThis)]'));`,
        });
        succeeded(setup);
        const event = await t.client.trigger({ trigger: 'esc.event', payload: { x: 1 } });
        assertRun(event.results[0], NO_PROCESS, 'handler via event');
        const self = await t.client.trigger({ trigger: 'esc.this' });
        succeeded(self.results[0]);
        assert.deepEqual(self.results[0].result, [true, 'undefined', 'undefined', true]);
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('sloppy functions the bootstrap calls (handler, result getter, toJSON in console.log, Proxy trap) see caller null', async () => {
        const t = server();
        const res = await t.client.execute({
          mode,
          source: `
            const CALLER = 'arguments.callee.caller === null ? "null" : typeof arguments.callee.caller';
            const sloppy = () => Function('return ' + CALLER);
            console.log({ toJSON: sloppy() });
            gears.register('esc.caller', sloppy());
            const result = {};
            Object.defineProperty(result, 'getter', { get: sloppy(), enumerable: true });
            result.trap = new Proxy({}, {
              ownKeys: Function('return [' + CALLER + ']'),
              getOwnPropertyDescriptor: () => ({ value: 1, enumerable: true, configurable: true }),
              get: () => 1,
            });
            export default result;`,
        });
        succeeded(res);
        assert.deepEqual(res.result, { getter: 'null', trap: { null: 1 } });
        assert.deepEqual(res.logs, [{ level: 'log', message: '"null"' }]);
        const trig = await t.client.trigger({ trigger: 'esc.caller' });
        succeeded(trig.results[0]);
        assert.equal(trig.results[0].result, 'null');
        await assertServing(t);
        await releaseInterpreters(t.client, res.interpreterId);
      });

      it('Error.prepareStackTrace cannot be installed: assignment ignored, defineProperty refused, a Proxy on Error’s prototype never consulted', async () => {
        const t = server();
        const res = await t.client.execute({
          mode,
          source: `
            const out = {};
            Error.prepareStackTrace = (e, frames) => frames;
            out.afterAssign = typeof Error.prepareStackTrace;
            try { Object.defineProperty(Error, 'prepareStackTrace', { value: (e, f) => f }); out.define = 'allowed'; } catch (e) { out.define = e.name; }
            out.configurable = Object.getOwnPropertyDescriptor(Error, 'prepareStackTrace').configurable;
            let consulted = false;
            Object.setPrototypeOf(Error, new Proxy(Object.getPrototypeOf(Error), { get(t, k, r) { if (k === 'prepareStackTrace') { consulted = true; return (e, f) => f; } return Reflect.get(t, k, r); } }));
            out.stack = new Error('probe').stack;
            out.consulted = consulted;
            gears.register('esc.frames', () => { Error.prepareStackTrace = (e, f) => f.map((c) => c.getFileName()); return new Error('h').stack; });
            export default out;`,
        });
        succeeded(res);
        const r = res.result as Record<string, unknown>;
        assert.equal(r.afterAssign, 'undefined');
        assert.equal(r.define, 'TypeError');
        assert.equal(r.configurable, false);
        assert.equal(r.consulted, false);
        assert.match(String(r.stack), /^Error: probe\n\s+at main\.js:/);
        assertSandboxStack(r.stack, 'stack under a prototype Proxy');
        const trig = await t.client.trigger({ trigger: 'esc.frames' });
        succeeded(trig.results[0]);
        assert.match(String(trig.results[0].result), /^Error: h\n/, 'a string, never CallSite file names');
        assertSandboxStack(trig.results[0].result, 'handler stack');
        await assertServing(t);
        await releaseInterpreters(t.client, res.interpreterId);
      });

      it('Error.captureStackTrace (unlimited depth, bootstrap functions as the cut-off, frozen and Proxy targets) reveals no host frame', async () => {
        const t = server();
        const res = await t.client.execute({
          mode,
          source: `
            Error.stackTraceLimit = Infinity;
            const out = {};
            const viaRegister = {};
            Error.captureStackTrace(viaRegister, gears.register);
            out.viaRegister = viaRegister.stack;
            try { Error.captureStackTrace(Object.freeze({})); out.frozen = 'allowed'; } catch (e) { out.frozen = e.name + ': ' + e.message; }
            let descriptor = 'none';
            const target = new Proxy({}, { defineProperty(t, k, d) { descriptor = String(k) + ':' + typeof d.value + typeof d.get; return Reflect.defineProperty(t, k, d); } });
            try { Error.captureStackTrace(target); } catch (e) { descriptor += ' threw ' + e.name; }
            out.proxy = descriptor;
            gears.register('esc.capture', function deep(n) {
              if (n > 0) return deep(n - 1);
              const o = {};
              Error.captureStackTrace(o);
              return o.stack;
            });
            export default out;`,
        });
        succeeded(res);
        const r = res.result as Record<string, string>;
        assertSandboxStack(r.viaRegister, 'captureStackTrace cut at gears.register');
        assert.equal(r.frozen, 'TypeError: Cannot define property stack, object is not extensible');
        assert.equal(r.proxy, 'none threw TypeError', 'V8 refuses a Proxy target before any trap runs');
        const trig = await t.client.trigger({ trigger: 'esc.capture', payload: 200 });
        succeeded(trig.results[0]);
        const stack = String(trig.results[0].result);
        assert.ok(stack.split('\n').filter((l) => l.includes('at deep')).length > 200, 'every frame is there');
        assert.match(stack, /at invoke \(isogear:bootstrap:/, 'the frames end at the bootstrap');
        assertSandboxStack(stack, 'deep handler stack');
        await assertServing(t);
        await releaseInterpreters(t.client, res.interpreterId);
      });

      it('errors raised by the engine and the host (timeouts, uncaught throws at depth) carry only sandbox frames', async () => {
        const t = server();
        const deep = await t.client.execute({
          mode,
          source: 'Error.stackTraceLimit = 1e6; function f(n) { if (n === 0) throw new TypeError("deep"); return f(n - 1); } export default () => f(3000);',
        });
        assertRun(deep, { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: 'deep' });
        assertSandboxStack(deep.error?.stack, 'deep throw');
        assert.ok(!deep.error?.stack.includes('<isolated-vm boundary>'));
        const spin = await t.client.execute({ mode, source: 'export default () => { for (;;) {} };', limits: limits(300) });
        assertRun(spin, { outcome: 'OUTCOME_TIMED_OUT', name: 'TimeoutError', message: 'script execution timed out after 300 ms' });
        assertSandboxStack(spin.error?.stack, 'timeout stack');
        await assertServing(t);
      });

      it('a result that is a Proxy whose trap throws fails with that error; a lying getPrototypeOf trap yields plain data', async () => {
        const t = server();
        const throwing = await t.client.execute({
          mode,
          source: "export default new Proxy({}, { ownKeys() { throw new RangeError('trap refuses'); } });",
        });
        assertRun(throwing, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'trap refuses' });
        const lying = await t.client.execute({
          mode,
          source: "export default new Proxy(new Map([['k', 1]]), { getPrototypeOf: () => Object.prototype });",
        });
        succeeded(lying);
        assert.deepEqual(lying.result, {}, 'only own enumerable keys are copied, never Map internals');
        await assertServing(t);
      });

      it('a result getter that never returns ends OUTCOME_TIMED_OUT; one that registers handlers and then throws leaves nothing behind', async () => {
        const t = server();
        const spin = await t.client.execute({ mode, source: 'export default { get x() { for (;;) {} } };', limits: limits(300) });
        assertRun(spin, { outcome: 'OUTCOME_TIMED_OUT', name: 'TimeoutError', message: 'script execution timed out after 300 ms' });
        const sneaky = await t.client.execute({
          mode,
          source: "export default { get a() { gears.register('sneaky.t', () => 1); gears.register('sneaky.t', () => 2); return 1; }, get b() { throw new Error('after registering'); } };",
        });
        assertRun(sneaky, { outcome: 'OUTCOME_FAILED', name: 'Error', message: 'after registering' });
        assert.deepEqual(sneaky.registrations, []);
        assert.equal(t.manager.counters().registrations, 0);
        const listed = await t.client.listRegistrations({ trigger: 'sneaky.t' });
        assert.deepEqual(listed.registrations, []);
        await assertServing(t);
      });

      it('thenables as results: awaited like any promise; one resolving with itself or never ends OUTCOME_TIMED_OUT; one that throws fails', async () => {
        const t = server();
        const fine = await t.client.execute({ mode, source: 'export default { then(resolve) { resolve({ via: "then" }); } };' });
        succeeded(fine);
        assert.deepEqual(fine.result, { via: 'then' });
        for (const source of ['export default { then(resolve) { resolve(this); } };', 'export default () => ({ then() {} });']) {
          const res = await t.client.execute({ mode, source, limits: limits(300) });
          assertRun(res, { outcome: 'OUTCOME_TIMED_OUT', name: 'TimeoutError', message: /timed out after 300 ms|did not finish within 300 ms/ });
        }
        const throwing = await t.client.execute({ mode, source: 'export default { then() { throw new SyntaxError("bad then"); } };' });
        assertRun(throwing, { outcome: 'OUTCOME_FAILED', name: 'SyntaxError', message: 'bad then' });
        await assertServing(t);
      });

      it('thrown Proxies and objects with hostile getters are reported without running host code', async () => {
        const t = server();
        const cases: { source: string; name: string; message: string }[] = [
          { source: "export default () => { throw new Proxy({}, { get(t, k) { throw new Error('no ' + String(k)); } }); };", name: 'Error', message: '[unreadable message]' },
          { source: 'const r = Proxy.revocable({}, {}); r.revoke(); export default () => { throw r.proxy; };', name: 'Error', message: '[unreadable message]' },
          {
            source: "export default () => { throw { get name() { throw 1; }, get message() { return { toString() { return 'not a string'; } }; } }; };",
            name: 'Error',
            message: '[object Object]',
          },
          {
            source: 'throw new Proxy({}, { get() { throw new Error("trap"); } });',
            name: 'Error',
            message: 'a non-Error value was thrown at the top level of the module (an object or symbol that is not an Error instance)',
          },
        ];
        for (const c of cases) {
          const res = await t.client.execute({ mode, source: c.source, limits: limits(1000) });
          assertRun(res, { outcome: 'OUTCOME_FAILED', name: c.name, message: c.message }, c.source);
        }
        await assertServing(t);
      });

      it('handlers that are Proxies: the apply trap sees plain sandbox values; a revoked one fails its run only', async () => {
        const t = server();
        const setup = await t.client.execute({
          mode,
          source: `
            gears.register('prx.apply', new Proxy(() => 'target', { apply(target, self, args) { return [typeof self, args.length, Object.keys(args[1]).sort(), Object.getPrototypeOf(args[1]) === Object.prototype, target()]; } }));
            const r = Proxy.revocable(() => 'revoked', {});
            gears.register('prx.revoked', r.proxy);
            r.revoke();`,
        });
        succeeded(setup);
        assert.equal(setup.registrations.length, 2);
        const applied = await t.client.trigger({ trigger: 'prx.apply', payload: 'p' });
        succeeded(applied.results[0]);
        assert.deepEqual(applied.results[0].result, ['undefined', 2, ['executionId', 'registrationId', 'trigger'], true, 'target']);
        const revoked = await t.client.trigger({ trigger: 'prx.revoked' });
        assertRun(revoked.results[0], { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: "Cannot perform 'apply' on a proxy that has been revoked" });
        const again = await t.client.trigger({ trigger: 'prx.apply', payload: 'q' });
        succeeded(again.results[0]);
        await assertServing(t);
        assert.deepEqual(await releaseInterpreters(t.client, setup.interpreterId), setup.registrations.map((r) => r.id), 'a revoked handler is released like any other');
      });

      it('registration options that are Proxies or change between reads: the trap’s error fails the run, the description is read once', async () => {
        const t = server();
        const trapped = await t.client.execute({
          mode,
          source: "export default gears.register('opt.t', () => 1, new Proxy({}, { get() { throw new RangeError('options trap'); } }));",
        });
        assertRun(trapped, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: 'options trap' });
        assert.deepEqual(trapped.registrations, []);
        const shifting = await t.client.execute({
          mode,
          source: "let reads = 0; export default gears.register('opt.u', () => 1, { get description() { reads += 1; return reads === 1 ? 'first' : 'x'.repeat(5000); } }) && reads;",
        });
        succeeded(shifting);
        assert.equal(shifting.result, 1, 'the description was read exactly once');
        assert.equal(shifting.registrations[0].description, 'first');
        const notString = await t.client.execute({ mode, source: "gears.register('opt.v', () => 1, { description: { toString() { return 'sneaky'; } } });" });
        assertRun(notString, { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: 'gears.register: options.description must be a string' });
        const boxedTrigger = await t.client.execute({ mode, source: "gears.register(new String('opt.w'), () => 1);" });
        assertRun(boxedTrigger, { outcome: 'OUTCOME_FAILED', name: 'TypeError', message: /^gears\.register: trigger must be a string matching/ });
        await assertServing(t);
        assert.deepEqual(await releaseInterpreters(t.client, shifting.interpreterId), [shifting.registrations[0].id], 'only the one valid registration was kept');
      });

      it('import.meta and the module namespace expose nothing of the host', async () => {
        const t = server();
        const res = await t.client.execute({
          mode,
          modules: { lib: 'export const meta = import.meta;' },
          source: `
            import * as self from 'lib';
            export default {
              metaKeys: Reflect.ownKeys(import.meta).map(String),
              metaProto: Object.getPrototypeOf(import.meta) === null,
              libMetaKeys: Reflect.ownKeys(self.meta).map(String),
              nsKeys: Reflect.ownKeys(self).map(String),
            };`,
        });
        succeeded(res);
        assert.deepEqual(res.result, { metaKeys: [], metaProto: true, libMetaKeys: [], nsKeys: ['meta', 'Symbol(Symbol.toStringTag)'] });
        assertNoHostPaths(res.result, 'module metadata');
        await assertServing(t);
      });
    });
  }
});
