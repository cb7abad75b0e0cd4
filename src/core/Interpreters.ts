import { FailedPreconditionError, IllegalStateError, NotFoundError, ResourceExhaustedError, UnavailableError } from './errors';
import { Interpreter } from './Interpreter';
import type { IsolateDisposeReason, IsolateHost } from './IsolateHost';
import type { NameTable } from './NameTable';
import type { FixedIds, Placement } from './placement/Placement';
import type { TenantLedger } from './TenantLedger';
import type { Span } from '@opentelemetry/api';
import type { Tracing } from '../tracing/Tracing';
import type { EventHub } from './EventHub';
import type { CoreLogger, InterpreterInfo, IsolationMode } from './types';
import { checkIdLength } from './validation';

/** Disposed interpreters remembered for GetInterpreter and attach errors. */
const TOMBSTONES = 10_000;
/** How long past its timeout an isolate may sit on a call before it is declared stuck and disposed. */
const STUCK_GRACE_MS = 3000;
const WATCHDOG_INTERVAL_MS = 500;

export interface InterpretersOptions {
  maxInterpreters: number;
  logger?: CoreLogger;
  /** Watchers hear of each interpreter made and of each change of its state. */
  events?: EventHub;
  /** A traced request's interpreter creation is a span (`isogear.interpreter.create`). */
  tracing?: Tracing;
  /** True once the manager is shutting down: no interpreter is created any more. */
  closed(): boolean;
}

/**
 * The interpreter table: creates interpreters (within the server's and the tenant's limits, on
 * the placement of their mode), finds them for a tenant, disposes each the moment its last
 * reference goes (keeping a tombstone), fails the ones on an isolate that died, and runs the
 * watchdog that disposes isolates stuck where no timeout guards them.
 */
export class Interpreters {
  private readonly table = new Map<string, Interpreter>();
  private readonly tombstones = new Map<string, { tenant: string; info: InterpreterInfo }>();
  private seq = 0;
  private pending = 0;
  private readonly watchdog: NodeJS.Timeout;

  constructor(
    private readonly options: InterpretersOptions,
    private readonly placements: Record<IsolationMode, Placement>,
    private readonly ledger: TenantLedger,
    private readonly names: NameTable,
  ) {
    this.watchdog = setInterval(() => this.checkStuck(), WATCHDOG_INTERVAL_MS);
    this.watchdog.unref();
  }

  get size(): number {
    return this.table.size;
  }

  /** Interpreters being created right now. */
  get creating(): number {
    return this.pending;
  }

  values(): IterableIterator<Interpreter> {
    return this.table.values();
  }

  get(id: string): Interpreter | undefined {
    return this.table.get(id);
  }

  has(id: string): boolean {
    return this.table.has(id);
  }

  /** A live interpreter of `tenant`; another tenant's is treated as absent (existence is not revealed). */
  own(id: string, tenant: string): Interpreter | undefined {
    const interp = this.table.get(id);
    return interp?.tenant === tenant ? interp : undefined;
  }

  /** What is remembered of a disposed interpreter of `tenant`. */
  tombstone(id: string, tenant: string): InterpreterInfo | undefined {
    const tomb = this.tombstones.get(id);
    return tomb?.tenant === tenant ? tomb.info : undefined;
  }

  /** The interpreter a request attaches to: live, READY, and the caller's. */
  attachable(id: string, tenant: string): Interpreter {
    checkIdLength(id, 'interpreter_id');
    const interp = this.own(id, tenant);
    if (!interp) {
      const tomb = this.tombstone(id, tenant);
      if (tomb) throw new FailedPreconditionError(`interpreter ${id} is ${tomb.state.toUpperCase()}`);
      throw new NotFoundError(`interpreter ${id} not found`);
    }
    if (interp.state === 'failed') throw new FailedPreconditionError(`interpreter ${id} is FAILED: ${interp.failureReason}`);
    if (interp.state === 'draining') {
      throw new FailedPreconditionError(`interpreter ${id} is DRAINING: its registrations were released and it is disposed when its runs end`);
    }
    return interp;
  }

  /** The interpreter a registration lives in; missing is a broken invariant. */
  must(id: string): Interpreter {
    const interp = this.table.get(id);
    if (!interp) throw new IllegalStateError(`registration points at missing interpreter ${id}`);
    return interp;
  }

  /**
   * A new interpreter for `tenant` on the placement of `mode`, within the tenant's quotas
   * (interpreters, dedicated memory) and the server's interpreter limit. `fixed`: a rebuilt
   * interpreter with its stored ids, admitted when it was first created (its quotas count it,
   * never refuse it).
   */
  create(mode: IsolationMode, memoryMb: number, name: string, tenant: string, fixed?: FixedIds): Promise<Interpreter> {
    const tracing = this.options.tracing;
    if (!tracing?.on) return this.admitted(mode, memoryMb, name, tenant, fixed);
    return tracing.span('isogear.interpreter.create', { 'isogear.interpreter.mode': mode }, (span) => this.admitted(mode, memoryMb, name, tenant, fixed, span));
  }

