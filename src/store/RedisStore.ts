import { Redis, type RedisOptions } from 'ioredis';
import { IllegalStateError } from '../core/errors';
import type { TickClaims } from '../core/sources/ports';
import { RedisTickClaims } from './RedisTickClaims';
import { SCRIPTS, type ScriptName } from './redisScripts';
import type { IsolationMode } from '../core/types';
import {
  DEFAULT_MAX_VERSIONS,
  NameTakenError,
  StoreError,
  versionSource,
  type InterpreterRecipe,
  type RecipeStep,
  type RecipeStore,
  type StoredVersion,
} from '../core/durability/RecipeStore';

export interface RedisStoreLogger {
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

export interface RedisStoreOptions {
  /** Put before every key, so several deployments can share one Redis. Default `isogear:`. */
  keyPrefix?: string;
  logger?: RedisStoreLogger;
  /** How many versions a named interpreter keeps, the current one included. Default DEFAULT_MAX_VERSIONS. */
  maxVersions?: number;
}

/** How long open waits for the server to answer (retrying) before it gives up. */
const OPEN_TIMEOUT_MS = 3000;
/** The longest any command may take, queued while reconnecting included. */
const COMMAND_TIMEOUT_MS = 5000;
/** One XREAD of the follower blocks at most this long, so a closed store stops within it. */
const FOLLOW_BLOCK_MS = 1000;
/** Pause before the follower tries again after a failed read (the server is away). */
const FOLLOW_RETRY_MS = 250;
function connectionOptions(): RedisOptions {
  return {
    lazyConnect: true,
    connectTimeout: OPEN_TIMEOUT_MS,
    // A command issued while the connection is down fails at once instead of waiting in a
    // queue, and one in flight when it drops is rejected, never resent after the reconnect (a
    // resent append would store its step twice). commandTimeout bounds a server that hangs.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    commandTimeout: COMMAND_TIMEOUT_MS,
    // disconnect() waits this long for a socket to end before destroying it (default 2 s, a
    // timer that outlives close when the socket was already gone).
    disconnectTimeout: 200,
    // A connection that stops answering (a dead peer without a reset) is dropped and redialled.
    socketTimeout: COMMAND_TIMEOUT_MS,
    retryStrategy: (attempt) => Math.min(100 * attempt, 2000),
  };
}

/** The URL without its password, for logs and messages. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparsable url)';
  }
}

/** Connects a lazy client and waits for it to be ready, retrying until the deadline. */
function connect(client: Redis, where: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let lastError: Error | undefined;
    const onError = (err: Error): void => {
      lastError = err;
    };
    const onReady = (): void => {
      cleanup();
      resolve();
    };
    const timer = setTimeout(() => {
      cleanup();
      const why = lastError ? `: ${lastError.message}` : '';
      reject(new StoreError(`redis ${where} did not answer within ${OPEN_TIMEOUT_MS} ms${why}`, { cause: lastError }));
    }, OPEN_TIMEOUT_MS);
    const cleanup = (): void => {
      clearTimeout(timer);
      client.off('ready', onReady);
      client.off('error', onError);
    };
    client.on('ready', onReady);
    client.on('error', onError);
    // A refused first attempt rejects here, but the client keeps retrying; the timer decides.
    client.connect().catch(() => undefined);
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

type Call = (...args: (string | number)[]) => Promise<unknown>;

/**
 * The shared store: recipes in one Redis, for several servers (replicas) at once. Every change is
 * one Lua script, so it is atomic against the other replicas, and the same script appends the
 * interpreter's id to a changes stream that `follow` reads.
 *
 * Durability: a change resolves once Redis applied it. Whether it then survives a Redis crash is
 * the operator's choice of Redis persistence (appendonly yes with appendfsync always or everysec);
 * without it, a restarted Redis comes back empty. A change that rejects (timeout, connection lost)
 * may still have been applied: the followers' reports are what tell.
 */
export class RedisStore implements RecipeStore {
  readonly shared = true;
  readonly description: string;
  private closed = false;
  private reader: Redis | undefined;
  private following: Promise<void> | undefined;

  private constructor(
    private readonly redis: Redis,
    private readonly where: string,
    private readonly prefix: string,
    private readonly logger: RedisStoreLogger | undefined,
    private readonly maxVersions: number,
  ) {
    this.description = `redis ${where} (keys ${prefix}*)`;
    for (const [name, lua] of Object.entries(SCRIPTS)) redis.defineCommand(name, { numberOfKeys: 0, lua });
    this.watch(redis, 'commands');
  }

  /** Connects to `url` (redis:// or rediss://); rejects with StoreError when it does not answer. */
  static async open(url: string, options: RedisStoreOptions = {}): Promise<RedisStore> {
    const where = redactRedisUrl(url);
    let redis: Redis;
    try {
      redis = new Redis(url, connectionOptions());
    } catch (err) {
      throw new StoreError(`redis ${where}: ${(err as Error).message}`, { cause: err });
    }
    const store = new RedisStore(redis, where, options.keyPrefix ?? 'isogear:', options.logger, options.maxVersions ?? DEFAULT_MAX_VERSIONS);
    try {
      await connect(redis, where);
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    return store;
  }

  async loadAll(): Promise<InterpreterRecipe[]> {
    return this.run('loadAll', async () => {
      const ids = await this.redis.zrange(this.key('index'), '0', '-1');
      if (ids.length === 0) return [];
      const replies = await this.readRecipes(ids);
      // A recipe removed between the ZRANGE and the MULTI reads back empty.
      return ids.map((id, i) => toRecipe(id, replies.slice(4 * i, 4 * i + 4))).filter((r): r is InterpreterRecipe => r !== undefined);
    });
  }

  async load(interpreterId: string): Promise<InterpreterRecipe | undefined> {
    return this.run('load', async () => toRecipe(interpreterId, await this.readRecipes([interpreterId])));
  }

  async create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string; version?: number }> {
    for (const s of [recipe.tenant, recipe.name]) {
      if (s.includes('\n')) throw new IllegalStateError(`${this.description}: a tenant or name holds a newline: ${JSON.stringify(s)}`);
    }
    // What ListVersions shows of its source, fixed once there is a first step (steps only grow);
    // created without one, the listing reads it then.
    const source = recipe.name && recipe.steps.length > 0 ? versionSource(recipe) : undefined;
    const reply = await this.script('isogearCreate', 'create', [
      recipe.interpreterId,
      recipe.tenant,
      recipe.name,
      replaceName ? '1' : '0',
      recipe.mode,
      recipe.memoryMb,
      recipe.registrationPrefix,
      recipe.createdAtMs,
      this.maxVersions,
      recipe.rolledBackFrom ?? '',
      source?.sourceSha256 ?? '',
      source?.sourceBytes ?? '',
      recipe.steps.length,
      ...recipe.steps.map((s) => JSON.stringify(s)),
      recipe.released.length,
      ...recipe.released,
      ...recipe.paused,
    ]);
    const [status, id, version] = reply as [string, string?, (string | number)?];
    if (status === 'taken') throw new NameTakenError(recipe.tenant, recipe.name, id ?? '');
    if (status === 'exists') throw new StoreError(`${this.description}: create failed: interpreter ${recipe.interpreterId} is already stored`);
    return { ...(id ? { replaced: id } : {}), ...(version ? { version: Number(version) } : {}) };
  }

  async append(interpreterId: string, step: RecipeStep): Promise<void> {
    await this.script('isogearAppend', 'append', [interpreterId, JSON.stringify(step)]);
  }

  async release(interpreterId: string, registrationIds: string[]): Promise<void> {
    if (registrationIds.length === 0) return;
    await this.script('isogearRelease', 'release', [interpreterId, ...registrationIds]);
  }

  async setPaused(interpreterId: string, registrationIds: string[], paused: boolean): Promise<void> {
    if (registrationIds.length === 0) return;
    await this.script('isogearPause', paused ? 'pause' : 'resume', [interpreterId, paused ? '1' : '0', ...registrationIds]);
  }

  async remove(interpreterId: string): Promise<void> {
    await this.script('isogearRemove', 'remove', [interpreterId, this.maxVersions]);
  }

  async versions(tenant: string, name: string): Promise<StoredVersion[]> {
    if (!name) return [];
    const reply = (await this.script('isogearVersions', 'versions', [tenant, name])) as [string, string, string[], string | null][];
    return reply.map(([current, interpreterId, flat, first]) => {
      const meta = fields(flat);
      // (absent: a recipe an older isogear stored, or one created without steps)
      const source =
        meta.sourceSha256 !== undefined
          ? { sourceSha256: meta.sourceSha256, sourceBytes: Number(meta.sourceBytes) }
          : versionSource({ steps: first ? [JSON.parse(first) as RecipeStep] : [] });
      return {
        version: Number(meta.version ?? 1),
        createdAtMs: Number(meta.createdAtMs),
        interpreterId,
        current: current === '1',
        ...source,
        ...(meta.rolledBackFrom !== undefined ? { rolledBackFrom: Number(meta.rolledBackFrom) } : {}),
      };
    });
  }

  async loadVersion(tenant: string, name: string, version: number): Promise<InterpreterRecipe | undefined> {
    if (!name || !Number.isSafeInteger(version) || version < 1) return undefined;
    const reply = (await this.script('isogearLoadVersion', 'loadVersion', [tenant, name, version])) as [string, string[], ...unknown[]] | null;
    if (!reply) return undefined;
    const [interpreterId, flat, ...rest] = reply;
    return toRecipe(interpreterId, [fields(flat), ...rest]);
  }

  /**
   * Reports every change from the moment it is called, on a second connection. Call it BEFORE
   * `loadAll`: the feed's position is taken when this resolves, so a change between the two is
   * reported (possibly besides being loaded) rather than lost. Reports include this server's own
   * changes and may repeat one: the caller reconciles by id, idempotently. `onResync` is called
   * when the feed was trimmed past our position or the connection dropped and came back.
   */
  async follow(onChange: (interpreterId: string, replacedBy?: string) => void, onResync: () => void): Promise<void> {
    if (this.closed) throw new IllegalStateError(`${this.description}: follow after close`);
    if (this.reader) throw new IllegalStateError(`${this.description}: follow called twice`);
    const reader = this.redis.duplicate();
    this.reader = reader;
    this.watch(reader, 'follow');
    let from: { id: string; n: number };
    try {
      await connect(reader, this.where);
      from = await this.run('follow', () => this.position(reader));
    } catch (err) {
      // Not left retrying in the background; follow may be called again.
      reader.disconnect();
      this.reader = undefined;
      throw err;
    }
    this.following = this.followLoop(reader, from, onChange, onResync);
  }

  /** Stops following and disconnects; idempotent, never throws. */
  /** Claims of schedule ticks, on this store's connection and under its key prefix. */
  tickClaims(serverName: string): TickClaims {
    return new RedisTickClaims(this.redis, this.prefix, serverName);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reader?.disconnect();
    await this.following;
    try {
      // QUIT lets commands in flight finish; a client that is not connected just hangs up.
      if (this.redis.status === 'ready') await this.redis.quit();
      else this.redis.disconnect();
    } catch {
      this.redis.disconnect();
    }
  }

  private async followLoop(
    reader: Redis,
    from: { id: string; n: number },
    onChange: (interpreterId: string, replacedBy?: string) => void,
    onResync: () => void,
  ): Promise<void> {
    let { id: lastId, n: lastN } = from;
    let dropped = false;
    reader.on('close', () => (dropped = true));
    const call = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        this.logger?.warn({ store: this.description, err }, `redis follow: ${what} threw`);
      }
    };
    while (!this.closed) {
      try {
        if (dropped) {
          // The Redis may have come back empty, with ids below ours: start over from where the
          // feed is now, then have the caller compare everything.
          ({ id: lastId, n: lastN } = await this.position(reader));
          dropped = false;
          this.logger?.info({ store: this.description }, 'redis follow: reconnected, resyncing');
          call('onResync', onResync);
          continue;
        }
        const reply = (await reader.xread('COUNT', 1000, 'BLOCK', FOLLOW_BLOCK_MS, 'STREAMS', this.key('changes'), lastId)) as
          | [string, [string, string[]][]][]
          | null;
        for (const [entryId, fields] of reply?.[0]?.[1] ?? []) {
          const entry: Record<string, string> = {};
          for (let i = 0; i + 1 < fields.length; i += 2) entry[fields[i]] = fields[i + 1];
          const n = Number(entry.n);
          if (n !== lastN + 1) {
            this.logger?.warn({ store: this.description, expected: lastN + 1, got: entry.n }, 'redis follow: changes were trimmed past us, resyncing');
            call('onResync', onResync);
          }
          lastId = entryId;
          if (Number.isInteger(n)) lastN = n;
          if (entry.id) call('onChange', () => onChange(entry.id, entry.by || undefined));
        }
      } catch (err) {
        if (this.closed) break;
        if (!dropped) this.logger?.warn({ store: this.description, err: (err as Error).message }, 'redis follow: read failed');
        await sleep(FOLLOW_RETRY_MS);
      }
    }
  }

