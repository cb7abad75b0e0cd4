import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, MODES, modeName, releaseInterpreters, SHARED, succeeded } from '../helpers/proto';
import type { TestServer } from '../helpers/server';
import { assertServing, hostBuiltins } from './harness';

/**
 * Prototype pollution and tampering with `gears`/`console` in one interpreter must stay in that
 * interpreter: never visible in another one (same shared isolate, other shared isolate, dedicated
 * isolate, either direction), never in the host process (the server runs inside this test
 * process, so its built-ins are checked directly).
 */

/** Replaces or extends every built-in a neighbour might rely on. */
const POLLUTE = `
  globalThis.leaked = 'global';
  Object.prototype.polluted = 'object';
  Object.defineProperty(Object.prototype, 'sneaky', { get() { return 'getter'; }, configurable: true });
  Array.prototype.map = function () { return 'hijacked map'; };
  Array.prototype.push = function () { throw new Error('hijacked push'); };
  Array.prototype[Symbol.iterator] = function* () { yield 'hijacked iterator'; };
  JSON.stringify = () => '"hijacked stringify"';
  JSON.parse = () => 'hijacked parse';
  Promise.prototype.then = function () { return 'hijacked then'; };
  Promise.resolve = () => 'hijacked resolve';
  Function.prototype.call = function () { return 'hijacked call'; };
  Function.prototype.toString = () => 'hijacked toString';
  String.prototype.slice = () => 'hijacked slice';
  Math.random = () => 4;
  Reflect.apply = () => 'hijacked apply';
  Object.keys = () => ['hijacked'];
  Error.captureStackTrace = () => 'hijacked capture';
  Object.freeze(Array.prototype);
`;

/** What a handler run adds later (Array.prototype is frozen by then). */
const POLLUTE_AGAIN = `
  Object.prototype.polluted = 'again';
  globalThis.leaked = 'again';
  JSON.stringify = () => '"hijacked again"';
  Promise.prototype.then = function () { return 'hijacked again'; };
  String.prototype.slice = () => 'hijacked again';
`;

/** What a script sees of the built-ins POLLUTE changes; CLEAN is the untouched answer. */
const VIEW = `(() => ({
  leaked: typeof globalThis.leaked,
  polluted: ({}).polluted === undefined && !('polluted' in {}),
  sneaky: ({}).sneaky === undefined,
  map: [1, 2].map((v) => v * 2),
  push: (() => { const a = []; a.push(1); return a.length; })(),
  spread: [...[1, 2]],
  stringify: JSON.stringify({ a: 1 }),
  parse: JSON.parse('[1]'),
  then: typeof Promise.resolve(1).then(() => 1),
  call: ((x) => x).call(null, 'call ok'),
  toString: (function f() {}).toString(),
  slice: 'abc'.slice(1),
  random: Math.random() < 1,
  apply: Reflect.apply((x) => x, null, ['apply ok']),
  keys: Object.keys({ k: 1 }),
  arrayFrozen: Object.isFrozen(Array.prototype),
}))()`;

const CLEAN = {
  leaked: 'undefined',
  polluted: true,
  sneaky: true,
  map: [2, 4],
  push: 1,
  spread: [1, 2],
  stringify: '{"a":1}',
  parse: [1],
  then: 'object',
  call: 'call ok',
  toString: 'function f() {}',
  slice: 'bc',
  random: true,
  apply: 'apply ok',
  keys: ['k'],
  arrayFrozen: false,
};

/**
 * A neighbour registered before the attack, an attacker that pollutes at load time and again in
 * a handler, then a neighbour created after it: both neighbours must see clean built-ins.
 */
