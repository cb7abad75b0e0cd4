import type { Redis } from 'ioredis';
import type { TickClaim, TickClaims } from '../core/sources/ports';

/** How long a tick's claim is kept: long past any clock skew between replicas. */
const TICK_TTL_MS = 10 * 60 * 1000;

/** ARGV: tick key, run key, token, tick ttl, run ttl. */
const CLAIM = `
if not redis.call('SET', ARGV[1], ARGV[3], 'NX', 'PX', ARGV[4]) then return 'taken' end
if redis.call('EXISTS', ARGV[2]) == 1 then return 'busy' end
redis.call('SET', ARGV[2], ARGV[3], 'PX', ARGV[5])
return 'won'
`;
/** ARGV: run key, token. */
const FINISH = `
if redis.call('GET', ARGV[1]) == ARGV[2] then redis.call('DEL', ARGV[1]) end
return 1
`;

type Call = (...args: (string | number)[]) => Promise<unknown>;

/**
 * Schedule ticks claimed in the shared store's Redis: `<prefix>tick:<registration>:<tick ms>`
 * (SET NX with an expiry) says which server runs a tick, `<prefix>running:<registration>` marks
 * a run going until it ends or its time limit (plus slack) passes, so a server that dies mid-run
 * holds no tick longer than its run could have lasted. It uses the store's connection, closed with the store.
 */
export class RedisTickClaims implements TickClaims {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
    /** This server's name: the marks it sets hold it, so it clears only its own. */
    private readonly serverName: string,
  ) {
    redis.defineCommand('isogearTickClaim', { numberOfKeys: 0, lua: CLAIM });
    redis.defineCommand('isogearTickFinish', { numberOfKeys: 0, lua: FINISH });
  }

  private call(name: string): Call {
    return (this.redis as unknown as Record<string, Call>)[name].bind(this.redis);
  }

  private token(tickMs: number): string {
    return `${this.serverName}@${tickMs}`;
  }

  async claim(registrationId: string, tickMs: number, runTtlMs: number): Promise<TickClaim> {
    const got = await this.call('isogearTickClaim')(`${this.prefix}tick:${registrationId}:${tickMs}`, `${this.prefix}running:${registrationId}`, this.token(tickMs), TICK_TTL_MS, Math.max(1000, Math.ceil(runTtlMs)));
    if (got === 'won' || got === 'taken' || got === 'busy') return got;
    throw new Error(`unexpected tick claim reply ${String(got)}`);
  }

  async finish(registrationId: string, tickMs: number): Promise<void> {
    await this.call('isogearTickFinish')(`${this.prefix}running:${registrationId}`, this.token(tickMs));
  }
}
