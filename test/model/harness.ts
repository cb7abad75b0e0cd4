import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { expectStatus, grpc, pb } from '../helpers/client';
import { scrape, value } from '../helpers/metrics';
import { ISOLATE, limits, outcomeName, SHARED, stateName } from '../helpers/proto';
import { assertNoLeaks, sleep, startTestServer, waitIdle, type TestServer } from '../helpers/server';
import type { Cmd, Ending, MixOp, SlowEnd, Target, TriggerAction } from './commands';
import { Model, mustPrecede, NAMES, SHARED_ISOLATES, TRIGGERS, type Mode, type ModelReg, type Order, type Snapshot } from './model';

/**
 * Runs one command sequence against a fresh server and the model side by side. After every
 * command (a batch counts as one) it waits until the server has answered every call and no run
 * is in flight, then compares what the server shows (ListInterpreters, ListRegistrations,
 * GetInterpreter, the manager's counters, the Prometheus gauges) with the model. At the end it
 * releases everything and asserts that nothing is left.
 *
 * Batches whose interleaving the test cannot fix (concurrent calls) are checked against what any
 * interleaving may produce, with the nondeterminism resolved from the responses themselves
 * (which registrations a Release listed, whether a run's registrations were kept); the model
 * then follows what the server reported, so the next command starts from the real state.
 */

/** How long a slow handler spins in the batches that race it. */
const SLOW_MS = 150;
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
 * The one handler every script registers; the Trigger payload says what a run does. It
 * registers synchronously, before any await, so the registration belongs to its own run, and
 * before it loops, throws or hangs, so a run that does not succeed has something to drop.
 */
