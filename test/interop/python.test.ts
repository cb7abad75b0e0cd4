/**
 * Python interop: test/interop/python/client.py, the client a Python user would write, with stubs
 * generated now from proto/ by grpc_tools.protoc, against a real server. Needs Debian's
 * python3-grpcio and python3-grpc-tools under /usr/bin/python3 (.ci/run installs them); elsewhere
 * the test is skipped with a loud message, and in CI their absence fails it.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlpReceiver';
import { startTestServer, type TestServer } from '../helpers/server';

const PYTHON = '/usr/bin/python3';
const ROOT = path.join(__dirname, '../..');

function pythonGrpc(): string | undefined {
  try {
    execFileSync(PYTHON, ['-c', 'import grpc, grpc_tools.protoc, google.protobuf'], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message.split('\n')[0] : String(err);
  }
}

/** Skips the suite without Python's gRPC (fails it in CI, which installs it). */
function needPython(ctx: Mocha.Context, what: string): void {
  const missing = pythonGrpc();
  if (!missing) return;
  if (process.env.CI) throw new Error(`${PYTHON} cannot import grpc and grpc_tools: .ci/run installs python3-grpcio and python3-grpc-tools (${missing})`);
  console.warn(`\n  !!! ${PYTHON} has no grpcio/grpc_tools: SKIPPING ${what} (apt-get install python3-grpcio python3-grpc-tools; CI runs it) !!!\n`);
  ctx.skip();
}

