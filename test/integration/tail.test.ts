/**
 * `isogear tail`, run as a subprocess (node src/cli/main.ts through tsx) against real servers:
 * the lines it prints while the tests drive the server, its filters and --json, a refused
 * filter, Ctrl-C (a real SIGINT), and reconnecting to a server restarted on the same port.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { pb } from '@isogear/client';
import { run, type Io } from '../../src/cli/main';
import { eventLine } from '../../packages/client/src/cli/tail';
import { useTestServer } from '../helpers/fixture';
import { releaseInterpreters, waitFor } from '../helpers/proto';
import { startTestServer, type TestServer } from '../helpers/server';

const CLI = path.join(__dirname, '../../src/cli/main.ts');

/** A running `isogear tail`: what it printed so far, waits on that, and its end. */
interface Tailing {
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout (or stderr) matches `pattern`; fails after `ms` with what it printed. */
  waitOut(pattern: RegExp, ms?: number): Promise<void>;
  waitErr(pattern: RegExp, ms?: number): Promise<void>;
  /** Its exit code. */
  exited: Promise<number | null>;
  /** Ctrl-C: SIGINT, then its exit code. */
  interrupt(): Promise<number | null>;
  /** Kills it if it still runs (a failed test's cleanup). */
  kill(): void;
  /** Closes the reading end of its stdout (as `isogear tail | head` does once head is done). */
  closeStdout(): void;
}