const HANDLER = `const h = (p, e) => {
  const o = p ?? {};
  if (o.spin) { const s = Date.now(); while (Date.now() - s < o.spin) {} }
  const made = o.register ? gears.register(o.register, h) : '';
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

  constructor(
    readonly t: TestServer,
    /** ISOGEAR_MAX_INTERPRETERS of the server. */
    readonly maxInterpreters: number,
  ) {}

  private counted<T>(p: Promise<T>): Promise<T> {
    this.sent += 1;
    return p;
  }

  execute = (req: Partial<pb.ExecuteRequest>, o?: CallOptions) => this.counted(this.t.client.execute(req, o));
  register = (req: Partial<pb.RegisterRequest>, o?: CallOptions) => this.counted(this.t.client.register(req, o));
  release = (req: Partial<pb.ReleaseRequest>) => this.counted(this.t.client.release(req));
  trigger = (req: Partial<pb.TriggerRequest>, o?: CallOptions) => this.counted(this.t.client.trigger(req, o));
  getInterpreter = (id: string) => this.counted(this.t.client.getInterpreter({ interpreterId: id }));
  listInterpreters = (name = '') => this.counted(this.t.client.listInterpreters({ pageSize: 1000, name }));
  listRegistrations = () => this.counted(this.t.client.listRegistrations({ pageSize: 1000 }));

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
  }
}

// ------------------------------------------------------------------ observation and checks

async function observe(d: Driver): Promise<{ snapshot: Snapshot; registrationOrder: string[] }> {
  const itps = (await d.listInterpreters()).interpreters;
  const regs = (await d.listRegistrations()).registrations;
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
    registrations: regs.map((r) => ({ id: r.id, trigger: r.trigger, interpreterId: r.interpreterId, broken: r.broken })).sort(byId),
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
    gauges: {
      dedicatedIsolates: value(s, 'isogear_isolates', { kind: 'dedicated' }),
      sharedIsolates: value(s, 'isogear_isolates', { kind: 'shared' }),
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
  return { snapshot, registrationOrder: regs.map((r) => r.id) };
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
  const { snapshot, registrationOrder } = await observe(d);
  const matchedAt = candidates.findIndex((c) => isDeepStrictEqual(snapshot, c.expected()));
  if (candidates.length > 1) note(`race resolved to candidate ${matchedAt}`);
  const m = candidates[Math.max(0, matchedAt)];
  assert.deepEqual(snapshot, m.expected(), `${where}: the server differs from the model${candidates.length > 1 ? ` (and from ${candidates.length - 1} other candidate(s))` : ''}`);
  note('quiescent checks');
  assertOrder(m, registrationOrder, `${where}: ListRegistrations`);
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
  const before = m.regsOf(itp.id).length;
  const res = await d.execute(req);
  expectOutcome(res, OUTCOME_OF[c.ending], what);
  assert.equal(res.interpreterId, itp.id, `${what}: ran in the interpreter asked for`);
  const kept = c.ending === 'ok' ? triggers : [];
  expectCreated(res.registrations, kept, itp.id, what);
  expectInterp(res.interpreter, { state: READY, registrationReferences: before + kept.length, executionReferences: 0 }, what);
  const step = m.nextStep();
  res.registrations.forEach((r, idx) => m.addReg(r.id, r.trigger, itp.id, { step, group: 0, idx }));
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
  if (bound.length === 0) {
    await expectStatus(d.trigger(req), grpc.status.NOT_FOUND);
    return;
  }
  const res = await d.trigger(req);
  expectRan(m, res, bound, what);
  const byId = new Map(bound.map((r) => [r.id, r]));
  const healthy = res.results.filter((r) => !m.isBroken(byId.get(r.registrationId) as ModelReg));
  for (const r of res.results) expectOutcome(r, runOutcome(m, byId.get(r.registrationId) as ModelReg, run.outcome), `${what}: run of ${r.registrationId}`);
  const step = m.nextStep();
  if (c.action === 'register') {
    // each run registered one handler; runs commit as they end, in no fixed order
    healthy.forEach((r, group) => {
      assert.equal(typeof r.result, 'string', `${what}: a registering handler returns the new id`);
      m.addReg(r.result as string, registerOn, r.interpreterId, { step, group, idx: 0 });
    });
  } else if (c.action === 'fast') {
    for (const r of healthy) assert.equal(r.result, r.registrationId, `${what}: result of ${r.registrationId}`);
  }
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
  const candidates = m.allRegs().filter((r) => !m.isBroken(r) && (c.end !== 'spinBomb' || m.interps.get(r.interpreterId)?.mode === 'isolate'));
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
    deadline: { hang: true, register: registerOn },
    timeout: { hang: true, register: registerOn },
    spin: { spin: SLOW_MS },
    spinRegister: { spin: SLOW_MS, register: registerOn },
    spinBomb: { spin: SLOW_MS, bomb: target.id },
  };
  const req = { trigger: name, payload: payloads[c.end], limits: lim(c.end === 'timeout' ? SHORT_TIMEOUT_MS * 2 : LONG_TIMEOUT_MS) };
  let cancel = (): void => undefined;
  let call: Pending<Settled<unknown>>;
  if (c.end === 'cancel') {
    const h = d.cancellable({ trigger: req });
    call = h.call;
    cancel = h.cancel;
  } else {
    call = pending(settle(d.trigger(req, c.end === 'deadline' ? { deadlineMs: DEADLINE_MS * 2 } : {})));
  }
  const inFlight = await d.untilInFlight(runs, call.settled);
  if (c.end === 'cancel') {
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
  if (c.end === 'cancel') {
    if (c.by === 'registration') assert.deepEqual(listed, [target.id], `${what}: released`);
    else assert.deepEqual(sorted(listed), sorted(preX.map((r) => r.id)), `${what}: released`);
    expectInterp(
      rel.interpreter,
      { state: left > 0 ? READY : DRAINING, registrationReferences: left, executionReferences: onX },
      `${what}: Release while ${onX} run(s) of the interpreter hang`,
    );
    // the released registrations are unbound at once, though their runs go on
    const stillBound = m.regsOn(name).filter((r) => !listed.includes(r.id));
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
    cancel();
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
  const side = pickFrom(m.allRegs(), 0);
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
  const via = c.target.kind === 'live' ? c.target.via : 'execute';
  if (via === 'execute') {
    const source = scriptSource([TRIGGERS[0]], MEMORY_BOMB);
    const res = await d.execute({ interpreterId: x.id, source, limits: lim(LONG_TIMEOUT_MS) });
    expectOutcome(res, OUTCOME_MEMORY_EXCEEDED, what);
    assert.deepEqual(res.registrations, [], `${what}: a killed run keeps no registration`);
    expectInterp(res.interpreter, { id: x.id, state: FAILED, registrationReferences: regs.length, executionReferences: 0 }, what);
  } else {
    const victim = regs[0];
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
  if (nowBound.length === 0) assert.equal(f.err?.code, grpc.status.NOT_FOUND, `${what}: Trigger after an upgrade that left ${on} unbound`);
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

type MixCall =
  | { op: 'execute'; mode: Mode; triggers: string[]; s: Settled<pb.ExecuteResponse> }
  | { op: 'register'; mode: Mode; trigger: string; s: Settled<pb.RegisterResponse> }
  | { op: 'registerIn'; itp: string; live: boolean; failed: boolean; trigger: string; s: Settled<pb.RegisterResponse> }
  | { op: 'executeIn'; itp: string; live: boolean; failed: boolean; triggers: string[]; s: Settled<pb.ExecuteResponse> }
  | { op: 'releaseReg'; reg: string; live: boolean; s: Settled<pb.ReleaseResponse> }
  | { op: 'releaseItp'; itp: string; live: boolean; s: Settled<pb.ReleaseResponse> }
  | { op: 'trigger'; trigger: string; s: Settled<pb.TriggerResponse> };

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
    if (passed) await t.close();
    // the run failed with its own error: close() still shuts the server down, whatever it holds
    else await t.close().catch(() => undefined);
  }
}