async function assertPollutionContained(t: TestServer, attacker: pb.IsolationMode, observer: pb.IsolationMode): Promise<void> {
  const host = hostBuiltins();
  const before = await t.client.execute({ mode: observer, source: `gears.register('watch.before', () => ${VIEW});` });
  succeeded(before);

  const attack = await t.client.execute({
    mode: attacker,
    source: `${POLLUTE}
      console.log('still logged', { a: [1] });
      gears.register('pollute.again', () => { ${POLLUTE_AGAIN} return 'polluted again'; });
      export default { polluted: ({}).polluted, map: [1].map((v) => v) };`,
  });
  succeeded(attack);
  assert.deepEqual(attack.result, { polluted: 'object', map: 'hijacked map' }, 'the pollution is visible where it was made');
  assert.deepEqual(attack.logs, [{ level: 'log', message: 'still logged {"a":[1]}' }], 'the bootstrap’s captured built-ins still work');
  assert.equal(attack.registrations.length, 1);
  const again = await t.client.trigger({ trigger: 'pollute.again' });
  succeeded(again.results[0]);
  assert.equal(again.results[0].result, 'polluted again');

  const after = await t.client.execute({ mode: observer, source: `export default ${VIEW};` });
  succeeded(after);
  assert.deepEqual(after.result, CLEAN, `a new ${modeName(observer)} interpreter saw a ${modeName(attacker)} interpreter's pollution`);
  const watched = await t.client.trigger({ trigger: 'watch.before' });
  succeeded(watched.results[0]);
  assert.deepEqual(watched.results[0].result, CLEAN, `an existing ${modeName(observer)} interpreter saw the pollution`);

  assert.deepEqual(hostBuiltins(), host, 'the host process’s built-ins changed');
  assert.equal((({}) as Record<string, unknown>).polluted, undefined);

  await t.client.release({ interpreterId: attack.interpreterId });
  await t.client.release({ interpreterId: before.interpreterId });
}

/** Every way of changing gears and console that a frozen, non-writable global must refuse. */
const TAMPER = `
  const refused = {};
  const attempt = (what, f) => { try { f(); refused[what] = 'allowed'; } catch (e) { refused[what] = e.name; } };
  attempt('assign register', () => { gears.register = () => 'fake'; });
  attempt('define register', () => Object.defineProperty(gears, 'register', { value: () => 'fake' }));
  attempt('assign interpreterId', () => { gears.interpreterId = 'itp_other'; });
  attempt('redefine executionId', () => Object.defineProperty(gears, 'executionId', { get: () => 'exe_other' }));
  attempt('Object.assign', () => Object.assign(gears, { unregister() {} }));
  attempt('setPrototypeOf gears', () => Object.setPrototypeOf(gears, { evil: true }));
  attempt('assign global gears', () => { globalThis.gears = { register: () => 'fake' }; });
  attempt('define global console', () => Object.defineProperty(globalThis, 'console', { value: { log() {} } }));
  attempt('assign console.log', () => { console.log = () => {}; });
  attempt('define console.error', () => Object.defineProperty(console, 'error', { value: () => {} }));
  attempt('delete console.warn', () => { delete console.warn; });
  attempt('delete global gears', () => { delete globalThis.gears; });
  // Not refused, but only this interpreter's own function objects and built-ins change:
  gears.register.marker = 'mine';
  Object.setPrototypeOf(console.log, null);
  Function.prototype.apply = () => 'hijacked';
  Reflect.set(Object.prototype, 'register', () => 'inherited fake');
`;

