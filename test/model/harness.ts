import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import type { Admission } from '../../src/core/Admission';
import type { Slot } from '../../src/core/RunSlots';
import { DEFAULT_TENANT } from '../../src/core/tenants';
import { expectStatus, grpc, pb, TestClient } from '../helpers/client';
import { scrape, value } from '../helpers/metrics';
import { ISOLATE, limits, outcomeName, SHARED, stateName } from '../helpers/proto';
import { assertNoLeaks, sleep, startTestServer, waitIdle, type TestServer } from '../helpers/server';
import type { Cmd, Ending, MixOp, SlowEnd, Target, TriggerAction, Victim, VictimBody } from './commands';
import { Model, mustPrecede, NAMES, SHARED_ISOLATES, TRIGGERS, type Mode, type ModelReg, type Order, type Snapshot } from './model';

/**
 * Runs one command sequence against a fresh server and the model side by side. After every
 * command (a batch counts as one) it waits until the server has answered every call and no run
 * is in flight (nor any execution queued or running), then compares what the server shows
 * (ListInterpreters, ListRegistrations, GetInterpreter, ListExecutions, the manager's counters,
 * the Prometheus gauges) with the model. At the end it releases everything and asserts that
 * nothing is left.
 *
 * Batches whose interleaving the test cannot fix (concurrent calls) are checked against what any
 * interleaving may produce, with the nondeterminism resolved from the responses themselves
 * (which registrations a Release listed, whether a run's registrations were kept); the model
 * then follows what the server reported, so the next command starts from the real state.
 */

/** How long a slow handler spins in the batches that race it. */
const SLOW_MS = 150;
/** How long a handler run cancelled while it spins goes on spinning. */
const HOLD_MS = 300;
/** limits.timeout_ms of runs that are meant to time out. */
const SHORT_TIMEOUT_MS = 250;
/** limits.timeout_ms of runs meant to end by themselves: generous, other suites share the 2 cores. */
const LONG_TIMEOUT_MS = 10_000;
/** Client deadline of the calls cut short by their deadline. */
const DEADLINE_MS = 200;
/** A spinning Execute cut short by the client still spins in its isolate until this timeout. */
const LOOP_LIMIT_MS = 600;
/** Bound on waiting for the server to answer every call and end every run. */
const SETTLE_MS = 15_000;
/** Heap limit of every dedicated isolate, small so that a memory bomb kills it quickly. */
const MEMORY_MB = 16;

/** Every request carries the memory limit; only new isolate-mode interpreters use it. */
const lim = (timeoutMs: number): pb.Limits => limits(timeoutMs, MEMORY_MB);

const { OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_TIMED_OUT, OUTCOME_MEMORY_EXCEEDED, OUTCOME_ABORTED } = pb.Outcome;
const { EXECUTION_STATE_QUEUED, EXECUTION_STATE_RUNNING, EXECUTION_STATE_DONE } = pb.ExecutionState;
const { EXECUTION_KIND_EXECUTE, EXECUTION_KIND_TRIGGER, EXECUTION_KIND_HANDLER } = pb.ExecutionKind;
const execState = (s: pb.ExecutionState): string => pb.executionStateToJSON(s);
/** What a run stopped by CancelExecution says. */
const CANCELLED_BY_ID = /cancelled by CancelExecution/;
const NEVER_ISSUED_EXE = `exe_${'0'.repeat(20)}`;
const READY = 'INTERPRETER_STATE_READY';
const FAILED = 'INTERPRETER_STATE_FAILED';
const DRAINING = 'INTERPRETER_STATE_DRAINING';
const DISPOSED = 'INTERPRETER_STATE_DISPOSED';

/**
 * How often the interleavings worth having happened (MODEL_STATS=1 prints them): a model test
 * whose races never go the interesting way checks less than it seems to.
 */
export const stats: Record<string, number> = {};
const note = (what: string): void => {
  stats[what] = (stats[what] ?? 0) + 1;
};

// ------------------------------------------------------------------ scripts

const MEMORY_BOMB = 'const hoard = []; for (;;) hoard.push(new Array(10000).fill(Math.random()));';

/**
 * The one handler every script registers; the Trigger payload says what a run does (`hangOn`:
 * only the run of that registration hangs; `spinOn`: only that run spins for `spinFor` ms
 * first, so that code cancelled meanwhile goes on to register). It registers synchronously,
 * before any await, so the registration belongs to its own run, and before it loops, throws or
 * hangs, so a run that does not succeed has something to drop.
 */
const HANDLER = `const h = (p, e) => {
  const o = p ?? {};
  if (o.spin) { const s = Date.now(); while (Date.now() - s < o.spin) {} }
  if (o.spinOn === e.registrationId) { const s = Date.now(); while (Date.now() - s < o.spinFor) {} }
  const made = o.register ? gears.register(o.register, h) : '';
  if (o.hangOn === e.registrationId) return new Promise(() => {});
  if (o.loop) for (;;) {}
  if (o.fail) throw new Error('the handler failed on purpose');
  if (o.bomb === e.registrationId) { ${MEMORY_BOMB} }
  if (o.hang) return new Promise(() => {});
  return made || e.registrationId;
};
`;

const ENDINGS: Record<Ending, string> = {
  ok: 'export default "ok";',
  throw: 'throw new Error("the script failed after registering");',
  loop: 'export default () => { for (;;) {} };',
  hang: 'export default () => new Promise(() => {});',
};

const OUTCOME_OF: Record<Ending, pb.Outcome> = { ok: OUTCOME_SUCCEEDED, throw: OUTCOME_FAILED, loop: OUTCOME_TIMED_OUT, hang: OUTCOME_TIMED_OUT };

/** A script that registers the handler once per trigger, then runs `tail`. */
const scriptSource = (triggers: readonly string[], tail: string): string =>
  HANDLER + triggers.map((t) => `gears.register(${JSON.stringify(t)}, h);\n`).join('') + tail;
const executeSource = (triggers: readonly string[], ending: Ending): string => scriptSource(triggers, ENDINGS[ending]);
const REGISTER_SOURCE = `${HANDLER}export default h;`;
/** A handler module whose top-level await never settles. */
const HANGING_REGISTER_SOURCE = `${HANDLER}await new Promise(() => {});\nexport default h;`;
const BAD_REGISTER_SOURCE = 'export default 42;';

const limitsFor = (ending: Ending): pb.Limits => lim(ending === 'loop' || ending === 'hang' ? SHORT_TIMEOUT_MS : LONG_TIMEOUT_MS);

const TRIGGER_PAYLOAD: Record<TriggerAction, (registerOn: string) => { payload: Record<string, unknown>; limits: pb.Limits; outcome: pb.Outcome }> = {
  fast: () => ({ payload: {}, limits: lim(LONG_TIMEOUT_MS), outcome: OUTCOME_SUCCEEDED }),
  throw: (on) => ({ payload: { fail: true, register: on }, limits: lim(LONG_TIMEOUT_MS), outcome: OUTCOME_FAILED }),
  register: (on) => ({ payload: { register: on }, limits: lim(LONG_TIMEOUT_MS), outcome: OUTCOME_SUCCEEDED }),
  hang: (on) => ({ payload: { hang: true, register: on }, limits: lim(SHORT_TIMEOUT_MS), outcome: OUTCOME_TIMED_OUT }),
  loop: (on) => ({ payload: { loop: true, register: on }, limits: lim(SHORT_TIMEOUT_MS), outcome: OUTCOME_TIMED_OUT }),
};

const pbMode = (mode: Mode): pb.IsolationMode => (mode === 'shared' ? SHARED : ISOLATE);
const modeOf = (mode: pb.IsolationMode): Mode => (mode === SHARED ? 'shared' : mode === ISOLATE ? 'isolate' : (`mode ${mode}` as Mode));
const UNKNOWN_ITP = 'itp_neverissued';
const UNKNOWN_REG = 'reg_neverissued';

// ------------------------------------------------------------------ the driver

type CallOptions = { deadlineMs?: number };

/** A call whose end the test waits for while doing other things. */
interface Pending<T> {
  promise: Promise<T>;
  settled(): boolean;
}

function pending<T>(promise: Promise<T>): Pending<T> {
  let done = false;
  const p = promise.finally(() => {
    done = true;
  });
  // the caller awaits it later; until then a rejection is not "unhandled"
  p.catch(() => undefined);
  return { promise: p, settled: () => done };
}

type Settled<T> = { res: T; err?: undefined } | { res?: undefined; err: grpc.ServiceError };
const settle = <T>(p: Promise<T>): Promise<Settled<T>> => p.then((res) => ({ res }), (err: grpc.ServiceError) => ({ err }));

/**
 * The client side: every call goes through here so the test knows how many the server must
 * have answered (one `rpc` log line each) before the state is quiet enough to compare.
 */
class Driver {
  private sent = 0;
  private logCursor = 0;
  private answered = 0;
  /** A second client: CancelExecution, GetExecution and ListExecutions come from another caller than the runs. */
  readonly other: TestClient;
  /** Ids of synchronous runs and handler runs that ended: the server forgets them (NOT_FOUND). */
  readonly ended: string[] = [];
  /** Each DONE background execution as WaitExecution (or CancelExecution) first answered it: it never changes. */
  readonly keptExec = new Map<string, pb.Execution>();

  constructor(
    readonly t: TestServer,
    /** ISOGEAR_MAX_INTERPRETERS of the server. */
    readonly maxInterpreters: number,
  ) {
    this.other = new TestClient(t.server.grpcAddress);
  }

  private counted<T>(p: Promise<T>): Promise<T> {
    this.sent += 1;
    return p;
  }

  /** Notes the executions a response names as ended. */
  private ending<T>(p: Promise<T>, ids: (res: T) => string[]): Promise<T> {
    return p.then((res) => {
      this.ended.push(...ids(res).filter((id) => id !== ''));
      return res;
    });
  }

  execute = (req: Partial<pb.ExecuteRequest>, o?: CallOptions) => this.ending(this.counted(this.t.client.execute(req, o)), (r) => [r.executionId]);
  register = (req: Partial<pb.RegisterRequest>, o?: CallOptions) => this.counted(this.t.client.register(req, o));
  release = (req: Partial<pb.ReleaseRequest>) => this.counted(this.t.client.release(req));
  pause = (req: Partial<pb.PauseRegistrationsRequest>) => this.counted(this.t.client.pause(req));
  resume = (req: Partial<pb.ResumeRegistrationsRequest>) => this.counted(this.t.client.resume(req));
  trigger = (req: Partial<pb.TriggerRequest>, o?: CallOptions) =>
    this.ending(this.counted(this.t.client.trigger(req, o)), (r) => r.results.map((x) => x.executionId));
  getInterpreter = (id: string) => this.counted(this.t.client.getInterpreter({ interpreterId: id }));
  listInterpreters = (name = '') => this.counted(this.t.client.listInterpreters({ pageSize: 1000, name }));
  listRegistrations = () => this.counted(this.t.client.listRegistrations({ pageSize: 1000 }));

  startExecute = (req: Partial<pb.ExecuteRequest>) => this.counted(this.t.client.startExecute(req));
  startTrigger = (req: Partial<pb.TriggerRequest>) => this.counted(this.t.client.startTrigger(req));
  getExecution = (id: string) => this.counted(this.other.getExecution({ executionId: id }));
  cancelExecution = (id: string) => this.counted(this.other.cancelExecution({ executionId: id }));
  /** Waits (on the first client) until the execution is DONE; `timeoutMs` shorter to look at it while it runs. */
  waitExecution = (id: string, timeoutMs = SETTLE_MS) => this.counted(this.t.client.waitExecution({ executionId: id, timeoutMs }));

  /** ListExecutions, every page (pages of 7, so paging is exercised too). */
  async listExecutions(filter: Partial<pb.ListExecutionsRequest> = {}): Promise<pb.Execution[]> {
    const out: pb.Execution[] = [];
    let pageToken = '';
    do {
      const page = await this.counted(this.other.listExecutions({ ...filter, pageToken, pageSize: 7 }));
      out.push(...page.executions);
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  }

  /**
   * Polls ListExecutions (filtered by `state`) until it lists an execution `match` accepts;
   * undefined if `gone` says first that the run ended without being seen.
   */
  async untilListed(state: pb.ExecutionState, match: (e: pb.Execution) => boolean, gone: () => boolean, extra: Partial<pb.ListExecutionsRequest> = {}): Promise<pb.Execution | undefined> {
    const until = Date.now() + SETTLE_MS;
    for (;;) {
      const found = (await this.listExecutions({ ...extra, state })).filter(match);
      assert.ok(found.length <= 1, `ListExecutions lists ${found.length} executions where one was expected: ${found.map((e) => e.id).join(', ')}`);
      if (found.length === 1) return found[0];
      if (gone()) return undefined;
      if (Date.now() > until) throw new Error(`no execution was listed ${execState(state)} within ${SETTLE_MS} ms`);
      await sleep(5);
    }
  }

  /**
   * Takes every free run slot (ISOGEAR_MAX_CONCURRENT_RUNS), in-process, as long runs of other
   * clients would: whatever starts next waits QUEUED until the returned function frees them.
   * (The manager's admission is private; 64 real hanging runs would cost more than the rest of a
   * command, and a smaller ISOGEAR_MAX_CONCURRENT_RUNS would change what every other command sees.)
   */
  async holdSlots(): Promise<() => void> {
    const admission = (this.t.manager as unknown as { core: { admission: Admission } }).core.admission;
    const slots: Slot[] = [];
    while (admission.running < this.t.config.maxConcurrentRuns) slots.push(await admission.acquire(DEFAULT_TENANT));
    let freed = false;
    return () => {
      if (freed) return;
      freed = true;
      for (const slot of slots) slot.release();
    };
  }

  /** A call the test cancels itself (grpc-js `call.cancel()`). */
  cancellable(
    req: { execute: Partial<pb.ExecuteRequest> } | { register: Partial<pb.RegisterRequest> } | { trigger: Partial<pb.TriggerRequest> },
  ): { call: Pending<Settled<unknown>>; cancel(): void } {
    this.sent += 1;
    const raw = this.t.client.raw;
    let handle: grpc.ClientUnaryCall | undefined;
    const promise = new Promise<Settled<unknown>>((resolve) => {
      const cb = (err: grpc.ServiceError | null, res: unknown): void => resolve(err ? { err } : { res });
      const md = new grpc.Metadata();
      if ('execute' in req) handle = raw.execute(pb.ExecuteRequest.fromPartial(req.execute), md, {}, cb);
      else if ('register' in req) handle = raw.register(pb.RegisterRequest.fromPartial(req.register), md, {}, cb);
      else handle = raw.trigger(pb.TriggerRequest.fromPartial(req.trigger), md, {}, cb);
    });
    return { call: pending(promise), cancel: () => handle?.cancel() };
  }

  inFlight(): number {
    return this.t.manager.counters().executionsInFlight;
  }

  /** Waits until `n` runs are in flight; false if `done` settled first (the runs already ended). */
  async untilInFlight(n: number, done: () => boolean): Promise<boolean> {
    const until = Date.now() + SETTLE_MS;
    for (;;) {
      if (this.inFlight() >= n) return true;
      if (done()) return false;
      if (Date.now() > until) throw new Error(`${n} run(s) never went in flight`);
      await sleep(1);
    }
  }

  private rpcsAnswered(): number {
    for (; this.logCursor < this.t.logs.length; this.logCursor++) if (this.t.logs[this.logCursor].msg === 'rpc') this.answered += 1;
    return this.answered;
  }

  /**
   * Waits until the server has answered every call the test sent (a call the client gave up on
   * may still be running on the server) and no run is in flight.
   */
  async quiesce(): Promise<void> {
    const until = Date.now() + SETTLE_MS;
    while (this.rpcsAnswered() < this.sent) {
      if (Date.now() > until) throw new Error(`the server answered ${this.rpcsAnswered()} of ${this.sent} calls within ${SETTLE_MS} ms`);
      await sleep(2);
    }
    await waitIdle(this.t.manager, SETTLE_MS);
    assert.equal(this.inFlight(), 0, `runs still in flight ${SETTLE_MS} ms after their calls were answered`);
    assert.equal(this.t.manager.counters().executions.live, 0, `executions still queued or running ${SETTLE_MS} ms after their calls were answered`);
  }
}

// ------------------------------------------------------------------ observation and checks

async function observe(d: Driver): Promise<{ snapshot: Snapshot; registrationOrder: string[]; executions: pb.Execution[] }> {
  const itps = (await d.listInterpreters()).interpreters;
  const regs = (await d.listRegistrations()).registrations;
  const executions = await d.listExecutions();
  const queued = await d.listExecutions({ state: EXECUTION_STATE_QUEUED });
  const running = await d.listExecutions({ state: EXECUTION_STATE_RUNNING });
  const c = d.t.manager.counters();
  const s = await scrape(d.t);
  const byId = <T extends { id: string }>(x: T, y: T): number => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0);
  const snapshot: Snapshot = {
    interpreters: itps
      .map((i) => ({
        id: i.id,
        mode: modeOf(i.mode),
        name: i.name,
        state: stateName(i.state),
        references: i.references,
        registrationReferences: i.registrationReferences,
        executionReferences: i.executionReferences,
      }))
      .sort(byId),
    registrations: regs.map((r) => ({ id: r.id, trigger: r.trigger, interpreterId: r.interpreterId, broken: r.broken, paused: r.paused })).sort(byId),
    byName: Object.fromEntries(
      await Promise.all(NAMES.map(async (n) => [n, (await d.listInterpreters(n)).interpreters.map((i) => i.id)] as const)),
    ),
    counters: {
      interpreters: c.interpreters,
      byState: c.interpretersByState,
      byMode: c.interpretersByMode,
      registrations: c.registrations,
      references: c.references,
      dedicatedIsolates: c.dedicatedIsolates,
      dedicatedCreatedMinusDisposed: c.isolatesCreated.dedicated - c.isolatesDisposed.dedicated,
      sharedIsolates: c.sharedIsolates,
      executionsInFlight: c.executionsInFlight,
    },
    executions: {
      live: c.executions.live,
      background: c.executions.background,
      queued: queued.map((e) => e.id),
      running: running.map((e) => e.id),
      listed: executions.map((e) => ({ id: e.id, state: execState(e.state), background: e.background })).sort(byId),
    },
    gauges: {
      dedicatedIsolates: value(s, 'isogear_isolates', { kind: 'dedicated' }),
      sharedIsolates: value(s, 'isogear_isolates', { kind: 'shared' }),
      backgroundQueued: value(s, 'isogear_background_executions', { state: 'queued' }),
      backgroundRunning: value(s, 'isogear_background_executions', { state: 'running' }),
      backgroundDone: value(s, 'isogear_background_executions', { state: 'done' }),
      registrationReferences: value(s, 'isogear_interpreter_references', { owner: 'registration' }),
      executionReferences: value(s, 'isogear_interpreter_references', { owner: 'execution' }),
      registrations: value(s, 'isogear_registrations'),
      readyShared: value(s, 'isogear_interpreters', { mode: 'shared', state: 'ready' }),
      readyIsolate: value(s, 'isogear_interpreters', { mode: 'isolate', state: 'ready' }),
      draining:
        value(s, 'isogear_interpreters', { mode: 'shared', state: 'draining' }) + value(s, 'isogear_interpreters', { mode: 'isolate', state: 'draining' }),
      failed: value(s, 'isogear_interpreters', { mode: 'shared', state: 'failed' }) + value(s, 'isogear_interpreters', { mode: 'isolate', state: 'failed' }),
    },
  };
  const cancels = c.executions.cancels.request;
  assert.equal(value(s, 'isogear_execution_cancels_total', { reason: 'request' }), cancels, 'isogear_execution_cancels_total{reason="request"} and the manager disagree');
  return { snapshot, registrationOrder: regs.map((r) => r.id), executions };
}

