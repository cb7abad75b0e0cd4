import type { Sandbox } from '../sandbox/Sandbox';
import { newInterpreterId, newRegistrationPrefix } from './ids';
import type { IsolateDisposeReason, IsolateHost } from './IsolateHost';
import type { IsolationMode, WarmPoolStats } from './types';

/**
 * A refill starts this long after the call that asked for it (a run's end, a take): the response
 * of that run and the client's read of it come first. The refill's work is CPU-heavy (the
 * synchronous isolate constructor, then the bootstrap on an isolate thread); begun 1 ms after a
 * run, it delayed that run's response on the 2-core development machine: an isolate-mode
 * `Execute` 10 ms apart took 8.4–9.6 ms at the client, 5.6–6.5 ms with the refill 5 ms later.
 */
const REFILL_DELAY_MS = 5;

/** An interpreter-to-be: a context with the bootstrap installed, its ids already chosen. */
export interface WarmSandbox {
  host: IsolateHost;
  sandbox: Sandbox;
  id: string;
  registrationPrefix: string;
}

export interface WarmPoolOptions {
  /** Warm dedicated isolates to keep (0: none). */
  isolates: number;
  /** Warm contexts to keep on each shared isolate (0: none). */
  contextsPerShared: number;
  /** Heap limit of the pooled isolates: requests asking another limit miss the pool. */
  memoryMb: number;
  /** A new isolate for the pool; `onDeath` is the pool's until the isolate is taken. */
  newIsolate(onDeath: (host: IsolateHost, reason: IsolateDisposeReason) => void): IsolateHost;
  /** A context with the bootstrap installed on `host`, for interpreter `id`. */
  newSandbox(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox>;
  /** The shared isolates, and whether one may take another warm context now (budget, not busy). */
  sharedHosts(): readonly IsolateHost[];
  hasRoomFor(host: IsolateHost, warmOnIt: number): boolean;
  /**
   * True while no request is being served. The isolate constructor is synchronous (about 2 ms on
   * the Node.js thread): while busy, the pool makes one entry per refill call (the owner calls it
   * as each run ends, so it lands between requests), and fills up only while idle.
   */
  idle(): boolean;
  onError?(err: unknown): void;
}

/**
 * Keeps interpreters ready before anyone asks: dedicated isolates with a bootstrapped context
 * for isolate mode, and bootstrapped contexts on each shared isolate for shared mode. Takes are
 * synchronous; refilling runs while the server is idle, one creation at a time, and stops at the
 * targets, so the pool never grows past them. Under sustained load it drains and requests
 * create their own, which costs the same work the refill would have. A taken isolate belongs to the caller (its death
 * listener is handed over); an isolate that dies in the pool is dropped and counted.
 */
export class WarmPool {
  private readonly isolates: WarmSandbox[] = [];
  private readonly contexts = new Map<IsolateHost, WarmSandbox[]>();
  private readonly hits: Record<IsolationMode, number> = { shared: 0, isolate: 0 };
  private readonly misses: Record<IsolationMode, number> = { shared: 0, isolate: 0 };
  private readonly disposedByReason = new Map<string, number>();
  private isolatesCreated = 0;
  private filling = false;
  private closed = false;

  constructor(private readonly options: WarmPoolOptions) {}

  /** A warm dedicated isolate with a context, or undefined (a miss) when none fits. */
  takeIsolate(memoryMb: number, adopt: (host: IsolateHost, reason: IsolateDisposeReason) => void): WarmSandbox | undefined {
    let warm: WarmSandbox | undefined;
    if (memoryMb === this.options.memoryMb) {
      while ((warm = this.isolates.pop()) && warm.host.disposed);
    }
    this.count('isolate', warm !== undefined);
    if (warm) warm.host.adopt(adopt);
    this.refill();
    return warm;
  }

  /**
   * A warm context on shared isolate `host`, or undefined (a miss). `usable` false: the host has
   * been sitting on one call (a long run, or wedged); a context made now waits in line and is
   * retried on a fresh isolate if the watchdog disposes this one, where a warm one would fail.
   */
  takeContext(host: IsolateHost, usable = true): WarmSandbox | undefined {
    const stock = this.contexts.get(host);
    const warm = host.disposed || !usable ? undefined : stock?.pop();
    this.count('shared', warm !== undefined);
    this.refill();
    return warm;
  }

  /** Warm contexts waiting on `host` (they count against its budget). */
  warmOn(host: IsolateHost): number {
    return this.contexts.get(host)?.length ?? 0;
  }

