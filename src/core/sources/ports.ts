/**
 * What schedules and stream consumers ask of Redis. The core owns these contracts; src/store
 * implements them with Redis (store → core, never the other way round), and tests may give
 * their own.
 */

/** How the claim of a schedule's tick came out on a store several servers share. */
export type TickClaim = 'won' | 'taken' | 'busy';

/**
 * Claims of schedule ticks, so each tick runs on exactly one of the servers that share a store.
 * A tick is claimed once (per registration and tick time, with an expiry); the server that won
 * it then marks the registration running until the run ends (or `runTtlMs` passes, should that
 * server die mid-run), so a tick that comes while a run is still going, here or elsewhere, is
 * skipped by the one server that claimed it.
 */
export interface TickClaims {
  /** 'won': run it (the registration is marked running); 'taken': another server has the tick; 'busy': this server has it, but the previous run is still going. */
  claim(registrationId: string, tickMs: number, runTtlMs: number): Promise<TickClaim>;
  /** The run of a won tick ended: the registration is no longer marked running. */
  finish(registrationId: string, tickMs: number): Promise<void>;
}

/**
 * Redis answered a consumer's command with an error (the key holds another type, the group is
 * gone): the connection is fine, the command is not. Other errors mean Redis did not answer.
 */
export class StreamRefusedError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StreamRefusedError';
  }
}

/** One stream entry as a consumer gets it. */
export interface StreamEntry {
  id: string;
  /** Its fields, as a plain object (a repeated field: the last value). */
  fields: Record<string, string>;
  /** How many times it was delivered to the group, this delivery included. */
  deliveries: number;
}

/** One consumer's blocking connection: reads new entries for it. */
export interface StreamReader {
  /** New entries (`XREADGROUP … >`), waiting at most `blockMs` for one. */
  readNew(count: number, blockMs: number): Promise<StreamEntry[]>;
  /** Ends a read that waits (it answers no entries), so a pause takes effect at once. */
  interrupt(): void;
  close(): void;
}

/** Where a consumer group stands. */
export interface GroupInfo {
  /** Entries delivered to the group and not acknowledged. */
  pending: number;
  /** Entries in the stream the group has not read (undefined when Redis cannot tell). */
  lag?: number;
}

/**
 * Redis streams read through consumer groups. A consumer is `consumer` in group `group` of
 * `stream`; entries stay pending until acknowledged.
 */
export interface StreamSource {
  /** For logs: which Redis. */
  readonly description: string;
  /** Creates the group, at the stream's end (new entries only), when it does not exist; the stream too. */
  ensureGroup(stream: string, group: string): Promise<void>;
  /** A reader of new entries for `consumer`, on a connection of its own (it blocks). */
  reader(stream: string, group: string, consumer: string): StreamReader;
  /** Entries of the group pending longer than `minIdleMs` (on any consumer), claimed for `consumer` (`XAUTOCLAIM`). */
  claimIdle(stream: string, group: string, consumer: string, minIdleMs: number, count: number): Promise<StreamEntry[]>;
  /** Claims pending entries for `consumer` again at once (`XCLAIM`), for a retry; entries acknowledged meanwhile are left out. */
  claim(stream: string, group: string, consumer: string, ids: string[]): Promise<StreamEntry[]>;
  ack(stream: string, group: string, ids: string[]): Promise<void>;
  /**
   * Deletes the group's consumers that hold no pending entry and have not read for `idleMs`
   * (servers that went away; a live one reads at least every few seconds). Returns how many went.
   */
  pruneConsumers(stream: string, group: string, idleMs: number): Promise<number>;
  groupInfo(stream: string, group: string): Promise<GroupInfo>;
  close(): Promise<void>;
}

/** Settings of consumers (ISOGEAR_STREAM_*). */
export interface ConsumerSettings {
  /** Deliveries of an entry before it is given up as a dead letter (ISOGEAR_STREAM_MAX_DELIVERIES). */
  maxDeliveries: number;
  /** How long an entry stays pending on a consumer before another may claim it (ISOGEAR_STREAM_CLAIM_IDLE_MS). */
  claimIdleMs: number;
  /** Entries read at once. */
  batch: number;
  /** How long a read waits for new entries. */
  blockMs: number;
  /** The first retry of a failed entry waits this long, each next one twice as long (at most claimIdleMs). */
  retryMs: number;
}

/** What consumers report, for metrics. */
export interface ConsumerEvents {
  /** An entry's handler succeeded and it was acknowledged, failed and waits for a retry, or was given up. */
  entry?(result: 'acknowledged' | 'retried' | 'dead_letter'): void;
  /** A call to the events Redis failed (Redis did not answer; it is retried with backoff). */
  redisError?(): void;
}
