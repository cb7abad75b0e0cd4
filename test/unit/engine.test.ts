import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ENGINE_PATCH_MARKER, engineProblem, installedAddonPath, loadProblem } from '../../src/sandbox/engineCheck';

describe('engine check: the isolated-vm addon carries the module-handles patch', () => {
  let tmp: string;
  before(() => (tmp = mkdtempSync(path.join(os.tmpdir(), 'isogear-engine-'))));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('accepts the addon npm ci built (postinstall patched and compiled it), which is the one isolated-vm loads', () => {
    assert.equal(engineProblem(), undefined);
    // node-gyp-build prefers build/Release to the prebuilt binaries isolated-vm ships (unpatched)
    assert.match(installedAddonPath(), /isolated-vm[/\\]build[/\\]Release[/\\]isolated_vm\.node$/);
    const prebuilt = path.join(path.dirname(require.resolve('isolated-vm/package.json')), 'prebuilds');
    assert.ok(!installedAddonPath().startsWith(prebuilt));
  });

  it('refuses the prebuilt binaries isolated-vm ships: they lack the patch', function () {
    const prebuilt = path.join(path.dirname(require.resolve('isolated-vm/package.json')), 'prebuilds', `${process.platform}-${process.arch}`);
    const mine = `isolated-vm.abi${process.versions.modules}.glibc.node`;
    let file: string;
    try {
      file = path.join(prebuilt, readdirSync(prebuilt).find((f) => f === mine) ?? '');
      statSync(file);
    } catch {
      this.skip(); // no prebuilt binary for this platform and Node.js
    }
    assert.match(engineProblem(file) ?? '', /not built with isogear's module-handles patch: run `npm ci`/);
  });

  it('refuses an addon without the marker, saying how to fix it', () => {
    const unpatched = path.join(tmp, 'unpatched.node');
    writeFileSync(unpatched, Buffer.from('\x7fELF isogear-patch:module-handles-lock:0 ...'));
    assert.match(engineProblem(unpatched) ?? '', /not built with isogear's module-handles patch: run `npm ci`/);
  });

  it('refuses a missing addon', () => {
    assert.match(engineProblem(path.join(tmp, 'absent.node')) ?? '', /is missing: run `npm ci`/);
  });

  it('finds the marker anywhere in the binary, then loads it', () => {
    const patched = path.join(tmp, 'patched.node');
    writeFileSync(patched, Buffer.concat([Buffer.alloc(1 << 20), Buffer.from(ENGINE_PATCH_MARKER), Buffer.alloc(16)]));
    // past the marker check: a file that is no shared library is refused for that
    assert.match(engineProblem(patched) ?? '', /^the isolated-vm addon \S+patched\.node does not load: .+; run `npm ci`$/);
    assert.equal(loadProblem(installedAddonPath()), undefined);
  });
});
