import type { Registration } from '../Registration';
import type { CoreLogger } from '../types';
import { StreamRefusedError, type ConsumerEvents, type ConsumerSettings, type StreamEntry, type StreamReader, type StreamSource } from './ports';
import type { SourceRunner } from './SourceRunner';

export interface ConsumersDeps {
  runner: SourceRunner;
  source?: StreamSource;
  settings: ConsumerSettings;
  /** This server's name in every group: with a registration's id, its consumer's name. */
  serverName: string;
  logger?: CoreLogger;
  events?: ConsumerEvents;
  track: (run: Promise<unknown>) => void;
}

/** After a failed call to Redis, the next try waits this long, doubling up to the cap. */
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 30_000;
/** How often a consumer refreshes its group's pending count and lag. */
const INFO_EVERY_MS = 2000;
/** How often a consumer deletes the group's consumers of servers gone, and how long unread they must be. */
const PRUNE_EVERY_MS = 10 * 60 * 1000;
const PRUNE_IDLE_MIN_MS = 10 * 60 * 1000;

/**
 * One consumer: a loop that reads a stream through its group and runs the handler on each entry
 * in order, one at a time. An entry is acknowledged only after its handler succeeded; a failed
 * one stays pending and is claimed again for a retry (after a backoff) until it was delivered
 * `maxDeliveries` times, then acknowledged and counted as a dead letter. Entries left pending by
 * a consumer that went away (another replica died) are claimed once idle for `claimIdleMs`.
 */
class Consumer {
  private stopped = false;
  private reader: StreamReader | undefined;
  /** Failed entries waiting for their retry: id → when. */
  private readonly retries = new Map<string, number>();
  private wake: (() => void) | undefined;
  private groupReady = false;
  private lastClaimMs = 0;
  private lastInfoMs = 0;
  /** (the first prune comes a while after start: a replica that just restarted is not taken for gone) */
  private lastPruneMs = Date.now();
  /** Entries read before a pause came, run first once it is resumed (they are pending on this consumer). */
  private held: StreamEntry[] = [];
  /** What failed last ('' while rounds work; 'redis' while Redis does not answer): each new problem is logged once. */
  private failing = '';
  readonly done: Promise<void>;

  constructor(
    readonly reg: Registration,
    private readonly source: StreamSource,
    private readonly deps: ConsumersDeps,
  ) {
    this.done = this.loop();
  }

  private get stream(): string {
    return this.reg.spec.stream ?? '';
  }

  private get group(): string {
    return this.reg.spec.group ?? '';
  }

  private get name(): string {
    return `${this.deps.serverName}/${this.reg.id}`;
  }

  /** Its last call to the events Redis went unanswered (it is backing off). */
  get redisDown(): boolean {
    return this.failing === 'redis';
  }

  stop(): void {
    this.stopped = true;
    this.reader?.close();
    this.reader = undefined;
    this.wake?.();
  }