  private async admitted(mode: IsolationMode, memoryMb: number, name: string, tenant: string, fixed?: FixedIds, span?: Span): Promise<Interpreter> {
    const placement = this.placements[mode];
    const charge = placement.chargeMb(memoryMb);
    this.ledger.admitInterpreter(tenant, charge, fixed === undefined);
    try {
      return await this.createOn(placement, memoryMb, name, tenant, fixed, span);
    } catch (err) {
      this.ledger.interpreterGone(tenant, charge);
      throw err;
    }
  }

  /**
   * What would refuse a new interpreter of `tenant` in `mode` now (a quota, the server's limit),
   * if anything: a background run checks this before it is accepted.
   */
  creationRefusal(mode: IsolationMode, memoryMb: number, tenant: string): ResourceExhaustedError | undefined {
    return this.ledger.interpreterRefusal(tenant, this.placements[mode].chargeMb(memoryMb)) ?? this.capacityRefusal();
  }

  private capacityRefusal(): ResourceExhaustedError | undefined {
    if (this.table.size + this.pending < this.options.maxInterpreters) return undefined;
    return new ResourceExhaustedError(
      'max_interpreters',
      `the server holds its maximum of ${this.options.maxInterpreters} interpreters (ISOGEAR_MAX_INTERPRETERS); release registrations to free some`,
    );
  }

  private async createOn(placement: Placement, memoryMb: number, name: string, tenant: string, fixed?: FixedIds, span?: Span): Promise<Interpreter> {
    const full = this.capacityRefusal();
    if (full) throw full;
    this.pending += 1;
    try {
      const placed = await placement.place(memoryMb, fixed);
      span?.setAttributes({ 'isogear.warm_pool.hit': placed.warm, 'isogear.interpreter.id': placed.id });
      if (this.options.closed()) {
        placement.abandon(placed);
        throw new UnavailableError('the server is shutting down');
      }
      const interp = new Interpreter({ ...placed, seq: ++this.seq, mode: placement.mode, name, tenant }, this.forget, this.changed);
      this.table.set(interp.id, interp);
      this.changed(interp);
      return interp;
    } finally {
      this.pending -= 1;
    }
  }

  /**
   * An isolate died. Unless it went on purpose (its interpreter released or replaced, shutdown),
   * every interpreter on it goes FAILED; those no reference holds are disposed at once.
   */
  readonly onHostDeath = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    if (reason === 'released' || reason === 'replaced' || reason === 'shutdown') return;
    const why =
      reason === 'memory_limit'
        ? 'its isolate exceeded its memory limit'
        : reason === 'unresponsive'
          ? 'its isolate stopped responding (a script ran code no timeout could stop) and was disposed'
          : 'its isolate was disposed while a script ran';
    this.options.logger?.warn({ isolate: host.kind, reason, interpreters: [...host.interpreterIds] }, 'isolate died');
    for (const id of [...host.interpreterIds]) {
      const interp = this.table.get(id);
      if (!interp) continue;
      interp.fail(why);
      if (interp.references === 0) this.forget(interp);
    }
  };

  /** Shutdown begins: no more watchdog rounds. */
  stopWatchdog(): void {
    clearInterval(this.watchdog);
  }

  /** Shutdown: every interpreter goes FAILED and leaves the table (its isolate is being disposed). */
  closeAll(reason: string, beforeEach: (interp: Interpreter) => void): void {
    for (const interp of [...this.table.values()]) {
      beforeEach(interp);
      interp.fail(reason);
      this.table.delete(interp.id);
    }
  }

  /** Tells watchers an interpreter was made or changed state (the state after the change). */
  private readonly changed = (interp: Interpreter): void => {
    this.options.events?.publish({ tenant: interp.tenant, interpreterId: interp.id }, 'interpreter', () => ({
      kind: 'interpreter',
      interpreter: interp.infoWithHeap(interp.host.lastHeapBytes ?? 0),
    }));
  };

  /** Removes an unreferenced interpreter: disposes its context (and dedicated isolate), keeps a tombstone. */
  private readonly forget = (interp: Interpreter): void => {
    if (!this.table.has(interp.id)) return;
    this.table.delete(interp.id);
    this.names.drop(interp);
    interp.markDisposed();
    this.ledger.interpreterGone(interp.tenant, interp.dedicatedMemoryMb);
    this.placements[interp.mode].vacate(interp);
    this.tombstones.set(interp.id, { tenant: interp.tenant, info: interp.infoWithHeap(0) });
    if (this.tombstones.size > TOMBSTONES) {
      const oldest = this.tombstones.keys().next().value as string;
      this.tombstones.delete(oldest);
    }
  };

  /** Disposes isolates stuck in code no timeout guards; their interpreters go FAILED. */
  private checkStuck(): void {
    const now = performance.now();
    for (const host of [...this.placements.shared.hosts(), ...this.placements.isolate.hosts()]) {
      if (!host.isStuck(now, STUCK_GRACE_MS)) continue;
      this.options.logger?.warn({ isolate: host.kind, interpreters: [...host.interpreterIds] }, 'isolate stopped responding; disposing it');
      host.noteDeath('unresponsive');
    }
  }
}
