import { ResourceExhaustedError, UnavailableError } from '../errors';
import { newInterpreterId, newRegistrationPrefix } from '../ids';
import type { Interpreter } from '../Interpreter';
import { IsolateHost, type IsolateDisposeReason } from '../IsolateHost';
import type { SandboxMaker } from '../SandboxMaker';
import type { CoreLogger } from '../types';
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
/**
 * A shared isolate whose calls have not settled for this long is held by a long run (or a
 * cancelled runaway still spinning until its own timeout): new interpreters go elsewhere, since
 * creating one there waits for the isolate's thread.
 */
export const BUSY_MS = WARM_PROGRESS_MS;
/** An added shared isolate left empty is retired after this long, if a regular one moves again. */
export const EXTRA_IDLE_MS = 2000;

export interface SharedPlacementOptions {
  /** How many shared isolates (ISOGEAR_SHARED_ISOLATES). */
  isolates: number;
  /** Heap limit of each (ISOGEAR_SHARED_MEMORY_MB). */
  memoryMb: number;
  onCatastrophicError?: (message: string) => void;
  /** True once the manager is shutting down: a dead isolate is no longer replaced. */
  closed(): boolean;
  /**
   * Shared isolates that may be added while every regular one is held by a long run (0: none;
   * ISOGEAR_EXTRA_SHARED_ISOLATES). Each is retired once it is empty and a regular one is free.
   */
  maxExtra: number;
  logger?: CoreLogger;
}

/**
 * Shared mode (RedisGears' global dictionaries): every interpreter is a context in one of a few
 * long-lived shared isolates, placed on the least loaded one that has room and is not held by a
 * long run. The isolates share their heap limit, thread and fate between their interpreters; one
 * that dies takes them all with it and is replaced by a fresh one at once.
 *
 * One isolate runs one call at a time, and isolated-vm cannot stop a run before its own timeout
 * (a cancelled `while (true) {}` keeps its isolate for up to ISOGEAR_MAX_TIMEOUT_MS). When every
 * regular shared isolate is held like that, a new interpreter goes to an added one (at most
 * `maxExtra`), so nobody waits behind a run nobody waits for; added isolates are retired once
 * empty while a regular one moves again.
 */
