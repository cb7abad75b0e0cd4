/**
 * The reference model the refcount property test checks the server against: plain data, no
 * gRPC. It describes the *quiescent* state (no run in flight), which is the only state the
 * design pins down exactly: every live interpreter is READY (or FAILED, after a memory kill of
 * its dedicated isolate), holds one registration reference per registration and no execution
 * reference, and an interpreter without registrations is gone. No execution is queued or
 * running; the DONE background executions (StartExecute, StartTrigger) are kept and listed.
 */

export type Mode = 'shared' | 'isolate';

/** Few triggers and names, so that commands collide: triggers fan out, names get upgraded. */
export const TRIGGERS = ['m.a', 'm.b', 'm.c'] as const;
export const NAMES = ['svc-1', 'svc-2'] as const;
/** ISOGEAR_SHARED_ISOLATES of the servers the model runs against. */
export const SHARED_ISOLATES = 2;

/**
 * Where a registration sits in the server's creation order. Registrations created by one
 * response are ordered among themselves (`group` equal, `idx` ascending); registrations that
 * concurrent calls (or concurrent handler runs) created in the same step may land in any order.
 */
export interface Order {
  step: number;
  group: number;
  idx: number;
}

export interface ModelReg {
  id: string;
  trigger: string;
  interpreterId: string;
  order: Order;
  /** Paused (PauseRegistrations): a Trigger skips it; nothing else changes. */
  paused?: boolean;
}

export interface ModelInterp {
  id: string;
  mode: Mode;
  name: string;
  /** Its dedicated isolate was killed: registrations stay, broken, until released. */
  failed: boolean;
}

/** How a gone interpreter answers GetInterpreter. */
export type GoneState = 'INTERPRETER_STATE_DISPOSED' | 'INTERPRETER_STATE_FAILED';

/** What the server must show at a quiet moment, in a shape both sides can be reduced to. */
export interface Snapshot {
  interpreters: {
    id: string;
    mode: Mode;
    name: string;
    state: string;
    references: number;
    registrationReferences: number;
    executionReferences: number;
  }[];
  registrations: { id: string; trigger: string; interpreterId: string; broken: boolean; paused: boolean }[];
  /** ListInterpreters filtered by each of NAMES. */
  byName: Record<string, string[]>;
  counters: {
    interpreters: number;
    byState: { ready: number; draining: number; failed: number };
    byMode: Record<Mode, number>;
    registrations: number;
    references: { registration: number; execution: number };
    dedicatedIsolates: number;
    dedicatedCreatedMinusDisposed: number;
    sharedIsolates: number;
    executionsInFlight: number;
  };
  executions: {
    /** The manager's count of executions queued or running (any kind, background or not). */
    live: number;
    /** Background executions by state, as the manager counts them. */
    background: { queued: number; running: number; done: number };
    /** ListExecutions filtered by EXECUTION_STATE_QUEUED, then by EXECUTION_STATE_RUNNING. */
    queued: string[];
    running: string[];
    /** ListExecutions unfiltered (every page), sorted by id. */
    listed: { id: string; state: string; background: boolean }[];
  };
  gauges: {
    dedicatedIsolates: number;
    sharedIsolates: number;
    /** isogear_background_executions by state. */
    backgroundQueued: number;
    backgroundRunning: number;
    backgroundDone: number;
    registrationReferences: number;
    executionReferences: number;
    registrations: number;
    readyShared: number;
    readyIsolate: number;
    draining: number;
    failed: number;
  };
}

/** a must come before b in the server's registration order. */
export function mustPrecede(a: Order, b: Order): boolean {
  return a.step < b.step || (a.step === b.step && a.group === b.group && a.idx < b.idx);
}

const byId = <T extends { id: string }>(x: T, y: T): number => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0);

export class Model {
  readonly interps = new Map<string, ModelInterp>();
  readonly regs = new Map<string, ModelReg>();
  /** Interpreters known to be gone, and the state GetInterpreter must show for each. */
  readonly gone = new Map<string, GoneState>();
  /** Registrations released (a second release of each must be NOT_FOUND). */
  readonly released = new Set<string>();
  /** Interpreters that went since the last check, to look at once through GetInterpreter. */
  newlyGone: string[] = [];
  /** DONE background executions the server keeps (retention is far longer than a run), in creation order. */
  readonly kept = new Map<string, Order>();
  /**
   * Bounds on the server's count of cancels by CancelExecution: a cancel counts when it stops
   * a run; one whose response shows it did is surely counted, one that may have come after the
   * run ended may not be.
   */
  cancels = { min: 0, max: 0 };
  step = 0;

