/**
 * The README's client examples run: the TypeScript example prints what the README says, the
 * command-line session gives the output shown, and every Python block is a verbatim excerpt of
 * test/interop/python/client.py (which the interop test runs).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { useTestServer } from '../helpers/fixture';

const ROOT = path.join(__dirname, '../..');
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
const run = promisify(execFile);

/** The fenced blocks after `<!-- example: KIND`, up to the next heading. */
function blocksAfter(kind: string): { lang: string; body: string }[] {
  const at = README.indexOf(`<!-- example: ${kind}`);
  assert.ok(at >= 0, `the README has a ${kind} example`);
  const rest = README.slice(at);
  const section = rest.slice(0, rest.search(/\n#{2,3} /) === -1 ? undefined : rest.search(/\n#{2,3} /));
  return [...section.matchAll(/```(\w+)\n([\s\S]*?)```/g)].map((m) => ({ lang: m[1], body: m[2] }));
}

describe('README client examples', function () {
  this.timeout(60_000);
  const server = useTestServer();
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-readme-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('the TypeScript example prints what the README shows', async () => {
    const [code, output] = blocksAfter('ts');
    assert.equal(code.lang, 'ts');
    assert.equal(output.lang, 'text');
    const file = path.join(dir, 'example.ts');
    writeFileSync(file, code.body.replace(`from '@isogear/client'`, `from ${JSON.stringify(path.join(ROOT, 'packages/client/src'))}`));
    const { stdout } = await run(process.execPath, ['--import', 'tsx', file], { env: { ...process.env, ISOGEAR_ADDRESS: server().server.grpcAddress }, cwd: ROOT });
    assert.equal(stdout, output.body);
  });

  it('the command-line session gives the output shown', async () => {
    const [session] = blocksAfter('shell');
    assert.equal(session.lang, 'console');
    const steps: { command: string; expected: string[] }[] = [];
    for (const line of session.body.trimEnd().split('\n')) {
      if (line.startsWith('$ ')) steps.push({ command: line.slice(2), expected: [] });
      else steps.at(-1)?.expected.push(line);
    }
    assert.ok(steps.length >= 5);
    const cli = path.join(ROOT, 'src/cli/main.ts');
    const printedRegistrations: string[] = [];
    for (const step of steps) {
      // the session runs in a scratch directory, where `--import tsx` would not resolve: name tsx's loader by path
      const tsx = pathToFileURL(path.join(ROOT, 'node_modules/tsx/dist/loader.mjs')).href;
      const script = `isogear() { ${JSON.stringify(process.execPath)} --import ${tsx} ${JSON.stringify(cli)} "$@"; }\n${step.command}\n`;
      const { stdout } = await run('bash', ['-c', `(${script}) 2>&1`], { cwd: dir, env: { ...process.env, ISOGEAR_ADDRESS: server().server.grpcAddress } });
      const got = stdout.trimEnd().split('\n').filter((l, i, all) => all.length > 1 || l !== '');
      const pattern = (l: string): RegExp => new RegExp(`^${l.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/reg_…/g, 'reg_\\w+')}$`);
      assert.equal(got.length, step.expected.length, `${step.command}\n${stdout}`);
      step.expected.forEach((l, i) => assert.match(got[i], pattern(l), step.command));
      if (/^isogear register /.test(step.command)) printedRegistrations.push(...got);
    }

    // the session leaves its handler registered; hand it back by the id it printed
    assert.equal(printedRegistrations.length, 1, 'the session registers one handler');
    const [id] = printedRegistrations;
    const rel = await server().client.release({ registrationId: id });
    assert.deepEqual(rel.releasedRegistrationIds, [id]);
  });

  it('every Python block is an excerpt of the interop client CI runs', () => {
    const client = readFileSync(path.join(ROOT, 'test/interop/python/client.py'), 'utf8');
    const blocks = [...README.matchAll(/```python\n([\s\S]*?)```/g)].map((m) => m[1]);
    assert.ok(blocks.length >= 2);
    for (const b of blocks) assert.ok(client.includes(b), `not in client.py:\n${b}`);
  });
});
