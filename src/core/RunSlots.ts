import { CancelledError, IllegalStateError, ResourceExhaustedError } from './errors';

/** A held run slot, released exactly once. */
export interface Slot {
  /**
   * Frees the slot, or, after `holdUntil`, frees it once that promise settles: a run whose
   * caller gave up may still occupy its isolate until its own timeout stops it. A second
   * release is a bug and throws IllegalStateError.
   */
  release(): void;
  holdUntil(work: Promise<unknown>): void;
}

interface Waiter {
  grant: (slot: Slot) => void;
  fail: (err: Error) => void;
  /** Counted against `maxQueued` (a request's first wait) or not (a running Trigger's next handler). */
  counted: boolean;
}

/**
 * How a caller waits: `request`, a request's first wait (bounded queue, wait limit); `admitted`,
 * a caller that holds its place already (a Trigger's next handler: no bound, no limit);
 * `background`, a background execution's run (no bound, no limit, served only when no request
 * waits: a backlog of background work never stalls the calls clients wait on).
 */
export type WaitKind = 'request' | 'admitted' | 'background';

export interface RunSlotsOptions {
  /** Runs executing at once (Execute, Register loads and handler runs). */
  maxConcurrent: number;
  /** Requests waiting for a slot; beyond it RESOURCE_EXHAUSTED at once. */
  maxQueued: number;
  /** How long a request may wait for a slot before RESOURCE_EXHAUSTED. */
  maxWaitMs: number;
  /** What the refusals name (default: the server-wide settings). */
  refusals?: RunSlotsRefusals;
}

/** The limit names and messages a RunSlots' RESOURCE_EXHAUSTED errors carry. */
export interface RunSlotsRefusals {
  full: { limit: string; message: (o: RunSlotsOptions) => string };
  waited: { limit: string; message: (o: RunSlotsOptions) => string };
}

const SERVER_REFUSALS: RunSlotsRefusals = {
  full: {
    limit: 'max_concurrent_runs',
    message: (o) =>
      `${o.maxConcurrent} runs are executing and ${o.maxQueued} more are waiting (ISOGEAR_MAX_CONCURRENT_RUNS, ISOGEAR_MAX_QUEUED_RUNS); retry shortly`,
  },
  waited: {
    limit: 'run_queue_wait',
    message: (o) => `no run slot became free within ${o.maxWaitMs} ms (ISOGEAR_MAX_CONCURRENT_RUNS=${o.maxConcurrent}, ISOGEAR_MAX_QUEUE_WAIT_MS); retry later`,
  },
};

/**
 * Admission for runs: at most `maxConcurrent` run at once; requests beyond wait in a FIFO queue
 * of at most `maxQueued`, each for at most `maxWaitMs` or until its caller gives up. A Trigger
 * fanning out to many handlers takes slots one after another and so holds at most one queue
 * entry at a time: its later entries are not counted against `maxQueued` (the Trigger was
 * admitted already), which keeps the queue within `maxQueued + maxConcurrent`.
 */
export class RunSlots {
  private active = 0;
  private readonly queue: Waiter[] = [];
  /** Background runs: granted only when `queue` is empty. */
  private readonly low: Waiter[] = [];
  private countedWaiting = 0;

  constructor(private readonly options: RunSlotsOptions) {}

  /** Changes how many may run at once (a tenant's quota after the keys file was reloaded). */
  setMaxConcurrent(n: number): void {
    if (n === this.options.maxConcurrent) return;
    this.options.maxConcurrent = n;
    this.next();
  }

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.queue.length + this.low.length;
  }

  /**
   * Waits for a slot (see WaitKind). Cancellation ends any wait; the rejection's message is the
   * signal's reason when that has one (a CancelExecution), else the caller's cancel.
   */
  acquire(signal?: AbortSignal, kind: WaitKind = 'request'): Promise<Slot> {
    const cancelled = (): CancelledError => new CancelledError(reasonText(signal?.reason) ?? 'cancelled while waiting for a run slot', { cause: signal?.reason });
    if (signal?.aborted) return Promise.reject(cancelled());
    if (this.active < this.options.maxConcurrent && this.queue.length === 0 && (kind !== 'background' || this.low.length === 0)) return Promise.resolve(this.take());
    const admitted = kind !== 'request';
    const { maxConcurrent, maxQueued, maxWaitMs } = this.options;
    const refusals = this.options.refusals ?? SERVER_REFUSALS;
    if (!admitted && this.countedWaiting >= maxQueued) {
      return Promise.reject(new ResourceExhaustedError(refusals.full.limit, refusals.full.message(this.options), retryHintMs(this.queue.length, maxConcurrent)));
    }
    return new Promise<Slot>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let settled = false;
      const done = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const line = kind === 'background' ? this.low : this.queue;
        const i = line.indexOf(waiter);
        if (i >= 0) line.splice(i, 1);
        if (waiter.counted) this.countedWaiting -= 1;
        return true;
      };
      const waiter: Waiter = {
        counted: !admitted,
        grant: (slot) => {
          if (done()) resolve(slot);
          else slot.release();
        },
        fail: (err) => {
          if (done()) reject(err);
        },
      };
      const onAbort = (): void => waiter.fail(cancelled());
      signal?.addEventListener('abort', onAbort, { once: true });
      if (!admitted) {
        this.countedWaiting += 1;
        timer = setTimeout(
          () =>
            waiter.fail(new ResourceExhaustedError(refusals.waited.limit, refusals.waited.message(this.options), retryHintMs(this.queue.length, maxConcurrent))),
          maxWaitMs,
        );
      }
      (kind === 'background' ? this.low : this.queue).push(waiter);
    });
  }

  private take(): Slot {
    this.active += 1;
    let released = false;
    let work: Promise<unknown> | undefined;
    const free = (): void => {
      this.active -= 1;
      this.next();
    };
    return {
      release: () => {
        if (released) throw new IllegalStateError('a run slot was released twice');
        released = true;
        if (work) work.then(free, free);
        else free();
      },
      holdUntil: (p) => {
        work = p;
      },
    };
  }

  private next(): void {
    while (this.active < this.options.maxConcurrent && this.queue.length + this.low.length > 0) {
      const waiter = this.queue.length > 0 ? this.queue[0] : this.low[0];
      waiter.grant(this.take());
    }
  }
}

/** The message a cancel's reason carries (a CancelReason, an Error), if any. */
function reasonText(reason: unknown): string | undefined {
  if (reason && typeof reason === 'object' && 'message' in reason && typeof reason.message === 'string') return reason.message;
  return undefined;
}

/** A client's back-off: longer the more requests are ahead of it per slot. */
function retryHintMs(queued: number, maxConcurrent: number): number {
  return Math.min(5000, 100 * Math.ceil((queued + 1) / Math.max(1, maxConcurrent)));
}