  clone(): Model {
    const m = new Model();
    for (const [k, v] of this.interps) m.interps.set(k, { ...v });
    for (const [k, v] of this.regs) m.regs.set(k, { ...v, order: { ...v.order } });
    for (const [k, v] of this.gone) m.gone.set(k, v);
    for (const r of this.released) m.released.add(r);
    m.newlyGone = [...this.newlyGone];
    for (const [k, v] of this.kept) m.kept.set(k, { ...v });
    m.cancels = { ...this.cancels };
    m.step = this.step;
    return m;
  }

  /** Takes over another model's state (after a race was resolved to one of several candidates). */
  assign(other: Model): void {
    this.interps.clear();
    this.regs.clear();
    this.gone.clear();
    this.released.clear();
    this.kept.clear();
    const c = other.clone();
    for (const [k, v] of c.interps) this.interps.set(k, v);
    for (const [k, v] of c.regs) this.regs.set(k, v);
    for (const [k, v] of c.gone) this.gone.set(k, v);
    for (const r of c.released) this.released.add(r);
    this.newlyGone = c.newlyGone;
    for (const [k, v] of c.kept) this.kept.set(k, v);
    this.cancels = c.cancels;
    this.step = c.step;
  }

  nextStep(): number {
    this.step += 1;
    return this.step;
  }

  live(): ModelInterp[] {
    return [...this.interps.values()];
  }

  /** Live interpreters that can take new owners (not FAILED). */
  healthy(): ModelInterp[] {
    return this.live().filter((i) => !i.failed);
  }

  isBroken(reg: ModelReg): boolean {
    return this.interps.get(reg.interpreterId)?.failed ?? false;
  }

  allRegs(): ModelReg[] {
    return [...this.regs.values()];
  }

  regsOf(interpreterId: string): ModelReg[] {
    return this.allRegs().filter((r) => r.interpreterId === interpreterId);
  }

  /** The registrations a Trigger of `trigger` runs: bound to it and not paused. */
  regsOn(trigger: string): ModelReg[] {
    return this.allRegs().filter((r) => r.trigger === trigger && !r.paused);
  }

  /** Every registration bound to `trigger`, paused ones too: none, and a Trigger is NOT_FOUND. */
  boundTo(trigger: string): ModelReg[] {
    return this.allRegs().filter((r) => r.trigger === trigger);
  }

  /** Registrations a Trigger would run (not paused): what commands pick to run one. */
  activeRegs(): ModelReg[] {
    return this.allRegs().filter((r) => !r.paused);
  }

  /** Pauses (or resumes) registrations; they must be live. */
  setPaused(ids: Iterable<string>, paused: boolean): void {
    for (const id of ids) {
      const r = this.regs.get(id);
      if (!r) throw new Error(`model: pause of ${id}, which is not live`);
      r.paused = paused;
    }
  }

  holder(name: string): ModelInterp | undefined {
    return this.live().find((i) => i.name === name);
  }

  /** A new interpreter that came out of a run with registrations. */
  addInterp(id: string, mode: Mode, name: string): void {
    if (this.interps.has(id) || this.gone.has(id)) throw new Error(`model: interpreter ${id} is not new`);
    if (name && this.holder(name)) throw new Error(`model: name ${name} is held by ${this.holder(name)?.id}`);
    this.interps.set(id, { id, mode, name, failed: false });
  }

  addReg(id: string, trigger: string, interpreterId: string, order: Order): void {
    if (!this.interps.has(interpreterId)) throw new Error(`model: registration ${id} in an interpreter that is not live (${interpreterId})`);
    if (this.regs.has(id) || this.released.has(id)) throw new Error(`model: registration ${id} is not new`);
    this.regs.set(id, { id, trigger, interpreterId, order });
  }

  /** An interpreter created and disposed within one call (nothing registered, or the run failed). */
  markGone(id: string, state: GoneState = 'INTERPRETER_STATE_DISPOSED'): void {
    if (this.interps.has(id)) throw new Error(`model: ${id} is live`);
    if (!this.gone.has(id)) {
      this.gone.set(id, state);
      this.newlyGone.push(id);
    }
  }