/** The server listed `ids` in an order the model allows (creation order, ties where calls raced). */
function assertOrder(m: Model, ids: string[], what: string, extra: Map<string, Order> = new Map()): void {
  const orderOf = (id: string): Order => {
    const o = m.regs.get(id)?.order ?? extra.get(id);
    if (!o) throw new assert.AssertionError({ message: `${what}: ${id} is not a registration the model knows` });
    return o;
  };
  for (let i = 0; i < ids.length; i++) {
    for (let j = i + 1; j < ids.length; j++) {
      assert.ok(!mustPrecede(orderOf(ids[j]), orderOf(ids[i])), `${what}: ${ids[j]} was created before ${ids[i]} but listed after it (${ids.join(', ')})`);
    }
  }
}

const sorted = (ids: Iterable<string>): string[] => [...ids].sort();

/**
 * Compares the quiet server with the model, or with the first of several candidate models it
 * matches (a race the responses could not resolve); returns the candidate that matched.
 */
async function checkQuiescent(d: Driver, candidates: Model[], where: string): Promise<Model> {
  await d.quiesce();
  const { snapshot, registrationOrder, executions } = await observe(d);
  const matchedAt = candidates.findIndex((c) => isDeepStrictEqual(snapshot, c.expected()));
  if (candidates.length > 1) note(`race resolved to candidate ${matchedAt}`);
  const m = candidates[Math.max(0, matchedAt)];
  assert.deepEqual(snapshot, m.expected(), `${where}: the server differs from the model${candidates.length > 1 ? ` (and from ${candidates.length - 1} other candidate(s))` : ''}`);
  note('quiescent checks');
  assertOrder(m, registrationOrder, `${where}: ListRegistrations`);
  // kept executions: listed in creation order, each exactly as it was when it was DONE
  const exeIds = executions.map((e) => e.id);
  for (let i = 0; i < exeIds.length; i++) {
    for (let j = i + 1; j < exeIds.length; j++) {
      const [a, b] = [m.kept.get(exeIds[i]), m.kept.get(exeIds[j])];
      assert.ok(a && b && !mustPrecede(b, a), `${where}: ListExecutions lists ${exeIds[j]} (started first) after ${exeIds[i]}`);
    }
  }
  for (const e of executions) assert.deepEqual(e, d.keptExec.get(e.id), `${where}: ListExecutions: ${e.id} changed since it was DONE`);
  const cancels = d.t.manager.counters().executions.cancels.request;
  assert.ok(
    cancels >= m.cancels.min && cancels <= m.cancels.max,
    `${where}: ${cancels} cancels by CancelExecution counted; ${m.cancels.min} surely stopped a run, ${m.cancels.max} may have`,
  );
  for (const itp of m.live()) {
    const got = await d.getInterpreter(itp.id);
    const regs = m.regsOf(itp.id);
    assert.deepEqual(
      { state: stateName(got.interpreter?.state), registrationReferences: got.interpreter?.registrationReferences, executionReferences: got.interpreter?.executionReferences, name: got.interpreter?.name },
      { state: itp.failed ? FAILED : READY, registrationReferences: regs.length, executionReferences: 0, name: itp.name },
      `${where}: GetInterpreter ${itp.id}`,
    );
    for (const r of got.registrations) assert.equal(r.broken, itp.failed, `${where}: GetInterpreter ${itp.id}: ${r.id} broken`);
    const ids = got.registrations.map((r) => r.id);
    assert.deepEqual(sorted(ids), sorted(regs.map((r) => r.id)), `${where}: GetInterpreter ${itp.id} registrations`);
    assertOrder(m, ids, `${where}: GetInterpreter ${itp.id} registrations`);
  }
  for (const id of m.newlyGone) {
    const got = await d.getInterpreter(id);
    assert.deepEqual(
      { state: stateName(got.interpreter?.state), references: got.interpreter?.references, registrations: got.registrations.length },
      { state: m.gone.get(id), references: 0, registrations: 0 },
      `${where}: GetInterpreter ${id} (gone)`,
    );
  }
  m.newlyGone = [];
  return m;
}

interface InterpExpectation {
  id?: string;
  state: string;
  registrationReferences?: number;
  executionReferences?: number;
  name?: string;
  mode?: Mode;
}

/** Asserts the interpreter a response describes; fields left out of `want` are not compared. */
function expectInterp(info: pb.Interpreter | undefined, want: InterpExpectation, what: string): void {
  assert.ok(info, `${what}: the response has no interpreter`);
  const got: InterpExpectation = { state: stateName(info.state) };
  if (want.id !== undefined) got.id = info.id;
  if (want.registrationReferences !== undefined) got.registrationReferences = info.registrationReferences;
  if (want.executionReferences !== undefined) got.executionReferences = info.executionReferences;
  if (want.name !== undefined) got.name = info.name;
  if (want.mode !== undefined) got.mode = modeOf(info.mode);
  assert.deepEqual(got, want, `${what}: interpreter`);
  assert.equal(info.references, info.registrationReferences + info.executionReferences, `${what}: references = registration + execution references`);
}

/** A run's outcome, with its error in the message when it is not the one expected. */
function expectOutcome(res: { outcome: pb.Outcome; error?: pb.ScriptError }, want: pb.Outcome, what: string): void {
  assert.equal(outcomeName(res.outcome), outcomeName(want), `${what}: outcome (${res.error ? `${res.error.name}: ${res.error.message}` : 'no error'})`);
}

/** The registrations an Execute reports are the ones its script made, in order, in its interpreter. */
function expectCreated(regs: pb.Registration[], triggers: readonly string[], interpreterId: string, what: string): void {
  assert.deepEqual(
    regs.map((r) => [r.trigger, r.interpreterId, r.broken]),
    triggers.map((t) => [t, interpreterId, false]),
    `${what}: registrations created`,
  );
  for (const r of regs) assert.match(r.id, /^reg_/, `${what}: registration id`);
}

/** A Trigger ran exactly `bound` (once each, in an order the model allows), each in its interpreter. */
function expectRan(m: Model, res: pb.TriggerResponse, bound: ModelReg[], what: string): void {
  assert.deepEqual(sorted(res.results.map((r) => r.registrationId)), sorted(bound.map((r) => r.id)), `${what}: registrations the Trigger ran`);
  const itpOf = new Map(bound.map((r) => [r.id, r.interpreterId]));
  for (const r of res.results) assert.equal(r.interpreterId, itpOf.get(r.registrationId), `${what}: interpreter of ${r.registrationId}`);
  assertOrder(m, res.results.map((r) => r.registrationId), `${what}: Trigger result order`, new Map(bound.map((r) => [r.id, r.order])));
}

/** The server holds as many interpreters as it may: a new one is RESOURCE_EXHAUSTED. */
const full = (d: Driver, m: Model): boolean => m.live().length >= d.maxInterpreters;

/** Asserts a call was refused for ISOGEAR_MAX_INTERPRETERS. */
async function expectFull(call: Promise<unknown>, what: string): Promise<void> {
  const err = await expectStatus(call, grpc.status.RESOURCE_EXHAUSTED, /ISOGEAR_MAX_INTERPRETERS/);
  assert.deepEqual(err.metadata.get('isogear-limit'), ['max_interpreters'], `${what}: the limit named in the metadata`);
  note('RESOURCE_EXHAUSTED: max_interpreters');
}

const pickFrom = <T>(items: T[], pick: number): T | undefined => (items.length === 0 ? undefined : items[pick % items.length]);

/** A live interpreter (which may be FAILED), a gone one, or an id never issued. */
function resolveInterp(m: Model, target: Target): { id: string; live: boolean; gone: boolean; failed: boolean } {
  if (target.kind === 'live') {
    const i = pickFrom(m.live(), target.pick);
    if (i) return { id: i.id, live: true, gone: false, failed: i.failed };
  } else if (target.kind === 'gone') {
    const g = pickFrom([...m.gone.keys()], target.pick);
    if (g) return { id: g, live: false, gone: true, failed: false };
  }
  return { id: UNKNOWN_ITP, live: false, gone: false, failed: false };
}

/** The outcome a Trigger run of `reg` must have: a broken registration fails without running. */
const runOutcome = (m: Model, reg: ModelReg, healthy: pb.Outcome): pb.Outcome => (m.isBroken(reg) ? OUTCOME_FAILED : healthy);

// ------------------------------------------------------------------ commands

/** Applies a new-interpreter Execute's response to the model (after checking it). */
function applyNewExecute(
  m: Model,
  res: pb.ExecuteResponse,
  spec: { mode: Mode; triggers: readonly string[]; ending: Ending; name: string; replace: boolean },
  order: { step: number; group: number },
  what: string,
  strictInfo = true,
): void {
  expectOutcome(res, OUTCOME_OF[spec.ending], what);
  assert.match(res.interpreterId, /^itp_/, `${what}: interpreter id`);
  if (spec.ending !== 'ok') {
    assert.deepEqual(res.registrations, [], `${what}: a failed run keeps no registration`);
    expectInterp(res.interpreter, { id: res.interpreterId, state: DISPOSED, registrationReferences: 0, executionReferences: 0 }, what);
    m.markGone(res.interpreterId);
    return;
  }
  expectCreated(res.registrations, spec.triggers, res.interpreterId, what);
  if (spec.replace) m.replaceHolder(spec.name);
  if (spec.triggers.length === 0) {
    if (strictInfo) expectInterp(res.interpreter, { id: res.interpreterId, state: DISPOSED, registrationReferences: 0, executionReferences: 0 }, what);
    m.markGone(res.interpreterId);
    return;
  }
  if (strictInfo) {
    expectInterp(
      res.interpreter,
      { id: res.interpreterId, state: READY, registrationReferences: spec.triggers.length, executionReferences: 0, name: spec.name, mode: spec.mode },
      what,
    );
  }
  m.addInterp(res.interpreterId, spec.mode, spec.name);
  res.registrations.forEach((r, idx) => m.addReg(r.id, r.trigger, res.interpreterId, { ...order, idx }));
}

async function execute(d: Driver, m: Model, c: Extract<Cmd, { op: 'execute' }>, what: string): Promise<void> {
  const name = c.name === null ? '' : NAMES[c.name];
  const replace = c.replace && name !== '';
  const triggers = c.triggers.map((i) => TRIGGERS[i]);
  const req = { mode: pbMode(c.mode), source: executeSource(triggers, c.ending), limits: limitsFor(c.ending), name, replace };
  if (name && !replace && m.holder(name)) {
    await expectStatus(d.execute(req), grpc.status.ALREADY_EXISTS);
    return;
  }
  if (full(d, m)) return expectFull(d.execute(req), what);
  const res = await d.execute(req);
  applyNewExecute(m, res, { mode: c.mode, triggers, ending: c.ending, name, replace }, { step: m.nextStep(), group: 0 }, what);
}

async function executeIn(d: Driver, m: Model, c: Extract<Cmd, { op: 'executeIn' }>, what: string): Promise<void> {
  const itp = resolveInterp(m, c.target);
  const triggers = c.triggers.map((i) => TRIGGERS[i]);
  const req = { interpreterId: itp.id, source: executeSource(triggers, c.ending), limits: limitsFor(c.ending) };
  if (!itp.live || itp.failed) {
    await expectStatus(d.execute(req), itp.live || itp.gone ? grpc.status.FAILED_PRECONDITION : grpc.status.NOT_FOUND, itp.failed ? /FAILED/ : undefined);
    return;
  }
  applyAttachedExecute(m, await d.execute(req), itp.id, triggers, c.ending, m.nextStep(), what);
}

/** Applies an attached Execute's response to the model (after checking it). */
function applyAttachedExecute(m: Model, res: pb.ExecuteResponse, itp: string, triggers: readonly string[], ending: Ending, step: number, what: string): void {
  const before = m.regsOf(itp).length;
  expectOutcome(res, OUTCOME_OF[ending], what);
  assert.equal(res.interpreterId, itp, `${what}: ran in the interpreter asked for`);
  const kept = ending === 'ok' ? triggers : [];
  expectCreated(res.registrations, kept, itp, what);
  expectInterp(res.interpreter, { state: READY, registrationReferences: before + kept.length, executionReferences: 0 }, what);
  res.registrations.forEach((r, idx) => m.addReg(r.id, r.trigger, itp, { step, group: 0, idx }));
}

async function register(d: Driver, m: Model, c: Extract<Cmd, { op: 'register' }>, what: string): Promise<void> {
  const trigger = TRIGGERS[c.trigger];
  // the interpreter is created before its module loads, so even a bad module is refused for room
  if (full(d, m)) return expectFull(d.register({ trigger, mode: pbMode(c.mode), source: c.bad ? BAD_REGISTER_SOURCE : REGISTER_SOURCE }), what);
  if (c.bad) {
    await expectStatus(d.register({ trigger, mode: pbMode(c.mode), source: BAD_REGISTER_SOURCE }), grpc.status.INVALID_ARGUMENT, /default export/);
    return;
  }
  const res = await d.register({ trigger, mode: pbMode(c.mode), source: REGISTER_SOURCE, limits: lim(LONG_TIMEOUT_MS) });
  const itp = res.interpreter?.id ?? '';
  expectInterp(res.interpreter, { state: READY, registrationReferences: 1, executionReferences: 0, mode: c.mode, name: '' }, what);
  expectCreated(res.registration ? [res.registration] : [], [trigger], itp, what);
  m.addInterp(itp, c.mode, '');
  m.addReg(res.registration?.id ?? '', trigger, itp, { step: m.nextStep(), group: 0, idx: 0 });
}

