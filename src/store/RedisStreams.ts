import { Redis, ReplyError, type RedisOptions } from 'ioredis';
import { StreamRefusedError, type GroupInfo, type StreamEntry, type StreamReader, type StreamSource } from '../core/sources/ports';
import { redactRedisUrl } from './RedisStore';

/** A command that does not answer in this long fails (a blocking read: this long past its block). */
const COMMAND_TIMEOUT_MS = 5000;

function options(): RedisOptions {
  return {
    // Never stops the server: it connects in the background and redials forever; consumers
    // see their calls fail meanwhile and back off.
    lazyConnect: false,
    connectTimeout: COMMAND_TIMEOUT_MS,
    // a command waits while the connection dials, and fails when a dial fails (no retries)
    enableOfflineQueue: true,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    disconnectTimeout: 200,
    retryStrategy: (attempt) => Math.min(100 * attempt, 2000),
  };
}

type Reply = [string, string[] | null][];

/** Redis's own error replies become StreamRefusedError: Redis answered, it refused the command. */
async function sorted<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof ReplyError) throw new StreamRefusedError((err as Error).message, { cause: err });
    throw err;
  }
}

/** Entries as XREADGROUP, XCLAIM and XAUTOCLAIM give them; an entry deleted from the stream has no fields and is left out. */
function toEntries(raw: Reply | null | undefined, deliveries: (id: string) => number): StreamEntry[] {
  const out: StreamEntry[] = [];
  for (const [id, flat] of raw ?? []) {
    if (!flat) continue;
    const fields: Record<string, string> = Object.create(null) as Record<string, string>;
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]] = flat[i + 1];
    out.push({ id, fields: { ...fields }, deliveries: deliveries(id) });
  }
  return out;
}

/**
 * Redis streams read through consumer groups, from the events Redis (ISOGEAR_EVENTS_REDIS_URL,
 * or the store's). One connection for commands and one per consumer for its blocking reads.
 */
export class RedisStreams implements StreamSource {
  readonly description: string;
  private readonly redis: Redis;
  private readonly readers = new Set<Redis>();
  private closed = false;

  constructor(
    private readonly url: string,
    /** Told once per connection problem (the consumers log their own). */
    private readonly onError?: (err: Error) => void,
  ) {
    this.description = `redis ${redactRedisUrl(url)}`;
    this.redis = this.client(COMMAND_TIMEOUT_MS);
  }

  private client(commandTimeout: number): Redis {
    const c = new Redis(this.url, { ...options(), commandTimeout });
    // ioredis reports every failed dial as an 'error' event; without a listener it would print them
    c.on('error', (err: Error) => this.onError?.(err));
    return c;
  }

  async ensureGroup(stream: string, group: string): Promise<void> {
    try {
      await sorted(this.redis.xgroup('CREATE', stream, group, '$', 'MKSTREAM'));
    } catch (err) {
      if (!(err instanceof Error && err.message.startsWith('BUSYGROUP'))) throw err;
    }
  }