  /** A shared isolate died or was replaced: its warm contexts went with it. */
  forgetHost(host: IsolateHost): void {
    const stock = this.contexts.get(host);
    this.contexts.delete(host);
    for (const w of stock ?? []) w.sandbox.release();
    this.refill();
  }

  stats(): WarmPoolStats {
    let contexts = 0;
    for (const stock of this.contexts.values()) contexts += stock.length;
    return {
      isolates: this.isolates.length,
      contexts,
      hits: { ...this.hits },
      misses: { ...this.misses },
      isolatesCreated: this.isolatesCreated,
      isolatesDisposed: new Map(this.disposedByReason),
    };
  }

  /**
   * Fills to the targets while the server is idle. `oneEvenIfBusy`: make one entry regardless,
   * for the owner to call as a run ends (between requests, not inside one).
   */
  refill(oneEvenIfBusy = false): void {
    if (this.filling || this.closed || this.full()) return;
    this.filling = true;
    setTimeout(() => {
      this.fill(oneEvenIfBusy).then(
        () => (this.filling = false),
        (err: unknown) => {
          this.filling = false;
          this.options.onError?.(err);
        },
      );
    }, REFILL_DELAY_MS).unref();
  }

  /** Stops refilling and disposes everything still in the pool. Idempotent. */
  destroy(): void {
    this.closed = true;
    for (const w of this.isolates.splice(0)) w.host.dispose('shutdown');
    for (const stock of this.contexts.values()) for (const w of stock) w.sandbox.release();
    this.contexts.clear();
  }

  /** Every target met (cheap: called as every run ends). */
  private full(): boolean {
    if (this.isolates.length < this.options.isolates) return false;
    if (this.options.contextsPerShared === 0) return true;
    return this.options.sharedHosts().every((h) => h.disposed || this.warmOn(h) >= this.options.contextsPerShared);
  }

  private count(mode: IsolationMode, hit: boolean): void {
    (hit ? this.hits : this.misses)[mode] += 1;
  }

  private readonly onPooledDeath = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    this.disposedByReason.set(reason, (this.disposedByReason.get(reason) ?? 0) + 1);
    const i = this.isolates.findIndex((w) => w.host === host);
    if (i >= 0) this.isolates.splice(i, 1);
  };

  /** Creates one entry at a time, the emptiest pool first, until every target is met. */
  private async fill(oneEvenIfBusy: boolean): Promise<void> {
    const { isolates, contextsPerShared } = this.options;
    for (let made = 0; !this.closed && ((made === 0 && oneEvenIfBusy) || this.options.idle()); made++) {
      let shared: IsolateHost | undefined;
      let sharedFill = 1;
      for (const h of this.options.sharedHosts()) {
        if (h.disposed || contextsPerShared === 0) continue;
        const n = this.warmOn(h);
        if (n >= contextsPerShared || !this.options.hasRoomFor(h, n)) continue;
        if (n / contextsPerShared < sharedFill) {
          shared = h;
          sharedFill = n / contextsPerShared;
        }
      }
      const isolateFill = isolates === 0 ? 1 : this.isolates.length / isolates;
      if (isolateFill >= 1 && !shared) return;
      if (isolateFill <= sharedFill) await this.addIsolate();
      else await this.addContext(shared as IsolateHost);
    }
  }

  private async addIsolate(): Promise<void> {
    const host = this.options.newIsolate(this.onPooledDeath);
    this.isolatesCreated += 1;
    const id = newInterpreterId();
    const registrationPrefix = newRegistrationPrefix();
    let sandbox: Sandbox;
    try {
      sandbox = await this.options.newSandbox(host, id, registrationPrefix);
    } catch (err) {
      host.dispose('failed');
      throw err;
    }
    if (this.closed || host.disposed) {
      host.dispose(this.closed ? 'shutdown' : 'failed');
      return;
    }
    this.isolates.push({ host, sandbox, id, registrationPrefix });
  }

  private async addContext(host: IsolateHost): Promise<void> {
    const id = newInterpreterId();
    const registrationPrefix = newRegistrationPrefix();
    let stock = this.contexts.get(host);
    if (!stock) {
      stock = [];
      this.contexts.set(host, stock);
    }
    const sandbox = await this.options.newSandbox(host, id, registrationPrefix);
    // While the context was made the host may have died, been forgotten and replaced, or filled
    // up with interpreters: a warm context must never take it past its budget.
    if (this.closed || host.disposed || this.contexts.get(host) !== stock || !this.options.hasRoomFor(host, stock.length)) {
      sandbox.release();
      return;
    }
    stock.push({ host, sandbox, id, registrationPrefix });
  }
}
