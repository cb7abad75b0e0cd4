import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { MIN_NODE_MAJOR, nodeProblem } from '../../src/sandbox/engineCheck';

const root = path.join(__dirname, '../..');

/**
 * Other Node.js binaries to start the server with (`TEST_OTHER_NODES`, colon-separated;
 * `.ci/run` passes the other LTS and the machine's own, older Node). Each must be refused at
 * start-up in one line: an older one for its version, a newer one for the addon's ABI.
 */
const otherNodes = (process.env.TEST_OTHER_NODES ?? '').split(':').filter(Boolean);

function versionOf(node: string): { version: string; modules: string } {
  return JSON.parse(execFileSync(node, ['-p', 'JSON.stringify({ version: process.version, modules: process.versions.modules })'], { encoding: 'utf8' })) as {
    version: string;
    modules: string;
  };
}

/** Starts src/main.ts with `node`; resolves with its exit code and what it printed. */
function start(node: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(node, ['--no-node-snapshot', '--import', 'tsx', path.join(root, 'src/main.ts')], {
    cwd: root,
    env: { ...process.env, ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0', ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0', ISOGEAR_STORE: 'memory' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr });
    }),
  );
}

describe('start-up refuses a Node.js or an isolated-vm addon it cannot run on, in one line', function () {
  this.timeout(30_000);

  it(`the supported Node.js is ${MIN_NODE_MAJOR} or later, everywhere it is written`, () => {
    const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { engines: { node: string } };
    assert.equal(pkg.engines.node, `>=${MIN_NODE_MAJOR}`);
    assert.match(readFileSync(path.join(root, 'scripts/patch-isolated-vm.js'), 'utf8'), new RegExp(`const MIN_NODE_MAJOR = ${MIN_NODE_MAJOR};`));
    assert.match(readFileSync(path.join(root, 'README.md'), 'utf8'), new RegExp(`With Node ${MIN_NODE_MAJOR} `), "the README's quick start names it");
    assert.ok(Number(process.versions.node.split('.')[0]) >= MIN_NODE_MAJOR, `the tests themselves run on Node.js ${process.version}`);
  });

  it('names the version found and the one required', () => {
    assert.equal(nodeProblem('20.20.2'), `isogear needs Node.js ${MIN_NODE_MAJOR} or later; this is Node.js v20.20.2`);
    assert.equal(nodeProblem('v22.22.0'), `isogear needs Node.js ${MIN_NODE_MAJOR} or later; this is Node.js v22.22.0`);
    assert.equal(nodeProblem(`${MIN_NODE_MAJOR}.0.0`), undefined);
    assert.equal(nodeProblem('26.12.1'), undefined);
  });

  it('another Node.js than the one npm ci built for stops with one line and exit code 2 (an older one for its version, a newer one for the addon)', async function () {
    if (otherNodes.length === 0) {
      if (process.env.CI) assert.fail('TEST_OTHER_NODES is empty: .ci/run passes the other Node.js binaries');
      console.warn('      (skipped: set TEST_OTHER_NODES to other Node.js binaries, colon-separated, to run it)');
      this.skip();
    }
    let checked = 0;
    for (const node of otherNodes) {
      const other = versionOf(node);
      const major = Number(other.version.slice(1).split('.')[0]);
      if (major >= MIN_NODE_MAJOR && other.modules === process.versions.modules) continue; // the same ABI: it would run
      const { code, stdout, stderr } = await start(node);
      assert.equal(code, 2, `${other.version}: ${stderr}`);
      assert.equal(stdout, '');
      const lines = stderr.trimEnd().split('\n');
      assert.equal(lines.length, 1, `one line, not: ${stderr}`);
      if (major < MIN_NODE_MAJOR) {
        assert.equal(lines[0], `isogear: isogear needs Node.js ${MIN_NODE_MAJOR} or later; this is Node.js ${other.version}`);
      } else {
        assert.match(
          lines[0],
          new RegExp(
            `^isogear: the isolated-vm addon \\S+isolated_vm\\.node was built for another Node\\.js \\(NODE_MODULE_VERSION ${process.versions.modules}; Node\\.js ${other.version.replace(/\./g, '\\.')} needs ${other.modules}\\): run \`npm rebuild\` or \`npm ci\` with this Node\\.js$`,
          ),
        );
      }
      checked += 1;
    }
    assert.ok(checked > 0, `none of ${otherNodes.join(', ')} differs from ${process.version}`);
  });
});
