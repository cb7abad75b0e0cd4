import ivm from 'isolated-vm';
import { IllegalStateError } from './errors';
import type { IsolateKind } from './types';

/** How long a heap sample may wait for a busy isolate before the last sample is used instead. */
const HEAP_SAMPLE_WAIT_MS = 10;

/**
 * An idle isolate let go on purpose is torn down this much later: the teardown's work (on
 * isolated-vm's threads) then no longer competes for the CPU with the response of the run that
 * released it. On the 2-core development machine this took 0.4 ms off an isolate-mode `Execute`
 * seen by the server, 10 ms apart. The isolate counts as disposed from the start; the timer
 * keeps the process alive until it fires, so shutdown still disposes it before the loop ends.
 */
const IDLE_DISPOSE_DELAY_MS = 3;

/** Why an isolate went away. */
export type IsolateDisposeReason = 'released' | 'replaced' | 'memory_limit' | 'failed' | 'unresponsive' | 'shutdown';

/**
 * Owns one V8 isolate: a dedicated one (one interpreter) or a shared one (many interpreters,
 * one context each). It knows how busy it is (for placement) and tells its listener once when
 * the isolate dies, whatever killed it. Using it after its owner let it go (a new interpreter on
 * it, a new call into it, a new owner) is a bug and throws IllegalStateError.
 */
export class IsolateHost {
  private readonly residents = new Set<string>();
  inFlight = 0;
  private disposedReason: IsolateDisposeReason | undefined;
  private heapCache: { at: number; bytes: number } | undefined;
  private heapRefresh: Promise<number> | undefined;
  /** Calls into the isolate not yet settled: call id → the longest it may legitimately take. */
  private readonly outstanding = new Map<number, number>();
  private callSeq = 0;
  private lastProgressAt = performance.now();

  private constructor(
    readonly kind: IsolateKind,
    readonly memoryLimitMb: number,
    readonly isolate: ivm.Isolate,
    private onDeath: (host: IsolateHost, reason: IsolateDisposeReason) => void,
  ) {}

  /** Interpreters living on this isolate (ids); for a dedicated isolate at most one. */
  get interpreterIds(): ReadonlySet<string> {
    return this.residents;
  }

  /** A new interpreter lives here from now on. */
  admit(interpreterId: string): void {
    this.assertUsable(`placing interpreter ${interpreterId}`);
    this.residents.add(interpreterId);
  }

  /** An interpreter no longer lives here (gone, or its creation was abandoned). */
  vacate(interpreterId: string): void {
    this.residents.delete(interpreterId);
  }

  /** Hands the isolate to a new owner, who hears of its death from now on (a warm pool's take). */
  adopt(onDeath: (host: IsolateHost, reason: IsolateDisposeReason) => void): void {
    this.assertUsable('handing it to a new owner');
    this.onDeath = onDeath;
  }

  /** Throws when the isolate is known to be gone: whoever still uses it holds a stale host. */
  private assertUsable(what: string): void {
    if (this.disposedReason !== undefined) {
      throw new IllegalStateError(`${this.kind} isolate used after it was disposed (${this.disposedReason}): ${what}`);
    }
  }

  /**
   * The `ivm.Isolate` constructor is the one synchronous isolated-vm call the request path makes:
   * there is no async variant. It costs about 1.8 ms of the calling thread (measured here), which
   * is why the warm pool makes isolates between requests.
   */
  static create(
    kind: IsolateKind,
    memoryLimitMb: number,
    onDeath: (host: IsolateHost, reason: IsolateDisposeReason) => void,
    onCatastrophicError?: (message: string) => void,
  ): IsolateHost {
    const isolate = new ivm.Isolate({
      memoryLimit: memoryLimitMb,
      onCatastrophicError: onCatastrophicError ?? ((message: string) => {
        process.stderr.write(`isolated-vm catastrophic error: ${message}\n`);
        process.exit(70);
      }),
    });
    return new IsolateHost(kind, memoryLimitMb, isolate, onDeath);
  }

  /**
   * Wraps every call into the isolate (see Sandbox's CallTracker). A call settling is progress.
   */
  readonly track = <T>(call: Promise<T>, timeoutMs: number): Promise<T> => {
    // Its owner let it go (no interpreter is left on it): nothing may call into it any more. A
    // call racing an isolate that died on its own (memory) is no bug: isolated-vm rejects it.
    if (this.disposedReason === 'released' || this.disposedReason === 'replaced') {
      call.catch(() => undefined); // it fails on the disposed isolate; the misuse is what is reported
      this.assertUsable('a call into it');
    }
    const id = ++this.callSeq;
    if (this.outstanding.size === 0) this.lastProgressAt = performance.now();
    this.outstanding.set(id, timeoutMs);
    const settled = (): void => {
      this.outstanding.delete(id);
      this.lastProgressAt = performance.now();
    };
    call.then(settled, (err: unknown) => {
      settled();
      this.checkAlive(err);
    });
    return call;
  };