async function registerIn(d: Driver, m: Model, c: Extract<Cmd, { op: 'registerIn' }>, what: string): Promise<void> {
  const itp = resolveInterp(m, c.target);
  const trigger = TRIGGERS[c.trigger];
  const req = { trigger, interpreterId: itp.id, source: REGISTER_SOURCE, limits: lim(LONG_TIMEOUT_MS) };
  if (!itp.live || itp.failed) {
    await expectStatus(d.register(req), itp.live || itp.gone ? grpc.status.FAILED_PRECONDITION : grpc.status.NOT_FOUND, itp.failed ? /FAILED/ : undefined);
    return;
  }
  const before = m.regsOf(itp.id).length;
  const res = await d.register(req);
  expectInterp(res.interpreter, { id: itp.id, state: READY, registrationReferences: before + 1, executionReferences: 0 }, what);
  expectCreated(res.registration ? [res.registration] : [], [trigger], itp.id, what);
  m.addReg(res.registration?.id ?? '', trigger, itp.id, { step: m.nextStep(), group: 0, idx: 0 });
}

async function trigger(d: Driver, m: Model, c: Extract<Cmd, { op: 'trigger' }>, what: string): Promise<void> {
  const name = TRIGGERS[c.trigger];
  const registerOn = TRIGGERS[c.registerOn];
  const bound = m.regsOn(name);
  const run = TRIGGER_PAYLOAD[c.action](registerOn);
  const req = { trigger: name, payload: run.payload, limits: run.limits };
  if (m.boundTo(name).length === 0) {
    await expectStatus(d.trigger(req), grpc.status.NOT_FOUND);
    return;
  }
  applyTrigger(m, await d.trigger(req), bound, c.action, registerOn, m.nextStep(), what);
}

/** Applies a Trigger's response (every registration in `bound` ran) to the model, after checking it. */
function applyTrigger(m: Model, res: pb.TriggerResponse, bound: ModelReg[], action: TriggerAction, registerOn: string, step: number, what: string): void {
  const run = TRIGGER_PAYLOAD[action](registerOn);
  expectRan(m, res, bound, what);
  const byId = new Map(bound.map((r) => [r.id, r]));
  const healthy = res.results.filter((r) => !m.isBroken(byId.get(r.registrationId) as ModelReg));
  for (const r of res.results) expectOutcome(r, runOutcome(m, byId.get(r.registrationId) as ModelReg, run.outcome), `${what}: run of ${r.registrationId}`);
  if (action === 'register') {
    // each run registered one handler; runs commit as they end, in no fixed order
    healthy.forEach((r, group) => {
      assert.equal(typeof r.result, 'string', `${what}: a registering handler returns the new id`);
      m.addReg(r.result as string, registerOn, r.interpreterId, { step, group, idx: 0 });
    });
  } else if (action === 'fast') {
    for (const r of healthy) assert.equal(r.result, r.registrationId, `${what}: result of ${r.registrationId}`);
  }
}

/**
 * PauseRegistrations or ResumeRegistrations by one selector: the answer lists exactly the
 * registrations whose state changed, in creation order; references and interpreters stay as
 * they were; unknown, released or disposed targets, or a trigger nothing is bound to, are NOT_FOUND.
 */
async function pause(d: Driver, m: Model, c: Extract<Cmd, { op: 'pause' }>, what: string): Promise<void> {
  const call = (req: { registrationId?: string; interpreterId?: string; trigger?: string }): Promise<{ registrationIds: string[] }> => (c.resume ? d.resume(req) : d.pause(req));
  let selected: ModelReg[] | undefined;
  let req: { registrationId?: string; interpreterId?: string; trigger?: string };
  if (c.by === 'registration') {
    const r = c.target.kind === 'live' ? pickFrom(m.allRegs(), c.target.pick) : undefined;
    const gone = c.target.kind === 'gone' ? pickFrom([...m.released], c.target.pick) : undefined;
    req = { registrationId: r?.id ?? gone ?? UNKNOWN_REG };
    if (r) selected = [r];
  } else if (c.by === 'interpreter') {
    const itp = resolveInterp(m, c.target);
    req = { interpreterId: itp.id };
    if (itp.live) selected = m.regsOf(itp.id);
  } else {
    const name = TRIGGERS[c.trigger];
    req = { trigger: name };
    const bound = m.boundTo(name);
    if (bound.length > 0) selected = bound;
  }
  if (!selected) {
    await expectStatus(call(req), grpc.status.NOT_FOUND);
    return;
  }
  const changed = selected.filter((r) => (r.paused === true) !== !c.resume);
  const res = await call(req);
  assert.deepEqual(sorted(res.registrationIds), sorted(changed.map((r) => r.id)), `${what}: what the ${c.resume ? 'resume' : 'pause'} changed`);
  assertOrder(m, res.registrationIds, `${what}: changed, in creation order`);
  m.setPaused(res.registrationIds, !c.resume);
  if (res.registrationIds.length > 0) note(c.resume ? 'resumed registrations' : 'paused registrations');
  if (!c.resume && c.by === 'trigger' && m.regsOn(TRIGGERS[c.trigger]).length === 0) note('every registration of a trigger paused');
}

async function release(d: Driver, m: Model, c: Extract<Cmd, { op: 'release' }>, what: string): Promise<void> {
  if (c.by === 'registration') {
    let id = UNKNOWN_REG;
    if (c.target.kind === 'live') {
      const r = pickFrom(m.allRegs(), c.target.pick);
      if (r) {
        const left = m.regsOf(r.interpreterId).length - 1;
        const res = await d.release({ registrationId: r.id });
        assert.deepEqual(res.releasedRegistrationIds, [r.id], `${what}: released`);
        expectInterp(
          res.interpreter,
          { id: r.interpreterId, state: m.isBroken(r) ? FAILED : left > 0 ? READY : DISPOSED, registrationReferences: left, executionReferences: 0 },
          what,
        );
        m.release([r.id]);
        return;
      }
    } else if (c.target.kind === 'gone') {
      id = pickFrom([...m.released], c.target.pick) ?? UNKNOWN_REG;
    }
    await expectStatus(d.release({ registrationId: id }), grpc.status.NOT_FOUND);
    return;
  }
  const itp = resolveInterp(m, c.target);
  if (!itp.live) {
    await expectStatus(d.release({ interpreterId: itp.id }), grpc.status.NOT_FOUND);
    return;
  }
  const regs = m.regsOf(itp.id);
  const res = await d.release({ interpreterId: itp.id });
  assert.deepEqual(sorted(res.releasedRegistrationIds), sorted(regs.map((r) => r.id)), `${what}: released`);
  assertOrder(m, res.releasedRegistrationIds, `${what}: released`);
  expectInterp(res.interpreter, { id: itp.id, state: itp.failed ? FAILED : DISPOSED, registrationReferences: 0, executionReferences: 0 }, what);
  m.release(res.releasedRegistrationIds);
}

/**
 * A Trigger whose handlers are slow, and, once its runs are in flight, a Release of one of the
 * registrations it runs (or of that registration's interpreter). The run must finish untouched;
 * the released interpreter goes DRAINING while it runs and is disposed when it ends.
 * `cancel` hangs until the test cancels the Trigger after the Release: the interleaving is fixed
 * and the Release response is checked exactly. The other endings race the Release against the
 * run's end (deadline, timeout, a short spin); their checks accept either order.
 */
async function slowTriggerRelease(d: Driver, m: Model, c: Extract<Cmd, { op: 'slowTriggerRelease' }>, what: string): Promise<void> {
  // a bomb only in a dedicated isolate: who shares a shared one is not observable
  const candidates = m.activeRegs().filter((r) => !m.isBroken(r) && (c.end !== 'spinBomb' || m.interps.get(r.interpreterId)?.mode === 'isolate'));
  const target = pickFrom(candidates, c.pick);
  if (!target) return;
  const x = target.interpreterId;
  const name = target.trigger;
  const bound = m.regsOn(name);
  // broken registrations fail at once, without a run or a reference
  const runs = bound.filter((r) => !m.isBroken(r)).length;
  const onX = bound.filter((r) => r.interpreterId === x).length;
  const preX = m.regsOf(x);
  const left = c.by === 'registration' ? preX.length - 1 : 0;
  const registerOn = TRIGGERS[c.registerOn];
  // the hanging runs register before they hang: a run that does not succeed must keep nothing
  const payloads: Record<SlowEnd, Record<string, unknown>> = {
    cancel: { hang: true, register: registerOn },
    cancelById: { hang: true, register: registerOn },
    deadline: { hang: true, register: registerOn },
    timeout: { hang: true, register: registerOn },
    spin: { spin: SLOW_MS },
    spinRegister: { spin: SLOW_MS, register: registerOn },
    spinBomb: { spin: SLOW_MS, bomb: target.id },
  };
  const req = { trigger: name, payload: payloads[c.end], limits: lim(c.end === 'timeout' ? SHORT_TIMEOUT_MS * 2 : LONG_TIMEOUT_MS) };
  // the runs hang until the test ends them: the interleaving is fixed
  const hanging = c.end === 'cancel' || c.end === 'cancelById';
  let cancel = async (): Promise<void> => undefined;
  let call: Pending<Settled<unknown>>;
  if (c.end === 'cancel') {
    const h = d.cancellable({ trigger: req });
    call = h.call;
    cancel = async () => h.cancel();
  } else if (c.end === 'cancelById') {
    call = pending(settle(d.trigger(req)));
    // the fan-out, picked from ListExecutions and cancelled from the second client
    cancel = async () => {
      const fan = await d.untilListed(EXECUTION_STATE_RUNNING, (e) => e.kind === EXECUTION_KIND_TRIGGER, call.settled);
      assert.ok(fan, `${what}: the hanging Trigger is not listed RUNNING`);
      expectDone(await d.cancelExecution(fan.id), { id: fan.id, kind: EXECUTION_KIND_TRIGGER, background: false }, `${what}: CancelExecution`);
      m.cancelled(true);
    };
  } else {
    call = pending(settle(d.trigger(req, c.end === 'deadline' ? { deadlineMs: DEADLINE_MS * 2 } : {})));
  }
  const inFlight = await d.untilInFlight(runs, call.settled);
  if (hanging) {
    assert.ok(inFlight, `${what}: the hanging runs went in flight`);
    const cnt = d.t.manager.counters();
    assert.equal(cnt.executionsInFlight, runs, `${what}: one run per bound registration`);
    assert.deepEqual(cnt.references, { registration: m.regs.size, execution: runs }, `${what}: references while the runs hang`);
  }

  const rel = c.by === 'registration' ? await d.release({ registrationId: target.id }) : await d.release({ interpreterId: x });
  const listed = rel.releasedRegistrationIds;
  assert.equal(rel.interpreter?.id, x, `${what}: Release answers with the interpreter`);
  const relState = stateName(rel.interpreter?.state);
  note(`slowTriggerRelease ${c.end}: Release answered ${relState}`);
  if (hanging) {
    if (c.by === 'registration') assert.deepEqual(listed, [target.id], `${what}: released`);
    else assert.deepEqual(sorted(listed), sorted(preX.map((r) => r.id)), `${what}: released`);
    expectInterp(
      rel.interpreter,
      { state: left > 0 ? READY : DRAINING, registrationReferences: left, executionReferences: onX },
      `${what}: Release while ${onX} run(s) of the interpreter hang`,
    );
    // the released registrations are unbound at once, though their runs go on
    const stillBound = m.boundTo(name).filter((r) => !listed.includes(r.id));
    if (stillBound.length === 0) await expectStatus(d.trigger({ trigger: name, limits: lim(LONG_TIMEOUT_MS) }), grpc.status.NOT_FOUND);
    if (left === 0) {
      // a DRAINING interpreter takes no new owner and has nothing left to release
      const got = await d.getInterpreter(x);
      expectInterp(got.interpreter, { state: DRAINING, registrationReferences: 0, executionReferences: onX }, `${what}: GetInterpreter while DRAINING`);
      assert.deepEqual(got.registrations, [], `${what}: a DRAINING interpreter lists no registration`);
      await expectStatus(d.execute({ interpreterId: x, source: executeSource([registerOn], 'ok') }), grpc.status.FAILED_PRECONDITION, /DRAINING/);
      await expectStatus(d.register({ interpreterId: x, trigger: registerOn, source: REGISTER_SOURCE }), grpc.status.FAILED_PRECONDITION, /DRAINING/);
      await expectStatus(d.release({ interpreterId: x }), grpc.status.NOT_FOUND);
      for (const r of preX) await expectStatus(d.release({ registrationId: r.id }), grpc.status.NOT_FOUND);
    }
    await cancel();
  } else {
    // the runs may have ended before the Release arrived; whichever happened, the answer is coherent
    const info = rel.interpreter as pb.Interpreter;
    if (relState === DRAINING) {
      assert.equal(info.registrationReferences, 0, `${what}: a DRAINING interpreter holds no registration`);
      assert.ok(info.executionReferences >= 1 && info.executionReferences <= onX, `${what}: DRAINING with ${info.executionReferences} run(s) of ${onX}`);
    } else if (relState === READY) {
      assert.ok(info.registrationReferences >= Math.max(left, 1), `${what}: READY with ${info.registrationReferences} registration(s)`);
    } else if (relState === FAILED) {
      assert.equal(c.end, 'spinBomb', `${what}: FAILED without a memory bomb`);
      assert.equal(info.registrationReferences, left, `${what}: FAILED keeps its other registrations`);
    } else {
      assert.notEqual(c.end, 'spinBomb', `${what}: the bombed interpreter was DISPOSED, not FAILED`);
      assert.equal(relState, DISPOSED, `${what}: state after Release`);
      assert.equal(info.references, 0, `${what}: a DISPOSED interpreter holds no reference`);
    }
  }

  const settled = await call.promise;
  const step = m.nextStep();
  const committed: { id: string; itp: string; group: number }[] = [];
  switch (c.end) {
    case 'cancel':
      assert.equal(settled.err?.code, grpc.status.CANCELLED, `${what}: the cancelled Trigger (${settled.err?.details ?? 'it succeeded'})`);
      break;
    case 'deadline':
      assert.equal(settled.err?.code, grpc.status.DEADLINE_EXCEEDED, `${what}: the Trigger past its deadline (${settled.err?.details ?? 'it succeeded'})`);
      break;
    case 'cancelById': {
      // the caller gets its response: every run ABORTED (a broken registration's FAILED, not run), none kept
      assert.ok(!settled.err, `${what}: the Trigger cancelled by id failed: ${settled.err?.details}`);
      const res = settled.res as pb.TriggerResponse;
      expectRan(m, res, bound, what);
      const byId = new Map(bound.map((r) => [r.id, r]));
      for (const r of res.results) {
        expectOutcome(r, runOutcome(m, byId.get(r.registrationId) as ModelReg, OUTCOME_ABORTED), `${what}: run of ${r.registrationId}`);
        if (r.outcome === OUTCOME_ABORTED) assert.match(r.error?.message ?? '', CANCELLED_BY_ID, `${what}: run of ${r.registrationId}`);
      }
      break;
    }
    default: {
      assert.ok(!settled.err, `${what}: the Trigger failed: ${settled.err?.details}`);
      const res = settled.res as pb.TriggerResponse;
      expectRan(m, res, bound, what);
      const outcome = c.end === 'timeout' ? OUTCOME_TIMED_OUT : OUTCOME_SUCCEEDED;
      const byId = new Map(bound.map((r) => [r.id, r]));
      for (const r of res.results) {
        const reg = byId.get(r.registrationId) as ModelReg;
        if (c.end === 'spinBomb' && r.registrationId === target.id) expectOutcome(r, OUTCOME_MEMORY_EXCEEDED, `${what}: the bomb`);
        else if (c.end === 'spinBomb' && reg.interpreterId === x) {
          note(`slowTriggerRelease spinBomb: neighbour run ${outcomeName(r.outcome)}`);
          assert.ok([OUTCOME_SUCCEEDED, OUTCOME_MEMORY_EXCEEDED, OUTCOME_ABORTED].includes(r.outcome), `${what}: neighbour run ${outcomeName(r.outcome)}`);
        } else expectOutcome(r, runOutcome(m, reg, outcome), `${what}: run of ${r.registrationId} (released while it ran)`);
      }
      const healthy = res.results.filter((r) => !m.isBroken(byId.get(r.registrationId) as ModelReg));
      if (c.end === 'spinRegister') {
        // a run's registration is kept unless its interpreter was DRAINING when the run ended
        healthy.forEach((r, group) => {
          const id = r.result as string;
          assert.equal(typeof id, 'string', `${what}: a registering handler returns the new id`);
          if (r.interpreterId !== x || relState !== DRAINING || listed.includes(id)) committed.push({ id, itp: r.interpreterId, group });
          else note('slowTriggerRelease spinRegister: registration of a run refused (DRAINING)');
        });
      } else if (c.end === 'spin') {
        for (const r of healthy) assert.equal(r.result, r.registrationId, `${what}: result of ${r.registrationId}`);
      } else if (c.end === 'spinBomb') {
        m.fail(x);
      }
    }
  }
  const allowed = new Set([...preX.map((r) => r.id), ...committed.filter((k) => k.itp === x).map((k) => k.id)]);
  for (const id of listed) assert.ok(allowed.has(id), `${what}: Release listed ${id}, not a registration of ${x}`);
  if (c.by === 'registration') assert.deepEqual(listed, [target.id], `${what}: released`);
  else for (const r of preX) assert.ok(listed.includes(r.id), `${what}: Release by interpreter left ${r.id}`);
  for (const k of committed) m.addReg(k.id, registerOn, k.itp, { step, group: k.group, idx: 0 });
  m.release(listed);
}