/** Generates the Python stubs from proto/ into DIR/stubs, as a Python user would; returns that directory. */
function generateStubs(dir: string): string {
  const stubs = path.join(dir, 'stubs');
  execFileSync('mkdir', ['-p', stubs]);
  execFileSync(PYTHON, ['-m', 'grpc_tools.protoc', `-I${path.join(ROOT, 'proto')}`, `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, path.join(ROOT, 'proto/isogear/v1/gears.proto')], {
    stdio: 'pipe',
  });
  return stubs;
}

interface Seen {
  execute: unknown;
  trigger: unknown[];
  pause: { paused: boolean; skipped: number; flag: boolean; resumed: boolean; again: unknown[]; two_selectors: Status };
  typescript: { result: unknown; error: string; line3: boolean };
  versions: { listed: unknown[]; sha: boolean; bytes: number; created: boolean; rollback: unknown; after: unknown[]; ran: unknown[]; errors: Record<string, Status> };
  listed: { id: string; description: string; runs: number }[];
  interpreters: number;
  released: boolean;
  errors: Record<string, Status>;
  start_execute: {
    started: string;
    kind: string;
    background: boolean;
    response: string;
    outcome: string;
    result: unknown;
    same_id: boolean;
    ended: boolean;
    get: { state: string; result: unknown };
    listed: boolean;
    listed_states: string[];
  };
  start_trigger: { kind: string; trigger: string; response: string; results: { registration: boolean; outcome: string; result: unknown }[] };
  cancel: { before: string; listed_running: boolean; answered: boolean; outcome: string; error: string; ms: number };
  execution_errors: Record<string, Status>;
}

interface Status {
  code: string;
  details: string;
  limit: string | null;
}

describe('Python interop (grpcio, stubs generated from proto/)', function () {
  this.timeout(60_000);
  let dir: string;
  let t: TestServer;

  before(function () {
    needPython(this, 'the Python interop test');
  });

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-py-'));
    const keys = path.join(dir, 'keys.json');
    writeFileSync(keys, JSON.stringify({ tenants: [{ name: 'py', keySha256: createHash('sha256').update('py-key').digest('hex'), quotas: { interpreters: 2 } }] }));
    t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keys });
  });
  afterEach(async () => {
    await t.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('generates stubs and runs Execute, Register, Trigger, List, Release, background executions and error codes from Python', async () => {
    const stubs = generateStubs(dir);
    const { stdout } = await promisify(execFile)(PYTHON, [path.join(ROOT, 'test/interop/python/client.py'), t.server.grpcAddress, stubs, 'py-key']);
    const seen = JSON.parse(stdout) as Seen;
    assert.deepEqual(seen.execute, { total: 9, names: ['tea', 'cake'], vip: true });
    assert.deepEqual(seen.trigger, ['hello python']);
    assert.deepEqual(seen.typescript, { result: 42, error: 'RangeError', line3: true }, 'TypeScript from Python, its stack on the TypeScript line');
    // versions: ListVersions and Rollback from Python
    const v = seen.versions;
    assert.deepEqual(v.listed, [
      [1, false, false],
      [2, true, true],
    ]);
    assert.deepEqual([v.sha, v.bytes, v.created], [true, 'gears.register("py.ver", () => "v1");'.length, true]);
    assert.deepEqual(v.rollback, { outcome: 'OUTCOME_SUCCEEDED', result: { version: 3, rolledBackFrom: 1 }, name: 'py-svc' });
    assert.deepEqual(v.after, [
      [1, false, 0],
      [2, false, 0],
      [3, true, 1],
    ]);
    assert.deepEqual(v.ran, ['v1']);
    assert.deepEqual(
      Object.fromEntries(Object.entries(v.errors).map(([k, e]) => [k, e.code])),
      { version_0: 'INVALID_ARGUMENT', no_name: 'INVALID_ARGUMENT', unknown_version: 'NOT_FOUND', unknown_name: 'NOT_FOUND' },
    );
    assert.deepEqual({ ...seen.pause, two_selectors: seen.pause.two_selectors.code }, { paused: true, skipped: 0, flag: true, resumed: true, again: ['hello again'], two_selectors: 'INVALID_ARGUMENT' });
    assert.equal(seen.listed.length, 1);
    assert.equal(seen.listed[0].description, 'from python');
    assert.equal(seen.listed[0].runs, 1);
    assert.equal(seen.interpreters, 1);
    assert.equal(seen.released, true);
    assert.equal(seen.errors.no_key.code, 'UNAUTHENTICATED');
    assert.equal(seen.errors.unknown_interpreter.code, 'NOT_FOUND');
    assert.match(seen.errors.unknown_interpreter.details, /interpreter itp_nope not found/);
    assert.equal(seen.errors.empty_source.code, 'INVALID_ARGUMENT');
    assert.equal(seen.errors.quota.code, 'RESOURCE_EXHAUSTED');
    assert.equal(seen.errors.quota.limit, 'tenant_interpreters', 'the isogear-limit trailer reaches Python');

    // background executions: StartExecute, WaitExecution, GetExecution, ListExecutions
    const started = seen.start_execute;
    assert.ok(['EXECUTION_STATE_QUEUED', 'EXECUTION_STATE_RUNNING'].includes(started.started), `StartExecute answers before the run ends: ${started.started}`);
    assert.deepEqual(
      { ...started, started: undefined },
      {
        started: undefined,
        kind: 'EXECUTION_KIND_EXECUTE',
        background: true,
        response: 'execute_response',
        outcome: 'OUTCOME_SUCCEEDED',
        result: 42,
        same_id: true,
        ended: true,
        get: { state: 'EXECUTION_STATE_DONE', result: 42 },
        listed: true,
        listed_states: ['EXECUTION_STATE_DONE'],
      },
    );
    // StartTrigger + WaitExecution
    assert.deepEqual(seen.start_trigger, {
      kind: 'EXECUTION_KIND_TRIGGER',
      trigger: 'py.bg',
      response: 'trigger_response',
      results: [{ registration: true, outcome: 'OUTCOME_SUCCEEDED', result: 42 }],
    });
    // CancelExecution on a busy loop with a 30 s limit
    assert.equal(seen.cancel.before, 'EXECUTION_STATE_RUNNING');
    assert.equal(seen.cancel.listed_running, true, 'ListExecutions(state=RUNNING) lists the running execution');
    assert.equal(seen.cancel.answered, true);
    assert.equal(seen.cancel.outcome, 'OUTCOME_ABORTED');
    assert.match(seen.cancel.error, /CancelExecution/, 'an aborted run says why');
    assert.ok(seen.cancel.ms >= 250 && seen.cancel.ms < 10_000, `the cancelled run spun, then ended long before its 30 s limit (${seen.cancel.ms} ms)`);
    // execution ids
    for (const rpc of ['get', 'wait', 'cancel']) {
      assert.equal(seen.execution_errors[`malformed_${rpc}`].code, 'INVALID_ARGUMENT', rpc);
      assert.match(seen.execution_errors[`malformed_${rpc}`].details, /not an execution id/, rpc);
      assert.equal(seen.execution_errors[`unknown_${rpc}`].code, 'NOT_FOUND', rpc);
    }
  });
});

describe('Python interop: a Python client’s trace continues into isogear (real OTLP receiver)', function () {
  this.timeout(60_000);
  let dir: string;
  let receiver: OtlpReceiver;
  let t: TestServer;

  before(function () {
    needPython(this, 'the Python tracing test');
  });

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-pytrace-'));
    const keys = path.join(dir, 'keys.json');
    writeFileSync(keys, JSON.stringify({ tenants: [{ name: 'py', keySha256: createHash('sha256').update('py-key').digest('hex') }] }));
    receiver = await OtlpReceiver.start();
    t = await startTestServer({
      ISOGEAR_API_KEYS_FILE: keys,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.grpcEndpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      OTEL_BSP_SCHEDULE_DELAY: '20',
    });
  });
  afterEach(async () => {
    await t.close();
    await receiver.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an Execute and a Trigger fanning out to three handlers arrive under the Python client’s trace ids, with the expected parent and child spans', async () => {
    const stubs = generateStubs(dir);
    const { stdout } = await promisify(execFile)(PYTHON, [path.join(ROOT, 'test/interop/python/traced.py'), t.server.grpcAddress, stubs, 'py-key']);
    const seen = JSON.parse(stdout) as {
      execute: { trace_id: string; span_id: string; execution_id: string; interpreter_id: string; registrations: string[] };
      trigger: { trace_id: string; span_id: string; results: unknown[]; execution_ids: string[] };
    };
    assert.deepEqual(seen.trigger.results, [7, 14, 21]);
    const rpc = (m: string): string => `isogear.v1.GearsService/${m}`;
    const byName = (spans: ReceivedSpan[], name: string): ReceivedSpan[] => spans.filter((s) => s.name === name);
    const childrenOf = (spans: ReceivedSpan[], parent: ReceivedSpan): string[] => spans.filter((s) => s.parentSpanId === parent.spanId).map((s) => s.name).sort();

    // Execute
    await receiver.waitFor(() => receiver.trace(seen.execute.trace_id).length >= 6, 'the Execute trace');
    const ex = receiver.trace(seen.execute.trace_id);
    const [exRpc] = byName(ex, rpc('Execute'));
    assert.ok(exRpc, 'the Execute span carries the Python client’s trace id');
    assert.equal(exRpc.parentSpanId, seen.execute.span_id, 'its parent is the Python client’s span');
    assert.equal(exRpc.attributes['isogear.tenant'], 'py');
    assert.deepEqual(childrenOf(ex, exRpc), ['isogear.interpreter.create', 'isogear.queue', 'isogear.run', 'isogear.store.commit']);
    const [exRun] = byName(ex, 'isogear.run');
    assert.equal(exRun.attributes['isogear.execution.id'], seen.execute.execution_id);
    assert.deepEqual(childrenOf(ex, exRun), ['isogear.module.load']);
    assert.equal(byName(ex, 'isogear.interpreter.create')[0].attributes['isogear.interpreter.id'], seen.execute.interpreter_id);

    // Trigger: one handler span per registration, each with its queue wait and its run
    await receiver.waitFor(() => receiver.trace(seen.trigger.trace_id).length >= 10, 'the Trigger trace');
    const tr = receiver.trace(seen.trigger.trace_id);
    const [trRpc] = byName(tr, rpc('Trigger'));
    assert.equal(trRpc.parentSpanId, seen.trigger.span_id);
    const handlers = byName(tr, 'isogear.handler');
    assert.equal(handlers.length, 3);
    assert.ok(handlers.every((h) => h.parentSpanId === trRpc.spanId));
    assert.deepEqual(handlers.map((h) => h.attributes['isogear.registration.id']).sort(), [...seen.execute.registrations].sort());
    assert.deepEqual(handlers.map((h) => h.attributes['isogear.execution.id']).sort(), [...seen.trigger.execution_ids].sort());
    for (const h of handlers) assert.deepEqual(childrenOf(tr, h), ['isogear.queue', 'isogear.run']);
  });
});