  /**
   * True when calls are outstanding but none has settled for longer than the longest of them may
   * take plus `graceMs`. isolated-vm runs one task at a time per isolate and bounds every task
   * that runs user code by its timeout, so this only happens when code runs where no timeout
   * guards it (isolated-vm reading a thrown object's getters while copying it out).
   */
  isStuck(now: number, graceMs: number): boolean {
    if (this.outstanding.size === 0 || this.disposed) return false;
    let longest = 0;
    for (const t of this.outstanding.values()) if (t > longest) longest = t;
    return now - this.lastProgressAt > longest + graceMs;
  }

  /** True when no call is outstanding, or one settled within the last `withinMs`. */
  isProgressing(now: number, withinMs: number): boolean {
    return this.outstanding.size === 0 || now - this.lastProgressAt <= withinMs;
  }

  /**
   * isolated-vm disposes an isolate by itself when it hits its memory limit, whichever call was
   * running (a script, but also creating a context or compiling). Any failed call therefore checks
   * whether the isolate is still there, so its death is noticed once, wherever it surfaced.
   */
  checkAlive(err?: unknown): void {
    if (this.disposedReason !== undefined || !this.isolate.isDisposed) return;
    const message = err instanceof Error ? err.message : '';
    this.noteDeath(message.includes('memory limit') || message === 'Isolate is disposed' ? 'memory_limit' : 'failed');
  }

  get disposed(): boolean {
    return this.disposedReason !== undefined || this.isolate.isDisposed;
  }

  get reason(): IsolateDisposeReason | undefined {
    return this.disposedReason;
  }

  /** CPU time the isolate has used, in milliseconds (0 once disposed). */
  cpuTimeMs(): number {
    if (this.disposed) return 0;
    try {
      return Number(this.isolate.cpuTime) / 1e6;
    } catch {
      return 0;
    }
  }

  private bootstrap: Promise<ivm.Script> | undefined;

  /**
   * The bootstrap compiled in this isolate (by `compile`, the server's BootstrapCompiler with its
   * code cache), kept for the isolate's life: a shared isolate runs it in each new context.
   */
  bootstrapScript(compile: (isolate: ivm.Isolate) => Promise<ivm.Script>): Promise<ivm.Script> {
    this.assertUsable('compiling the bootstrap');
    if (!this.bootstrap) {
      const compiling = compile(this.isolate);
      this.bootstrap = compiling;
      compiling.catch(() => {
        if (this.bootstrap === compiling) this.bootstrap = undefined;
      });
    }
    return this.bootstrap;
  }

  /** The last heap sample, without asking the isolate (undefined before the first sample). */
  get lastHeapBytes(): number | undefined {
    return this.heapCache?.bytes;
  }

  /**
   * Heap in use (V8 heap plus external memory counted against the limit). The statistics call is
   * a task on the isolate's queue, so it waits behind a running script: callers get the last
   * sample if a fresh one takes longer than a few milliseconds, and the refresh lands later.
   */
  async heapUsedBytes(): Promise<number> {
    if (this.disposed) return 0;
    const now = Date.now();
    if (this.heapCache && now - this.heapCache.at < 1000) return this.heapCache.bytes;
    this.heapRefresh ??= this.isolate
      .getHeapStatistics()
      .then(
        (stats) => {
          const bytes = stats.used_heap_size + stats.externally_allocated_size;
          this.heapCache = { at: Date.now(), bytes };
          return bytes;
        },
        () => 0,
      )
      .finally(() => {
        this.heapRefresh = undefined;
      });
    let timer: NodeJS.Timeout | undefined;
    const stale = new Promise<number>((resolve) => {
      timer = setTimeout(() => resolve(this.heapCache?.bytes ?? 0), HEAP_SAMPLE_WAIT_MS);
    });
    try {
      return await Promise.race([this.heapRefresh, stale]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Records that isolated-vm reported this isolate dead (memory limit, or disposed under a
   * running call) and tells the listener once.
   */
  noteDeath(reason: IsolateDisposeReason): void {
    if (this.disposedReason !== undefined) return;
    this.disposedReason = reason;
    if (!this.isolate.isDisposed) {
      if ((reason === 'released' || reason === 'replaced') && this.outstanding.size === 0) {
        setTimeout(() => this.teardown(), IDLE_DISPOSE_DELAY_MS);
      } else {
        this.teardown();
      }
    }
    this.onDeath(this, reason);
  }

  private teardown(): void {
    if (!this.isolate.isDisposed) {
      try {
        // Tearing a V8 isolate down takes ~0.3 ms, on whichever thread drops the isolate last: the
        // Node.js thread when the isolate is idle. A no-op task queued first keeps isolated-vm's
        // own thread holding it, so the teardown mostly happens there (median 0.03 ms here).
        this.isolate.getHeapStatistics().catch(() => undefined);
        this.isolate.dispose();
      } catch {
        // already going away
      }
    }
  }

  /** Disposes the isolate on purpose (last interpreter gone, shutdown). Idempotent. */
  dispose(reason: IsolateDisposeReason): void {
    this.noteDeath(reason);
  }
}