/**
 * An Execute that hangs (or spins) after registering, cut short by the client: by its deadline,
 * beside an ordinary Trigger that must not notice, or by an explicit cancel once it runs. Nothing
 * it registered may stay; an attached interpreter keeps exactly what it had.
 */
async function cancelExecute(d: Driver, m: Model, c: Extract<Cmd, { op: 'cancelExecute' }>, what: string): Promise<void> {
  const source = executeSource(
    c.triggers.map((i) => TRIGGERS[i]),
    c.body,
  );
  const attached = c.target.kind === 'live' ? pickFrom(m.healthy(), c.target.pick) : undefined;
  const req: Partial<pb.ExecuteRequest> = { source, limits: lim(c.body === 'hang' ? LONG_TIMEOUT_MS : LOOP_LIMIT_MS) };
  if (attached) req.interpreterId = attached.id;
  else {
    req.mode = pbMode(c.target.kind === 'new' ? c.target.mode : 'shared');
    const n = c.target.kind === 'new' ? c.target.name : null;
    if (n !== null && n !== undefined) {
      // an upgrade cut short leaves the holder as it was; a new name stays free
      req.name = NAMES[n];
      req.replace = !!m.holder(NAMES[n]);
    }
  }
  // an Execute that spins may still end TIMED_OUT if the server is slower than its deadline
  const acceptLate = (s: Settled<unknown>): boolean => c.body === 'loop' && !s.err && (s.res as pb.ExecuteResponse).outcome === OUTCOME_TIMED_OUT;
  if (!attached && full(d, m)) return expectFull(d.execute(req), what);

  if (c.how === 'cancel') {
    const h = d.cancellable({ execute: req });
    await d.untilInFlight(1, h.call.settled);
    h.cancel();
    const s = await h.call.promise;
    assert.ok(s.err?.code === grpc.status.CANCELLED || acceptLate(s), `${what}: the cancelled Execute (${s.err?.details ?? 'it succeeded'})`);
    return;
  }
  const side = pickFrom(m.activeRegs(), 0);
  const bound = side ? m.regsOn(side.trigger) : [];
  const [s, t] = await Promise.all([
    settle(d.execute(req, { deadlineMs: DEADLINE_MS })),
    side ? settle(d.trigger({ trigger: side.trigger, payload: {}, limits: lim(LONG_TIMEOUT_MS) })) : Promise.resolve(undefined),
  ]);
  assert.ok(s.err?.code === grpc.status.DEADLINE_EXCEEDED || acceptLate(s), `${what}: the Execute past its deadline (${s.err?.details ?? 'it succeeded'})`);
  if (t) {
    assert.ok(!t.err, `${what}: the Trigger beside it failed: ${t.err?.details}`);
    expectRan(m, t.res, bound, `${what}: the Trigger beside it`);
    const byId = new Map(bound.map((r) => [r.id, r]));
    for (const r of t.res.results) expectOutcome(r, runOutcome(m, byId.get(r.registrationId) as ModelReg, OUTCOME_SUCCEEDED), `${what}: run of ${r.registrationId}`);
  }
}

/**
 * A Register whose module never finishes loading: a client deadline gives DEADLINE_EXCEEDED, a
 * cancel CANCELLED, its own timeout INVALID_ARGUMENT (the source did not yield a handler). No
 * registration is made; an attached interpreter keeps what it had.
 */
async function slowRegister(d: Driver, m: Model, c: Extract<Cmd, { op: 'slowRegister' }>, what: string): Promise<void> {
  const attached = c.target.kind === 'live' ? pickFrom(m.healthy(), c.target.pick) : undefined;
  const req: Partial<pb.RegisterRequest> = {
    trigger: TRIGGERS[c.trigger],
    source: HANGING_REGISTER_SOURCE,
    limits: lim(c.end === 'timeout' ? SHORT_TIMEOUT_MS : LONG_TIMEOUT_MS),
  };
  if (attached) req.interpreterId = attached.id;
  else req.mode = pbMode(c.target.kind === 'new' ? c.target.mode : 'shared');
  if (!attached && full(d, m)) return expectFull(d.register(req), what);
  if (c.end === 'timeout') {
    await expectStatus(d.register(req), grpc.status.INVALID_ARGUMENT, /timed out/);
  } else if (c.end === 'deadline') {
    await expectStatus(d.register(req, { deadlineMs: DEADLINE_MS }), grpc.status.DEADLINE_EXCEEDED);
  } else {
    const h = d.cancellable({ register: req });
    assert.ok(await d.untilInFlight(1, h.call.settled), `${what}: the load went in flight`);
    h.cancel();
    const s = await h.call.promise;
    assert.equal(s.err?.code, grpc.status.CANCELLED, `${what}: the cancelled Register (${s.err?.details ?? 'it succeeded'})`);
  }
}

/**
 * A memory bomb in a dedicated isolate (shared isolates are left alone: which interpreters share
 * one is not observable, so the model could not say who else goes FAILED). A new interpreter is
 * gone at once, FAILED; a live one goes FAILED with its registrations kept, broken.
 */
async function oom(d: Driver, m: Model, c: Extract<Cmd, { op: 'oom' }>, what: string): Promise<void> {
  const x = c.target.kind === 'live' ? pickFrom(m.healthy().filter((i) => i.mode === 'isolate'), c.target.pick) : undefined;
  if (!x) {
    const triggers = c.target.kind === 'new' ? c.target.triggers.map((i) => TRIGGERS[i]) : [];
    const source = scriptSource(triggers, MEMORY_BOMB);
    if (full(d, m)) return expectFull(d.execute({ mode: ISOLATE, source, limits: lim(LONG_TIMEOUT_MS) }), what);
    const res = await d.execute({ mode: ISOLATE, source, limits: lim(LONG_TIMEOUT_MS) });
    expectOutcome(res, OUTCOME_MEMORY_EXCEEDED, what);
    assert.deepEqual(res.registrations, [], `${what}: a killed run keeps no registration`);
    expectInterp(res.interpreter, { id: res.interpreterId, state: FAILED, registrationReferences: 0, executionReferences: 0 }, what);
    m.markGone(res.interpreterId, FAILED);
    note('oom: new interpreter');
    return;
  }
  const regs = m.regsOf(x.id);
  // through a handler only if one of x's is not paused (a Trigger skips paused ones)
  const victim = regs.find((r) => !r.paused);
  const via = c.target.kind === 'live' && c.target.via === 'trigger' && victim ? 'trigger' : 'execute';
  if (via === 'execute' || !victim) {
    const source = scriptSource([TRIGGERS[0]], MEMORY_BOMB);
    const res = await d.execute({ interpreterId: x.id, source, limits: lim(LONG_TIMEOUT_MS) });
    expectOutcome(res, OUTCOME_MEMORY_EXCEEDED, what);
    assert.deepEqual(res.registrations, [], `${what}: a killed run keeps no registration`);
    expectInterp(res.interpreter, { id: x.id, state: FAILED, registrationReferences: regs.length, executionReferences: 0 }, what);
  } else {
    const bound = m.regsOn(victim.trigger);
    const res = await d.trigger({ trigger: victim.trigger, payload: { bomb: victim.id }, limits: lim(LONG_TIMEOUT_MS) });
    expectRan(m, res, bound, what);
    const byId = new Map(bound.map((r) => [r.id, r]));
    for (const r of res.results) {
      const reg = byId.get(r.registrationId) as ModelReg;
      if (r.registrationId === victim.id) expectOutcome(r, OUTCOME_MEMORY_EXCEEDED, `${what}: the bomb`);
      else if (reg.interpreterId === x.id) {
        // a neighbour in the killed isolate finished first, or died with it
        note(`oom: neighbour run ${outcomeName(r.outcome)}`);
        assert.ok([OUTCOME_SUCCEEDED, OUTCOME_MEMORY_EXCEEDED, OUTCOME_ABORTED].includes(r.outcome), `${what}: neighbour run ${outcomeName(r.outcome)}`);
      } else expectOutcome(r, runOutcome(m, reg, OUTCOME_SUCCEEDED), `${what}: run of ${r.registrationId} elsewhere`);
    }
  }
  note(`oom: ${via}`);
  m.fail(x.id);
}

/** Makes sure `name` has a holder with a registration, for the upgrade batches. */
async function ensureHolder(d: Driver, m: Model, name: number, mode: Mode, what: string): Promise<void> {
  if (m.holder(NAMES[name])) return;
  await execute(d, m, { op: 'execute', mode, triggers: [name % TRIGGERS.length], ending: 'ok', name, replace: false }, `${what} (setting up the holder)`);
  await checkQuiescent(d, [m], `${what} (setting up the holder)`);
}

/**
 * Upgrades a named interpreter while a Trigger runs its handlers, then, while the old
 * interpreter may still drain, Triggers again: that Trigger must see the new set exactly. The
 * old handlers register a handler as they run: after a successful upgrade the old interpreter
 * keeps none of them (released by the swap, or refused while DRAINING), whichever came first.
 */
async function upgradeUnderTrigger(d: Driver, m: Model, c: Extract<Cmd, { op: 'upgradeUnderTrigger' }>, what: string): Promise<void> {
  await ensureHolder(d, m, c.name, c.mode, what);
  const name = NAMES[c.name];
  const old = m.holder(name);
  if (!old) return; // no room for a holder

  const oldRegs = m.regsOf(old.id);
  const on = oldRegs[0].trigger;
  // another trigger, so the Trigger after the upgrade does not depend on when these commit
  const registerOn = TRIGGERS[(TRIGGERS.indexOf(on as (typeof TRIGGERS)[number]) + 1) % TRIGGERS.length];
  const bound = m.regsOn(on);
  const runsOnOld = bound.filter((r) => r.interpreterId === old.id && !m.isBroken(r)).length;
  const slow = pending(settle(d.trigger({ trigger: on, payload: { spin: SLOW_MS, register: registerOn }, limits: lim(LONG_TIMEOUT_MS) })));
  await d.untilInFlight(bound.filter((r) => !m.isBroken(r)).length, slow.settled);

  const triggers = c.triggers.map((i) => TRIGGERS[i]);
  const upReq = { name, replace: true, mode: pbMode(c.mode), source: executeSource(triggers, c.ending), limits: limitsFor(c.ending) };
  const step = m.nextStep();
  const after = m.clone();
  // the old holder still counts while it drains: the new interpreter needs a free slot
  const refused = full(d, m);
  if (refused) await expectFull(d.execute(upReq), what);
  else applyNewExecute(after, await d.execute(upReq), { mode: c.mode, triggers, ending: c.ending, name, replace: true }, { step, group: 0 }, what);

  const oldNow = (await d.getInterpreter(old.id)).interpreter;
  const swapped = c.ending === 'ok' && !refused;
  if (swapped) {
    const st = stateName(oldNow?.state);
    note(`upgradeUnderTrigger: replaced interpreter ${st}`);
    if (old.failed) assert.equal(st, FAILED, `${what}: a FAILED interpreter stays FAILED when replaced`);
    else assert.ok(st === DRAINING || st === DISPOSED, `${what}: the replaced interpreter is ${st}`);
    expectInterp(oldNow, { state: st, registrationReferences: 0, name: '' }, `${what}: the replaced interpreter`);
    if (st === DRAINING) assert.ok((oldNow?.executionReferences ?? 0) >= 1, `${what}: DRAINING without a run`);
  } else {
    expectInterp(oldNow, { state: old.failed ? FAILED : READY, name }, `${what}: the interpreter a failed upgrade left alone`);
    const regRefs = oldNow?.registrationReferences ?? -1;
    // plus whatever its runs registered before this look
    assert.ok(regRefs >= oldRegs.length && regRefs <= oldRegs.length + runsOnOld, `${what}: ${regRefs} registration references, had ${oldRegs.length}`);
  }

  // while the old runs may still go on, a new Trigger sees exactly the set after the upgrade
  const nowBound = after.regsOn(on);
  const fresh = settle(d.trigger({ trigger: on, payload: {}, limits: lim(LONG_TIMEOUT_MS) }));
  const [s, f] = await Promise.all([slow.promise, fresh]);
  if (after.boundTo(on).length === 0) assert.equal(f.err?.code, grpc.status.NOT_FOUND, `${what}: Trigger after an upgrade that left ${on} unbound`);
  else {
    assert.ok(!f.err, `${what}: Trigger after the upgrade failed: ${f.err?.details}`);
    expectRan(after, f.res, nowBound, `${what}: Trigger after the upgrade`);
    const byId = new Map(nowBound.map((r) => [r.id, r]));
    for (const r of f.res.results) {
      expectOutcome(r, runOutcome(after, byId.get(r.registrationId) as ModelReg, OUTCOME_SUCCEEDED), `${what}: run of ${r.registrationId} after the upgrade`);
    }
  }
  assert.ok(!s.err, `${what}: the Trigger under the upgrade failed: ${s.err?.details}`);
  expectRan(m, s.res, bound, `${what}: the Trigger under the upgrade`);
  const byId = new Map(bound.map((r) => [r.id, r]));
  s.res.results.forEach((r, i) => {
    const reg = byId.get(r.registrationId) as ModelReg;
    expectOutcome(r, runOutcome(m, reg, OUTCOME_SUCCEEDED), `${what}: run of ${r.registrationId} under the upgrade`);
    if (m.isBroken(reg)) return;
    assert.equal(typeof r.result, 'string', `${what}: a registering handler returns the new id`);
    if (swapped && r.interpreterId === old.id) note('upgradeUnderTrigger: a registration of the replaced interpreter dropped');
    else after.addReg(r.result as string, registerOn, r.interpreterId, { step, group: 1 + i, idx: 0 });
  });
  m.assign(after);
}

/** Two concurrent upgrades of one name: the result is one of the two orders, never a mix. */
async function upgradeRace(d: Driver, m: Model, c: Extract<Cmd, { op: 'upgradeRace' }>, what: string): Promise<Model[]> {
  const name = NAMES[c.name];
  const sides = [c.a, c.b].map((s) => ({ mode: s.mode, triggers: s.triggers.map((i) => TRIGGERS[i]) }));
  const res = await Promise.all(
    sides.map((s) => settle(d.execute({ name, replace: true, mode: pbMode(s.mode), source: executeSource(s.triggers, 'ok'), limits: lim(LONG_TIMEOUT_MS) }))),
  );
  // with one slot left, the second may find it taken by the first (or freed by its swap)
  const live = m.live().length;
  res.forEach((r, i) => {
    if (!r.err) return;
    assert.equal(r.err.code, grpc.status.RESOURCE_EXHAUSTED, `${what}: upgrade ${'ab'[i]} failed: ${r.err.details}`);
    assert.ok(live + 1 >= d.maxInterpreters, `${what}: upgrade ${'ab'[i]} refused for room with ${live} of ${d.maxInterpreters} interpreters live`);
    note('RESOURCE_EXHAUSTED: max_interpreters (race)');
  });
  if (live >= d.maxInterpreters) assert.ok(res.every((r) => r.err), `${what}: an upgrade found room with ${live} of ${d.maxInterpreters} live`);
  const step = m.nextStep();
  return [
    [0, 1],
    [1, 0],
  ].map((order) => {
    const cand = m.clone();
    for (const i of order) {
      const r = res[i];
      if (r.res) applyNewExecute(cand, r.res, { ...sides[i], ending: 'ok', name, replace: true }, { step, group: i }, `${what}: upgrade ${'ab'[i]}`, false);
    }
    return cand;
  });
}

