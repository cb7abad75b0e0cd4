import type { RunTuple } from '../sandbox/Sandbox';
import { ResourceExhaustedError } from './errors';
import type { Interpreter } from './Interpreter';
import { Registration, type RegistrationSpec } from './Registration';
import { specProblem } from './sources/rules';
import type { EventHub } from './EventHub';
import type { TenantLedger } from './TenantLedger';
import type { RegistrationChange } from './types';

/** Triggers are per tenant: the index keys on tenant and trigger together (a newline occurs in neither). */
const scoped = (tenant: string, trigger: string): string => `${tenant}\n${trigger}`;

export type { RegistrationSpec } from './Registration';

/** What a replayed recipe says of the registrations it makes again: paused ones, and those released later. */
export interface RestoredState {
  paused: ReadonlySet<string>;
  released: ReadonlySet<string>;
}

/**
 * What runs schedules and consumers: it hears of each registration made live, released, paused
 * or resumed (of any kind: it takes those of its own), in the same synchronous step as the index.
 */
export interface SourceBinding {
  attach(reg: Registration): void;
  detach(reg: Registration): void;
  pausedChanged(reg: Registration): void;
}

/**
 * Every live registration, by id and by (tenant, trigger), and the two ways they change: a
 * successful run's registrations are committed, and registrations are released. Each change is
 * one synchronous step, so a Trigger, which snapshots its registrations synchronously, sees the
 * set before or after it, never a mix. Each registration holds one registration reference on
 * its interpreter from commit to release.
 */
export class RegistrationIndex {
  private readonly byId = new Map<string, Registration>();
  private readonly byTrigger = new Map<string, Registration[]>();
  private seq = 0;
  private pausedCount = 0;
  private sources: SourceBinding | undefined;

  constructor(
    private readonly ledger: TenantLedger,
    private readonly maxPerInterpreter: number,
    /** Watchers hear of each registration made live and each one released. */
    private readonly events?: EventHub,
    /** Whether gears.consume has a Redis to read (ISOGEAR_EVENTS_REDIS_URL or a Redis store). */
    private readonly streamsAvailable = false,
  ) {}

  /** The schedules and consumers that run registrations of those kinds (bound once, at composition, before any exists). */
  bindSources(sources: SourceBinding): void {
    this.sources = sources;
  }

  get size(): number {
    return this.byId.size;
  }

  /** Live registrations that are paused. */
  get paused(): number {
    return this.pausedCount;
  }

  get(id: string): Registration | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  values(): IterableIterator<Registration> {
    return this.byId.values();
  }

  /** The registrations bound to `trigger` of `tenant`, in registration order (the live list: copy it to keep it). */
  bound(tenant: string, trigger: string): readonly Registration[] | undefined {
    return this.byTrigger.get(scoped(tenant, trigger));
  }

  /**
   * Makes a successful run's registrations live, in one synchronous step. An interpreter that
   * stopped accepting (released, failed) keeps none of them.
   */
  commit(interp: Interpreter, tuple: RunTuple, execId: string, restored?: RestoredState): Registration[] {
    if (!interp.accepting) {
      interp.abandonRun(execId);
      return [];
    }
    interp.commitRun(execId);
    return this.adopt(interp, tuple.registrations, restored);
  }

  /**
   * Makes live, in one synchronous step, registrations whose runs the interpreter's sandbox has
   * committed already (a rollback replays every step first, and makes them all live at once with
   * its swap). An interpreter that stopped accepting keeps none of them.
   */
  adopt(interp: Interpreter, specs: readonly RegistrationSpec[], restored?: RestoredState): Registration[] {
    if (!interp.accepting) return [];
    const made = specs.map((r) => this.add(interp, r));
    // a replayed one the recipe holds paused is paused from the start: its schedule never arms, its consumer never reads
    for (const reg of made) if (restored?.paused.has(reg.id)) this.markPaused(reg);
    for (const reg of made) this.tell(reg, 'created');
    for (const reg of made) if (!restored?.released.has(reg.id)) this.sources?.attach(reg);
    return made;
  }

  /** Lists registrations of a FAILED interpreter (a recipe that could not be rebuilt): they are broken until released, and never run. */
  addBroken(interp: Interpreter, specs: readonly RegistrationSpec[]): void {
    for (const r of specs) if (!this.byId.has(r.id)) this.add(interp, r);
  }

