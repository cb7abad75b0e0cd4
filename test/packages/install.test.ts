/**
 * The two packages as a user gets them: each is packed (`npm pack`, as `npm publish` would send
 * it), then installed from the registry into an empty scratch project, nothing of this checkout's
 * node_modules included. The client must install without running an install script or bringing a
 * native addon, and work from plain JavaScript, type-checked TypeScript and its `isogear` bin; the
 * server must install (compiling isolated-vm, as a user's install does) and `npx isogear serve`
 * must answer health. Slow (the server's install compiles for minutes): CI runs it once, as its own
 * step (`npm run test:packages`), not within `npm test`.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { createClient } from '@isogear/client';
import { startTestServer, type TestServer } from '../helpers/server';

const ROOT = path.join(__dirname, '../..');
const CLIENT_DIR = path.join(ROOT, 'packages/client');
const run = promisify(execFile);
/**
 * The scratch projects' environment: a user's shell. What `npm run` exports to its scripts goes
 * (npm_config_local_prefix would point a nested npm at this checkout, an empty allow-scripts would
 * refuse the server's install scripts, --silent would hide an install's errors), but not
 * npm_config_nodedir: where Node's headers are, for the addon that compiles. No --conditions.
 */
const NPM_ENV: NodeJS.ProcessEnv = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) || k.toLowerCase() === 'npm_config_nodedir')),
  npm_config_audit: 'false',
  npm_config_fund: 'false',
  npm_config_update_notifier: 'false',
  NODE_OPTIONS: '',
};

interface Packed {
  file: string;
  size: number;
  unpackedSize: number;
  files: string[];
}

async function pack(cwd: string, into: string): Promise<Packed> {
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', into], { cwd, env: NPM_ENV, maxBuffer: 16 * 1024 * 1024 });
  const [p] = JSON.parse(stdout) as { filename: string; size: number; unpackedSize: number; files: { path: string }[] }[];
  return { file: path.join(into, p.filename), size: p.size, unpackedSize: p.unpackedSize, files: p.files.map((f) => f.path) };
}

/** Every file under `dir` (symbolic links not followed). */
function walk(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

const bytes = (dir: string): number => walk(dir).reduce((n, f) => n + statSync(f).size, 0);
const kib = (n: number): string => `${(n / 1024).toFixed(0)} KiB`;

/** An empty project with a package.json, as `npm init -y` makes one. */
function project(dir: string): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: path.basename(dir), version: '1.0.0', private: true }));
  return dir;
}