// ------------------------------------------------------------------ executions

/**
 * A background execution as StartExecute/StartTrigger answered it: accepted, not DONE, no response
 * yet. `mayBeDone`: a StartTrigger whose handler runs all end (or are not run: broken) before
 * the call answers is DONE already (StartTrigger, unlike StartExecute, does not promise QUEUED
 * or RUNNING); the caller then checks that it stays as it was.
 */
function expectStarted(
  e: pb.Execution,
  want: { kind: pb.ExecutionKind; queued: boolean; interpreterId?: string | RegExp; trigger?: string; mayBeDone?: boolean },
  what: string,
): void {
  assert.match(e.id, /^exe_[0-9a-f]{20}$/, `${what}: execution id`);
  if (want.mayBeDone && e.state === EXECUTION_STATE_DONE) {
    note(`${pb.executionKindToJSON(want.kind)} DONE when accepted`);
    expectDone(e, { id: e.id, kind: want.kind, background: true }, what);
    return;
  }
  assert.equal(e.kind, want.kind, `${what}: kind`);
  assert.equal(e.background, true, `${what}: background`);
  // with a run slot free, the run has it by the time the call answers (see StartExecute)
  assert.equal(execState(e.state), execState(want.queued ? EXECUTION_STATE_QUEUED : EXECUTION_STATE_RUNNING), `${what}: state when accepted`);
  assert.equal(e.startedAt instanceof Date, !want.queued, `${what}: started_at set once it runs`);
  assert.equal(e.endedAt, undefined, `${what}: ended_at`);
  assert.equal(e.executeResponse ?? e.triggerResponse, undefined, `${what}: a response before it is DONE`);
  expectWhere(e, want, what);
}

/**
 * Where an execution runs: an attached Execute's interpreter (`interpreterId`), a new one ('' until
 * it exists: undefined allows either, a RegExp asks for one), a Trigger's none ('').
 */
function expectWhere(e: pb.Execution, want: { interpreterId?: string | RegExp; trigger?: string; registrationId?: string }, what: string): void {
  if (typeof want.interpreterId === 'string') assert.equal(e.interpreterId, want.interpreterId, `${what}: interpreter_id`);
  else assert.match(e.interpreterId, want.interpreterId ?? /^(itp_.*)?$/, `${what}: interpreter_id`);
  assert.equal(e.trigger, want.trigger ?? '', `${what}: trigger`);
  assert.equal(e.registrationId, want.registrationId ?? '', `${what}: registration_id`);
}

/** A DONE execution: when it ran, and the response it carries. */
function expectDone(e: pb.Execution, want: { id: string; kind: pb.ExecutionKind; background: boolean }, what: string): void {
  assert.equal(execState(e.state), execState(EXECUTION_STATE_DONE), `${what}: state`);
  assert.deepEqual({ id: e.id, kind: e.kind, background: e.background }, want, `${what}: execution`);
  const { createdAt, startedAt, endedAt } = e;
  assert.ok(createdAt instanceof Date && startedAt instanceof Date && endedAt instanceof Date, `${what}: created_at, started_at and ended_at set`);
  assert.ok(createdAt <= startedAt && startedAt <= endedAt, `${what}: created ${createdAt.toISOString()}, started ${startedAt.toISOString()}, ended ${endedAt.toISOString()}`);
  if (e.kind === EXECUTION_KIND_EXECUTE) {
    assert.ok(e.executeResponse && !e.triggerResponse, `${what}: an EXECUTE carries an execute_response`);
    assert.equal(e.executeResponse.executionId, e.id, `${what}: the response's execution_id`);
    assert.equal(e.executeResponse.interpreterId, e.interpreterId, `${what}: the response's interpreter_id`);
  } else {
    assert.ok(e.triggerResponse && !e.executeResponse, `${what}: a ${pb.executionKindToJSON(e.kind)} carries a trigger_response`);
    if (e.kind === EXECUTION_KIND_TRIGGER) assert.equal(e.interpreterId, '', `${what}: a TRIGGER runs in no one interpreter`);
    else assert.equal(e.triggerResponse.results.length, 1, `${what}: a HANDLER has its one result`);
  }
}

/** A DONE background execution: the server keeps it, unchanged, from now on. */
function keep(d: Driver, m: Model, e: pb.Execution, order: Order): void {
  d.keptExec.set(e.id, e);
  m.keep(e.id, order);
  for (const r of e.triggerResponse?.results ?? []) if (r.executionId) d.ended.push(r.executionId);
}

/**
 * Looks at a background execution on its way: WaitExecution with a short timeout answers (status
 * OK) RUNNING or DONE; it is listed from its start; not listed RUNNING only once it is DONE.
 */
async function peek(d: Driver, id: string, what: string): Promise<void> {
  const w = await d.waitExecution(id, 30);
  note(`peek: WaitExecution(30 ms) answered ${execState(w.state)}`);
  if (w.state === EXECUTION_STATE_RUNNING) {
    assert.ok(w.startedAt instanceof Date && !w.endedAt && !w.executeResponse && !w.triggerResponse, `${what}: a RUNNING execution has started, not ended, and has no response`);
  } else {
    assert.equal(execState(w.state), execState(EXECUTION_STATE_DONE), `${what}: WaitExecution with a short timeout`);
  }
  assert.ok((await d.listExecutions()).some((e) => e.id === id), `${what}: a background execution is listed from its start`);
  const running = (await d.listExecutions({ state: EXECUTION_STATE_RUNNING })).find((e) => e.id === id);
  if (running) assert.ok(!running.endedAt && !running.executeResponse && !running.triggerResponse, `${what}: listed RUNNING, with no response`);
  else assert.equal(execState((await d.getExecution(id)).state), execState(EXECUTION_STATE_DONE), `${what}: no longer listed RUNNING, so DONE`);
}

/** StartExecute refused exactly as Execute would be, or accepted, waited for, and applied once DONE. */
async function startExecute(d: Driver, m: Model, c: Extract<Cmd, { op: 'startExecute' }>, what: string): Promise<void> {
  const triggers = c.triggers.map((i) => TRIGGERS[i]);
  const base = { source: executeSource(triggers, c.ending), limits: limitsFor(c.ending) };
  let attached: string | undefined;
  let spec: { mode: Mode; name: string; replace: boolean } | undefined;
  let req: Partial<pb.ExecuteRequest>;
  if (c.target.kind === 'new') {
    const name = c.target.name === null ? '' : NAMES[c.target.name];
    spec = { mode: c.target.mode, name, replace: c.target.replace && name !== '' };
    req = { ...base, mode: pbMode(spec.mode), name, replace: spec.replace };
    if (name && !spec.replace && m.holder(name)) {
      await expectStatus(d.startExecute(req), grpc.status.ALREADY_EXISTS);
      return;
    }
    if (full(d, m)) return expectFull(d.startExecute(req), what);
  } else {
    const itp = resolveInterp(m, c.target.target);
    req = { ...base, interpreterId: itp.id };
    if (!itp.live || itp.failed) {
      const code = itp.live || itp.gone ? grpc.status.FAILED_PRECONDITION : grpc.status.NOT_FOUND;
      await expectStatus(d.startExecute(req), code, itp.failed ? /FAILED/ : undefined);
      return;
    }
    attached = itp.id;
  }
  const started = await d.startExecute(req);
  const step = m.nextStep();
  expectStarted(started, { kind: EXECUTION_KIND_EXECUTE, queued: false, interpreterId: attached }, `${what}: StartExecute`);
  if (c.peek) await peek(d, started.id, what);
  const done = await d.waitExecution(started.id);
  expectDone(done, { id: started.id, kind: EXECUTION_KIND_EXECUTE, background: true }, `${what}: WaitExecution`);
  const res = done.executeResponse as pb.ExecuteResponse;
  if (attached) applyAttachedExecute(m, res, attached, triggers, c.ending, step, what);
  else applyNewExecute(m, res, { ...(spec as NonNullable<typeof spec>), triggers, ending: c.ending }, { step, group: 0 }, what);
  assert.deepEqual(await d.getExecution(started.id), done, `${what}: GetExecution of the DONE execution`);
  keep(d, m, done, { step, group: 0, idx: 0 });
}

/** StartTrigger: its handler runs are listed while they run; once DONE it is checked and applied like a Trigger. */
async function startTrigger(d: Driver, m: Model, c: Extract<Cmd, { op: 'startTrigger' }>, what: string): Promise<void> {
  const name = TRIGGERS[c.trigger];
  const registerOn = TRIGGERS[c.registerOn];
  const bound = m.regsOn(name);
  const run = TRIGGER_PAYLOAD[c.action](registerOn);
  const req = { trigger: name, payload: run.payload, limits: run.limits };
  if (m.boundTo(name).length === 0) {
    await expectStatus(d.startTrigger(req), grpc.status.NOT_FOUND);
    return;
  }
  const started = await d.startTrigger(req);
  const step = m.nextStep();
  expectStarted(started, { kind: EXECUTION_KIND_TRIGGER, queued: false, interpreterId: '', trigger: name, mayBeDone: true }, `${what}: StartTrigger`);
  const healthy = bound.filter((r) => !m.isBroken(r));
  let seen: pb.Execution[] = [];
  if ((c.action === 'hang' || c.action === 'loop') && healthy.length > 0) {
    // every handler run lasts its timeout: each is listed, background, in its interpreter
    await d.untilInFlight(healthy.length, () => d.t.manager.getExecution(started.id).state === 'done');
    const running = await d.listExecutions({ state: EXECUTION_STATE_RUNNING });
    seen = running.filter((e) => e.kind === EXECUTION_KIND_HANDLER);
    note(`startTrigger ${c.action}: ${seen.length} of ${healthy.length} handler runs listed`);
    const regs = new Map(healthy.map((r) => [r.id, r]));
    for (const h of seen) {
      const reg = regs.get(h.registrationId);
      assert.ok(reg, `${what}: listed a HANDLER of ${h.registrationId}, not a healthy registration bound to ${name}`);
      expectWhere(h, { interpreterId: reg.interpreterId, trigger: name, registrationId: reg.id }, `${what}: HANDLER ${h.id}`);
      assert.equal(h.background, true, `${what}: the handler runs of a StartTrigger are background`);
    }
    assert.equal(new Set(seen.map((h) => h.registrationId)).size, seen.length, `${what}: a handler run listed twice`);
    if (seen.length > 0) assert.ok(running.some((e) => e.id === started.id), `${what}: the TRIGGER is RUNNING while its handler runs are`);
  }
  const done = await d.waitExecution(started.id);
  expectDone(done, { id: started.id, kind: EXECUTION_KIND_TRIGGER, background: true }, `${what}: WaitExecution`);
  if (started.state === EXECUTION_STATE_DONE) assert.deepEqual(done, started, `${what}: DONE when accepted, and unchanged since`);
  const res = done.triggerResponse as pb.TriggerResponse;
  applyTrigger(m, res, bound, c.action, registerOn, step, what);
  const ran = new Set(res.results.map((r) => r.executionId));
  for (const h of seen) assert.ok(ran.has(h.id), `${what}: the listed HANDLER ${h.id} is not one of the results' runs`);
  keep(d, m, done, { step, group: 0, idx: 0 });
}

/**
 * The source of a run to cancel: it registers a handler per trigger, then hangs or loops; a
 * `spin` body spins for `ms` first and registers after, so that code cancelled while it spins
 * (it goes on in a shared isolate, or in its interpreter's own) registers after its run ended.
 */
const victimSource = (triggers: readonly string[], body: VictimBody, ms: number): string =>
  body === 'spin'
    ? `${HANDLER}export default () => {\n  const s = Date.now(); while (Date.now() - s < ${ms}) {}\n${triggers.map((t) => `  gears.register(${JSON.stringify(t)}, h);\n`).join('')}  return "ok";\n};`
    : scriptSource(triggers, ENDINGS[body]);
const victimLimits = (body: VictimBody): pb.Limits => lim(body === 'loop' ? LOOP_LIMIT_MS : LONG_TIMEOUT_MS);

/**
 * A background Execute queued behind a cancelled one (`cancelById` with `queued`): started while
 * the slots are held, it must be left QUEUED by the cancel and run normally once they are free.
 */
interface Sibling {
  id: string;
  triggers: string[];
  step: number;
}

async function startSibling(d: Driver, m: Model, triggers: number[] | null, what: string): Promise<Sibling | undefined> {
  if (!triggers || full(d, m)) return undefined;
  const names = triggers.map((i) => TRIGGERS[i]);
  const started = await d.startExecute({ mode: SHARED, source: executeSource(names, 'ok'), limits: lim(LONG_TIMEOUT_MS) });
  expectStarted(started, { kind: EXECUTION_KIND_EXECUTE, queued: true, interpreterId: '' }, `${what}: the sibling StartExecute`);
  return { id: started.id, triggers: names, step: m.nextStep() };
}

async function finishSibling(d: Driver, m: Model, sib: Sibling | undefined, what: string): Promise<void> {
  if (!sib) return;
  const done = await d.waitExecution(sib.id);
  expectDone(done, { id: sib.id, kind: EXECUTION_KIND_EXECUTE, background: true }, `${what}: the sibling`);
  applyNewExecute(m, done.executeResponse as pb.ExecuteResponse, { mode: 'shared', triggers: sib.triggers, ending: 'ok', name: '', replace: false }, { step: sib.step, group: 0 }, `${what}: the sibling`);
  keep(d, m, done, { step: sib.step, group: 0, idx: 0 });
  note('cancelById: a queued sibling ran after the cancel');
}

/** The sibling is still QUEUED after the cancel of the execution queued before it, and nothing else is. */
async function siblingStillQueued(d: Driver, sib: Sibling | undefined, what: string): Promise<void> {
  if (!sib) return;
  const queued = await d.listExecutions({ state: EXECUTION_STATE_QUEUED });
  assert.deepEqual(queued.map((e) => e.id), [sib.id], `${what}: QUEUED after the cancel`);
}

async function cancelById(d: Driver, m: Model, c: Extract<Cmd, { op: 'cancelById' }>, what: string): Promise<void> {
  if (c.victim.kind === 'execute') return cancelExecuteById(d, m, c, c.victim, what);
  return cancelTriggerById(d, m, c, c.victim, what);
}

/**
 * An Execute (synchronous on the first client, or background) that registers, then hangs, spins
 * or spins briefly, picked from ListExecutions (QUEUED, RUNNING as soon as listed, or once its
 * code runs) and cancelled by id from the second client. The run ends OUTCOME_ABORTED, its
 * synchronous caller gets that response (status OK), and nothing it registered is kept; a new
 * interpreter is gone, a cut-short upgrade leaves the name's holder as it was. Only a brief spin
 * may end by itself first (SUCCEEDED, all kept), and a spin whose isolate is slower than its
 * timeout TIMED_OUT.
 */