  /** Where the changes feed ends now: its last entry's id and the counter. */
  private async position(client: Redis): Promise<{ id: string; n: number }> {
    const replies = await client.multi().get(this.key('seq')).xrevrange(this.key('changes'), '+', '-', 'COUNT', 1).exec();
    const [seq, last] = unwrap(replies) as [string | null, [string, string[]][]];
    return { id: last[0]?.[0] ?? '0-0', n: Number(seq ?? 0) };
  }

  private async readRecipes(ids: string[]): Promise<unknown[]> {
    const multi = this.redis.multi();
    for (const id of ids) {
      const m = this.key(`i:${id}`);
      multi.hgetall(m).lrange(`${m}:steps`, 0, -1).smembers(`${m}:released`).smembers(`${m}:paused`);
    }
    return unwrap(await multi.exec());
  }

  private key(suffix: string): string {
    return this.prefix + suffix;
  }

  private script(name: ScriptName, operation: string, args: (string | number)[]): Promise<unknown> {
    const call = (this.redis as unknown as Record<ScriptName, Call>)[name].bind(this.redis);
    return this.run(operation, () => call(this.prefix, ...args));
  }

  /** Runs one store operation; what Redis or the connection throws becomes a StoreError. */
  private async run<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new IllegalStateError(`${this.description}: ${operation} after close`);
    if (this.redis.status !== 'ready') throw new StoreError(`${this.description}: ${operation} failed: not connected (${this.redis.status})`);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`${this.description}: ${operation} failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Logs a connection going away and coming back, once each, not every retry's error. */
  private watch(client: Redis, connection: string): void {
    // Errors before the first ready are open's to report.
    let state: 'connecting' | 'up' | 'down' = 'connecting';
    const lost = (why: string): void => {
      if (state !== 'up' || this.closed) return;
      state = 'down';
      this.logger?.warn({ store: this.description, connection, why }, 'redis connection lost, reconnecting');
    };
    client.on('error', (err: Error) => lost(err.message));
    client.on('close', () => lost('closed'));
    client.on('ready', () => {
      if (state === 'down') this.logger?.info({ store: this.description, connection }, 'redis connection back');
      state = 'up';
    });
  }
}

/**
 * The recipe of `id` from its four reads: the hash (as an object), the steps, the released and
 * the paused ids. Undefined when the hash is empty (the recipe is gone).
 */
function toRecipe(id: string, [hash, steps, released, paused]: unknown[]): InterpreterRecipe | undefined {
  const meta = hash as Record<string, string>;
  if (meta.tenant === undefined) return undefined;
  return {
    interpreterId: id,
    tenant: meta.tenant,
    name: meta.name,
    mode: meta.mode as IsolationMode,
    memoryMb: Number(meta.memoryMb),
    registrationPrefix: meta.registrationPrefix,
    createdAtMs: Number(meta.createdAtMs),
    steps: (steps as string[]).map((doc) => JSON.parse(doc) as RecipeStep),
    // A set has no order; sorted, the stores agree.
    released: (released as string[]).sort(),
    paused: (paused as string[]).sort(),
    // (a named recipe an older isogear stored has no version: it is the name's first)
    ...(meta.name ? { version: Number(meta.version ?? 1) } : {}),
    ...(meta.rolledBackFrom !== undefined ? { rolledBackFrom: Number(meta.rolledBackFrom) } : {}),
  };
}

/** A hash as a script returns it (field, value, field, value…), as an object. */
function fields(flat: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]] = flat[i + 1];
  return out;
}

/** A MULTI's replies, throwing the first command error. */
function unwrap(replies: [Error | null, unknown][] | null): unknown[] {
  if (!replies) throw new Error('the transaction was aborted');
  return replies.map(([err, value]) => {
    if (err) throw err;
    return value;
  });
}