  reader(stream: string, group: string, consumer: string): StreamReader {
    let conn: Redis | undefined;
    /** The reading connection's id in Redis, for CLIENT UNBLOCK. */
    let clientId: number | undefined;
    return {
      readNew: async (count, blockMs) => {
        if (this.closed) throw new Error('the events Redis connection is closed');
        if (!conn) {
          conn = this.client(blockMs + COMMAND_TIMEOUT_MS);
          this.readers.add(conn);
          clientId = Number(await conn.call('CLIENT', 'ID'));
        }
        const raw = (await sorted(conn.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'BLOCK', blockMs, 'STREAMS', stream, '>'))) as [string, Reply][] | [string, Reply] | null;
        if (!raw) return [];
        // [[stream, entries]] as Redis sends it; ioredis 6 hands one stream's reply over as [stream, entries]
        const pair = typeof raw[0] === 'string' ? (raw as [string, Reply]) : (raw as [string, Reply][])[0];
        return toEntries(pair?.[1], () => 1);
      },
      interrupt: () => {
        // (an unblocked XREADGROUP answers as if its wait ran out: nothing is delivered)
        if (clientId !== undefined) this.redis.call('CLIENT', 'UNBLOCK', clientId).catch(() => undefined);
      },
      close: () => {
        clientId = undefined;
        if (!conn) return;
        this.readers.delete(conn);
        conn.disconnect();
        conn = undefined;
      },
    };
  }

  async claimIdle(stream: string, group: string, consumer: string, minIdleMs: number, count: number): Promise<StreamEntry[]> {
    const reply = (await sorted(this.redis.call('XAUTOCLAIM', stream, group, consumer, minIdleMs, '0-0', 'COUNT', count))) as [string, Reply, string[]?];
    return this.withDeliveries(stream, group, consumer, reply[1]);
  }

  async claim(stream: string, group: string, consumer: string, ids: string[]): Promise<StreamEntry[]> {
    if (ids.length === 0) return [];
    const reply = (await sorted(this.redis.call('XCLAIM', stream, group, consumer, 0, ...ids))) as Reply;
    return this.withDeliveries(stream, group, consumer, reply);
  }

  /** Claimed entries with their delivery counts, read from the group's pending list. */
  private async withDeliveries(stream: string, group: string, consumer: string, raw: Reply): Promise<StreamEntry[]> {
    const live = raw.filter(([, f]) => f !== null);
    if (live.length === 0) return [];
    // one XPENDING per entry, in one round trip: a range over the claimed ids could take in other
    // entries pending on this consumer and, past its count, miss a claimed one
    const pipe = this.redis.pipeline();
    for (const [id] of live) pipe.call('XPENDING', stream, group, id, id, 1, consumer);
    const replies = (await sorted(pipe.exec())) ?? [];
    const counts = new Map<string, number>();
    for (const [err, reply] of replies) {
      if (err) throw err instanceof ReplyError ? new StreamRefusedError(err.message, { cause: err }) : err;
      const row = (reply as [string, string, number, number][])[0];
      if (row) counts.set(row[0], Number(row[3]));
    }
    return toEntries(live, (id) => counts.get(id) ?? 1);
  }

  async ack(stream: string, group: string, ids: string[]): Promise<void> {
    if (ids.length > 0) await sorted(this.redis.xack(stream, group, ...ids));
  }

  async pruneConsumers(stream: string, group: string, idleMs: number): Promise<number> {
    const consumers = (await sorted(this.redis.call('XINFO', 'CONSUMERS', stream, group))) as (string | number)[][];
    let pruned = 0;
    for (const c of consumers) {
      const o = new Map<string, string | number>();
      for (let i = 0; i + 1 < c.length; i += 2) o.set(String(c[i]), c[i + 1]);
      if (Number(o.get('pending')) !== 0 || Number(o.get('idle')) < idleMs) continue;
      // (DELCONSUMER would drop a consumer's pending entries: only those with none go)
      await sorted(this.redis.call('XGROUP', 'DELCONSUMER', stream, group, String(o.get('name'))));
      pruned += 1;
    }
    return pruned;
  }

  async groupInfo(stream: string, group: string): Promise<GroupInfo> {
    const groups = (await sorted(this.redis.call('XINFO', 'GROUPS', stream))) as (string | number | null)[][];
    for (const g of groups) {
      const o = new Map<string, string | number | null>();
      for (let i = 0; i + 1 < g.length; i += 2) o.set(String(g[i]), g[i + 1]);
      if (o.get('name') !== group) continue;
      const lag = o.get('lag');
      return { pending: Number(o.get('pending') ?? 0), lag: lag === null || lag === undefined ? undefined : Number(lag) };
    }
    return { pending: 0 };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const r of this.readers) r.disconnect();
    this.readers.clear();
    this.redis.disconnect();
  }
}