async function cancelExecuteById(d: Driver, m: Model, c: Extract<Cmd, { op: 'cancelById' }>, v: Extract<Victim, { kind: 'execute' }>, what: string): Promise<void> {
  const attached = v.target.kind === 'live' ? pickFrom(m.healthy(), v.target.pick) : undefined;
  const triggers = v.triggers.map((i) => TRIGGERS[i]);
  const req: Partial<pb.ExecuteRequest> = { source: victimSource(triggers, v.body, v.spinMs), limits: victimLimits(v.body) };
  const mode: Mode = v.target.kind === 'new' ? v.target.mode : 'shared';
  let name = '';
  let replace = false;
  if (attached) req.interpreterId = attached.id;
  else {
    req.mode = pbMode(mode);
    const n = v.target.kind === 'new' ? v.target.name : null;
    if (n !== null) {
      // an upgrade if the name is held: cut short, it changes nothing
      name = NAMES[n];
      replace = !!m.holder(name);
      req.name = name;
      req.replace = replace;
    }
    if (full(d, m)) return expectFull(v.background ? d.startExecute(req) : d.execute(req), what);
  }
  const free = c.queued ? await d.holdSlots() : undefined;
  let sibling: Sibling | undefined;
  try {
    const step = m.nextStep();
    let call: Pending<Settled<pb.ExecuteResponse>> | undefined;
    let startedId = '';
    if (v.background) {
      const started = await d.startExecute(req);
      expectStarted(started, { kind: EXECUTION_KIND_EXECUTE, queued: c.queued, interpreterId: attached?.id ?? (c.queued ? '' : undefined) }, `${what}: StartExecute`);
      startedId = started.id;
    } else {
      call = pending(settle(d.execute(req)));
    }
    const ended = (): boolean => (call ? call.settled() : d.t.manager.getExecution(startedId).state === 'done');
    if (!c.queued && !v.early) await d.untilInFlight(1, ended);
    const state = c.queued ? EXECUTION_STATE_QUEUED : EXECUTION_STATE_RUNNING;
    const listed = await d.untilListed(state, (e) => e.kind === EXECUTION_KIND_EXECUTE, ended);
    let res: pb.ExecuteResponse;
    let cancelledId = startedId;
    let cx: Settled<pb.Execution> | undefined;
    if (!listed) {
      // it ended before it could be seen: only a brief spin does
      note(`cancelById execute ${v.body}: ended before it was listed`);
      res = call ? ((await call.promise).res as pb.ExecuteResponse) : ((await d.waitExecution(startedId)).executeResponse as pb.ExecuteResponse);
      assert.ok(res, `${what}: the run failed: ${call ? (await call.promise).err?.details : ''}`);
    } else {
      if (v.background) assert.equal(listed.id, startedId, `${what}: the execution listed`);
      assert.equal(listed.background, v.background, `${what}: listed background`);
      // a new interpreter exists once its code runs; not while the run is QUEUED
      const itpId = attached?.id ?? (c.queued ? '' : !v.early ? /^itp_/ : undefined);
      expectWhere(listed, { interpreterId: itpId }, `${what}: listed`);
      if (c.queued) sibling = await startSibling(d, m, c.sibling, what);
      // a brief spin: the cancel comes about when the run ends by itself, or commits what it registered
      if (v.body === 'spin' && !c.queued) await sleep(v.spinMs);
      cancelledId = listed.id;
      cx = await settle(d.cancelExecution(listed.id));
      const s = call ? await call.promise : undefined;
      if (s) assert.ok(!s.err, `${what}: the caller of the cancelled Execute got ${s.err?.code !== undefined ? grpc.status[s.err.code] : ''} (${s.err?.details}); expected its response`);
      if (cx.err) {
        // a synchronous run forgotten as it ended: the cancel came too late
        assert.equal(cx.err.code, grpc.status.NOT_FOUND, `${what}: CancelExecution failed: ${cx.err.details}`);
        assert.ok(s?.res && s.res.outcome !== OUTCOME_ABORTED, `${what}: CancelExecution answered NOT_FOUND, yet the run was ${s?.res ? outcomeName(s.res.outcome) : 'not answered'}`);
        note(`cancelById execute ${v.body}: the synchronous run ended before the cancel`);
        res = s.res;
      } else {
        expectDone(cx.res, { id: listed.id, kind: EXECUTION_KIND_EXECUTE, background: v.background }, `${what}: CancelExecution`);
        res = cx.res.executeResponse as pb.ExecuteResponse;
        if (s?.res) assert.deepEqual(s.res, res, `${what}: the caller's response and the cancelled execution's`);
      }
    }
    const effective = res.outcome === OUTCOME_ABORTED;
    note(`cancelById execute ${v.body}${c.queued ? ' queued' : v.early ? ' early' : ''}: ${outcomeName(res.outcome)}`);
    if (listed) m.cancelled(effective);
    assert.equal(res.executionId, cancelledId || res.executionId, `${what}: execution_id`);
    if (effective) {
      assert.match(res.error?.message ?? '', CANCELLED_BY_ID, `${what}: the ABORTED run says why`);
      assert.deepEqual(res.registrations, [], `${what}: a cancelled run keeps no registration`);
      if (c.queued) {
        assert.match(res.error?.message ?? '', /before the run started/, `${what}: cancelled while QUEUED`);
        assert.equal(res.interpreterId, attached?.id ?? '', `${what}: a run cancelled while QUEUED made no interpreter`);
        if (!attached) assert.equal(res.interpreter, undefined, `${what}: a run cancelled while QUEUED has no interpreter`);
      } else if (attached) {
        assert.equal(res.interpreterId, attached.id, `${what}: interpreter`);
        expectInterp(res.interpreter, { state: READY, registrationReferences: m.regsOf(attached.id).length }, `${what}: the interpreter of a cancelled attached run`);
      } else {
        assert.match(res.interpreterId, /^itp_/, `${what}: interpreter`);
        m.markGone(res.interpreterId);
        if (mode === 'isolate' && v.body === 'loop') {
          // a fresh isolate-mode interpreter's isolate goes with the cancel, not at the run's timeout
          assert.equal(d.t.manager.counters().dedicatedIsolates, m.healthy().filter((i) => i.mode === 'isolate').length, `${what}: the cancelled run's dedicated isolate is disposed at once`);
        }
      }
    } else if (res.outcome === OUTCOME_SUCCEEDED) {
      assert.equal(v.body, 'spin', `${what}: a ${v.body} run SUCCEEDED`);
      assert.ok(!c.queued, `${what}: a run cancelled while QUEUED ran`);
      if (attached) applyAttachedExecute(m, res, attached.id, triggers, 'ok', step, what);
      else applyNewExecute(m, res, { mode, triggers, ending: 'ok', name, replace }, { step, group: 0 }, what);
    } else {
      // a spin slower than its timeout (the machine is busy): nothing kept either
      assert.ok(v.body === 'loop' && res.outcome === OUTCOME_TIMED_OUT, `${what}: a ${v.body} run ended ${outcomeName(res.outcome)}: ${res.error?.message}`);
      assert.deepEqual(res.registrations, [], `${what}: a timed-out run keeps no registration`);
      if (!attached) m.markGone(res.interpreterId);
    }
    await siblingStillQueued(d, sibling, what);
    // cancelling it again changes nothing: a background execution is returned as it is, a synchronous one is forgotten
    if (v.background) {
      const done = cx?.res ?? (await d.getExecution(startedId));
      assert.deepEqual(await d.cancelExecution(startedId), done, `${what}: a second CancelExecution`);
      assert.deepEqual(await d.getExecution(startedId), done, `${what}: GetExecution after the cancels`);
      keep(d, m, done, { step, group: 0, idx: 0 });
    } else if (cancelledId) {
      await expectStatus(d.cancelExecution(cancelledId), grpc.status.NOT_FOUND, /not found/);
    }
    free?.();
    await finishSibling(d, m, sibling, what);
  } finally {
    free?.();
  }
}

/**
 * A Trigger (synchronous or background) whose handler runs register a handler on `registerOn`,
 * picked from ListExecutions: its TRIGGER execution (every run hangs; or QUEUED, before any run)
 * or one HANDLER execution (that run hangs, the others succeed), cancelled by id from the second
 * client. Every cancelled run ends OUTCOME_ABORTED and keeps nothing; the others commit.
 */
async function cancelTriggerById(d: Driver, m: Model, c: Extract<Cmd, { op: 'cancelById' }>, v: Extract<Victim, { kind: 'trigger' }>, what: string): Promise<void> {
  const target = pickFrom(
    m.activeRegs().filter((r) => !m.isBroken(r)),
    v.pick,
  );
  if (!target) return;
  const name = target.trigger;
  const bound = m.regsOn(name);
  const healthy = bound.filter((r) => !m.isBroken(r));
  const registerOn = TRIGGERS[v.registerOn];
  const fanOut = v.which === 'fanOut';
  // a handler run is an execution only once it has its run slot: only a fan-out is ever QUEUED
  const queued = c.queued && fanOut;
  // a spinning run holds its isolate (a shared one, or its interpreter's) for HOLD_MS: the runs it
  // holds up wait, within their timeout; it may end before the cancel comes
  const spins = v.which === 'handlerSpin';
  const payload = fanOut ? { hang: true, register: registerOn } : spins ? { register: registerOn, spinOn: target.id, spinFor: HOLD_MS } : { register: registerOn, hangOn: target.id };
  const req = { trigger: name, payload, limits: lim(LONG_TIMEOUT_MS) };
  const free = queued ? await d.holdSlots() : undefined;
  let sibling: Sibling | undefined;
  try {
    const step = m.nextStep();
    let call: Pending<Settled<pb.TriggerResponse>> | undefined;
    let startedId = '';
    if (v.background) {
      const started = await d.startTrigger(req);
      expectStarted(started, { kind: EXECUTION_KIND_TRIGGER, queued, interpreterId: '', trigger: name }, `${what}: StartTrigger`);
      startedId = started.id;
    } else {
      call = pending(settle(d.trigger(req)));
    }
    const ended = (): boolean => (call ? call.settled() : d.t.manager.getExecution(startedId).state === 'done');
    let picked: pb.Execution | undefined;
    if (fanOut) {
      if (!queued) assert.ok(await d.untilInFlight(healthy.length, ended), `${what}: the hanging handler runs went in flight`);
      picked = await d.untilListed(queued ? EXECUTION_STATE_QUEUED : EXECUTION_STATE_RUNNING, (e) => e.kind === EXECUTION_KIND_TRIGGER, ended);
      assert.ok(picked, `${what}: the TRIGGER was never listed`);
      expectWhere(picked, { interpreterId: '', trigger: name }, `${what}: the TRIGGER listed`);
      // its handler runs are listed while they run: all of them, as they all hang
      const handlers = (await d.listExecutions()).filter((e) => e.kind === EXECUTION_KIND_HANDLER);
      assert.deepEqual(sorted(handlers.map((h) => h.registrationId)), queued ? [] : sorted(healthy.map((r) => r.id)), `${what}: HANDLER executions listed`);
      const itpOf = new Map(healthy.map((r) => [r.id, r.interpreterId]));
      for (const h of handlers) {
        expectWhere(h, { interpreterId: itpOf.get(h.registrationId), trigger: name, registrationId: h.registrationId }, `${what}: HANDLER ${h.id}`);
        assert.equal(execState(h.state), execState(EXECUTION_STATE_RUNNING), `${what}: HANDLER ${h.id} state`);
        assert.equal(h.background, v.background, `${what}: HANDLER ${h.id} background`);
      }
    } else {
      picked = await d.untilListed(
        EXECUTION_STATE_RUNNING,
        (e) => e.kind === EXECUTION_KIND_HANDLER && e.registrationId === target.id,
        ended,
        { interpreterId: target.interpreterId },
      );
      assert.ok(picked, `${what}: the hanging HANDLER was never listed`);
      expectWhere(picked, { interpreterId: target.interpreterId, trigger: name, registrationId: target.id }, `${what}: the HANDLER listed`);
    }
    if (v.background && fanOut) assert.equal(picked.id, startedId, `${what}: the TRIGGER listed`);
    assert.equal(picked.background, v.background, `${what}: listed background`);
    if (queued) sibling = await startSibling(d, m, c.sibling, what);

    const cxs = await settle(d.cancelExecution(picked.id));
    let cx: pb.Execution | undefined;
    if (cxs.err) {
      // only a spinning handler run ends by itself, and is forgotten then
      assert.ok(spins && cxs.err.code === grpc.status.NOT_FOUND, `${what}: CancelExecution failed: ${cxs.err.details}`);
      note('cancelById handlerSpin: the run ended before the cancel');
      m.cancelled(false);
    } else {
      cx = cxs.res;
      expectDone(cx, { id: picked.id, kind: fanOut ? EXECUTION_KIND_TRIGGER : EXECUTION_KIND_HANDLER, background: v.background }, `${what}: CancelExecution`);
      // the runs hang (or spin past the cancel): only the cancel ends them, unless a spin timed out first
      m.cancelled(!spins || cx.triggerResponse?.results[0]?.outcome === OUTCOME_ABORTED);
    }
    let res: pb.TriggerResponse;
    let fanOutDone: pb.Execution | undefined;
    if (call) {
      const s = await call.promise;
      assert.ok(!s.err, `${what}: the caller of the Trigger got ${s.err?.details}; expected its response`);
      res = s.res;
    } else {
      fanOutDone = fanOut ? (cx as pb.Execution) : await d.waitExecution(startedId);
      expectDone(fanOutDone, { id: startedId, kind: EXECUTION_KIND_TRIGGER, background: true }, `${what}: WaitExecution`);
      res = fanOutDone.triggerResponse as pb.TriggerResponse;
    }
    if (fanOut) assert.deepEqual(res, cx?.triggerResponse, `${what}: the Trigger's response and the cancelled TRIGGER's`);
    else {
      const mine = res.results.find((r) => r.registrationId === target.id);
      if (cx) assert.deepEqual(cx.triggerResponse?.results, [mine], `${what}: the cancelled HANDLER's result and the Trigger's`);
      assert.equal(mine?.executionId, picked.id, `${what}: the HANDLER's execution id`);
    }
    expectRan(m, res, bound, what);
    const byId = new Map(bound.map((r) => [r.id, r]));
    res.results.forEach((r, group) => {
      const reg = byId.get(r.registrationId) as ModelReg;
      const w = `${what}: run of ${r.registrationId}`;
      if (queued) {
        // the fan-out was cancelled before any handler ran: none did, broken ones included
        expectOutcome(r, OUTCOME_ABORTED, w);
        assert.match(r.error?.message ?? '', /cancelled by CancelExecution before this handler ran/, w);
      } else if (m.isBroken(reg)) {
        expectOutcome(r, OUTCOME_FAILED, w);
      } else if (fanOut || r.registrationId === target.id) {
        if (spins && r.outcome === OUTCOME_SUCCEEDED) {
          // the spin ended before the cancel: the run registered, and that is kept
          note('cancelById handlerSpin: the run SUCCEEDED before the cancel');
          assert.equal(typeof r.result, 'string', `${w}: a registering handler returns the new id`);
          m.addReg(r.result as string, registerOn, r.interpreterId, { step, group, idx: 0 });
          return;
        }
        expectOutcome(r, OUTCOME_ABORTED, w);
        assert.match(r.error?.message ?? '', CANCELLED_BY_ID, w);
      } else {
        expectOutcome(r, OUTCOME_SUCCEEDED, w);
        assert.equal(typeof r.result, 'string', `${w}: a registering handler returns the new id`);
        m.addReg(r.result as string, registerOn, r.interpreterId, { step, group, idx: 0 });
      }
    });
    note(`cancelById ${v.background ? 'background' : 'synchronous'} trigger ${queued ? 'queued' : v.which}`);
    if (spins) {
      // the cancelled run's code may still spin in its isolate: its interpreter is released now, DRAINING
      // while a reference is still held for it, or DISPOSED
      const x = target.interpreterId;
      const regs = m.regsOf(x);
      const rel = await d.release({ interpreterId: x });
      assert.deepEqual(sorted(rel.releasedRegistrationIds), sorted(regs.map((r) => r.id)), `${what}: released`);
      const st = stateName(rel.interpreter?.state);
      note(`cancelById handlerSpin: Release after the cancel answered ${st}`);
      assert.ok(st === DRAINING || st === DISPOSED, `${what}: Release of the interpreter whose cancelled run may still spin answered ${st}`);
      expectInterp(rel.interpreter, { state: st, registrationReferences: 0 }, `${what}: Release after the cancel`);
      if (st === DRAINING) assert.ok((rel.interpreter?.executionReferences ?? 0) >= 1, `${what}: DRAINING without a run`);
      m.release(rel.releasedRegistrationIds);
    }
    await siblingStillQueued(d, sibling, what);
    // a second cancel: a kept TRIGGER is returned unchanged; a handler run or a synchronous Trigger is forgotten
    if (v.background) {
      const done = fanOutDone as pb.Execution;
      assert.deepEqual(await d.cancelExecution(startedId), done, `${what}: a second CancelExecution of the TRIGGER`);
      keep(d, m, done, { step, group: 0, idx: 0 });
    }
    if (!v.background || !fanOut) await expectStatus(d.cancelExecution(picked.id), grpc.status.NOT_FOUND, /not found/);
    if (!v.background) for (const r of res.results) if (r.executionId) d.ended.push(r.executionId);
    free?.();
    await finishSibling(d, m, sibling, what);
  } finally {
    free?.();
  }
}

async function staleQueued(d: Driver, m: Model, c: Extract<Cmd, { op: 'staleQueued' }>, what: string): Promise<void> {
  const ch = c.change;
  if (ch.kind === 'name') return nameTakenWhileQueued(d, m, ch, what);
  if (ch.kind === 'execute') return releasedUnderQueuedExecute(d, m, ch, what);
  return releasedUnderQueuedTrigger(d, m, ch, what);
}

