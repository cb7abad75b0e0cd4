import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ENGINE_PATCH_MARKER, engineProblem, installedAddonPath } from '../../src/sandbox/engineCheck';

describe('engine check: the isolated-vm addon carries the module-handles patch', () => {
  let tmp: string;
  before(() => (tmp = mkdtempSync(path.join(os.tmpdir(), 'isogear-engine-'))));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('accepts the addon npm ci built (postinstall patched and compiled it)', () => {
    assert.equal(engineProblem(), undefined);
    assert.match(installedAddonPath(), /isolated-vm[/\\]out[/\\]isolated_vm\.node$/);
  });

  it('refuses an addon without the marker, saying how to fix it', () => {
    const unpatched = path.join(tmp, 'unpatched.node');
    writeFileSync(unpatched, Buffer.from('\x7fELF isogear-patch:module-handles-lock:0 ...'));
    assert.match(engineProblem(unpatched) ?? '', /not built with isogear's module-handles patch: run `npm ci`/);
  });

  it('refuses a missing addon', () => {
    assert.match(engineProblem(path.join(tmp, 'absent.node')) ?? '', /is missing: run npm ci/);
  });

  it('finds the marker anywhere in the binary', () => {
    const patched = path.join(tmp, 'patched.node');
    writeFileSync(patched, Buffer.concat([Buffer.alloc(1 << 20), Buffer.from(ENGINE_PATCH_MARKER), Buffer.alloc(16)]));
    assert.equal(engineProblem(patched), undefined);
  });
});