  /** Its dedicated isolate died of its memory limit. */
  fail(id: string): void {
    const i = this.interps.get(id);
    if (!i || i.mode !== 'isolate') throw new Error(`model: only a live isolate-mode interpreter can fail, not ${id}`);
    i.failed = true;
  }

  /** Releases registrations; an interpreter left without any is disposed (the model is quiescent). */
  release(ids: Iterable<string>): void {
    const touched = new Set<string>();
    for (const id of ids) {
      const r = this.regs.get(id);
      if (!r) throw new Error(`model: release of ${id}, which is not live`);
      this.regs.delete(id);
      this.released.add(id);
      touched.add(r.interpreterId);
    }
    for (const itp of touched) this.disposeIfEmpty(itp);
  }

  disposeIfEmpty(interpreterId: string): void {
    const i = this.interps.get(interpreterId);
    if (!i || this.regsOf(interpreterId).length > 0) return;
    this.interps.delete(interpreterId);
    this.gone.set(interpreterId, i.failed ? 'INTERPRETER_STATE_FAILED' : 'INTERPRETER_STATE_DISPOSED');
    this.newlyGone.push(interpreterId);
  }

  /** A background execution is DONE: kept, listed, and never changed again. */
  keep(id: string, order: Order): void {
    if (this.kept.has(id)) throw new Error(`model: execution ${id} is kept already`);
    this.kept.set(id, order);
  }

  /** A CancelExecution of an execution that was not DONE when picked; `effective`: its response shows it stopped the run. */
  cancelled(effective: boolean): void {
    this.cancels.max += 1;
    if (effective) this.cancels.min += 1;
  }

  /** The upgrade commit point: the old holder of `name` loses its registrations and the name. */
  replaceHolder(name: string): void {
    const old = this.holder(name);
    if (!old) return;
    old.name = '';
    this.release(this.regsOf(old.id).map((r) => r.id));
  }

  expected(): Snapshot {
    const live = this.live().sort(byId);
    const regCount = (id: string): number => this.regsOf(id).length;
    const totalRegs = this.regs.size;
    const count = (mode: Mode): number => live.filter((i) => i.mode === mode).length;
    const ready = (mode: Mode): number => live.filter((i) => i.mode === mode && !i.failed).length;
    const failed = live.filter((i) => i.failed).length;
    return {
      interpreters: live.map((i) => ({
        id: i.id,
        mode: i.mode,
        name: i.name,
        state: i.failed ? 'INTERPRETER_STATE_FAILED' : 'INTERPRETER_STATE_READY',
        references: regCount(i.id),
        registrationReferences: regCount(i.id),
        executionReferences: 0,
      })),
      registrations: this.allRegs()
        .sort(byId)
        .map((r) => ({ id: r.id, trigger: r.trigger, interpreterId: r.interpreterId, broken: this.isBroken(r), paused: r.paused === true })),
      byName: Object.fromEntries(NAMES.map((n) => [n, live.filter((i) => i.name === n).map((i) => i.id)])),
      counters: {
        interpreters: live.length,
        byState: { ready: live.length - failed, draining: 0, failed },
        byMode: { shared: count('shared'), isolate: count('isolate') },
        registrations: totalRegs,
        references: { registration: totalRegs, execution: 0 },
        dedicatedIsolates: ready('isolate'),
        dedicatedCreatedMinusDisposed: ready('isolate'),
        sharedIsolates: SHARED_ISOLATES,
        executionsInFlight: 0,
      },
      executions: {
        live: 0,
        background: { queued: 0, running: 0, done: this.kept.size },
        queued: [],
        running: [],
        listed: [...this.kept.keys()].sort().map((id) => ({ id, state: 'EXECUTION_STATE_DONE', background: true })),
      },
      gauges: {
        dedicatedIsolates: ready('isolate'),
        sharedIsolates: SHARED_ISOLATES,
        backgroundQueued: 0,
        backgroundRunning: 0,
        backgroundDone: this.kept.size,
        registrationReferences: totalRegs,
        executionReferences: 0,
        registrations: totalRegs,
        readyShared: ready('shared'),
        readyIsolate: ready('isolate'),
        draining: 0,
        failed,
      },
    };
  }
}
