import { IllegalStateError, ResourceExhaustedError } from './errors';
import type { WatchEvent, WatchEventBody, WatchFilter, WatchStream } from './types';

/** A watch's filter, its tenant settled. */
export type TenantFilter = WatchFilter & { tenant: string };

/** Where an event comes from: its tenant and the ids the filters compare. */
export interface EventSource {
  tenant: string;
  interpreterId: string;
  registrationId?: string;
  trigger?: string;
}

export interface EventHubOptions {
  /** Events one watcher may have waiting (ISOGEAR_WATCH_BUFFER); past it they are dropped and counted. */
  bufferSize: number;
  /** Watchers one tenant may have open (ISOGEAR_TENANT_MAX_WATCHERS). */
  maxWatchersPerTenant(tenant: string): number;
}

/**
 * One open watch: the events that passed its filter, in order, in a bounded buffer. A reader
 * that falls behind loses the events past the buffer, never slows the publisher: the next event
 * it reads is then a `dropped` count. `next()` resolves with the next event, or undefined once
 * the watch is closed and drained of what it held.
 */
export class Watcher implements WatchStream {
  private readonly buffer: WatchEvent[] = [];
  private dropped = 0;
  private waiting: ((e: WatchEvent | undefined) => void) | undefined;
  private closedWith: Error | undefined;
  private open = true;

  constructor(
    readonly filter: TenantFilter,
    private readonly bufferSize: number,
    private readonly onClose: (w: Watcher) => void,
    private readonly onDrop: () => void = () => undefined,
  ) {}

  /** Whether `source`'s event of `kind` is one this watcher wants. */
  wants(kind: WatchEventBody['kind'], source: EventSource): boolean {
    const f = this.filter;
    if (source.tenant !== f.tenant) return false;
    if (kind === 'log' && !f.includeLogs) return false;
    if (f.interpreterId && source.interpreterId !== f.interpreterId) return false;
    // an interpreter's own changes belong to no trigger or registration
    if (f.trigger && source.trigger !== f.trigger) return false;
    if (f.registrationId && source.registrationId !== f.registrationId) return false;
    return true;
  }

  /** Queues `event` (or counts it dropped when the buffer is full). */
  push(event: WatchEvent): void {
    if (!this.open) return;
    if (this.waiting && this.buffer.length === 0 && this.dropped === 0) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve(event);
      return;
    }
    if (this.buffer.length >= this.bufferSize) {
      this.dropped += 1;
      this.onDrop();
      return;
    }
    this.buffer.push(event);
  }

  /** The next event: a `dropped` count first if events were lost since the last one read. */
  next(): Promise<WatchEvent | undefined> {
    if (this.dropped > 0) {
      const count = this.dropped;
      this.dropped = 0;
      return Promise.resolve({ time: new Date(), body: { kind: 'dropped', count } });
    }
    const event = this.buffer.shift();
    if (event || !this.open) return Promise.resolve(event);
    if (this.waiting) throw new IllegalStateError('a watcher was read by two readers at once');
    return new Promise((resolve) => (this.waiting = resolve));
  }

  /** Events waiting to be read (dropped ones not counted). */
  get backlog(): number {
    return this.buffer.length;
  }

  get isOpen(): boolean {
    return this.open;
  }

  /** Why the hub closed it (shutdown), if it did; undefined when its reader closed it. */
  get closeReason(): Error | undefined {
    return this.closedWith;
  }

  /** Ends the watch: a pending `next()` resolves undefined, and it leaves the hub. Idempotent. */
  close(reason?: Error): void {
    if (!this.open) return;
    this.open = false;
    this.closedWith = reason;
    this.buffer.length = 0;
    this.dropped = 0;
    const resolve = this.waiting;
    this.waiting = undefined;
    resolve?.(undefined);
    this.onClose(this);
  }
}

/**
 * The server's live events (interpreters changing state, registrations made and released, runs
 * ending, console lines) and the watchers they go to. Publishing costs one check when nobody
 * watches; each watcher's buffer is bounded, so a slow or stuck reader never slows a run.
 */
export class EventHub {
  private readonly watchers = new Set<Watcher>();
  private readonly perTenant = new Map<string, number>();
  private logWatchers = 0;
  /** Events dropped over every watch so far (slow readers). */
  droppedTotal = 0;

  constructor(private readonly options: EventHubOptions) {}

  /** Whether anyone of `tenant` wants console lines (a run then sends them as they are written). */
  wantsLogs(tenant: string): boolean {
    if (this.logWatchers === 0) return false;
    for (const w of this.watchers) if (w.filter.includeLogs && w.filter.tenant === tenant) return true;
    return false;
  }

  get size(): number {
    return this.watchers.size;
  }

  /** A new watch for `filter`; RESOURCE_EXHAUSTED (`tenant_watchers`) past the tenant's bound. */
  watch(filter: TenantFilter): Watcher {
    const n = this.perTenant.get(filter.tenant) ?? 0;
    const max = this.options.maxWatchersPerTenant(filter.tenant);
    if (n >= max) {
      throw new ResourceExhaustedError('tenant_watchers', `tenant "${filter.tenant}" has ${n} watches open, its limit (ISOGEAR_TENANT_MAX_WATCHERS is ${max}); close one first`);
    }
    const watcher = new Watcher(filter, this.options.bufferSize, (w) => this.forget(w), () => (this.droppedTotal += 1));
    this.watchers.add(watcher);
    this.perTenant.set(filter.tenant, n + 1);
    if (filter.includeLogs) this.logWatchers += 1;
    return watcher;
  }

  /** Hands `body` (built only if someone wants it) to every watcher whose filter it passes. */
  publish(source: EventSource, kind: WatchEventBody['kind'], body: () => WatchEventBody): void {
    if (this.watchers.size === 0) return;
    let event: WatchEvent | undefined;
    for (const w of this.watchers) {
      if (!w.wants(kind, source)) continue;
      event ??= { time: new Date(), body: body() };
      w.push(event);
    }
  }

  /** Closes every watch with `reason` (shutdown). */
  closeAll(reason: Error): void {
    for (const w of [...this.watchers]) w.close(reason);
  }

  private forget(w: Watcher): void {
    if (!this.watchers.delete(w)) return;
    const n = (this.perTenant.get(w.filter.tenant) ?? 1) - 1;
    if (n > 0) this.perTenant.set(w.filter.tenant, n);
    else this.perTenant.delete(w.filter.tenant);
    if (w.filter.includeLogs) this.logWatchers -= 1;
  }
}
