/**
 * The `isogear` command line, run as a subprocess (node src/cli/main.ts through tsx) against a
 * real server.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { scratchDataDir } from '../helpers/process';
import { pb } from '../helpers/client';
import { assertNoLeaks, sleep, startTestServer, type TestServer } from '../helpers/server';

const CLI = path.join(__dirname, '../../src/cli/main.ts');

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function isogear(args: string[], opts: { env?: Record<string, string>; stdin?: string; address?: string } = {}): Promise<Ran> {
  const env: Record<string, string | undefined> = { ...process.env, ISOGEAR_ADDRESS: opts.address, ISOGEAR_API_KEY: undefined, ...opts.env };
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdin.end(opts.stdin ?? '');
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stdout, stderr })));
}

/** Polls `probe` until it holds (at most `ms`): waits on a state rather than for a time. */
async function until(what: string, probe: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > end) throw new Error(`gave up waiting until ${what}`);
    await sleep(20);
  }
}

/** Busy-loops until cancelled (or its timeout): run it in isolate mode, where a cancel stops it at once. */
const SPIN_FOREVER = 'export default () => { for (;;) {} }';
/** Busy-loops for `args.ms`, then returns "slept". */
const SPIN = 'export default (a) => { const end = Date.now() + a.ms; while (Date.now() < end) {} return "slept"; }';
const EXECUTION_ID = /^exe_[0-9a-f]{20}$/;