/** Releases one registration (the `pick`th of the interpreter) or all of `x`'s; checks the answer's list and applies it. */
async function releaseWhileQueued(d: Driver, m: Model, x: string, by: 'registration' | 'interpreter', pick: number, what: string): Promise<{ released: string[]; rel: pb.ReleaseResponse }> {
  const regs = m.regsOf(x);
  const one = regs[pick % regs.length];
  const rel = by === 'registration' ? await d.release({ registrationId: one.id }) : await d.release({ interpreterId: x });
  const released = by === 'registration' ? [one.id] : regs.map((r) => r.id);
  assert.deepEqual(sorted(rel.releasedRegistrationIds), sorted(released), `${what}: released`);
  return { released, rel };
}

/**
 * An attached Execute waits QUEUED; its interpreter is released meanwhile. A queued run holds no
 * reference: emptied, the interpreter is DISPOSED at once, and the run, once it has a slot, is
 * refused as a synchronous Execute would be (FAILED_PRECONDITION; a background one OUTCOME_FAILED).
 */
async function releasedUnderQueuedExecute(d: Driver, m: Model, ch: Extract<Cmd, { op: 'staleQueued' }>['change'] & { kind: 'execute' }, what: string): Promise<void> {
  const x = pickFrom(m.healthy(), ch.pick);
  if (!x) return;
  const triggers = ch.triggers.map((i) => TRIGGERS[i]);
  const req = { interpreterId: x.id, source: executeSource(triggers, 'ok'), limits: lim(LONG_TIMEOUT_MS) };
  const free = await d.holdSlots();
  try {
    const step = m.nextStep();
    let call: Pending<Settled<pb.ExecuteResponse>> | undefined;
    let startedId = '';
    if (ch.background) {
      const started = await d.startExecute(req);
      expectStarted(started, { kind: EXECUTION_KIND_EXECUTE, queued: true, interpreterId: x.id }, `${what}: StartExecute`);
      startedId = started.id;
    } else {
      call = pending(settle(d.execute(req)));
      const listed = await d.untilListed(EXECUTION_STATE_QUEUED, (e) => e.kind === EXECUTION_KIND_EXECUTE, call.settled);
      assert.ok(listed, `${what}: the Execute was never listed QUEUED`);
      expectWhere(listed, { interpreterId: x.id }, `${what}: listed`);
    }
    const { released, rel } = await releaseWhileQueued(d, m, x.id, ch.by, ch.pick, what);
    const left = m.regsOf(x.id).length - released.length;
    expectInterp(rel.interpreter, { id: x.id, state: left > 0 ? READY : DISPOSED, registrationReferences: left, executionReferences: 0 }, `${what}: released while a run waits for it`);
    m.release(released);
    free();
    let res: pb.ExecuteResponse | undefined;
    if (call) {
      const s = await call.promise;
      if (left === 0) {
        assert.equal(s.err?.code, grpc.status.FAILED_PRECONDITION, `${what}: the Execute queued for a released interpreter (${s.err?.details ?? 'it succeeded'})`);
        assert.match(s.err.details, /DISPOSED/, `${what}: the refusal`);
      } else {
        assert.ok(s.res, `${what}: the queued Execute failed: ${s.err?.details}`);
        res = s.res;
      }
    } else {
      const done = await d.waitExecution(startedId);
      expectDone(done, { id: startedId, kind: EXECUTION_KIND_EXECUTE, background: true }, `${what}: WaitExecution`);
      keep(d, m, done, { step, group: 0, idx: 0 });
      res = done.executeResponse as pb.ExecuteResponse;
      if (left === 0) {
        expectOutcome(res, OUTCOME_FAILED, `${what}: the background Execute queued for a released interpreter`);
        assert.deepEqual([res.error?.name, res.registrations], ['FailedPreconditionError', []], `${what}: refused late (${res.error?.message})`);
        assert.match(res.error?.message ?? '', /DISPOSED/, `${what}: the late refusal`);
        assert.equal(res.interpreterId, x.id, `${what}: interpreter_id`);
        res = undefined;
      }
    }
    note(`staleQueued execute ${ch.background ? 'background' : 'synchronous'}: ${left === 0 ? 'refused' : 'ran'}`);
    if (res) applyAttachedExecute(m, res, x.id, triggers, 'ok', step, what);
  } finally {
    free();
  }
}

/**
 * A Trigger waits QUEUED, having taken its snapshot and an execution reference per run; some of
 * its registrations are released meanwhile. The Release sees those references (an emptied
 * interpreter answers DRAINING, not gone); the released registrations are not run (ABORTED,
 * RegistrationReleasedError), the others run once a slot is free, and the references go with them.
 */
async function releasedUnderQueuedTrigger(d: Driver, m: Model, ch: Extract<Cmd, { op: 'staleQueued' }>['change'] & { kind: 'trigger' }, what: string): Promise<void> {
  const r = pickFrom(m.activeRegs(), ch.pick);
  if (!r) return;
  const name = r.trigger;
  const bound = m.regsOn(name);
  const x = r.interpreterId;
  const xFailed = m.interps.get(x)?.failed ?? false;
  const onX = bound.filter((b) => b.interpreterId === x).length;
  const registerOn = TRIGGERS[ch.registerOn];
  const req = { trigger: name, payload: { register: registerOn }, limits: lim(LONG_TIMEOUT_MS) };
  const free = await d.holdSlots();
  try {
    const step = m.nextStep();
    let call: Pending<Settled<pb.TriggerResponse>> | undefined;
    let startedId = '';
    if (ch.background) {
      const started = await d.startTrigger(req);
      expectStarted(started, { kind: EXECUTION_KIND_TRIGGER, queued: true, interpreterId: '', trigger: name }, `${what}: StartTrigger`);
      startedId = started.id;
    } else {
      call = pending(settle(d.trigger(req)));
      assert.ok(await d.untilListed(EXECUTION_STATE_QUEUED, (e) => e.kind === EXECUTION_KIND_TRIGGER, call.settled), `${what}: the Trigger was never listed QUEUED`);
    }
    const { released, rel } = await releaseWhileQueued(d, m, x, ch.by, ch.pick, what);
    const left = m.regsOf(x).length - released.length;
    // one execution reference per run the fan-out will make in x (none in a FAILED interpreter)
    const refs = xFailed ? 0 : onX;
    expectInterp(
      rel.interpreter,
      { id: x, state: xFailed ? FAILED : left > 0 ? READY : DRAINING, registrationReferences: left, executionReferences: refs },
      `${what}: released while a queued Trigger holds ${refs} reference(s)`,
    );
    const removed = new Set(released);
    m.release(released);
    free();
    let res: pb.TriggerResponse;
    if (call) {
      const s = await call.promise;
      assert.ok(s.res, `${what}: the queued Trigger failed: ${s.err?.details}`);
      res = s.res;
    } else {
      const done = await d.waitExecution(startedId);
      expectDone(done, { id: startedId, kind: EXECUTION_KIND_TRIGGER, background: true }, `${what}: WaitExecution`);
      keep(d, m, done, { step, group: 0, idx: 0 });
      res = done.triggerResponse as pb.TriggerResponse;
    }
    expectRan(m, res, bound, what);
    const byId = new Map(bound.map((b) => [b.id, b]));
    res.results.forEach((run, group) => {
      const w = `${what}: run of ${run.registrationId}`;
      if (removed.has(run.registrationId)) {
        expectOutcome(run, OUTCOME_ABORTED, w);
        assert.equal(run.error?.name, 'RegistrationReleasedError', `${w}: ${run.error?.message}`);
      } else if (m.isBroken(byId.get(run.registrationId) as ModelReg)) {
        expectOutcome(run, OUTCOME_FAILED, w);
      } else {
        expectOutcome(run, OUTCOME_SUCCEEDED, w);
        assert.equal(typeof run.result, 'string', `${w}: a registering handler returns the new id`);
        m.addReg(run.result as string, registerOn, run.interpreterId, { step, group, idx: 0 });
      }
    });
    note(`staleQueued trigger ${ch.background ? 'background' : 'synchronous'} by ${ch.by}: ${left > 0 ? 'READY' : xFailed ? 'FAILED' : 'DRAINING'}`);
  } finally {
    free();
  }
}

/**
 * A background Execute waits QUEUED to create an interpreter named `name`; a synchronous
 * Execute for the same name arrives and waits in front of it (slots go to requests first). One
 * of them gets the name; the other is refused as it would be at once: the request
 * ALREADY_EXISTS, the background run OUTCOME_FAILED (AlreadyExistsError).
 */
async function nameTakenWhileQueued(d: Driver, m: Model, ch: Extract<Cmd, { op: 'staleQueued' }>['change'] & { kind: 'name' }, what: string): Promise<void> {
  const name = NAMES[ch.name];
  if (m.holder(name) || m.live().length + 2 > d.maxInterpreters) return;
  const triggers = ch.triggers.map((i) => TRIGGERS[i]);
  const rivalTriggers = ch.rival.triggers.map((i) => TRIGGERS[i]);
  const free = await d.holdSlots();
  try {
    const step = m.nextStep();
    const started = await d.startExecute({ mode: pbMode(ch.mode), name, source: executeSource(triggers, 'ok'), limits: lim(LONG_TIMEOUT_MS) });
    expectStarted(started, { kind: EXECUTION_KIND_EXECUTE, queued: true, interpreterId: '' }, `${what}: StartExecute`);
    // the name is reserved only when a run creates its interpreter: the request is accepted, and queues in front
    const call = pending(settle(d.execute({ mode: pbMode(ch.rival.mode), name, source: executeSource(rivalTriggers, 'ok'), limits: lim(LONG_TIMEOUT_MS) })));
    assert.ok(await d.untilListed(EXECUTION_STATE_QUEUED, (e) => !e.background, call.settled), `${what}: the synchronous Execute was never listed QUEUED`);
    free();
    const s = await call.promise;
    const done = await d.waitExecution(started.id);
    expectDone(done, { id: started.id, kind: EXECUTION_KIND_EXECUTE, background: true }, `${what}: WaitExecution`);
    keep(d, m, done, { step, group: 0, idx: 0 });
    const bg = done.executeResponse as pb.ExecuteResponse;
    if (s.res) {
      note('staleQueued name: the request got the name');
      applyNewExecute(m, s.res, { mode: ch.rival.mode, triggers: rivalTriggers, ending: 'ok', name, replace: false }, { step, group: 0 }, `${what}: the synchronous Execute`);
      expectOutcome(bg, OUTCOME_FAILED, `${what}: the background Execute whose name was taken`);
      assert.deepEqual([bg.error?.name, bg.registrations], ['AlreadyExistsError', []], `${what}: refused late (${bg.error?.message})`);
    } else {
      note('staleQueued name: the background run got the name');
      assert.equal(s.err.code, grpc.status.ALREADY_EXISTS, `${what}: the synchronous Execute failed: ${s.err.details}`);
      applyNewExecute(m, bg, { mode: ch.mode, triggers, ending: 'ok', name, replace: false }, { step, group: 1 }, `${what}: the background Execute`);
    }
  } finally {
    free();
  }
}

/**
 * CancelExecution of an execution that is DONE: a kept background one comes back unchanged (as
 * GetExecution and WaitExecution show it); an ended synchronous run or handler run, or an id never
 * issued, is NOT_FOUND.
 */
async function cancelDone(d: Driver, m: Model, c: Extract<Cmd, { op: 'cancelDone' }>, what: string): Promise<void> {
  const kept = pickFrom([...m.kept.keys()], c.pick);
  if (c.what === 'kept' && kept) {
    const e = d.keptExec.get(kept);
    assert.deepEqual(await d.cancelExecution(kept), e, `${what}: CancelExecution of a DONE execution`);
    assert.deepEqual(await d.waitExecution(kept), e, `${what}: WaitExecution of a DONE execution`);
    assert.deepEqual(await d.getExecution(kept), e, `${what}: GetExecution of a DONE execution`);
    note('cancelDone: kept');
    return;
  }
  const id = pickFrom(d.ended, c.pick) ?? NEVER_ISSUED_EXE;
  await expectStatus(d.cancelExecution(id), grpc.status.NOT_FOUND, /not found/);
  await expectStatus(d.getExecution(id), grpc.status.NOT_FOUND, /not found/);
  note(`cancelDone: ${id === NEVER_ISSUED_EXE ? 'never issued' : 'ended'}`);
}

/**
 * One call of a batch and what it answered. `bg`: a background run (StartExecute, StartTrigger)
 * as WaitExecution answered it once DONE; `s` is then its start's refusal or its DONE response.
 */
type MixCall =
  | { op: 'execute'; mode: Mode; triggers: string[]; s: Settled<pb.ExecuteResponse>; bg?: pb.Execution }
  | { op: 'register'; mode: Mode; trigger: string; s: Settled<pb.RegisterResponse> }
  | { op: 'registerIn'; itp: string; live: boolean; failed: boolean; trigger: string; s: Settled<pb.RegisterResponse> }
  | { op: 'executeIn'; itp: string; live: boolean; failed: boolean; triggers: string[]; s: Settled<pb.ExecuteResponse>; bg?: pb.Execution }
  | { op: 'releaseReg'; reg: string; live: boolean; s: Settled<pb.ReleaseResponse> }
  | { op: 'releaseItp'; itp: string; live: boolean; s: Settled<pb.ReleaseResponse> }
  | { op: 'trigger'; trigger: string; s: Settled<pb.TriggerResponse>; bg?: pb.Execution };

/** A background run of a batch: refused at its start, or accepted (RUNNING) and waited for until DONE. */
async function background<T>(
  d: Driver,
  start: Promise<pb.Execution>,
  want: { kind: pb.ExecutionKind; interpreterId?: string; trigger?: string; mayBeDone?: boolean },
  response: (e: pb.Execution) => T | undefined,
  what: string,
): Promise<{ s: Settled<T>; bg?: pb.Execution }> {
  const started = await settle(start);
  if (started.err) return { s: { err: started.err } };
  expectStarted(started.res, { ...want, queued: false }, `${what}: start`);
  const done = await d.waitExecution(started.res.id);
  expectDone(done, { id: started.res.id, kind: want.kind, background: true }, `${what}: WaitExecution`);
  if (started.res.state === EXECUTION_STATE_DONE) assert.deepEqual(done, started.res, `${what}: DONE when accepted, and unchanged since`);
  return { s: { res: response(done) as T }, bg: done };
}

async function startMixOp(d: Driver, m: Model, op: MixOp): Promise<MixCall> {
  const long = lim(LONG_TIMEOUT_MS);
  switch (op.op) {
    case 'execute': {
      const triggers = op.triggers.map((i) => TRIGGERS[i]);
      return { op: 'execute', mode: op.mode, triggers, s: await settle(d.execute({ mode: pbMode(op.mode), source: executeSource(triggers, 'ok'), limits: long })) };
    }
    case 'register': {
      const trigger = TRIGGERS[op.trigger];
      return { op: 'register', mode: op.mode, trigger, s: await settle(d.register({ trigger, mode: pbMode(op.mode), source: REGISTER_SOURCE, limits: long })) };
    }
    case 'registerIn': {
      const i = pickFrom(m.live(), op.pick);
      const trigger = TRIGGERS[op.trigger];
      const itp = i?.id ?? UNKNOWN_ITP;
      return { op: 'registerIn', itp, live: !!i, failed: !!i?.failed, trigger, s: await settle(d.register({ trigger, interpreterId: itp, source: REGISTER_SOURCE, limits: long })) };
    }
    case 'executeIn': {
      const i = pickFrom(m.live(), op.pick);
      const triggers = op.triggers.map((t) => TRIGGERS[t]);
      const itp = i?.id ?? UNKNOWN_ITP;
      return { op: 'executeIn', itp, live: !!i, failed: !!i?.failed, triggers, s: await settle(d.execute({ interpreterId: itp, source: executeSource(triggers, 'ok'), limits: long })) };
    }
    case 'releaseReg': {
      const r = pickFrom(m.allRegs(), op.pick);
      const reg = r?.id ?? UNKNOWN_REG;
      return { op: 'releaseReg', reg, live: !!r, s: await settle(d.release({ registrationId: reg })) };
    }
    case 'releaseItp': {
      const i = pickFrom(m.live(), op.pick);
      const itp = i?.id ?? UNKNOWN_ITP;
      return { op: 'releaseItp', itp, live: !!i, s: await settle(d.release({ interpreterId: itp })) };
    }
    case 'trigger': {
      const trigger = TRIGGERS[op.trigger];
      return { op: 'trigger', trigger, s: await settle(d.trigger({ trigger, payload: {}, limits: long })) };
    }
    case 'startExecute': {
      const triggers = op.triggers.map((i) => TRIGGERS[i]);
      const req = { mode: pbMode(op.mode), source: executeSource(triggers, 'ok'), limits: long };
      return { op: 'execute', mode: op.mode, triggers, ...(await background(d, d.startExecute(req), { kind: EXECUTION_KIND_EXECUTE }, (e) => e.executeResponse, 'StartExecute')) };
    }
    case 'startExecuteIn': {
      const i = pickFrom(m.live(), op.pick);
      const triggers = op.triggers.map((t) => TRIGGERS[t]);
      const itp = i?.id ?? UNKNOWN_ITP;
      const req = { interpreterId: itp, source: executeSource(triggers, 'ok'), limits: long };
      const run = await background(d, d.startExecute(req), { kind: EXECUTION_KIND_EXECUTE, interpreterId: itp }, (e) => e.executeResponse, `StartExecute in ${itp}`);
      return { op: 'executeIn', itp, live: !!i, failed: !!i?.failed, triggers, ...run };
    }
    case 'startTrigger': {
      const trigger = TRIGGERS[op.trigger];
      const run = await background(d, d.startTrigger({ trigger, payload: {}, limits: long }), { kind: EXECUTION_KIND_TRIGGER, interpreterId: '', trigger, mayBeDone: true }, (e) => e.triggerResponse, `StartTrigger ${trigger}`);
      return { op: 'trigger', trigger, ...run };
    }
  }
}

