import assert from 'node:assert/strict';
import { useTestServer } from '../helpers/fixture';
import { limits, MODES, modeName, releaseInterpreters, succeeded } from '../helpers/proto';
import { assertRun, assertServing } from './harness';

/**
 * Values a script hands back to the host: whatever JSON or protobuf would silently change must
 * fail the run with a message naming where, and nothing may outgrow ISOGEAR_MAX_VALUE_BYTES.
 * Also: values a script throws, which the host reports as the run's error.
 */

const MAX = 1024 * 1024; // ISOGEAR_MAX_VALUE_BYTES default

const UNCOPYABLE: { what: string; source: string; name: string; message: string }[] = [
  { what: 'an array that contains itself', source: 'const a = [1]; a.push(a); export default a;', name: 'TypeError', message: 'result[1] is a circular reference' },
  {
    what: 'a cycle reached through a getter',
    source: 'const root = { child: { get parent() { return root; } } }; export default root;',
    name: 'TypeError',
    message: 'result.child.parent is a circular reference',
  },
  { what: 'a BigInt as the whole result', source: 'export default 2n ** 64n;', name: 'TypeError', message: 'result is a BigInt, which JSON cannot represent (convert it to a string or number)' },
  { what: 'a Symbol inside an array', source: "export default [1, Symbol.for('x')];", name: 'TypeError', message: 'result[1] is a Symbol, which JSON cannot represent' },
  { what: 'a function nested in objects', source: 'export default { a: { b: [{ c: class {} }] } };', name: 'TypeError', message: 'result.a.b[0].c is a function, which JSON cannot represent' },
  { what: 'a bound host-looking function', source: 'export default { log: console.log };', name: 'TypeError', message: 'result.log is a function, which JSON cannot represent' },
  { what: 'the gears object', source: 'export default gears;', name: 'TypeError', message: 'result.register is a function, which JSON cannot represent' },
  { what: 'an Error', source: "export default { e: new Error('x') };", name: 'TypeError', message: 'result.e is a Error, not a plain object or array; only JSON values can be returned' },
  { what: 'a Promise inside an object', source: 'export default { p: Promise.resolve(1) };', name: 'TypeError', message: 'result.p is a Promise, not a plain object or array; only JSON values can be returned' },
  {
    what: 'a key named __proto__ (lost by protobuf Struct decoders)',
    source: 'export default JSON.parse(\'{"safe": {"__proto__": {"polluted": true}}}\');',
    name: 'TypeError',
    message: 'result.safe has a key named "__proto__", which cannot be returned: protobuf Struct decoders in JavaScript treat it as the prototype and drop it',
  },
  {
    what: 'an unpaired surrogate in a string',
    source: "export default { s: 'ok\\uD800' };",
    name: 'TypeError',
    message: 'result.s has an unpaired UTF-16 surrogate, which a protobuf string (UTF-8) cannot carry',
  },
  {
    what: 'an unpaired surrogate in a key',
    source: "export default { ['k\\uDC00']: 1 };",
    name: 'TypeError',
    message: 'result key "k\\udc00" has an unpaired UTF-16 surrogate, which a protobuf string (UTF-8) cannot carry',
  },
  {
    what: 'objects nested 100 deep',
    source: 'let o = {}; for (let i = 0; i < 100; i++) o = { o }; export default o;',
    name: 'RangeError',
    message: `result${'.o'.repeat(65)} is nested deeper than 64 levels`,
  },
  {
    what: 'an endless chain of fresh objects from a getter',
    source: 'const make = () => ({ get next() { return make(); } }); export default make();',
    name: 'RangeError',
    message: `result${'.next'.repeat(65)} is nested deeper than 64 levels`,
  },
];

const TOO_LARGE_CHARS = `result is larger than ${MAX} characters`;

