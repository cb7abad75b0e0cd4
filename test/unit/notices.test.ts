import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { allowed, NOTICES_FILE, productionDependencies, refused, render } from '../../scripts/notices';

describe('license and third-party notices', () => {
  it('reads SPDX expressions: every license of an AND, one of an OR; none declared is refused', () => {
    assert.ok(allowed('MIT'));
    assert.ok(allowed('(Apache-2.0 AND BSD-3-Clause)'));
    assert.ok(allowed('(MIT OR GPL-3.0-only)'), 'an OR is met by one allowed license');
    assert.ok(!allowed('GPL-3.0-only'));
    assert.ok(!allowed('MIT AND GPL-2.0-only'), 'an AND needs every one');
    assert.ok(!allowed('SEE LICENSE IN LICENSE.txt'));
    assert.ok(!allowed(''));
  });

  it('every package a production install brings declares a compatible license, and THIRD_PARTY_NOTICES.md lists them as installed', function () {
    this.timeout(30_000);
    const deps = productionDependencies();
    assert.ok(deps.length > 20, `found ${deps.length} production packages`);
    for (const name of ['@grpc/grpc-js', 'isolated-vm', 'better-sqlite3', 'prom-client']) {
      assert.ok(deps.some((d) => d.name === name), `${name} is a production dependency`);
    }
    assert.ok(!deps.some((d) => d.name === 'mocha' || d.name === 'typescript'), 'dev dependencies are not listed');
    assert.deepEqual(refused(deps).map((d) => `${d.name}@${d.version}: ${d.license}`), []);
    assert.equal(readFileSync(NOTICES_FILE, 'utf8'), render(deps), "THIRD_PARTY_NOTICES.md is stale: run 'npm run notices' and commit it");
  });

  it('the repository carries the Apache License 2.0 and a NOTICE, and package.json says so', () => {
    const root = `${__dirname}/../..`;
    const license = readFileSync(`${root}/LICENSE`, 'utf8');
    assert.match(license, /^\s*Apache License\s+Version 2\.0, January 2004/);
    assert.match(license, /END OF TERMS AND CONDITIONS/);
    assert.match(readFileSync(`${root}/NOTICE`, 'utf8'), /^isogear\nCopyright \d{4} the isogear authors/);
    assert.equal((JSON.parse(readFileSync(`${root}/package.json`, 'utf8')) as { license: string }).license, 'Apache-2.0');
  });
});