describe('isogear command line', function () {
  this.timeout(30_000);
  let t: TestServer;
  let dir: string;
  let address: string;
  const file = (name: string, text: string): string => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const cli = (args: string[], opts: { env?: Record<string, string>; stdin?: string } = {}): Promise<Ran> => isogear(args, { address, ...opts });

  before(async () => {
    t = await startTestServer();
    address = t.server.grpcAddress;
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-cli-'));
  });
  after(async () => {
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('exec: the result on stdout, the script logs on stderr, exit 0', async () => {
    const script = file('double.js', `import twice from "twice";\nconsole.log('doubling', 21);\nexport default (a) => ({ value: twice(a.n) });\n`);
    const lib = file('twice.js', 'export default (x) => x * 2;\n');
    const r = await cli(['exec', script, '--args', '{"n": 21}', '--module', `twice=${lib}`, '--mode', 'isolate', '--timeout', '2000', '--memory', '32']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '{"value":42}\n');
    assert.equal(r.stderr, '[log] doubling 21\n');
  });

  it('exec - reads the script from standard input; --json prints the whole response', async () => {
    const r = await cli(['--json', 'exec', '-', '--mode', 'shared'], { stdin: 'export default () => [1, "two", null]' });
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { outcome: string; result: unknown; interpreterId: string };
    assert.equal(res.outcome, 'OUTCOME_SUCCEEDED');
    assert.deepEqual(res.result, [1, 'two', null]);
    assert.match(res.interpreterId, /^itp_/);
  });

  it('exec and register take TypeScript: a .ts file is TypeScript, --language says so for others and for standard input', async () => {
    const main = file('main.ts', 'import { twice } from "./lib.ts";\nexport default (a: { n: number }): number => twice(a.n);\n');
    const lib = file('lib.ts', 'export const twice = (n: number): number => n * 2;\n');
    const r = await cli(['exec', main, '--module', `./lib.ts=${lib}`, '--args', '{"n": 21}']);
    assert.deepEqual([r.code, r.stdout, r.stderr], [0, '42\n', '']);
    const piped = await cli(['exec', '-', '--language', 'typescript'], { stdin: 'export default (): string => "typed";' });
    assert.deepEqual([piped.code, piped.stdout], [0, '"typed"\n']);
    const asJs = await cli(['exec', main, '--language', 'javascript', '--module', `./lib.ts=${lib}`]);
    assert.equal(asJs.code, 1, 'the same file read as JavaScript does not parse');
    const reg = await cli(['register', 'cli.ts', file('h.ts', 'export default (p: { n: number }): number => p.n + 1;\n')]);
    assert.equal(reg.code, 0, reg.stderr);
    assert.equal((await cli(['trigger', 'cli.ts', '--payload', '{"n": 1}'])).stdout, `${reg.stdout.trim()}  2\n`);
    await cli(['release', reg.stdout.trim()]);
  });

  it('a script that fails exits 1 with one line saying how', async () => {
    const r = await cli(['exec', '-'], { stdin: 'export default () => { throw new TypeError("no way"); }' });
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'isogear: failed: TypeError: no way\n');
    const slow = await cli(['exec', '-', '--timeout', '100', '--mode', 'shared'], { stdin: 'await new Promise(() => {}); export default 1;' });
    assert.equal(slow.code, 1);
    assert.match(slow.stderr, /^isogear: timed_out: /);
  });

  it('usage errors exit 2 with a one-line message', async () => {
    const cases: [string[], RegExp][] = [
      [['exec', '-', '--args', '{nope'], /^isogear: --args must be JSON/],
      [['exec', path.join(dir, 'missing.js')], /^isogear: cannot read .*missing\.js: ENOENT/],
      [['exec', '-', '--mode', 'fast'], /argument 'fast' is invalid. Allowed choices are shared, isolate/],
      [['exec', '-', '--timeout', 'soon'], /^isogear: --timeout must be a whole number/],
      [['exec', '-', '--module', 'noequals'], /^isogear: --module takes name=FILE/],
      [['release'], /^isogear: give a registration id or --interpreter ID/],
      [['pause'], /^isogear: give one of: a registration id, --interpreter ID, --trigger NAME/],
      [['resume', 'reg_x', '--trigger', 't'], /^isogear: give one of: a registration id, --interpreter ID, --trigger NAME/],
      [['exec'], /missing required argument 'file'/],
      [['frobnicate'], /unknown command 'frobnicate'/],
      [['ls', 'things'], /'things' is invalid/],
      [['wait', 'exe_0', '--timeout-ms', 'soon'], /^isogear: --timeout-ms must be a whole number/],
      [['wait'], /missing required argument 'execution-id'/],
      [['cancel'], /missing required argument 'execution-id'/],
      [['ps', '--state', 'sleeping'], /argument 'sleeping' is invalid. Allowed choices are queued, running, done/],
      [['rollback', 'svc', 'latest'], /^isogear: VERSION must be a whole number from 1 \(see isogear versions svc\), got "latest"/],
      [['rollback', 'svc', '0'], /^isogear: VERSION must be a whole number from 1/],
      [['rollback', 'svc'], /missing required argument 'version'/],
      [['versions'], /missing required argument 'name'/],
      [['tail', '--trigger'], /option '--trigger <name>' argument missing/],
      [['tail', 'everything'], /too many arguments for 'tail'/],
    ];
    for (const [args, pattern] of cases) {
      const r = await cli(args, { stdin: 'export default 1' });
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line for ${args.join(' ')}: ${r.stderr}`);
    }
  });

  it('gRPC errors exit 3 with the status and the message', async () => {
    const missing = await cli(['get', 'itp_doesnotexist']);
    assert.equal(missing.code, 3);
    assert.equal(missing.stderr, 'isogear: NOT_FOUND: interpreter itp_doesnotexist not found\n');
    const bad = await cli(['trigger', 'no.such.trigger']);
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /^isogear: NOT_FOUND: no registration is bound to trigger "no.such.trigger"\n$/);
    const down = await isogear(['ls'], { address: '127.0.0.1:1' });
    assert.equal(down.code, 3);
    assert.equal(down.stderr, 'isogear: UNAVAILABLE: cannot reach the isogear server at 127.0.0.1:1 (connect ECONNREFUSED 127.0.0.1:1); is it running, and is the address right?\n', 'one line, no stack');
  });

  it('register, trigger, ls, get and release: the lifecycle from a shell', async () => {
    const handler = file('handler.js', 'export default (p) => { console.info("got", p.id); return { seen: p.id }; };\n');
    const reg = await cli(['register', 'cli.orders', handler, '--mode', 'shared', '--description', 'order hook']);
    assert.equal(reg.code, 0, reg.stderr);
    const regId = reg.stdout.trim();
    assert.match(regId, /^reg_/);
    const interpreterId = /in interpreter (itp_\S+)/.exec(reg.stderr)?.[1] as string;
    assert.ok(interpreterId);
    const second = await cli(['register', 'cli.orders', '-', '--interpreter', interpreterId], { stdin: 'export default (p) => p.id * 10' });
    assert.equal(second.code, 0, second.stderr);

    const fired = await cli(['trigger', 'cli.orders', '--payload', '{"id": 7}']);
    assert.equal(fired.code, 0, fired.stderr);
    assert.deepEqual(fired.stdout.trim().split('\n'), [`${regId}  {"seen":7}`, `${second.stdout.trim()}  70`]);
    assert.equal(fired.stderr, '[info] got 7\n');

    const regs = await cli(['ls', 'registrations', '--trigger', 'cli.orders']);
    assert.equal(regs.code, 0, regs.stderr);
    const lines = regs.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^ID\s+SOURCE\s+INTERPRETER\s+STATE\s+RUNS\s+FAILURES\s+DESCRIPTION$/);
    assert.equal(lines.length, 3);
    // aligned: every column starts where its header does
    const at = (line: string, col: string): number => line.indexOf(col);
    assert.equal(at(lines[1], 'cli.orders'), at(lines[0], 'SOURCE'));
    assert.equal(at(lines[1], interpreterId), at(lines[0], 'INTERPRETER'));
    assert.ok(lines[1].endsWith('order hook'));
    assert.equal(at(lines[1], 'active'), at(lines[0], 'STATE'));

    // pause and resume: the ids changed, one per line; a paused registration does not run
    const paused = await cli(['pause', regId]);
    assert.deepEqual([paused.code, paused.stdout], [0, `${regId}\n`]);
    assert.equal((await cli(['pause', '--trigger', 'cli.orders'])).stdout, `${second.stdout.trim()}\n`, 'only what changed');
    assert.match((await cli(['ls', 'registrations'])).stdout, new RegExp(`^${regId}\\s+cli.orders\\s+${interpreterId}\\s+paused\\s`, 'm'));
    assert.equal((await cli(['trigger', 'cli.orders'])).stdout, '', 'every registration paused: nothing runs');
    const resumed = await cli(['--json', 'resume', '--interpreter', interpreterId]);
    assert.deepEqual(JSON.parse(resumed.stdout), { registrationIds: [regId, second.stdout.trim()] });
    assert.equal((await cli(['resume', regId])).stdout, '');
    const unknown = await cli(['pause', 'reg_nope']);
    assert.deepEqual([unknown.code, unknown.stderr], [3, 'isogear: NOT_FOUND: registration reg_nope not found (unknown or already released)\n']);

    const interps = await cli(['ls']);
    assert.match(interps.stdout, new RegExp(`^${interpreterId}\\s+-\\s+shared\\s+ready\\s+2\\s+0\\s+\\d+ KiB$`, 'm'));
    const json = JSON.parse((await cli(['--json', 'ls', 'interpreters'])).stdout) as { id: string }[];
    assert.deepEqual(json.map((i) => i.id), [interpreterId]);

    const got = await cli(['get', interpreterId]);
    assert.equal(got.code, 0, got.stderr);
    assert.match(got.stdout, /^state\s+ready$/m);
    assert.match(got.stdout, new RegExp(`^${regId}\\s+cli.orders\\s+active\\s+1\\s+0\\s+order hook$`, 'm'));

    // a schedule shows its cron and time zone where a trigger shows its name, and pauses the same way
    const sched = await cli(['exec', '-'], { stdin: `export default () => gears.schedule('0 9 * * 1-5', () => {}, { timezone: 'Europe/Paris', description: 'mornings' });` });
    assert.equal(sched.code, 0, sched.stderr);
    const schedId = JSON.parse(sched.stdout) as string;
    assert.match(sched.stderr, new RegExp(`^\\[isogear\\] registered ${schedId} on schedule 0 9 \\* \\* 1-5 Europe/Paris$`, 'm'));
    assert.equal((await cli(['pause', schedId])).stdout, `${schedId}\n`);
    assert.match((await cli(['ls', 'registrations'])).stdout, new RegExp(`^${schedId}\\s+schedule 0 9 \\* \\* 1-5 Europe/Paris\\s+itp_\\w+\\s+paused\\s+0\\s+0\\s+mornings$`, 'm'));
    await cli(['release', schedId]);

    const one = await cli(['release', regId]);
    assert.equal(one.stdout, `${regId}\n`);
    const rest = await cli(['release', '--interpreter', interpreterId]);
    assert.equal(rest.stdout, `${second.stdout.trim()}\n`);
    assert.equal((await cli(['ls'])).stdout, 'ID  NAME  MODE  STATE  REGISTRATIONS  RUNNING  HEAP\n');
  });

  it('exec --name and --replace: a named interpreter, refused twice, upgraded once', async () => {
    const v = (n: number): string => `gears.register('cli.named', () => ${n}); export default ${n};`;
    const first = await cli(['exec', '-', '--name', 'cli-svc', '--mode', 'shared'], { stdin: v(1) });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /^\[isogear\] registered reg_\w+ on cli\.named$/m);
    const again = await cli(['exec', '-', '--name', 'cli-svc'], { stdin: v(2) });
    assert.equal(again.code, 3);
    assert.match(again.stderr, /^isogear: ALREADY_EXISTS: an interpreter named "cli-svc" already exists; set replace to upgrade it\n$/);
    const upgraded = await cli(['exec', '-', '--name', 'cli-svc', '--replace', '--mode', 'shared'], { stdin: v(3) });
    assert.equal(upgraded.code, 0, upgraded.stderr);
    assert.equal(upgraded.stdout, '3\n');
    assert.match((await cli(['trigger', 'cli.named'])).stdout, /^reg_\w+ {2}3\n$/);

    // versions lists both, the upgrade current; rollback brings version 1 back as version 3
    const versions = await cli(['versions', 'cli-svc']);
    assert.equal(versions.code, 0, versions.stderr);
    const sha1 = createHash('sha256').update(v(1)).digest('hex').slice(0, 12);
    assert.match(versions.stdout, new RegExp(`^VERSION\\s+CREATED\\s+INTERPRETER\\s+FROM\\s+SOURCE\\n1\\s+\\d+s\\s+-\\s+-\\s+${sha1} ${v(1).length} B\\n2\\*\\s+\\d+s\\s+itp_\\w+\\s+-\\s+[0-9a-f]{12} \\d+ B\\n$`));
    const back = await cli(['rollback', 'cli-svc', '1']);
    assert.equal(back.code, 0, back.stderr);
    assert.equal(back.stdout, '{"version":3,"rolledBackFrom":1}\n');
    assert.match(back.stderr, /^\[isogear\] registered reg_\w+ on cli\.named$/m);
    assert.match((await cli(['trigger', 'cli.named'])).stdout, /^reg_\w+ {2}1\n$/);
    const listed = JSON.parse((await cli(['--json', 'versions', 'cli-svc'])).stdout) as { versions: { version: number; current?: boolean; rolledBackFrom?: number }[] };
    assert.deepEqual(
      listed.versions.map((x) => [x.version, x.current ?? false, x.rolledBackFrom ?? 0]),
      [
        [1, false, 0],
        [2, false, 0],
        [3, true, 1],
      ],
    );
    const missing = await cli(['rollback', 'cli-svc', '7']);
    assert.deepEqual([missing.code, missing.stderr], [3, 'isogear: NOT_FOUND: "cli-svc" has no version 7: it keeps versions 1 to 3 (ISOGEAR_MAX_VERSIONS)\n']);
    const unknown = await cli(['versions', 'cli-nothing']);
    assert.deepEqual([unknown.code, unknown.stderr], [3, 'isogear: NOT_FOUND: no interpreter named "cli-nothing": it has no versions\n']);

    const named = JSON.parse((await cli(['--json', 'ls', '--name', 'cli-svc'])).stdout) as { id: string }[];
    assert.equal(named.length, 1);
    assert.equal((await cli(['release', '--interpreter', named[0].id])).code, 0);
  });

  it('exec --detach prints the execution id; wait prints its result and exits as exec would', async () => {
    const started = await cli(['exec', '-', '--detach', '--args', '{"n": 41}', '--mode', 'shared'], { stdin: 'console.log("working");\nexport default (a) => a.n + 1;' });
    assert.equal(started.code, 0, started.stderr);
    assert.equal(started.stderr, '');
    const id = started.stdout.trim();
    assert.match(id, EXECUTION_ID);
    assert.equal(started.stdout, `${id}\n`, 'just the id, one line');
    const done = await cli(['wait', id]);
    assert.deepEqual(done, { code: 0, stdout: '42\n', stderr: '[log] working\n' });
    // the DONE execution is kept: waiting again answers the same
    assert.deepEqual(await cli(['wait', id, '--timeout-ms', '100']), done);

    const failing = await cli(['exec', '-', '--detach'], { stdin: 'export default () => { throw new TypeError("later"); }' });
    assert.equal(failing.code, 0, failing.stderr);
    const failed = await cli(['wait', failing.stdout.trim()]);
    assert.deepEqual(failed, { code: 1, stdout: '', stderr: 'isogear: failed: TypeError: later\n' });

    // --json: the whole execution, when started and when waited for
    const json = await cli(['--json', 'exec', '-', '--detach', '--mode', 'isolate'], { stdin: 'export default ["a", 1]' });
    assert.equal(json.code, 0, json.stderr);
    const execution = JSON.parse(json.stdout) as { id: string; kind: string; state: string; background: boolean };
    assert.match(execution.id, EXECUTION_ID);
    assert.equal(execution.kind, 'EXECUTION_KIND_EXECUTE');
    assert.ok(['EXECUTION_STATE_QUEUED', 'EXECUTION_STATE_RUNNING'].includes(execution.state), execution.state);
    assert.equal(execution.background, true);
    const waited = await cli(['--json', 'wait', execution.id]);
    assert.equal(waited.code, 0, waited.stderr);
    const after = JSON.parse(waited.stdout) as { id: string; state: string; executeResponse: { outcome: string; result: unknown } };
    assert.equal(after.id, execution.id);
    assert.equal(after.state, 'EXECUTION_STATE_DONE');
    assert.equal(after.executeResponse.outcome, 'OUTCOME_SUCCEEDED');
    assert.deepEqual(after.executeResponse.result, ['a', 1]);
    await assertNoLeaks(t.manager);
  });

  it('wait --timeout-ms on a running execution exits 4 with its state; cancel ends it and wait reports aborted', async () => {
    const started = await cli(['exec', '-', '--detach', '--mode', 'isolate', '--timeout', '30000'], { stdin: SPIN_FOREVER });
    assert.equal(started.code, 0, started.stderr);
    const id = started.stdout.trim();
    await until(`${id} runs`, async () => (await t.client.getExecution({ executionId: id })).state === pb.ExecutionState.EXECUTION_STATE_RUNNING);

    const notYet = await cli(['wait', id, '--timeout-ms', '100']);
    assert.deepEqual(notYet, { code: 4, stdout: '', stderr: `isogear: ${id} is running, not done yet\n` });
    const notYetJson = await cli(['--json', 'wait', id, '--timeout-ms', '100']);
    assert.equal(notYetJson.code, 4, notYetJson.stderr);
    assert.equal((JSON.parse(notYetJson.stdout) as { state: string }).state, 'EXECUTION_STATE_RUNNING');

    const cancelled = await cli(['cancel', id]);
    assert.deepEqual(cancelled, { code: 0, stdout: 'done  aborted\n', stderr: '' });
    const ended = await cli(['wait', id]);
    assert.equal(ended.code, 1);
    assert.equal(ended.stdout, '');
    assert.match(ended.stderr, /^isogear: aborted: \w+: cancelled by CancelExecution\n$/);
    const endedJson = JSON.parse((await cli(['--json', 'wait', id])).stdout) as { state: string; executeResponse: { outcome: string } };
    assert.equal(endedJson.state, 'EXECUTION_STATE_DONE');
    assert.equal(endedJson.executeResponse.outcome, 'OUTCOME_ABORTED');
    // cancelling a DONE execution leaves it as it is
    assert.deepEqual(await cli(['cancel', id]), cancelled);
    await assertNoLeaks(t.manager);
  });

  it('ps lists queued and running executions, background and sync; ps --all also the DONE background ones', async () => {
    // two runs busy for 10 s, each in its own isolate: one started with --detach, one a plain exec
    // still waiting for its result. The checks while they run take about 3 s here (three CLI runs
    // sharing two CPUs with the loops).
    const started = await cli(['exec', '-', '--detach', '--mode', 'isolate', '--timeout', '30000', '--args', '{"ms": 10000}'], { stdin: SPIN });
    assert.equal(started.code, 0, started.stderr);
    const bg = started.stdout.trim();
    const sync = cli(['exec', '-', '--mode', 'isolate', '--timeout', '30000', '--args', '{"ms": 10000}'], { stdin: SPIN });
    let syncId = '';
    await until('both run', async () => {
      // RUNNING, and in their interpreters (a new one's id is known once it exists)
      const running = (await t.client.listExecutions({ state: pb.ExecutionState.EXECUTION_STATE_RUNNING })).executions.filter((e) => e.interpreterId);
      syncId = running.find((e) => !e.background)?.id ?? '';
      return running.some((e) => e.id === bg) && syncId !== '';
    });

    const ps = await cli(['ps']);
    assert.equal(ps.code, 0, ps.stderr);
    const lines = ps.stdout.trimEnd().split('\n');
    assert.match(lines[0], /^ID\s+KIND\s+STATE\s+OUTCOME\s+RUN\s+INTERPRETER\s+TRIGGER\s+REGISTRATION\s+AGE$/);
    assert.equal(lines.length, 3, ps.stdout);
    const bgRow = new RegExp(`^${bg}\\s+execute\\s+running\\s+-\\s+background\\s+(itp_\\w+)\\s+-\\s+-\\s+\\d+s$`, 'm');
    const interpreterId = bgRow.exec(ps.stdout)?.[1] as string;
    assert.ok(interpreterId, ps.stdout);
    assert.match(ps.stdout, new RegExp(`^${syncId}\\s+execute\\s+running\\s+-\\s+sync\\s+itp_\\w+\\s+-\\s+-\\s+\\d+s$`, 'm'));
    // aligned: every column starts where its header does
    assert.equal(lines[1].indexOf('running'), lines[0].indexOf('STATE'));
    assert.equal(lines[1].indexOf('itp_'), lines[0].indexOf('INTERPRETER'));

    const inOne = await cli(['ps', '--interpreter', interpreterId]);
    assert.equal(inOne.stdout.trimEnd().split('\n').length, 2, inOne.stdout);
    assert.match(inOne.stdout, bgRow);
    // (the proto JSON mapping leaves background out when it is false)
    const json = JSON.parse((await cli(['--json', 'ps', '--state', 'running'])).stdout) as { id: string; background?: boolean }[];
    assert.deepEqual(json.map((e) => [e.id, e.background ?? false]).sort(), [[bg, true], [syncId, false]].sort());

    assert.deepEqual(await cli(['wait', bg]), { code: 0, stdout: '"slept"\n', stderr: '' });
    assert.deepEqual(await sync, { code: 0, stdout: '"slept"\n', stderr: '' });
    const header = 'ID  KIND  STATE  OUTCOME  RUN  INTERPRETER  TRIGGER  REGISTRATION  AGE\n';
    assert.equal((await cli(['ps'])).stdout, header);
    assert.equal((await cli(['ps', '--state', 'queued'])).stdout, header);
    // --all: the DONE background run is kept, the synchronous one is not (its caller had its result)
    const all = await cli(['ps', '--all']);
    assert.equal(all.code, 0, all.stderr);
    assert.match(all.stdout, new RegExp(`^${bg}\\s+execute\\s+done\\s+succeeded\\s+background\\s+${interpreterId}\\s+-\\s+-\\s+\\d+s$`, 'm'));
    assert.doesNotMatch(all.stdout, new RegExp(syncId));
    assert.match((await cli(['ps', '--state', 'done'])).stdout, new RegExp(`^${bg}\\s`, 'm'));
    await assertNoLeaks(t.manager);
  });

  it('trigger --detach runs the handlers in the background; wait prints one line per handler, as trigger does', async () => {
    const reg = await cli(['register', 'cli.later', '-', '--mode', 'shared'], { stdin: 'export default (p) => { console.info("seen", p.id); return p.id * 2; };' });
    assert.equal(reg.code, 0, reg.stderr);
    const regId = reg.stdout.trim();
    const interpreterId = /in interpreter (itp_\S+)/.exec(reg.stderr)?.[1] as string;

    const started = await cli(['trigger', 'cli.later', '--detach', '--payload', '{"id": 7}']);
    assert.equal(started.code, 0, started.stderr);
    const id = started.stdout.trim();
    assert.match(id, EXECUTION_ID);
    assert.deepEqual(await cli(['wait', id]), { code: 0, stdout: `${regId}  14\n`, stderr: '[info] seen 7\n' });

    // a failing handler: wait exits 1 as trigger does, and ps --all sums the fan-out up
    const bad = await cli(['register', 'cli.later', '-', '--interpreter', interpreterId], { stdin: 'export default () => { throw new Error("nope"); }' });
    assert.equal(bad.code, 0, bad.stderr);
    const mixed = (await cli(['trigger', 'cli.later', '--detach', '--payload', '{"id": 1}'])).stdout.trim();
    const waited = await cli(['wait', mixed]);
    assert.equal(waited.code, 1);
    assert.equal(waited.stdout, `${regId}  2\n`);
    assert.equal(waited.stderr, `[info] seen 1\nisogear: ${bad.stdout.trim()}: failed: Error: nope\n`);
    assert.match((await cli(['ps', '--all'])).stdout, new RegExp(`^${mixed}\\s+trigger\\s+done\\s+1/2 failed\\s+background\\s+-\\s+cli\\.later\\s+-\\s+\\d+s$`, 'm'));

    assert.equal((await cli(['release', '--interpreter', interpreterId])).code, 0);
    const none = await cli(['trigger', 'cli.later', '--detach']);
    assert.equal(none.code, 3);
    assert.match(none.stderr, /^isogear: NOT_FOUND: no registration is bound to trigger "cli.later"\n$/);
    await assertNoLeaks(t.manager);
  });

  it('wait and cancel: a malformed execution id is INVALID_ARGUMENT, an unknown one NOT_FOUND, exit 3', async () => {
    for (const cmd of ['wait', 'cancel']) {
      const bad = await cli([cmd, 'nope']);
      assert.deepEqual(bad, { code: 3, stdout: '', stderr: 'isogear: INVALID_ARGUMENT: execution_id "nope" is not an execution id (exe_ and 20 hex digits)\n' }, cmd);
      const unknown = await cli([cmd, 'exe_00000000000000000000']);
      assert.equal(unknown.code, 3, cmd);
      assert.equal(unknown.stdout, '', cmd);
      assert.match(unknown.stderr, /^isogear: NOT_FOUND: execution exe_0{20} not found\b[^\n]*\n$/, cmd);
    }
  });

  it('--help on every command, with examples, exits 0', async () => {
    for (const cmd of [[], ['serve'], ['exec'], ['register'], ['trigger'], ['release'], ['pause'], ['resume'], ['versions'], ['rollback'], ['ls'], ['get'], ['wait'], ['ps'], ['cancel'], ['tail']]) {
      const r = await cli([...cmd, '--help']);
      assert.equal(r.code, 0, `${cmd.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Examples:\n\s+\$ isogear/, `${cmd.join(' ') || 'isogear'} --help has examples`);
    }
  });

  it('takes the address and API key from ISOGEAR_ADDRESS and ISOGEAR_API_KEY, or from flags', async () => {
    const keys = file('keys.json', JSON.stringify({ tenants: [{ name: 'ops', keySha256: createHash('sha256').update('cli-key').digest('hex') }] }));
    const keyed = await startTestServer({ ISOGEAR_API_KEYS_FILE: keys });
    try {
      const noKey = await isogear(['ls'], { address: keyed.server.grpcAddress });
      assert.equal(noKey.code, 3);
      assert.match(noKey.stderr, /^isogear: UNAUTHENTICATED: missing credentials/);
      const fromEnv = await isogear(['exec', '-'], { address: keyed.server.grpcAddress, env: { ISOGEAR_API_KEY: 'cli-key' }, stdin: 'export default "env"' });
      assert.equal(fromEnv.stdout, '"env"\n', fromEnv.stderr);
      const fromFlags = await isogear(['--address', keyed.server.grpcAddress, '--api-key', 'cli-key', 'exec', '-'], { stdin: 'export default "flags"' });
      assert.equal(fromFlags.stdout, '"flags"\n', fromFlags.stderr);
    } finally {
      await keyed.close();
    }
  });

  it('serve starts the server with flags for its settings and stops on SIGTERM with exit 0', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve', '--grpc-address=127.0.0.1:0', '--metrics-address=127.0.0.1:0', '--shared-isolates=1', '--default-mode=shared', `--data-dir=${scratchDataDir()}`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const started = await new Promise<{ grpcAddress: string; config: { defaultMode: string } }>((resolve, reject) => {
      const timer = setInterval(() => {
        const line = out.split('\n').find((l) => l.includes('isogear started'));
        if (line) {
          clearInterval(timer);
          resolve(JSON.parse(line) as { grpcAddress: string; config: { defaultMode: string } });
        }
      }, 20);
      void exited.then(() => reject(new Error(`serve exited early: ${out}`)));
    });
    assert.equal(started.config.defaultMode, 'shared');
    const r = await isogear(['exec', '-'], { address: started.grpcAddress, stdin: 'export default 5' });
    assert.equal(r.stdout, '5\n', r.stderr);
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.match(out, /"msg":"stopped"/);
  });
});