function tail(args: string[], address: string): Tailing {
  const env: Record<string, string | undefined> = { ...process.env, ISOGEAR_ADDRESS: address, ISOGEAR_API_KEY: undefined };
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let done = false;
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      done = true;
      resolve(code);
    }),
  );
  const wait = async (what: string, text: () => string, pattern: RegExp, ms = 15_000): Promise<void> => {
    const end = Date.now() + ms;
    while (!pattern.test(text())) {
      if (done && !pattern.test(text())) throw new Error(`tail exited before its ${what} matched ${pattern}\nstdout:\n${out}\nstderr:\n${err}`);
      if (Date.now() > end) throw new Error(`tail's ${what} did not match ${pattern} in ${ms} ms\nstdout:\n${out}\nstderr:\n${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return {
    stdout: () => out,
    stderr: () => err,
    waitOut: (pattern, ms) => wait('stdout', () => out, pattern, ms),
    waitErr: (pattern, ms) => wait('stderr', () => err, pattern, ms),
    exited,
    interrupt: () => {
      child.kill('SIGINT');
      return exited;
    },
    kill: () => {
      if (!done) child.kill('SIGKILL');
    },
    closeStdout: () => child.stdout.destroy(),
  };
}

/** Waits until `t` has `n` watches open (tail's is open: it sees every event from now on). */
const watching = (t: TestServer, n = 1): Promise<void> => waitFor(`${n} watch(es) open`, () => t.manager.counters().watch.streams === n, 15_000);

const TIME = String.raw`\d\d:\d\d:\d\d\.\d{3}`;
const DURATIONS = String.raw`wall \d+\.\d ms  cpu \d+\.\d ms`;
const lines = (text: string): string[] => text.trimEnd().split('\n');
/**
 * Script code that busy-waits 50 ms: after a console line, so the line reaches watchers while its
 * run still goes, and these tests can expect it before the run's line. (The log tap is never
 * waited for: a line written as the run ends may arrive just after the run's event.)
 */
const LINGER = 'const t0 = Date.now(); while (Date.now() - t0 < 50) {}';

describe('isogear tail', function () {
  this.timeout(60_000);

  describe('against one server', () => {
    const server = useTestServer();
    const running: Tailing[] = [];
    const start = (args: string[]): Tailing => {
      const t = tail(args, server().server.grpcAddress);
      running.push(t);
      return t;
    };
    afterEach(() => {
      for (const t of running.splice(0)) t.kill();
    });

    it('prints a line per event: an Execute that registers, a handler run and its console line (--logs), a release; Ctrl-C closes the watch, exit 0', async () => {
      const t = server();
      const tailing = start(['tail', '--logs']);
      await watching(t);

      const res = await t.client.execute({ source: `gears.register("tail.orders", (p) => { console.info("got", p.id); ${LINGER} return p.id * 2; }); export default 1;`, mode: 1 });
      const itp = res.interpreterId;
      const reg = res.registrations[0].id;
      const fired = await t.client.trigger({ trigger: 'tail.orders', payload: { id: 7 } });
      const exe = fired.results[0].executionId;
      await t.client.pause({ registrationId: reg });
      await t.client.resume({ registrationId: reg });
      await releaseInterpreters(t.client, itp);
      await tailing.waitOut(/ disposed /);

      const expected = [
        `interpreter  ${itp}  ready  shared`,
        `registered   ${reg}  ${itp}  on tail.orders`,
        `run          ${res.executionId}  ${itp}  succeeded  ${DURATIONS}`,
        `log          ${exe}  ${itp}  ${reg}  \\[info\\] got 7`,
        `run          ${exe}  ${itp}  ${reg}  on tail.orders  succeeded  ${DURATIONS}`,
        `paused       ${reg}  ${itp}  on tail.orders`,
        `resumed      ${reg}  ${itp}  on tail.orders`,
        `released     ${reg}  ${itp}  on tail.orders`,
        `interpreter  ${itp}  disposed  shared`,
      ];
      const got = lines(tailing.stdout());
      assert.equal(got.length, expected.length, tailing.stdout());
      expected.forEach((e, i) => assert.match(got[i], new RegExp(`^${TIME}  ${e}$`), `line ${i + 1}`));

      assert.equal(await tailing.interrupt(), 0);
      assert.equal(tailing.stderr(), '');
      await watching(t, 0);
    });

    it('a failed run shows its error; a console line stays on one line, its control characters escaped', async () => {
      const t = server();
      const tailing = start(['tail', '--logs']);
      await watching(t);
      const res = await t.client.execute({ source: `export default () => { console.warn("two\\nlines \\u001b[31mred"); ${LINGER} throw new TypeError("no way"); }`, mode: 2 });
      await tailing.waitOut(/ disposed /);
      assert.match(tailing.stdout(), new RegExp(`^${TIME}  log {10}${res.executionId}  ${res.interpreterId}  \\[warn\\] two\\\\nlines \\\\u001b\\[31mred$`, 'm'));
      assert.match(tailing.stdout(), new RegExp(`^${TIME}  run {10}${res.executionId}  ${res.interpreterId}  failed  ${DURATIONS}  TypeError: no way$`, 'm'));
      assert.equal(await tailing.interrupt(), 0);
    });

    it('--trigger narrows it to the runs and registrations of that trigger', async () => {
      const t = server();
      const narrow = start(['tail', '--trigger', 'tail.a']);
      await watching(t);
      const res = await t.client.execute({ source: 'gears.register("tail.b", () => "b"); gears.register("tail.a", () => "a");', mode: 1 });
      const [regB, regA] = res.registrations.map((r) => r.id);
      await t.client.trigger({ trigger: 'tail.b' });
      const fired = await t.client.trigger({ trigger: 'tail.a' });
      await releaseInterpreters(t.client, res.interpreterId);
      await narrow.waitOut(/ released /);
      const got = lines(narrow.stdout());
      assert.equal(got.length, 3, narrow.stdout());
      assert.match(got[0], new RegExp(`^${TIME}  registered   ${regA}  ${res.interpreterId}  on tail\\.a$`));
      assert.match(got[1], new RegExp(`^${TIME}  run          ${fired.results[0].executionId}  ${res.interpreterId}  ${regA}  on tail\\.a  succeeded  `));
      assert.match(got[2], new RegExp(`^${TIME}  released     ${regA}  `));
      assert.doesNotMatch(narrow.stdout(), new RegExp(regB));
      assert.equal(await narrow.interrupt(), 0);
    });

    it('--json prints one WatchEvent per line, in the proto JSON mapping', async () => {
      const t = server();
      const json = start(['--json', 'tail', '--logs', '--trigger', 'tail.j']);
      await watching(t);
      const reg = await t.client.register({ trigger: 'tail.j', source: `export default (p) => { console.log("j", p); ${LINGER} return p; }`, mode: 1 });
      const fired = await t.client.trigger({ trigger: 'tail.j', payload: 3 });
      await releaseInterpreters(t.client, reg.interpreter?.id);
      await json.waitOut(/"released":true/);
      const events = lines(json.stdout()).map((l) => JSON.parse(l) as Record<string, Record<string, unknown> | string>);
      assert.deepEqual(
        events.map((e) => Object.keys(e).sort()),
        [
          ['registration', 'time'],
          ['log', 'time'],
          ['run', 'time'],
          ['registration', 'time'],
        ],
      );
      for (const e of events) assert.ok(!Number.isNaN(Date.parse(e.time as string)), 'an RFC 3339 time');
      const registration = (e: Record<string, unknown>): unknown => (e.registration as { registration: { id: string } }).registration.id;
      assert.equal(registration(events[0]), reg.registration?.id);
      assert.equal(registration(events[3]), reg.registration?.id);
      assert.deepEqual(events[1].log, { executionId: fired.results[0].executionId, interpreterId: reg.interpreter?.id, registrationId: reg.registration?.id, entry: { level: 'log', message: 'j 3' } });
      const run = events[2].run as Record<string, unknown>;
      assert.equal(run.outcome, 'OUTCOME_SUCCEEDED');
      assert.equal(run.trigger, 'tail.j');
      const wall = run.wallTime as { seconds?: number; nanos?: number };
      assert.ok((wall.seconds ?? 0) + (wall.nanos ?? 0) > 0, JSON.stringify(wall));
      assert.equal(await json.interrupt(), 0);
      assert.equal(json.stderr(), '');
    });

    it('a filter the server refuses exits 3 with its status and message, as other gRPC errors do', async () => {
      const address = server().server.grpcAddress;
      const unknown = tail(['tail', '--interpreter', 'itp_00000000000000000000'], address);
      assert.equal(await unknown.exited, 3);
      assert.equal(unknown.stderr(), 'isogear: NOT_FOUND: interpreter itp_00000000000000000000 not found (unknown or disposed)\n');
      assert.equal(unknown.stdout(), '');
      const badTrigger = tail(['tail', '--trigger', 'not a trigger!'], address);
      assert.equal(await badTrigger.exited, 3);
      assert.match(badTrigger.stderr(), /^isogear: INVALID_ARGUMENT: [^\n]+\n$/);
      // nothing to watch at the start is not a connection lost: exit 3 at once, as `ls` would
      const down = tail(['tail'], '127.0.0.1:1');
      assert.equal(await down.exited, 3);
      assert.match(down.stderr(), /^isogear: UNAVAILABLE: [^\n]+\n$/);
    });

    it('in process: run() takes its stop from io.onInterrupt, and gives the handler back when it ends', async () => {
      const t = server();
      let out = '';
      let err = '';
      const stops: (() => void)[] = [];
      const io: Io = {
        out: (s) => (out += s),
        err: (s) => (err += s),
        stdin: () => '',
        onInterrupt: (stop) => {
          stops.push(stop);
          return () => stops.splice(stops.indexOf(stop), 1);
        },
      };
      const ended = run(['--address', t.server.grpcAddress, '--json', 'tail'], io);
      await watching(t);
      assert.equal(stops.length, 1);
      const res = await t.client.execute({ source: 'export default 1', mode: 2 });
      await waitFor('the run event', () => out.includes(res.executionId), 15_000);
      stops[0]();
      assert.equal(await ended, 0);
      assert.deepEqual(stops, [], 'the handler was given back');
      assert.equal(err, '');
      assert.ok(lines(out).every((l) => typeof (JSON.parse(l) as { time: string }).time === 'string'));
      await watching(t, 0);
    });

    it('stops, exit 0, when nobody reads its output any more (isogear tail | head)', async () => {
      const t = server();
      const tailing = start(['tail']);
      await watching(t);
      tailing.closeStdout();
      await t.client.execute({ source: 'export default 1', mode: 2 });
      assert.equal(await tailing.exited, 0);
      assert.equal(tailing.stderr(), '');
      await watching(t, 0);
    });
  });

  it('the lines of events the tests cannot easily cause: dropped, a failed named interpreter, a kind unknown yet', () => {
    const time = new Date(2026, 0, 2, 3, 4, 5, 67);
    assert.equal(eventLine({ time, dropped: 12 }), '03:04:05.067  dropped      12 events lost (this watch read too slowly)');
    assert.equal(eventLine({ time, dropped: 1 }), '03:04:05.067  dropped      1 event lost (this watch read too slowly)');
    const interpreter = pb.Interpreter.fromPartial({ id: 'itp_1', name: 'svc', mode: pb.IsolationMode.ISOLATION_MODE_SHARED, state: pb.InterpreterState.INTERPRETER_STATE_FAILED, failureReason: 'shared isolate\nout of memory' });
    assert.equal(eventLine({ time, interpreter }), '03:04:05.067  interpreter  itp_1  failed  shared  name svc  (shared isolate\\nout of memory)');
    assert.equal(eventLine({ time: undefined }), '--:--:--.---  event        {}');
  });

  describe('reconnecting', () => {
    let servers: TestServer[] = [];
    let running: Tailing | undefined;
    afterEach(async () => {
      running?.kill();
      running = undefined;
      for (const s of servers) await s.close();
      servers = [];
    });

    it('says the connection is lost, reconnects to the server restarted on the same port, says events were lost, and shows the new server’s events', async () => {
      const first = await startTestServer();
      servers.push(first);
      const address = first.server.grpcAddress;
      running = tail(['tail'], address);
      const tailing = running;
      await watching(first);
      const before = await first.client.execute({ source: 'export default 1', mode: 2 });
      await tailing.waitOut(new RegExp(`run {10}${before.executionId}  `));

      await first.close(); // shutdown ends the watch with UNAVAILABLE
      await tailing.waitErr(/^isogear: connection lost \(UNAVAILABLE: [^\n]*\); reconnecting in 0\.25 s$/m);
      const second = await startTestServer({ ISOGEAR_GRPC_ADDRESS: address });
      servers.push(second);
      await tailing.waitErr(/^isogear: watching again; any events in the \d+(\.\d)? s without a connection are lost$/m);
      await watching(second);

      const after = await second.client.execute({ source: 'export default 2', mode: 2 });
      await tailing.waitOut(new RegExp(`^${TIME}  interpreter  ${after.interpreterId}  disposed  isolate$`, 'm'));
      assert.match(tailing.stdout(), new RegExp(`^${TIME}  run {10}${after.executionId}  ${after.interpreterId}  succeeded  `, 'm'));
      // every notice on stderr is one of the three: lost, still trying, watching again
      for (const l of lines(tailing.stderr())) assert.match(l, /^isogear: (connection lost \(|cannot reconnect yet \(|watching again; )/);
      assert.equal(await tailing.interrupt(), 0);
      await watching(second, 0);
    });

    it('Ctrl-C while it waits to reconnect exits 0 at once', async () => {
      const only = await startTestServer();
      servers.push(only);
      running = tail(['tail', '--logs'], only.server.grpcAddress);
      const tailing = running;
      await watching(only);
      await only.close();
      await tailing.waitErr(/connection lost/);
      const since = Date.now();
      assert.equal(await tailing.interrupt(), 0);
      assert.ok(Date.now() - since < 3000, 'it did not wait out its backoff');
    });
  });
});
