import { ResourceExhaustedError, UnavailableError } from '../errors';
import { newInterpreterId, newRegistrationPrefix } from '../ids';
import type { Interpreter } from '../Interpreter';
import { IsolateHost, type IsolateDisposeReason } from '../IsolateHost';
import type { SandboxMaker } from '../SandboxMaker';
import type { WarmPool } from '../WarmPool';
import { IsolateTally, type FixedIds, type HostDeathListener, type Placed, type Placement } from './Placement';

/** Heap budgeted per shared-mode interpreter: an empty context costs about 170 KiB. */
const CONTEXT_BUDGET_BYTES = 256 * 1024;
/** Share of a shared isolate's heap limit that placement fills before refusing new interpreters. */
const FILL = 0.75;
/**
 * A shared isolate that has settled no call for this long is busy with one long call, or wedged:
 * its warm contexts are not used (nor refilled) until it moves again.
 */
export const WARM_PROGRESS_MS = 250;

export interface SharedPlacementOptions {
  /** How many shared isolates (ISOGEAR_SHARED_ISOLATES). */
  isolates: number;
  /** Heap limit of each (ISOGEAR_SHARED_MEMORY_MB). */
  memoryMb: number;
  onCatastrophicError?: (message: string) => void;
  /** True once the manager is shutting down: a dead isolate is no longer replaced. */
  closed(): boolean;
}

/**
 * Shared mode (RedisGears' global dictionaries): every interpreter is a context in one of a few
 * long-lived shared isolates, placed on the least loaded one that has room. The isolates share
 * their heap limit, thread and fate between their interpreters; one that dies takes them all
 * with it and is replaced by a fresh one at once.
 */
export class SharedPlacement implements Placement {
  readonly mode = 'shared' as const;
  readonly tally = new IsolateTally('shared');
  private readonly slots: IsolateHost[] = [];

  constructor(
    private readonly options: SharedPlacementOptions,
    private readonly pool: WarmPool,
    private readonly maker: SandboxMaker,
    private readonly onDeath: HostDeathListener,
  ) {
    for (let i = 0; i < options.isolates; i++) this.slots.push(this.newHost());
  }

  chargeMb(): number {
    return 0;
  }

  async place(_memoryMb: number, fixed?: FixedIds, attempt = 1): Promise<Placed> {
    const host = this.pick();
    const warm = fixed ? undefined : this.pool.takeContext(host, host.isProgressing(performance.now(), WARM_PROGRESS_MS));
    const id = fixed?.id ?? warm?.id ?? newInterpreterId();
    const registrationPrefix = fixed?.prefix ?? warm?.registrationPrefix ?? newRegistrationPrefix();
    host.admit(id);
    try {
      const sandbox = warm?.sandbox ?? (await this.maker.make(host, id, registrationPrefix));
      return { host, sandbox, id, registrationPrefix, dedicatedMemoryMb: 0 };
    } catch (err) {
      host.vacate(id);
      if (host.disposed && !this.options.closed() && attempt < 2) {
        // the shared isolate died under us (another interpreter's memory kill): its slot has a
        // fresh isolate already, so try once more
        return this.place(_memoryMb, fixed, attempt + 1);
      }
      throw new UnavailableError(`could not create an interpreter: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }

  abandon(placed: Placed): void {
    placed.sandbox.release();
    placed.host.vacate(placed.id);
  }

  vacate(interp: Interpreter): void {
    interp.host.vacate(interp.id);
    this.pool.refill(); // room on a shared isolate: a warm context may take it
  }

  hosts(): readonly IsolateHost[] {
    return this.slots;
  }

  /** Shared isolates alive now. */
  get size(): number {
    return this.slots.filter((h) => !h.disposed).length;
  }

  /** Interpreters (and warm contexts) one shared isolate may hold: its heap at CONTEXT_BUDGET_BYTES each. */
  get capacity(): number {
    return Math.max(1, Math.floor((this.options.memoryMb * 1024 * 1024 * FILL) / CONTEXT_BUDGET_BYTES));
  }

  /** Whether `host` may take another warm context now: within its budget, and not sitting on a call. */
  hasRoomFor(host: IsolateHost, warmOnIt: number): boolean {
    return host.interpreterIds.size + warmOnIt < this.capacity && host.isProgressing(performance.now(), WARM_PROGRESS_MS);
  }

  destroy(): void {
    for (const host of [...this.slots]) host.dispose('shutdown');
  }

  /**
   * The least loaded shared isolate that has room. A shared isolate's heap limit is shared by its
   * contexts, and isolated-vm disposes the whole isolate (every interpreter on it) when a burst of
   * new contexts overruns it; so each one takes at most as many interpreters as its limit holds
   * at CONTEXT_BUDGET_BYTES each, and none while its last heap sample is nearly full.
   */
  private pick(): IsolateHost {
    for (const h of [...this.slots]) h.checkAlive();
    const limitBytes = this.options.memoryMb * 1024 * 1024;
    const perIsolate = this.capacity;
    let best: IsolateHost | undefined;
    for (const h of this.slots) {
      if (h.disposed || h.interpreterIds.size >= perIsolate) continue;
      const heap = h.lastHeapBytes;
      if (heap !== undefined && heap > limitBytes * FILL) continue;
      if (
        !best ||
        h.interpreterIds.size < best.interpreterIds.size ||
        (h.interpreterIds.size === best.interpreterIds.size && h.inFlight < best.inFlight)
      ) {
        best = h;
      }
    }
    if (!best) {
      if (this.slots.every((h) => h.disposed)) throw new UnavailableError('no shared isolate is available');
      throw new ResourceExhaustedError(
        'shared_isolate_memory',
        `the shared isolates are full (${this.slots.length} × ${this.options.memoryMb} MB, at most ${perIsolate} interpreters each; ` +
          'ISOGEAR_SHARED_ISOLATES, ISOGEAR_SHARED_MEMORY_MB): release registrations or use ISOLATION_MODE_ISOLATE',
      );
    }
    return best;
  }

  private newHost(): IsolateHost {
    const host = IsolateHost.create('shared', this.options.memoryMb, this.died, this.options.onCatastrophicError);
    this.tally.created += 1;
    return host;
  }

  private readonly died = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    this.tally.noteDisposed(reason);
    this.onDeath(host, reason);
    if (!this.options.closed()) {
      const slot = this.slots.indexOf(host);
      if (slot >= 0) this.slots[slot] = this.newHost();
      this.pool.forgetHost(host);
    }
  };
}