describe('security: prototype pollution across interpreters', () => {
  // one shared isolate: every shared-mode interpreter is a context of the same isolate
  const server = useTestServer({ ISOGEAR_SHARED_ISOLATES: '1' });

  const PAIRS: [pb.IsolationMode, pb.IsolationMode][] = [
    [SHARED, SHARED],
    [ISOLATE, ISOLATE],
    [SHARED, ISOLATE],
    [ISOLATE, SHARED],
  ];
  for (const [attacker, observer] of PAIRS) {
    it(`Object/Array/JSON/Promise/Function/String/Reflect pollution in a ${modeName(attacker)} interpreter is invisible to ${modeName(observer)} ones and to the host`, async () => {
      const t = server();
      await assertPollutionContained(t, attacker, observer);
      assert.equal(t.manager.counters().sharedIsolates, 1);
      await assertServing(t);
    });
  }

  for (const mode of MODES) {
    it(`__proto__ and constructor.prototype in args and payloads pollute nothing (${modeName(mode)})`, async () => {
      const t = server();
      const hostile = JSON.parse('{"__proto__": {"polluted": "yes"}, "constructor": {"prototype": {"polluted": "yes"}}, "a": 1}') as Record<string, unknown>;
      const res = await t.client.execute({
        mode,
        args: hostile,
        source: `
          gears.register('payload.t', (p) => [Object.keys(p).sort(), ({}).polluted === undefined, Object.getPrototypeOf(p) === Object.prototype]);
          export default (a) => [Object.keys(a).sort(), ({}).polluted === undefined, Object.getPrototypeOf(a) === Object.prototype];`,
      });
      succeeded(res);
      // the client's own Struct encoding drops an own "__proto__" key; "constructor" arrives as data
      assert.deepEqual(res.result, [['a', 'constructor'], true, true]);
      const trig = await t.client.trigger({ trigger: 'payload.t', payload: hostile });
      succeeded(trig.results[0]);
      assert.deepEqual(trig.results[0].result, [['a', 'constructor'], true, true]);
      assert.equal((({}) as Record<string, unknown>).polluted, undefined, 'the host’s Object.prototype is clean');
      await assertServing(t);
      await releaseInterpreters(t.client, res.interpreterId);
    });

    it(`tampering with gears and console is refused, and neighbours on the same isolate and in the other mode keep intact ones (${modeName(mode)})`, async () => {
      const t = server();
      const host = hostBuiltins();
      const neighbours = await Promise.all(
        MODES.map((m) =>
          t.client.execute({
            mode: m,
            source: `gears.register('tamper.watch', () => { console.log('neighbour log'); return [Object.isFrozen(gears), Object.isFrozen(console), gears.register.marker === undefined, Object.getPrototypeOf(console.log) === Function.prototype, typeof gears.unregister, gears.interpreterId]; });`,
          }),
        ),
      );
      neighbours.forEach(succeeded);

      const attack = await t.client.execute({
        mode,
        source: `${TAMPER}
          const id = gears.register('tamper.self', () => [gears.register.marker, Object.keys(gears)]);
          console.info('attacker log');
          export default { refused, id };`,
      });
      succeeded(attack);
      const r = attack.result as { refused: Record<string, string>; id: string };
      for (const [what, outcome] of Object.entries(r.refused)) assert.equal(outcome, 'TypeError', `${what} must be refused`);
      assert.equal(Object.keys(r.refused).length, 12);
      assert.equal(r.id, attack.registrations[0]?.id, 'gears.register still registers');
      assert.deepEqual(attack.logs, [{ level: 'info', message: 'attacker log' }], 'console still captures');

      const self = await t.client.trigger({ trigger: 'tamper.self' });
      assert.deepEqual(self.results[0].result, ['mine', ['register', 'schedule', 'consume', 'interpreterId', 'executionId']]);
      const watched = await t.client.trigger({ trigger: 'tamper.watch' });
      assert.deepEqual(watched.results.map((res) => res.interpreterId).sort(), neighbours.map((n) => n.interpreterId).sort());
      for (const res of watched.results) {
        succeeded(res);
        assert.deepEqual(res.result, [true, true, true, true, 'undefined', res.interpreterId], 'a neighbour sees its own intact gears');
        assert.deepEqual(res.logs, [{ level: 'log', message: 'neighbour log' }]);
      }
      assert.deepEqual(hostBuiltins(), host);
      await assertServing(t);
      await releaseInterpreters(t.client, attack.interpreterId, ...neighbours.map((n) => n.interpreterId));
    });

    it(`a module-scoped fake gears shadows only that module; the real registrations and console are what the host sees (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        modules: { helper: "export const realId = () => globalThis.gears.register('shadow.real', () => 'real');" },
        source: `
          import { realId } from 'helper';
          const gears = { register: () => 'reg_fake', interpreterId: 'itp_fake' };
          const console = { log() {} };
          console.log('swallowed by the fake');
          globalThis.console.log('kept');
          export default [gears.register('shadow.fake', () => 1), realId().startsWith('reg_'), gears.interpreterId];`,
      });
      succeeded(res);
      assert.deepEqual(res.result, ['reg_fake', true, 'itp_fake']);
      assert.deepEqual(
        res.registrations.map((r) => r.trigger),
        ['shadow.real'],
        'only the real gears registered anything',
      );
      assert.deepEqual(res.logs, [{ level: 'log', message: 'kept' }]);
      await expectStatus(t.client.trigger({ trigger: 'shadow.fake' }), grpc.status.NOT_FOUND, /shadow\.fake/);
      await assertServing(t);
      assert.deepEqual(await releaseInterpreters(t.client, res.interpreterId), [res.registrations[0].id]);
    });

    it(`freezing or sealing the global object and the built-in prototypes does not break the bootstrap (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        source: `
          for (const o of [Object.prototype, Array.prototype, Function.prototype, Promise.prototype, Map.prototype, Set.prototype, String.prototype, JSON]) Object.freeze(o);
          Object.preventExtensions(globalThis);
          console.log('frozen world');
          gears.register('frozen.t', (p) => ({ echo: p, list: [1, 2] }));
          export default { nested: [{ a: 1 }], s: 'x' };`,
      });
      succeeded(res);
      assert.deepEqual(res.result, { nested: [{ a: 1 }], s: 'x' });
      assert.deepEqual(res.logs, [{ level: 'log', message: 'frozen world' }]);
      const trig = await t.client.trigger({ trigger: 'frozen.t', payload: [true] });
      succeeded(trig.results[0]);
      assert.deepEqual(trig.results[0].result, { echo: [true], list: [1, 2] });
      const attached = await t.client.execute({ interpreterId: res.interpreterId, source: 'export default Object.isFrozen(Object.prototype);' });
      succeeded(attached);
      assert.equal(attached.result, true, 'the interpreter keeps its own frozen built-ins');
      const fresh = await t.client.execute({ mode, source: 'export default Object.isFrozen(Object.prototype) || !Object.isExtensible(globalThis);' });
      succeeded(fresh);
      assert.equal(fresh.result, false);
      await assertServing(t);
      await releaseInterpreters(t.client, res.interpreterId);
    });

    it(`a polluted Object.prototype.then does not hijack how runs settle (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        source: `
          Object.defineProperty(Object.prototype, 'then', { value: function (resolve) { resolve('hijacked'); }, configurable: true, writable: true });
          gears.register('then.t', () => 7);
          export default 42;`,
      });
      succeeded(res);
      assert.equal(res.result, 42);
      assert.equal(res.registrations.length, 1);
      const trig = await t.client.trigger({ trigger: 'then.t' });
      succeeded(trig.results[0]);
      assert.equal(trig.results[0].result, 7);
      const objectResult = await t.client.execute({ interpreterId: res.interpreterId, source: 'export default { plain: true };' });
      // the result is itself a thenable now: awaited like any promise, as JavaScript defines it
      succeeded(objectResult);
      assert.equal(objectResult.result, 'hijacked');
      const elsewhere = await t.client.execute({ mode, source: 'export default ({}).then === undefined;' });
      succeeded(elsewhere);
      assert.equal(elsewhere.result, true, 'a new interpreter has no Object.prototype.then');
      await assertServing(t);
      await releaseInterpreters(t.client, res.interpreterId);
    });
  }
});