describe('security: values crossing the boundary', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    describe(modeName(mode), () => {
      for (const c of UNCOPYABLE) {
        it(`a result holding ${c.what} fails naming where`, async () => {
          const t = server();
          const res = await t.client.execute({ mode, source: c.source, });
          assertRun(res, { outcome: 'OUTCOME_FAILED', name: c.name, message: c.message }, c.what);
          assert.equal(res.error?.stack, '', 'copying errors carry no stack');
          await assertServing(t, c.what);
        });
      }

      it('results at the size limit are returned whole; one character more, in any shape, fails fast', async () => {
        const t = server();
        // JSON of a string of MAX - 2 characters is exactly MAX bytes
        const exact = await t.client.execute({ mode, source: `export default 'x'.repeat(${MAX - 2});` });
        succeeded(exact);
        assert.equal((exact.result as string).length, MAX - 2);
        const over = await t.client.execute({ mode, source: `export default 'x'.repeat(${MAX - 1});` });
        assertRun(over, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: TOO_LARGE_CHARS });

        const shapes = [
          'export default new Array(2 ** 32 - 1);', // sparse: nothing but holes
          'export default new Array(3e5).fill(0);',
          'export default new Array(1e6).fill(true);',
          'const o = {}; for (let i = 0; i < 200000; i++) o["k" + i] = null; export default o;',
          "export default new Proxy([], { get: (t, k) => (k === 'length' ? 2 ** 32 - 1 : 1) });",
        ];
        for (const source of shapes) {
          const res = await t.client.execute({ mode, source, limits: limits(5000) });
          assertRun(res, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: TOO_LARGE_CHARS }, source);
        }
        // under the character budget but over the byte limit: two UTF-8 bytes per character
        const bytes = await t.client.execute({ mode, source: `export default 'é'.repeat(${MAX / 2 + 1});` });
        assertRun(bytes, { outcome: 'OUTCOME_FAILED', name: 'RangeError', message: `result is larger than ${MAX} bytes of JSON` });
        await assertServing(t);
      });

      it('handler results get the same checks, and the registration keeps working after a refused one', async () => {
        const t = server();
        const setup = await t.client.execute({
          mode,
          source: `gears.register('val.t', (kind) => {
            if (kind === 'huge') return 'y'.repeat(${MAX});
            if (kind === 'cycle') { const o = {}; o.self = o; return { o }; }
            if (kind === 'bigint') return { n: 1n };
            return { ok: kind };
          });`,
        });
        succeeded(setup);
        const expected: Record<string, [string, string]> = {
          huge: ['RangeError', TOO_LARGE_CHARS],
          cycle: ['TypeError', 'result.o.self is a circular reference'],
          bigint: ['TypeError', 'result.n is a BigInt, which JSON cannot represent (convert it to a string or number)'],
        };
        for (const [kind, [name, message]] of Object.entries(expected)) {
          const trig = await t.client.trigger({ trigger: 'val.t', payload: kind });
          assertRun(trig.results[0], { outcome: 'OUTCOME_FAILED', name, message }, kind);
          const ok = await t.client.trigger({ trigger: 'val.t', payload: 'fine' });
          succeeded(ok.results[0]);
          assert.deepEqual(ok.results[0].result, { ok: 'fine' });
        }
        await assertServing(t);
        await releaseInterpreters(t.client, setup.interpreterId);
      });

      it('values the host cannot tell apart from JSON come back as JSON: -0, symbol keys, undefined members', async () => {
        const t = server();
        const res = await t.client.execute({ mode, source: "export default { z: -0, [Symbol('hidden')]: 1, u: undefined, arr: [undefined], big: 2 ** 53 + 1 };" });
        succeeded(res);
        assert.deepEqual(res.result, { z: 0, arr: [null], big: 2 ** 53 });
        await assertServing(t);
      });

      const THROWN: { what: string; source: string; name: string; message: string }[] = [
        { what: 'a Symbol', source: "export default () => { throw Symbol('s'); };", name: 'Error', message: 'a non-Error value was thrown: Symbol(s)' },
        { what: 'a BigInt', source: 'export default () => { throw 10n; };', name: 'Error', message: 'a non-Error value was thrown: 10' },
        { what: 'null', source: 'export default () => { throw null; };', name: 'Error', message: 'a non-Error value was thrown: null' },
        { what: 'undefined', source: 'export default () => { throw undefined; };', name: 'Error', message: 'a non-Error value was thrown: undefined' },
        { what: 'a string', source: "export default () => { throw 'plain'; };", name: 'Error', message: 'a non-Error value was thrown: "plain"' },
        { what: 'a rejected promise of an object', source: 'export default async () => { throw { name: "Custom", message: "from object" }; };', name: 'Custom', message: 'from object' },
        {
          what: 'a Symbol at the top level',
          source: "throw Symbol('top');",
          name: 'Error',
          message: 'a non-Error value was thrown at the top level of the module (an object or symbol that is not an Error instance)',
        },
        {
          what: 'a plain object rejected by top-level await',
          source: 'await Promise.reject({ a: 1 });',
          name: 'Error',
          message: 'a non-Error value was thrown at the top level of the module (an object or symbol that is not an Error instance)',
        },
        { what: 'an Error subclass with a huge message', source: "class Big extends Error { name = 'Big'; } export default () => { throw new Big('m'.repeat(100000)); };", name: 'Big', message: 'm'.repeat(8192) },
      ];
      it('thrown values of every kind are reported with a clear name and message', async () => {
        const t = server();
        for (const c of THROWN) {
          const res = await t.client.execute({ mode, source: c.source });
          assertRun(res, { outcome: 'OUTCOME_FAILED', name: c.name, message: c.message }, `throwing ${c.what}`);
        }
        await assertServing(t);
      });
    });
  }
});