  /** Refuses (RESOURCE_EXHAUSTED) a Register attached to an interpreter that holds its maximum of registrations. */
  refuseWhenFull(interp: Interpreter): void {
    if (interp.registrations.size >= this.maxPerInterpreter) {
      throw new ResourceExhaustedError(
        'max_registrations_per_interpreter',
        `interpreter ${interp.id} holds its maximum of ${this.maxPerInterpreter} registrations (ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER); release some first`,
      );
    }
  }

  /**
   * The sandbox shares its context with user code, so what it reports is checked: registration
   * ids minted by this interpreter, unique, valid triggers, within the per-interpreter cap.
   * Returns why a run's registrations are refused, or undefined.
   */
  invalid(interp: Interpreter, tuple: RunTuple): string | undefined {
    if (tuple.registrations.length === 0) return undefined;
    const prefix = `reg_${interp.registrationPrefix}`;
    const seen = new Set<string>();
    for (const r of tuple.registrations) {
      if (!r.id.startsWith(prefix) || seen.has(r.id) || this.byId.has(r.id)) {
        return 'the interpreter reported a registration it did not create (the script tampered with the sandbox)';
      }
      const problem = specProblem(r, this.streamsAvailable);
      if (problem) return problem;
      seen.add(r.id);
    }
    if (interp.registrations.size + tuple.registrations.length > this.maxPerInterpreter) {
      return `the run registered more handlers than the ${this.maxPerInterpreter} one interpreter may hold`;
    }
    return undefined;
  }

  /**
   * Drops registrations of one interpreter: unindexes them all first, then releases their
   * references (the last one disposes the interpreter, or it drains while runs are left).
   */
  release(interp: Interpreter, regs: readonly Registration[]): void {
    for (const reg of regs) {
      this.unindex(reg);
      interp.registrations.delete(reg.id);
      this.sources?.detach(reg);
    }
    if (interp.live) interp.unregister(regs.map((r) => r.id));
    if (interp.registrations.size === 0 && interp.referencesOf('execution') > 0) interp.beginDraining();
    // watchers hear of the releases before the interpreter's disposal they may cause
    for (const reg of regs) this.tell(reg, 'released');
    for (const reg of regs) reg.reference.release();
  }

  private markPaused(reg: Registration): void {
    if (reg.paused) return;
    reg.paused = true;
    this.pausedCount += 1;
  }

  /** Pauses (or resumes) registrations in one synchronous step; watchers hear of each one changed. */
  setPaused(regs: readonly Registration[], paused: boolean): void {
    const changed = regs.filter((reg) => reg.paused !== paused && this.byId.has(reg.id));
    for (const reg of changed) reg.paused = paused;
    this.pausedCount += (paused ? 1 : -1) * changed.length;
    for (const reg of changed) this.sources?.pausedChanged(reg);
    for (const reg of changed) this.tell(reg, paused ? 'paused' : 'resumed');
  }

  private tell(reg: Registration, change: RegistrationChange): void {
    this.events?.publish({ tenant: reg.tenant, interpreterId: reg.interpreterId, registrationId: reg.id, trigger: reg.trigger }, 'registration', () => ({
      kind: 'registration',
      registration: reg.info(false),
      released: change === 'released',
      change,
    }));
  }

  /** Drops every registration of `interp`. */
  releaseAll(interp: Interpreter): void {
    if (interp.registrations.size > 0) this.release(interp, [...interp.registrations.values()]);
  }

  /** Unindexes every registration of `interp` without releasing references (shutdown: the interpreter goes anyway). */
  forgetAll(interp: Interpreter): void {
    for (const reg of interp.registrations.values()) {
      this.unindex(reg);
      this.sources?.detach(reg);
    }
    interp.registrations.clear();
  }

  private add(interp: Interpreter, r: RegistrationSpec): Registration {
    const reg = new Registration(r, ++this.seq, interp.id, interp.acquire('registration'), interp.tenant);
    interp.registrations.set(reg.id, reg);
    this.byId.set(reg.id, reg);
    if (reg.kind === 'trigger') {
      const key = scoped(reg.tenant, reg.trigger);
      const list = this.byTrigger.get(key);
      if (list) list.push(reg);
      else this.byTrigger.set(key, [reg]);
    }
    this.ledger.countRegistrations(reg.tenant, 1);
    return reg;
  }

  private unindex(reg: Registration): void {
    if (this.byId.delete(reg.id)) {
      this.ledger.countRegistrations(reg.tenant, -1);
      if (reg.paused) this.pausedCount -= 1;
    }
    if (reg.kind !== 'trigger') return;
    const key = scoped(reg.tenant, reg.trigger);
    const list = this.byTrigger.get(key);
    if (!list) return;
    const i = list.indexOf(reg);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byTrigger.delete(key);
  }
}