describe('the packages, packed and installed as a user does', function () {
  this.timeout(20 * 60_000);
  let tmp: string;
  let client: Packed;
  let server: Packed;

  before(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'isogear-packages-'));
    await run('npm', ['run', '--silent', 'build'], { cwd: ROOT, env: NPM_ENV });
    client = await pack(CLIENT_DIR, tmp);
    server = await pack(ROOT, tmp);
  });
  after(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('the server tarball ships only what runs: dist/, proto/, the install-time patch, the README and the license files', () => {
    const top = new Set(server.files.map((f) => (f.includes('/') ? `${f.split('/')[0]}/` : f)));
    assert.deepEqual([...top].sort(), ['LICENSE', 'NOTICE', 'README.md', 'THIRD_PARTY_NOTICES.md', 'dist/', 'package.json', 'proto/', 'scripts/']);
    assert.deepEqual(server.files.filter((f) => f.startsWith('scripts/')), ['scripts/patch-isolated-vm.js']);
    assert.ok(server.files.includes('dist/main.js') && server.files.includes('dist/cli/main.js') && server.files.includes('proto/isogear/v1/gears.proto'));
    assert.ok(!server.files.some((f) => /^(test|src|deploy|packages)\//.test(f)), 'no tests, sources, deploy tree or client package');
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; license: string; dependencies: Record<string, string> };
    const clientPkg = JSON.parse(readFileSync(path.join(CLIENT_DIR, 'package.json'), 'utf8')) as { version: string; license: string };
    assert.equal(pkg.dependencies['@isogear/client'], clientPkg.version, 'the server depends on the client of its own version');
    assert.equal(pkg.version, clientPkg.version, 'one version for both packages');
    assert.deepEqual([pkg.license, clientPkg.license], ['Apache-2.0', 'Apache-2.0']);
    console.log(`      isogear tarball: ${kib(server.size)} (${server.files.length} files, ${kib(server.unpackedSize)} unpacked)`);
  });

  it('the client tarball: its compiled code, README and license files only', () => {
    const top = new Set(client.files.map((f) => (f.includes('/') ? `${f.split('/')[0]}/` : f)));
    assert.deepEqual([...top].sort(), ['LICENSE', 'NOTICE', 'README.md', 'dist/', 'package.json']);
    assert.ok(client.files.includes('dist/index.d.ts') && client.files.includes('dist/cli/main.js') && client.files.includes('dist/gen/isogear/v1/gears.js'));
    assert.ok(!client.files.some((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')), 'no TypeScript sources');
    assert.equal(readFileSync(path.join(CLIENT_DIR, 'LICENSE'), 'utf8'), readFileSync(path.join(ROOT, 'LICENSE'), 'utf8'), "the client's LICENSE is the repository's");
    console.log(`      @isogear/client tarball: ${kib(client.size)} (${client.files.length} files, ${kib(client.unpackedSize)} unpacked)`);
  });

  describe('@isogear/client in an empty project', () => {
    let t: TestServer;
    let dir: string;
    before(async () => {
      t = await startTestServer();
      dir = project(path.join(tmp, 'client-user'));
      await run('npm', ['install', client.file], { cwd: dir, env: NPM_ENV, maxBuffer: 16 * 1024 * 1024 });
    });
    after(async () => {
      await t?.close();
    });

    it('installs without a native addon, and with no install script but protobufjs\'s version check (gRPC\'s own dependency)', () => {
      const modules = path.join(dir, 'node_modules');
      // each installed package's own manifest: node_modules/NAME/package.json or node_modules/@SCOPE/NAME/package.json
      const manifests = walk(modules).filter((f) => /(^|\/)node_modules\/(@[^/]+\/)?[^/@][^/]*\/package\.json$/.test(path.relative(dir, f)));
      assert.ok(manifests.length >= 5, `found ${manifests.length} installed packages`);
      const withScripts = manifests.filter((f) => {
        const scripts = (JSON.parse(readFileSync(f, 'utf8')) as { scripts?: Record<string, string> }).scripts ?? {};
        return ['preinstall', 'install', 'postinstall'].some((s) => s in scripts);
      });
      // @grpc/grpc-js needs @grpc/proto-loader, which needs protobufjs, whose postinstall only warns
      // when a package that depends on it names a version the wrong way: it compiles and fetches
      // nothing (and the client works without it: see the --ignore-scripts install below)
      assert.deepEqual(withScripts.map((f) => path.relative(modules, f)), ['protobufjs/package.json'], 'no other package runs a script at install');
      const protobufjs = JSON.parse(readFileSync(path.join(modules, 'protobufjs/package.json'), 'utf8')) as { scripts: Record<string, string> };
      assert.deepEqual(
        Object.fromEntries(Object.entries(protobufjs.scripts).filter(([k]) => ['preinstall', 'install', 'postinstall'].includes(k))),
        { postinstall: 'node scripts/postinstall' },
      );
      assert.doesNotMatch(readFileSync(path.join(modules, 'protobufjs/scripts/postinstall.js'), 'utf8'), /child_process|https?:|require\(["']net|spawn|exec/, 'it runs nothing and fetches nothing');
      const addons = walk(modules).filter((f) => f.endsWith('.node') || path.basename(f) === 'binding.gyp');
      assert.deepEqual(addons.map((f) => path.relative(modules, f)), [], 'no native addon');
      const deps = Object.keys((JSON.parse(readFileSync(path.join(modules, '@isogear/client/package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies);
      assert.deepEqual(deps.sort(), ['@bufbuild/protobuf', '@grpc/grpc-js', 'commander', 'grpc-health-check']);
      console.log(`      @isogear/client installed: ${kib(bytes(modules))} in node_modules (${readdirSync(modules).length} top-level entries)`);
    });

    it('calls a real server from a plain .mjs file: Execute, Register, Trigger, Release (installed with scripts, and with --ignore-scripts)', async () => {
      const bare = project(path.join(tmp, 'client-no-scripts'));
      await run('npm', ['install', '--ignore-scripts', client.file], { cwd: bare, env: NPM_ENV, maxBuffer: 16 * 1024 * 1024 });
      for (const where of [dir, bare]) {
        writeFileSync(
          path.join(where, 'call.mjs'),
          `import { createClient } from '@isogear/client';
const isogear = createClient(process.env.ISOGEAR_ADDRESS);
const run = await isogear.execute({ source: 'export default (a) => a.n * 2', args: { n: 21 }, mode: 'shared' });
const reg = await isogear.register({ trigger: 'pkg.mjs', source: 'export default (p) => p.id', mode: 'shared' });
const fired = await isogear.trigger({ trigger: 'pkg.mjs', payload: { id: 7 } });
const released = await isogear.release({ registrationId: reg.registration.id });
console.log(JSON.stringify({ result: run.result, fired: fired.results.map((r) => r.result), released: released.releasedRegistrationIds.length }));
isogear.close();
`,
        );
        const { stdout } = await run(process.execPath, ['call.mjs'], { cwd: where, env: { ...NPM_ENV, ISOGEAR_ADDRESS: t.server.grpcAddress } });
        assert.deepEqual(JSON.parse(stdout), { result: 42, fired: [7], released: 1 }, where);
      }
    });

    it('its published types check a .ts caller with tsc (strict), which then runs', async () => {
      await run('npm', ['install', 'typescript@~5.9', '@types/node@24'], { cwd: dir, env: NPM_ENV, maxBuffer: 16 * 1024 * 1024 });
      writeFileSync(
        path.join(dir, 'call.mts'),
        `import { createClient, IsogearRpcError, type IsogearClient, type Json } from '@isogear/client';

const isogear: IsogearClient = createClient(process.env.ISOGEAR_ADDRESS ?? '');
const run = await isogear.execute({ source: 'export default (a) => a.n + 1', args: { n: 41 } as Json, mode: 'shared' });
const reg = await isogear.register({ trigger: 'pkg.ts', source: 'export default () => "typed"', mode: 'isolate' });
const id: string = reg.registration?.id ?? '';
const fired = await isogear.trigger({ trigger: 'pkg.ts' });
await isogear.release({ registrationId: id });
let code = '';
try {
  await isogear.trigger({ trigger: 'pkg.ts' });
} catch (err) {
  if (err instanceof IsogearRpcError) code = err.codeName;
}
console.log(JSON.stringify({ result: run.result, fired: fired.results.map((r) => r.result), after: code }));
isogear.close();
`,
      );
      writeFileSync(path.join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', target: 'es2022', strict: true, noEmit: true, types: ['node'] }, files: ['call.mts'] }));
      await run(path.join(dir, 'node_modules/.bin/tsc'), ['-p', '.'], { cwd: dir, env: NPM_ENV }).catch((err: { stdout?: string }) => {
        throw new Error(`tsc refused the caller:\n${err.stdout ?? String(err)}`);
      });
      // Node runs TypeScript itself (its types stripped), as tsc checked it
      const { stdout } = await run(process.execPath, ['call.mts'], { cwd: dir, env: { ...NPM_ENV, ISOGEAR_ADDRESS: t.server.grpcAddress } });
      assert.deepEqual(JSON.parse(stdout.trim().split('\n').at(-1) ?? ''), { result: 42, fired: ['typed'], after: 'NOT_FOUND' });
    });

    it("the package README's first call type-checks and prints what its comments say", async () => {
      const readme = readFileSync(path.join(CLIENT_DIR, 'README.md'), 'utf8');
      const code = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
      assert.ok(code, 'the README has a TypeScript example');
      writeFileSync(path.join(dir, 'readme.mts'), code.replace("'127.0.0.1:50051'", JSON.stringify(t.server.grpcAddress)));
      writeFileSync(path.join(dir, 'tsconfig.readme.json'), JSON.stringify({ compilerOptions: { module: 'nodenext', target: 'es2022', strict: true, noEmit: true, types: ['node'] }, files: ['readme.mts'] }));
      await run(path.join(dir, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.readme.json'], { cwd: dir, env: NPM_ENV }).catch((err: { stdout?: string }) => {
        throw new Error(`tsc refused the README's example:\n${err.stdout ?? String(err)}`);
      });
      const { stdout } = await run(process.execPath, ['readme.mts'], { cwd: dir, env: NPM_ENV });
      // each console.log's expected output is the comment on its line
      const expected = [...code.matchAll(/console\.log\(.*\); \/\/ (.*)$/gm)].map((m) => m[1]);
      assert.deepEqual(stdout.trim().split('\n'), expected);
    });

    it('npx isogear exec runs a script; isogear serve says where the server is', async () => {
      const exec = spawn('npx', ['--no-install', 'isogear', '--address', t.server.grpcAddress, 'exec', '-', '--mode', 'shared'], { cwd: dir, env: NPM_ENV });
      exec.stdin.end('export default 6 * 7;');
      let out = '';
      exec.stdout.on('data', (c: Buffer) => (out += c.toString()));
      const code = await new Promise<number | null>((resolve) => exec.on('exit', resolve));
      assert.deepEqual([code, out], [0, '42\n']);
      const serve = await run('npx', ['--no-install', 'isogear', 'serve'], { cwd: dir, env: NPM_ENV }).then(
        () => ({ code: 0, stderr: '' }),
        (err: { code: number; stderr: string }) => err,
      );
      assert.equal(serve.code, 2);
      assert.match(serve.stderr, /^isogear: serve runs the server, which is not in @isogear\/client .*npm install isogear/);
    });
  });

  describe('isogear (the server) in an empty project', () => {
    let dir: string;
    before(async () => {
      dir = project(path.join(tmp, 'server-user'));
      // its own client from its tarball (a registry would have it); everything else from the registry
      await run('npm', ['install', client.file, server.file], { cwd: dir, env: NPM_ENV, maxBuffer: 64 * 1024 * 1024 });
    });

    it('npx isogear serve starts, answers health and runs a script; SIGTERM to npx stops the server', async () => {
      const data = path.join(dir, 'data');
      const child = spawn('npx', ['--no-install', 'isogear', 'serve', '--grpc-address=127.0.0.1:0', '--metrics-address=127.0.0.1:0', '--shared-isolates=1', `--data-dir=${data}`], {
        cwd: dir,
        env: NPM_ENV,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      let address = '';
      try {
        const started = await new Promise<{ grpcAddress: string }>((resolve, reject) => {
          child.stdout.on('data', (c: Buffer) => {
            stdout += c.toString();
            const line = stdout.split('\n').find((l) => l.includes('isogear started'));
            if (line) resolve(JSON.parse(line) as { grpcAddress: string });
          });
          void exited.then((code) => reject(new Error(`serve exited ${code} before starting:\n${stdout}\n${stderr}`)));
        });
        address = started.grpcAddress;
        const c = createClient(started.grpcAddress);
        try {
          assert.equal(await c.health(), 'SERVING');
          assert.equal((await c.execute({ source: 'export default 40 + 2', mode: 'shared' })).result, 42);
        } finally {
          c.close();
        }
      } finally {
        child.kill('SIGTERM');
      }
      // npm passes the signal on to the bin, which passes it to the server and ends with it
      const code = await exited;
      assert.ok(code === 0 || code === null, `npx exited ${code}: ${stderr}`);
      // the server went with it (within its graceful shutdown)
      let health = '';
      for (const until = Date.now() + 10_000; Date.now() < until; await new Promise((r) => setTimeout(r, 100))) {
        const after = createClient(address);
        health = await after.health('', { deadlineMs: 1000 }).then(
          (s) => s,
          (err: Error) => err.message,
        );
        after.close();
        if (/cannot reach the isogear server/.test(health)) break;
      }
      assert.match(health, /UNAVAILABLE: cannot reach the isogear server/, 'the server stopped');
      const modules = path.join(dir, 'node_modules');
      console.log(`      isogear installed: ${kib(bytes(modules))} in node_modules (${readdirSync(modules).length} top-level entries)`);
    });
  });
});
