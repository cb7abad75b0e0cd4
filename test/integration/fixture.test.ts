import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';

const ROOT = path.join(__dirname, '../..');

interface Report {
  passes: { fullTitle: string }[];
  failures: { fullTitle: string; err: { message?: string } }[];
}

/**
 * The server fixture (test/helpers/fixture.ts) catches leaks instead of tidying them: run its
 * cases (test/helpers/fixture.cases.ts) in a child mocha and check how each one ends.
 */
describe('the server fixture catches leaks', function () {
  this.timeout(60_000);

  it('fails a test that forgets a registration, passes one that releases it or declares leavesRegistrations, and reports a failed test’s own error', async () => {
    const mocha = require.resolve('mocha/bin/mocha.js');
    // mocha exits non-zero when cases fail, as some must: the report is what counts
    const { stdout } = await promisify(execFile)(process.execPath, [mocha, '--reporter', 'json', 'test/helpers/fixture.cases.ts'], { cwd: ROOT, maxBuffer: 16 << 20 }).catch(
      (e: { stdout?: string; stderr?: string }) => {
        if (!e.stdout) throw new Error(`the child mocha gave no report: ${e.stderr}`);
        return { stdout: e.stdout };
      },
    );
    const report = JSON.parse(stdout) as Report;
    const failures = Object.fromEntries(report.failures.map((f) => [f.fullTitle, f.err.message ?? '']));
    const hook = (c: string): string => `case: ${c} "after each" hook for "runs"`;
    assert.deepEqual(
      report.passes.map((p) => p.fullTitle).sort(),
      ['declares leavesRegistrations but leaves none', 'forgets a registration', 'leaves registrations on purpose', 'releases what it registered'].map((c) => `case: ${c} runs`),
      'every test body but the failing one passes',
    );
    assert.deepEqual(Object.keys(failures).sort(), [hook('declares leavesRegistrations but leaves none'), 'case: fails while holding a registration runs', hook('forgets a registration')]);
    assert.match(failures[hook('forgets a registration')], /^something leaked/);
    assert.match(failures[hook('declares leavesRegistrations but leaves none')], /left no registration/);
    assert.equal(failures['case: fails while holding a registration runs'], 'the test’s own failure', 'its registration was tidied, not reported');
  });
});
