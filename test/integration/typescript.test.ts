/**
 * TypeScript sources (language = LANGUAGE_TYPESCRIPT): types stripped, not checked; stacks and
 * syntax errors point at the TypeScript the user wrote; outputs cached; recipes replay them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape, value } from '../helpers/metrics';
import { outcomeName, releaseInterpreters, succeeded } from '../helpers/proto';
import { startTestServer } from '../helpers/server';

const TS = pb.Language.LANGUAGE_TYPESCRIPT;

/** 1-based line and column of the first `needle` in `source`. */
function position(source: string, needle: string): string {
  const at = source.indexOf(needle);
  assert.ok(at >= 0, needle);
  const before = source.slice(0, at);
  const line = before.split('\n').length;
  return `${line}:${at - before.lastIndexOf('\n')}`;
}

// types on every line before and on the throwing one: the JavaScript's columns differ from these
const THROWS_ON_LINE_3 = `interface Order { id: number; lines: Array<{ sku: string; qty: number }> }
const count = (o: Order): number => o.lines.reduce((n: number, l: { qty: number }) => n + l.qty, 0);
export default (o: Order): number => { if (count(o) === 0) throw new RangeError(\`order \${o.id as number} is empty\`); return count(o); };
`;

describe('TypeScript sources', function () {
  this.timeout(30_000);
  const server = useTestServer();

  it('runs TypeScript with its types stripped: interfaces, generics, enums, satisfies, parameter properties', async () => {
    const t = server();
    const res = await t.client.execute({
      language: TS,
      source: `enum Level { Low = 1, High = 2 }
class Box<T> { constructor(private readonly value: T) {} get(): T { return this.value; } }
type Pair = [string, number];
const pair = ['a', 2] satisfies Pair;
export default (args: { n: number }): { level: Level; boxed: string; pair: Pair } => ({ level: Level.High * args.n, boxed: new Box<string>('x').get(), pair });
`,
      args: { n: 3 },
    });
    succeeded(res);
    assert.deepEqual(res.result, { level: 6, boxed: 'x', pair: ['a', 2] });
  });

  it('a stack points at the TypeScript line and column, in the main module, in an imported one, and in a handler run later', async () => {
    const t = server();
    const res = await t.client.execute({ language: TS, source: THROWS_ON_LINE_3, args: { id: 7, lines: [] } });
    assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED');
    assert.equal(res.error?.name, 'RangeError');
    assert.equal(res.error?.message, 'order 7 is empty');
    const want = `main.ts:${position(THROWS_ON_LINE_3, 'new RangeError')}`;
    assert.match(res.error?.stack ?? '', new RegExp(`^    at default \\(${want.replace(/\./g, '\\.')}\\)$`, 'm'), res.error?.stack);
    assert.doesNotMatch(res.error?.stack ?? '', /#[0-9a-f]{12}/, 'no internal module name is left');

    const lib = `export function check<T extends { id: number }>(x: T): T {\n  const id: number = x.id;\n  if (id < 0) throw new TypeError('negative id ' + String(id));\n  return x;\n}\n`;
    const made = await t.client.execute({
      language: TS,
      source: `import { check } from './lib.ts';\ngears.register('ts.check', (p: { id: number }) => check<{ id: number }>(p).id);\nexport default 1;\n`,
      modules: { './lib.ts': lib },
    });
    succeeded(made);
    const run = (await t.client.trigger({ trigger: 'ts.check', payload: { id: -1 } })).results[0];
    assert.equal(outcomeName(run.outcome), 'OUTCOME_FAILED');
    assert.match(run.error?.stack ?? '', new RegExp(`^    at check \\(\\./lib\\.ts:${position(lib, 'new TypeError')}\\)$`, 'm'), run.error?.stack);
    assert.match(run.error?.stack ?? '', /^ {4}at main\.ts:2:\d+$|^ {4}at .*\(main\.ts:2:\d+\)$/m, run.error?.stack);
    await releaseInterpreters(t.client, made.interpreterId);
  });

  it('a TypeScript syntax error is OUTCOME_FAILED with a SyntaxError naming the module, line and column', async () => {
    const t = server();
    const res = await t.client.execute({ language: TS, source: 'const a: number = 1;\nlet b = (a as any;\nexport default b;\n' });
    assert.equal(outcomeName(res.outcome), 'OUTCOME_FAILED');
    assert.equal(res.error?.name, 'SyntaxError');
    assert.equal(res.error?.message, 'Expected `,` or `)` but found `;` (main.ts:2:18)');
    const inModule = await t.client.execute({ language: TS, source: `import x from './m.ts';\nexport default x;\n`, modules: { './m.ts': 'export default (a: number => a;\n' } });
    assert.equal(inModule.error?.name, 'SyntaxError');
    assert.match(inModule.error?.message ?? '', /\(\.\/m\.ts:1:\d+\)$/);
    // unset is JavaScript: the same TypeScript does not parse as JavaScript
    const js = await t.client.execute({ source: 'const a: number = 1;\nexport default a;\n' });
    assert.equal(js.error?.name, 'SyntaxError');
    await expectStatus(t.client.execute({ source: 'export default 1', language: 99 as pb.Language }), grpc.status.INVALID_ARGUMENT, /language 99 is not a known Language/);
    assert.equal((await t.client.listInterpreters({})).interpreters.length, 0);
  });

  it('Register takes TypeScript too, and the same source is transpiled once (isogear_typescript_transpiles_total)', async () => {
    const t = server();
    const before = await scrape(t);
    const handler = 'export default (p: { n: number }, e: { trigger: string }): string => `${e.trigger}:${p.n * 2}`;\n';
    const a = await t.client.register({ trigger: 'ts.reg', source: handler, language: TS });
    const b = await t.client.register({ trigger: 'ts.reg', source: handler, language: TS });
    const ran = await t.client.trigger({ trigger: 'ts.reg', payload: { n: 21 } });
    assert.deepEqual(ran.results.map((r) => r.result), ['ts.reg:42', 'ts.reg:42']);
    const after = await scrape(t);
    assert.equal(value(after, 'isogear_typescript_transpiles_total', { result: 'miss' }) - value(before, 'isogear_typescript_transpiles_total', { result: 'miss' }), 1);
    assert.equal(value(after, 'isogear_typescript_transpiles_total', { result: 'hit' }) - value(before, 'isogear_typescript_transpiles_total', { result: 'hit' }), 1);
    await releaseInterpreters(t.client, a.interpreter?.id, b.interpreter?.id);
  });

  it('TypeScript over ISOGEAR_MAX_SOURCE_BYTES is refused before it is transpiled', async () => {
    const t = server();
    const big = `const s: string = ${JSON.stringify('x'.repeat(t.config.maxSourceBytes))};\nexport default s.length;\n`;
    await expectStatus(t.client.execute({ source: big, language: TS }), grpc.status.INVALID_ARGUMENT, /source/);
    assert.equal(value(await scrape(t), 'isogear_typescript_transpiles_total', { result: 'miss' }), 0);
  });
});

describe('TypeScript across a restart', function () {
  this.timeout(30_000);
  it('the recipe keeps the language: the replay strips the types again, and stacks still point at TypeScript', async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'isogear-ts-'));
    try {
      const first = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
      const made = await first.client.execute({
        language: TS,
        source: `let calls: number = 0;\ngears.register('ts.kept', (p: { fail?: boolean }): number => {\n  if (p.fail) throw new Error('failed after ' + calls);\n  return ++calls;\n});\nexport default 0;\n`,
      });
      succeeded(made);
      await first.server.shutdown(2000);
      first.client.close();
      const second = await startTestServer({ ISOGEAR_DATA_DIR: dataDir });
      try {
        const ok = (await second.client.trigger({ trigger: 'ts.kept', payload: {} })).results[0];
        assert.equal(ok.result, 1, 'rebuilt: its state starts again');
        const failed = (await second.client.trigger({ trigger: 'ts.kept', payload: { fail: true } })).results[0];
        assert.match(failed.error?.stack ?? '', /^ {4}at main\.ts:3:\d+$/m, failed.error?.stack);
        await releaseInterpreters(second.client, made.interpreterId);
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