export class SharedPlacement implements Placement {
  readonly mode = 'shared' as const;
  readonly tally = new IsolateTally('shared');
  private readonly slots: IsolateHost[] = [];
  /** Added while every regular isolate was held by a long run; retired when idle. */
  private readonly extras: IsolateHost[] = [];
  private readonly retireTimers = new Map<IsolateHost, NodeJS.Timeout>();

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
      return { host, sandbox, id, registrationPrefix, dedicatedMemoryMb: 0, warm: warm !== undefined };
    } catch (err) {
      this.left(host, id);
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
    this.left(placed.host, placed.id);
  }

  vacate(interp: Interpreter): void {
    this.left(interp.host, interp.id);
  }

  /**
   * An interpreter left `host`, whichever way: disposed, abandoned before it was used (a cancel
   * during its creation), or never made. An added isolate it leaves empty is retired in time
   * (one whose only interpreter was abandoned used to stay for good); a regular one has room for
   * a warm context.
   */
  private left(host: IsolateHost, id: string): void {
    host.vacate(id);
    if (this.extras.includes(host)) this.retireLater(host);
    else this.pool.refill();
  }

  /** Every shared isolate: the regular ones, then those added. */
  hosts(): readonly IsolateHost[] {
    return this.extras.length === 0 ? this.slots : [...this.slots, ...this.extras];
  }

  /** The regular shared isolates (the warm pool keeps contexts on these only). */
  regularHosts(): readonly IsolateHost[] {
    return this.slots;
  }

  /** Shared isolates alive now, added ones included. */
  get size(): number {
    return this.hosts().filter((h) => !h.disposed).length;
  }

  /** Shared isolates added beyond the regular ones, alive now. */
  get extra(): number {
    return this.extras.length;
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
    for (const timer of this.retireTimers.values()) clearTimeout(timer);
    this.retireTimers.clear();
    for (const host of [...this.slots, ...this.extras]) host.dispose('shutdown');
  }

  /**
   * The least loaded shared isolate that has room. A shared isolate's heap limit is shared by its
   * contexts, and isolated-vm disposes the whole isolate (every interpreter on it) when a burst of
   * new contexts overruns it; so each one takes at most as many interpreters as its limit holds
   * at CONTEXT_BUDGET_BYTES each, and none while its last heap sample is nearly full.
   */
  private pick(): IsolateHost {
    for (const h of this.hosts()) h.checkAlive();
    const limitBytes = this.options.memoryMb * 1024 * 1024;
    const perIsolate = this.capacity;
    const now = performance.now();
    const hasRoom = (h: IsolateHost): boolean => {
      if (h.disposed || h.interpreterIds.size >= perIsolate) return false;
      const heap = h.lastHeapBytes;
      return heap === undefined || heap <= limitBytes * FILL;
    };
    const free = (h: IsolateHost): boolean => h.isProgressing(now, BUSY_MS);
    // Regular isolates first (so added ones empty out and retire), then added ones; a held
    // isolate only when every one with room is held and no more may be added (full isolates are
    // full by the heap budget: that is not a reason to add one).
    const withRoom = this.hosts().filter(hasRoom);
    const best =
      leastLoaded(this.slots.filter((h) => hasRoom(h) && free(h))) ??
      leastLoaded(this.extras.filter((h) => hasRoom(h) && free(h))) ??
      (withRoom.length > 0 ? (this.addExtra() ?? leastLoaded(withRoom)) : undefined);
    if (!best) {
      if (this.slots.every((h) => h.disposed)) throw new UnavailableError('no shared isolate is available');
      throw new ResourceExhaustedError(
        'shared_isolate_memory',
        `the shared isolates are full (${this.slots.length} × ${this.options.memoryMb} MB, at most ${perIsolate} interpreters each; ` +
          'ISOGEAR_SHARED_ISOLATES, ISOGEAR_SHARED_MEMORY_MB): release registrations or use ISOLATION_MODE_ISOLATE',
      );
    }
    const timer = this.retireTimers.get(best);
    if (timer) {
      clearTimeout(timer);
      this.retireTimers.delete(best);
    }
    return best;
  }

  /** Every regular isolate is held by a long run: one more shared isolate, within `maxExtra`. */
  private addExtra(): IsolateHost | undefined {
    if (this.extras.length >= this.options.maxExtra || this.options.closed()) return undefined;
    const host = this.newHost();
    this.extras.push(host);
    this.options.logger?.warn(
      { extraSharedIsolates: this.extras.length, max: this.options.maxExtra },
      'every shared isolate is held by a long run: added a shared isolate so new interpreters do not wait behind it',
    );
    return host;
  }

  /** An added isolate left empty goes once it stays empty and idle and a regular isolate is free again. */
  private retireLater(host: IsolateHost): void {
    if (host.interpreterIds.size > 0 || this.retireTimers.has(host) || host.disposed) return;
    const timer = setTimeout(() => {
      this.retireTimers.delete(host);
      if (host.disposed || host.interpreterIds.size > 0) return;
      const now = performance.now();
      const regularFree = this.slots.some((h) => !h.disposed && h.isProgressing(now, BUSY_MS));
      if (host.inFlight > 0 || !host.isProgressing(now, 0) || !regularFree) {
        this.retireLater(host);
        return;
      }
      this.extras.splice(this.extras.indexOf(host), 1);
      host.dispose('released');
      this.options.logger?.info({ extraSharedIsolates: this.extras.length }, 'a regular shared isolate is free again: retired an added shared isolate');
    }, EXTRA_IDLE_MS);
    timer.unref();
    this.retireTimers.set(host, timer);
  }

  private newHost(): IsolateHost {
    const host = IsolateHost.create('shared', this.options.memoryMb, this.died, this.options.onCatastrophicError);
    this.tally.created += 1;
    return host;
  }

  private readonly died = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    this.tally.noteDisposed(reason);
    this.onDeath(host, reason);
    const extra = this.extras.indexOf(host);
    if (extra >= 0) {
      // an added isolate is not replaced: the next placement adds one again if it is needed
      this.extras.splice(extra, 1);
      clearTimeout(this.retireTimers.get(host));
      this.retireTimers.delete(host);
      return;
    }
    if (!this.options.closed()) {
      const slot = this.slots.indexOf(host);
      if (slot >= 0) this.slots[slot] = this.newHost();
      this.pool.forgetHost(host);
    }
  };
}

/** The isolate with the fewest interpreters (then the fewest runs), or undefined for none. */
function leastLoaded(hosts: readonly IsolateHost[]): IsolateHost | undefined {
  let best: IsolateHost | undefined;
  for (const h of hosts) {
    if (!best || h.interpreterIds.size < best.interpreterIds.size || (h.interpreterIds.size === best.interpreterIds.size && h.inFlight < best.inFlight)) best = h;
  }
  return best;
}
