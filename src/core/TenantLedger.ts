import { ResourceExhaustedError } from './errors';
import type { QuotaName } from './tenants';

/** What one tenant holds, counted against its quotas. */
export interface TenantUsage {
  /** Live interpreters, and those being created. */
  interpreters: number;
  registrations: number;
  /** Heap limits of its dedicated isolates (live and being created), in MB. */
  dedicatedMemoryMb: number;
}

/**
 * What each tenant holds (interpreters, registrations, dedicated heap limits) and the refusals
 * when a new one would pass its quota. Quotas are asked at every check: a reloaded keys file
 * applies at once. The counts move with the things they count; nothing here decides anything
 * else.
 */
export class TenantLedger {
  private readonly usage = new Map<string, TenantUsage>();

  constructor(
    private readonly quotasOf: ((tenant: string) => Record<QuotaName, number> | undefined) | undefined,
    /** The server's own interpreter limit: a tenant quota at or above it cannot bind (that limit answers first). */
    private readonly maxInterpreters: number,
  ) {}

  /** The tenant's quotas now, or undefined: none. */
  quotas(tenant: string): Record<QuotaName, number> | undefined {
    return this.quotasOf?.(tenant);
  }

  /** What `tenant` holds (zeros for a tenant never seen). */
  of(tenant: string): Readonly<TenantUsage> {
    return this.use(tenant);
  }

  /**
   * Counts a new interpreter of `tenant` (while it is created and for its life), or throws the
   * quota it would pass. `enforce` false: a rebuilt interpreter, admitted when first created.
   */
  admitInterpreter(tenant: string, dedicatedMemoryMb: number, enforce = true): void {
    const refusal = enforce ? this.interpreterRefusal(tenant, dedicatedMemoryMb) : undefined;
    if (refusal) throw refusal;
    const u = this.use(tenant);
    u.interpreters += 1;
    u.dedicatedMemoryMb += dedicatedMemoryMb;
  }

  /** The refusal for one more interpreter of `tenant` (with a dedicated isolate of `dedicatedMemoryMb`), if its quotas are full. */
  interpreterRefusal(tenant: string, dedicatedMemoryMb: number): ResourceExhaustedError | undefined {
    const q = this.quotas(tenant);
    const u = this.use(tenant);
    if (q && q.interpreters < this.maxInterpreters && u.interpreters >= q.interpreters) {
      return new ResourceExhaustedError(
        'tenant_interpreters',
        `tenant "${tenant}" holds its quota of ${q.interpreters} interpreters (quota interpreters); release registrations to free some`,
      );
    }
    if (q && dedicatedMemoryMb > 0 && u.dedicatedMemoryMb + dedicatedMemoryMb > q.dedicatedMemoryMb) {
      return new ResourceExhaustedError(
        'tenant_dedicated_memory_mb',
        `tenant "${tenant}" holds dedicated isolates with ${u.dedicatedMemoryMb} MB of heap limits; ${dedicatedMemoryMb} MB more would pass its quota of ${q.dedicatedMemoryMb} MB (quota dedicatedMemoryMb): release registrations, ask for a smaller memory_limit_mb or use shared mode`,
      );
    }
    return undefined;
  }

  /** An interpreter counted by admitInterpreter is gone (or was never made). */
  interpreterGone(tenant: string, dedicatedMemoryMb: number): void {
    const u = this.use(tenant);
    u.interpreters -= 1;
    u.dedicatedMemoryMb -= dedicatedMemoryMb;
  }

  /** The refusal for `adding` more registrations of `tenant` when they would pass its quota. */
  registrationRefusal(tenant: string, adding: number): ResourceExhaustedError | undefined {
    const q = this.quotas(tenant);
    const held = this.use(tenant).registrations;
    if (!q || held + adding <= q.registrations) return undefined;
    return new ResourceExhaustedError(
      'tenant_registrations',
      `tenant "${tenant}" holds ${held} registrations; ${adding} more would pass its quota of ${q.registrations} (quota registrations); release some first`,
    );
  }

  /** Registrations added (n > 0) or removed (n < 0); also held while a step that makes them is stored. */
  countRegistrations(tenant: string, n: number): void {
    this.use(tenant).registrations += n;
  }

  /** Live interpreters and registrations of every tenant that has held any, for metrics. */
  snapshot(): Map<string, { interpreters: number; registrations: number }> {
    const out = new Map<string, { interpreters: number; registrations: number }>();
    for (const [tenant, u] of this.usage) out.set(tenant, { interpreters: u.interpreters, registrations: u.registrations });
    return out;
  }

  private use(tenant: string): TenantUsage {
    let u = this.usage.get(tenant);
    if (!u) {
      u = { interpreters: 0, registrations: 0, dedicatedMemoryMb: 0 };
      this.usage.set(tenant, u);
    }
    return u;
  }
}