  /** A pause or resume: a read that waits ends, and the loop looks again. */
  poke(): void {
    if (this.reg.paused) this.reader?.interrupt();
    this.wake?.();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).then(() => {
      this.wake = undefined;
    });
  }

  private async loop(): Promise<void> {
    let backoff = BACKOFF_MIN_MS;
    while (!this.stopped) {
      if (this.reg.paused) {
        // a paused consumer reads nothing: its entries wait in the stream
        this.reader?.close();
        this.reader = undefined;
        await this.sleep(60_000);
        continue;
      }
      try {
        await this.round();
        if (this.failing) {
          this.deps.logger?.info({ registrationId: this.reg.id, stream: this.stream }, 'stream consumer: reading again');
          this.failing = '';
        }
        backoff = BACKOFF_MIN_MS;
      } catch (err) {
        if (this.stopped) break;
        this.reader?.close();
        this.reader = undefined;
        // the group may have gone (the stream was deleted): it is made again next round
        this.groupReady = false;
        const refused = err instanceof StreamRefusedError;
        const now = refused ? `refused: ${err.message}` : 'redis';
        if (this.failing !== now) {
          this.deps.logger?.warn(
            { err, registrationId: this.reg.id, stream: this.stream, group: this.group, source: this.source.description },
            refused ? 'stream consumer: Redis refused a command on the stream; retrying with backoff' : 'stream consumer: the events Redis failed; retrying with backoff',
          );
        }
        if (!refused) this.deps.events?.redisError?.();
        this.failing = now;
        await this.sleep(backoff);
        backoff = Math.min(BACKOFF_MAX_MS, backoff * 2);
      }
    }
    this.reader?.close();
  }

  /** One round: the group exists, due retries and idle entries are claimed and run, then new entries are read. */
  private async round(): Promise<void> {
    const { source } = this;
    const { settings } = this.deps;
    if (!this.groupReady) {
      await source.ensureGroup(this.stream, this.group);
      this.groupReady = true;
    }
    if (this.held.length > 0) {
      const held = this.held;
      this.held = [];
      await this.handle(held);
      if (this.stopped || this.reg.paused) return;
    }
    const now = Date.now();
    const due = [...this.retries].filter(([, at]) => at <= now).map(([id]) => id);
    if (due.length > 0) {
      for (const id of due) this.retries.delete(id);
      await this.handle(await source.claim(this.stream, this.group, this.name, due));
    }
    if (this.stopped || this.reg.paused) return;
    if (now - this.lastClaimMs >= Math.min(settings.claimIdleMs, 5000)) {
      this.lastClaimMs = now;
      const idle = await source.claimIdle(this.stream, this.group, this.name, settings.claimIdleMs, settings.batch);
      for (const e of idle) this.retries.delete(e.id);
      await this.handle(idle);
    }
    if (this.stopped || this.reg.paused) return;
    if (now - this.lastInfoMs >= INFO_EVERY_MS) {
      this.lastInfoMs = now;
      const info = await source.groupInfo(this.stream, this.group);
      this.reg.sourceStats.pendingEntries = info.pending;
      this.reg.sourceStats.lag = info.lag;
    }
    if (now - this.lastPruneMs >= PRUNE_EVERY_MS) {
      this.lastPruneMs = now;
      const pruned = await source.pruneConsumers(this.stream, this.group, Math.max(PRUNE_IDLE_MIN_MS, 10 * settings.claimIdleMs));
      if (pruned > 0) this.deps.logger?.info({ stream: this.stream, group: this.group, pruned }, 'stream consumer: deleted consumers of servers gone (no pending entries)');
    }
    if (this.stopped || this.reg.paused) return;
    const nextRetry = Math.min(...this.retries.values());
    const block = Math.max(1, Math.min(settings.blockMs, Number.isFinite(nextRetry) ? nextRetry - Date.now() : settings.blockMs));
    this.reader ??= source.reader(this.stream, this.group, this.name);
    await this.handle(await this.reader.readNew(settings.batch, block));
  }

  /** Runs the handler on each entry in order; stops early (the rest stay pending) when stopped or paused. */
  private async handle(entries: StreamEntry[]): Promise<void> {
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i];
      if (this.stopped) return;
      if (this.reg.paused) {
        this.held = entries.slice(i);
        return;
      }
      if (entry.deliveries > this.deps.settings.maxDeliveries) {
        // (claimed from a consumer that went away during its last delivery)
        await this.deadLetter(entry, 'failed', undefined);
        continue;
      }
      const run = this.deps.runner.run({
        reg: this.reg,
        kind: 'stream',
        payloadJson: JSON.stringify(entry.fields),
        event: { stream: this.stream, entryId: entry.id },
        attributes: { 'isogear.stream': this.stream, 'isogear.stream.entry_id': entry.id, 'isogear.stream.deliveries': String(entry.deliveries) },
        carrier: entry.fields,
      });
      this.deps.track(run);
      const { outcome, error } = await run;
      this.reg.sourceStats.lastEntryId = entry.id;
      if (outcome === 'succeeded') {
        await this.source.ack(this.stream, this.group, [entry.id]);
        this.deps.events?.entry?.('acknowledged');
      } else if (entry.deliveries >= this.deps.settings.maxDeliveries) {
        await this.deadLetter(entry, outcome, error);
      } else {
        const wait = Math.min(this.deps.settings.claimIdleMs, this.deps.settings.retryMs * 2 ** (entry.deliveries - 1));
        this.retries.set(entry.id, Date.now() + wait);
        this.deps.events?.entry?.('retried');
      }
    }
  }

  /** Gives an entry up: acknowledged without success, logged and counted. */
  private async deadLetter(entry: StreamEntry, outcome: string, error: { name: string; message: string } | undefined): Promise<void> {
    await this.source.ack(this.stream, this.group, [entry.id]);
    this.reg.sourceStats.deadLetters = (this.reg.sourceStats.deadLetters ?? 0) + 1;
    this.deps.events?.entry?.('dead_letter');
    this.deps.logger?.warn(
      { registrationId: this.reg.id, stream: this.stream, group: this.group, entryId: entry.id, deliveries: entry.deliveries, outcome, error: error ? `${error.name}: ${error.message}` : undefined },
      'stream consumer: dead letter: the entry failed every delivery and was acknowledged without success',
    );
  }
}

/**
 * Runs consumers (gears.consume): one per live consumer registration on this server, each a
 * consumer of its own in the registration's group, so the replicas share a stream's entries.
 */
export class StreamConsumers {
  private readonly consumers = new Map<string, Consumer>();
  private stopped = false;

  constructor(private readonly deps: ConsumersDeps) {}

  get size(): number {
    return this.consumers.size;
  }

  /** The registrations whose consumers run here. */
  *registrations(): IterableIterator<Registration> {
    for (const c of this.consumers.values()) yield c.reg;
  }

  /** Consumers whose last call to the events Redis went unanswered. */
  get redisDown(): number {
    let n = 0;
    for (const c of this.consumers.values()) if (c.redisDown) n += 1;
    return n;
  }

  attach(reg: Registration): void {
    const source = this.deps.source;
    if (this.stopped || !source || this.consumers.has(reg.id)) return;
    this.consumers.set(reg.id, new Consumer(reg, source, this.deps));
  }

  detach(reg: Registration): void {
    const c = this.consumers.get(reg.id);
    if (!c) return;
    this.consumers.delete(reg.id);
    c.stop();
  }

  pausedChanged(reg: Registration): void {
    this.consumers.get(reg.id)?.poke();
  }

  /** Consumers stop reading (shutdown begins); runs going on finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    const all = [...this.consumers.values()];
    this.consumers.clear();
    for (const c of all) c.stop();
    await Promise.allSettled(all.map((c) => c.done));
  }
}
