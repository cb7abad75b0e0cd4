import ivm from 'isolated-vm';
import type { IsolateKind } from './types';

/** Why an isolate went away. */
export type IsolateDisposeReason = 'released' | 'memory_limit' | 'failed' | 'shutdown';

/**
 * Owns one V8 isolate: a dedicated one (one interpreter) or a shared one (many interpreters,
 * one context each). It knows how busy it is (for placement) and tells its listener once when
 * the isolate dies, whatever killed it.
 */
export class IsolateHost {
  /** Interpreters living on this isolate (ids); for a dedicated isolate at most one. */
  readonly interpreterIds = new Set<string>();
  inFlight = 0;
  private disposedReason: IsolateDisposeReason | undefined;
  private heapCache: { at: number; bytes: number } | undefined;

  private constructor(
    readonly kind: IsolateKind,
    readonly memoryLimitMb: number,
    readonly isolate: ivm.Isolate,
    private readonly onDeath: (host: IsolateHost, reason: IsolateDisposeReason) => void,
  ) {}

  /**
   * The `ivm.Isolate` constructor is the one synchronous isolated-vm call the request path makes:
   * there is no async variant. It costs well under a millisecond.
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

  async heapUsedBytes(): Promise<number> {
    if (this.disposed) return 0;
    const now = Date.now();
    if (this.heapCache && now - this.heapCache.at < 1000) return this.heapCache.bytes;
    try {
      const stats = await this.isolate.getHeapStatistics();
      const bytes = stats.used_heap_size + stats.externally_allocated_size;
      this.heapCache = { at: now, bytes };
      return bytes;
    } catch {
      return 0;
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
      try {
        this.isolate.dispose();
      } catch {
        // already going away
      }
    }
    this.onDeath(this, reason);
  }

  /** Disposes the isolate on purpose (last interpreter gone, shutdown). Idempotent. */
  dispose(reason: IsolateDisposeReason): void {
    this.noteDeath(reason);
  }
}