/**
 * 2–4 calls at once. No order is fixed, so each response is checked against what any order
 * allows, given what the other responses report (which registrations each Release dropped), and
 * the model then takes: before ∪ created − released.
 */
async function mix(d: Driver, m: Model, c: Extract<Cmd, { op: 'mix' }>, what: string): Promise<void> {
  const calls = await Promise.all(c.ops.map((op) => startMixOp(d, m, op)));
  const w = (i: number): string => `${what}: call ${i} (${calls[i].op})`;
  const failed = (i: number, code: grpc.status, allowed: boolean, why: string): void => {
    const err = calls[i].s.err;
    assert.ok(err, `${w(i)} succeeded; expected ${grpc.status[code]}`);
    note(`mix ${calls[i].op}: ${grpc.status[err.code]}`);
    assert.ok(allowed && err.code === code, `${w(i)} failed with ${grpc.status[err.code]} (${err.details}); ${allowed ? `expected ${grpc.status[code]}` : why}`);
  };

  // who released what: a registration released twice would be a negative count
  const releasedBy = new Map<string, number>();
  calls.forEach((call, i) => {
    if ((call.op === 'releaseReg' || call.op === 'releaseItp') && call.s.res) {
      for (const id of call.s.res.releasedRegistrationIds) {
        assert.ok(!releasedBy.has(id), `${w(i)}: ${id} was already released by call ${releasedBy.get(id)}`);
        releasedBy.set(id, i);
      }
    }
  });
  const releasedByOthers = (i: number, id: string): boolean => releasedBy.has(id) && releasedBy.get(id) !== i;
  const emptiedByOthers = (i: number, itp: string): boolean => m.regsOf(itp).every((r) => releasedByOthers(i, r.id));
  const emptied = (itp: string): boolean => m.regsOf(itp).every((r) => releasedBy.has(r.id));

  // new interpreters need room: refused only if the others of the batch may have taken it, and
  // surely refused if there was none and nothing in the batch released anything
  const livePre = m.live().length;
  const creating = calls.filter((k) => k.op === 'execute' || k.op === 'register').length;
  const releasing = calls.some((k) => k.op === 'releaseReg' || k.op === 'releaseItp');
  const refusedForRoom = (i: number): boolean => {
    const mustRefuse = livePre >= d.maxInterpreters && !releasing;
    if (!calls[i].s.err) {
      assert.ok(!mustRefuse, `${w(i)} found room with ${livePre} of ${d.maxInterpreters} interpreters live`);
      return false;
    }
    failed(i, grpc.status.RESOURCE_EXHAUSTED, livePre + creating - 1 >= d.maxInterpreters, `there was room for ${creating} new interpreter(s)`);
    return true;
  };

  const created: { id: string; trigger: string; itp: string; group: number; idx: number }[] = [];
  const newInterps: { id: string; mode: Mode; keeps: boolean }[] = [];
  calls.forEach((call, i) => {
    switch (call.op) {
      case 'execute': {
        if (refusedForRoom(i)) return;
        assert.ok(call.s.res, `${w(i)} failed: ${call.s.err?.details}`);
        const res = call.s.res;
        if (call.bg && res.outcome === OUTCOME_FAILED && res.error?.name === 'ResourceExhaustedError') {
          // accepted while there was room; the others of the batch took it before it made its interpreter
          note('mix startExecute: refused for room once accepted');
          assert.ok(livePre + creating - 1 >= d.maxInterpreters, `${w(i)}: refused for room after it was accepted, with room for ${creating} new interpreter(s)`);
          assert.deepEqual(res.registrations, [], `${w(i)}: registrations of a refused run`);
          return;
        }
        expectOutcome(res, OUTCOME_SUCCEEDED, w(i));
        expectCreated(res.registrations, call.triggers, res.interpreterId, w(i));
        const keeps = call.triggers.length > 0;
        expectInterp(res.interpreter, { state: keeps ? READY : DISPOSED, registrationReferences: call.triggers.length, executionReferences: 0, mode: call.mode }, w(i));
        newInterps.push({ id: res.interpreterId, mode: call.mode, keeps });
        res.registrations.forEach((r, idx) => created.push({ id: r.id, trigger: r.trigger, itp: res.interpreterId, group: i, idx }));
        break;
      }
      case 'register': {
        if (refusedForRoom(i)) return;
        assert.ok(call.s.res, `${w(i)} failed: ${call.s.err?.details}`);
        const res = call.s.res;
        const itp = res.interpreter?.id ?? '';
        expectInterp(res.interpreter, { state: READY, registrationReferences: 1, executionReferences: 0, mode: call.mode }, w(i));
        expectCreated(res.registration ? [res.registration] : [], [call.trigger], itp, w(i));
        newInterps.push({ id: itp, mode: call.mode, keeps: true });
        created.push({ id: res.registration?.id ?? '', trigger: call.trigger, itp, group: i, idx: 0 });
        break;
      }
      case 'registerIn': {
        if (!call.live) return failed(i, grpc.status.NOT_FOUND, true, '');
        if (call.failed) return failed(i, grpc.status.FAILED_PRECONDITION, true, '');
        if (call.s.err) return failed(i, grpc.status.FAILED_PRECONDITION, emptied(call.itp), 'nothing released all its registrations');
        const res = call.s.res;
        expectCreated(res.registration ? [res.registration] : [], [call.trigger], call.itp, w(i));
        created.push({ id: res.registration?.id ?? '', trigger: call.trigger, itp: call.itp, group: i, idx: 0 });
        break;
      }
      case 'executeIn': {
        if (!call.live) return failed(i, grpc.status.NOT_FOUND, true, '');
        if (call.failed) return failed(i, grpc.status.FAILED_PRECONDITION, true, '');
        if (call.s.err) return failed(i, grpc.status.FAILED_PRECONDITION, emptied(call.itp), 'nothing released all its registrations');
        const res = call.s.res;
        if (call.bg && res.outcome === OUTCOME_FAILED) {
          // accepted, then refused when it came to run: its interpreter was emptied meanwhile
          note('mix startExecuteIn: refused once accepted');
          assert.ok(emptied(call.itp), `${w(i)} failed after it was accepted (${res.error?.name}: ${res.error?.message}); nothing released all its registrations`);
          assert.deepEqual(res.registrations, [], `${w(i)}: registrations of a refused run`);
          return;
        }
        expectOutcome(res, OUTCOME_SUCCEEDED, w(i));
        assert.equal(res.interpreterId, call.itp, `${w(i)}: interpreter`);
        // a run that ends after its interpreter was emptied (DRAINING) keeps nothing
        const kept = res.registrations.length === 0 && emptied(call.itp) ? [] : call.triggers;
        if (kept.length < call.triggers.length) note('mix executeIn: SUCCEEDED but its registrations refused (DRAINING)');
        expectCreated(res.registrations, kept, call.itp, w(i));
        res.registrations.forEach((r, idx) => created.push({ id: r.id, trigger: r.trigger, itp: call.itp, group: i, idx }));
        break;
      }
      case 'releaseReg': {
        if (!call.live) return failed(i, grpc.status.NOT_FOUND, true, '');
        if (call.s.err) return failed(i, grpc.status.NOT_FOUND, releasedByOthers(i, call.reg), `nothing else released ${call.reg}`);
        assert.deepEqual(call.s.res.releasedRegistrationIds, [call.reg], `${w(i)}: released`);
        break;
      }
      case 'releaseItp': {
        if (!call.live) return failed(i, grpc.status.NOT_FOUND, true, '');
        if (call.s.err) return failed(i, grpc.status.NOT_FOUND, emptiedByOthers(i, call.itp), 'its registrations were not all released by other calls');
        const listed = new Set(call.s.res.releasedRegistrationIds);
        if (listed.size > m.regsOf(call.itp).length) note('mix releaseItp: released registrations created in the same batch');
        for (const r of m.regsOf(call.itp)) {
          assert.ok(listed.has(r.id) || releasedByOthers(i, r.id), `${w(i)}: ${r.id} was neither released by it nor by another call`);
        }
        break;
      }
      case 'trigger':
        break;
    }
  });

  // releases list only registrations that existed: from before the batch, or created by it
  const createdIds = new Map(created.map((k) => [k.id, k]));
  calls.forEach((call, i) => {
    if (call.op === 'releaseItp' && call.s.res) {
      for (const id of call.s.res.releasedRegistrationIds) {
        const itp = m.regs.get(id)?.interpreterId ?? createdIds.get(id)?.itp;
        assert.equal(itp, call.itp, `${w(i)}: released ${id}, not a registration of ${call.itp}`);
      }
    }
  });

  // a Trigger ran every registration bound throughout, and only registrations that existed
  calls.forEach((call, i) => {
    if (call.op !== 'trigger') return;
    const pre = m.regsOn(call.trigger);
    const throughout = pre.filter((r) => !releasedBy.has(r.id));
    if (call.s.err) return failed(i, grpc.status.NOT_FOUND, throughout.length === 0, `${throughout.map((r) => r.id).join(', ')} stayed bound`);
    const ran = call.s.res.results.map((r) => r.registrationId);
    for (const r of throughout) assert.ok(ran.includes(r.id), `${w(i)}: did not run ${r.id}, bound throughout`);
    const extra = new Map<string, Order>();
    for (const r of call.s.res.results) {
      const k = m.regs.get(r.registrationId) ?? createdIds.get(r.registrationId);
      assert.ok(k && k.trigger === call.trigger, `${w(i)}: ran ${r.registrationId}, not a registration of ${call.trigger}`);
      assert.equal(r.interpreterId, 'interpreterId' in k ? k.interpreterId : k.itp, `${w(i)}: interpreter of ${r.registrationId}`);
      const broken = 'interpreterId' in k && m.isBroken(k);
      expectOutcome(r, broken ? OUTCOME_FAILED : OUTCOME_SUCCEEDED, `${w(i)}: run of ${r.registrationId}`);
      if (!broken) assert.equal(r.result, r.registrationId, `${w(i)}: result of ${r.registrationId}`);
    }
    const step = m.step + 1;
    for (const k of created) extra.set(k.id, { step, group: k.group, idx: k.idx });
    assertOrder(m, ran, `${w(i)}: Trigger result order`, extra);
    assert.equal(new Set(ran).size, ran.length, `${w(i)}: a registration ran twice`);
  });

  const step = m.nextStep();
  for (const n of newInterps) {
    if (n.keeps) m.addInterp(n.id, n.mode, '');
    else m.markGone(n.id);
  }
  for (const k of created) m.addReg(k.id, k.trigger, k.itp, { step, group: k.group, idx: k.idx });
  m.release(releasedBy.keys());
  for (const n of newInterps) if (n.keeps) m.disposeIfEmpty(n.id);
  // the background runs of the batch are kept, in the order they were accepted (any, here)
  calls.forEach((call, i) => {
    if ('bg' in call && call.bg) {
      keep(d, m, call.bg, { step, group: i, idx: 0 });
      note(`mix background ${call.op}`);
    }
  });
}

async function runCommand(d: Driver, m: Model, c: Cmd, what: string): Promise<Model[]> {
  switch (c.op) {
    case 'execute':
      await execute(d, m, c, what);
      break;
    case 'executeIn':
      await executeIn(d, m, c, what);
      break;
    case 'register':
      await register(d, m, c, what);
      break;
    case 'registerIn':
      await registerIn(d, m, c, what);
      break;
    case 'trigger':
      await trigger(d, m, c, what);
      break;
    case 'release':
      await release(d, m, c, what);
      break;
    case 'pause':
      await pause(d, m, c, what);
      break;
    case 'slowTriggerRelease':
      await slowTriggerRelease(d, m, c, what);
      break;
    case 'cancelExecute':
      await cancelExecute(d, m, c, what);
      break;
    case 'slowRegister':
      await slowRegister(d, m, c, what);
      break;
    case 'oom':
      await oom(d, m, c, what);
      break;
    case 'upgradeUnderTrigger':
      await upgradeUnderTrigger(d, m, c, what);
      break;
    case 'upgradeRace':
      return upgradeRace(d, m, c, what);
    case 'mix':
      await mix(d, m, c, what);
      break;
    case 'startExecute':
      await startExecute(d, m, c, what);
      break;
    case 'startTrigger':
      await startTrigger(d, m, c, what);
      break;
    case 'cancelById':
      await cancelById(d, m, c, what);
      break;
    case 'cancelDone':
      await cancelDone(d, m, c, what);
      break;
    case 'staleQueued':
      await staleQueued(d, m, c, what);
      break;
  }
  return [m];
}

/** Releases whatever the model still holds: every other interpreter at once, the rest one registration at a time. */
async function releaseEverything(d: Driver, m: Model): Promise<void> {
  for (const [i, itp] of m.live().entries()) {
    const what = `final release of ${itp.id}`;
    if (i % 2 === 0) {
      await release(d, m, { op: 'release', by: 'interpreter', target: { kind: 'live', pick: m.live().findIndex((x) => x.id === itp.id) } }, what);
    } else {
      for (const r of m.regsOf(itp.id)) {
        await release(d, m, { op: 'release', by: 'registration', target: { kind: 'live', pick: m.allRegs().findIndex((x) => x.id === r.id) } }, what);
      }
    }
  }
}

export interface ScenarioOptions {
  /** Print each command as it runs. */
  verbose?: boolean;
  /** ISOGEAR_MAX_INTERPRETERS; small values make new interpreters wait for disposals. */
  maxInterpreters?: number;
}

/** Runs `cmds` against a fresh server and the model; throws at the first difference. */
export async function runScenario(cmds: readonly Cmd[], options: ScenarioOptions = {}): Promise<void> {
  const maxInterpreters = options.maxInterpreters ?? 10_000;
  const t = await startTestServer({
    ISOGEAR_SHARED_ISOLATES: String(SHARED_ISOLATES),
    ISOGEAR_MAX_INTERPRETERS: String(maxInterpreters),
    ISOGEAR_LOG_LEVEL: 'info',
  });
  const d = new Driver(t, maxInterpreters);
  const m = new Model();
  let passed = false;
  try {
    await checkQuiescent(d, [m], 'at start');
    for (const [i, c] of cmds.entries()) {
      const what = `command ${i} ${JSON.stringify(c)}`;
      if (options.verbose) console.log(`  ${what}`);
      try {
        const candidates = await runCommand(d, m, c, what);
        const matched = await checkQuiescent(d, candidates, `after ${what}`);
        if (matched !== m) m.assign(matched);
      } catch (err) {
        // fast-check shrinks from the front; what follows the failing command never ran
        if (err instanceof Error) err.message += `\nfailing prefix: ${JSON.stringify(cmds.slice(0, i + 1))}`;
        throw err;
      }
    }
    await releaseEverything(d, m);
    await checkQuiescent(d, [m], 'after releasing everything');
    assert.equal(m.live().length + m.regs.size, 0, 'the model released everything');
    await assertNoLeaks(t.manager);
    passed = true;
  } finally {
    d.other.close();
    if (passed) await t.close();
    // the run failed with its own error: close() still shuts the server down, whatever it holds
    else await t.close().catch(() => undefined);
  }
}
