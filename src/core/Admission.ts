import type { Tracing } from '../tracing/Tracing';
import { ResourceExhaustedError } from './errors';
import { RunSlots, type RunSlotsRefusals, type Slot, type WaitKind } from './RunSlots';
import type { TenantLedger } from './TenantLedger';

/** Refusals of a tenant's run admission name the quota, never the server-wide settings. */
const tenantRefusals = (tenant: string): RunSlotsRefusals => ({
  full: {
    limit: 'tenant_concurrent_runs',
    message: (o) => `tenant "${tenant}" has its quota of ${o.maxConcurrent} runs executing and ${o.maxQueued} more waiting (quota concurrentRuns); retry shortly`,
  },
  waited: {
    limit: 'tenant_concurrent_runs',
    message: (o) => `none of tenant "${tenant}"'s ${o.maxConcurrent} runs (quota concurrentRuns) ended within ${o.maxWaitMs} ms; retry later`,
  },
});

/** One slot made of two (the tenant's and the server's): released and held together. */
const bothSlots = (a: Slot, b: Slot): Slot => ({
  release: () => {
    b.release();
    a.release();
  },
  holdUntil: (work) => {
    a.holdUntil(work);
    b.holdUntil(work);
  },
});

export interface AdmissionOptions {
  maxConcurrentRuns: number;
  maxQueuedRuns: number;
  maxQueueWaitMs: number;
  /** The wait for a slot is a span (`isogear.queue`) of a traced request. */
  tracing?: Tracing;
}

/**
 * Run admission: the server's run slots, and in front of them a gate per tenant whose
 * concurrentRuns quota is below the server's limit, so a tenant at its quota waits (or is
 * refused) in its own queue without taking the server's slots from anyone else.
 */
export class Admission {
  private readonly server: RunSlots;
  private readonly gates = new Map<string, RunSlots>();

  constructor(
    private readonly options: AdmissionOptions,
    private readonly ledger: TenantLedger,
  ) {
    this.server = new RunSlots({ maxConcurrent: options.maxConcurrentRuns, maxQueued: options.maxQueuedRuns, maxWaitMs: options.maxQueueWaitMs });
  }

  /** Requests (and Trigger fan-outs) waiting for one of the server's slots. */
  get waiting(): number {
    return this.server.queued;
  }

  /** The server's slots taken, cancelled runs whose code has not stopped yet included. */
  get running(): number {
    return this.server.running;
  }

  /**
   * A run slot for `tenant`: first one of its own, then one of the server's. `kind`: how the
   * caller waits (see WaitKind).
   */
  acquire(tenant: string, signal?: AbortSignal, kind: WaitKind = 'request'): Promise<Slot> {
    if (!this.options.tracing?.on) return this.slot(tenant, signal, kind);
    return this.options.tracing.span('isogear.queue', { 'isogear.queue.kind': kind }, () => this.slot(tenant, signal, kind));
  }

  private async slot(tenant: string, signal: AbortSignal | undefined, kind: WaitKind): Promise<Slot> {
    const limit = this.ledger.quotas(tenant)?.concurrentRuns;
    if (limit === undefined || limit >= this.options.maxConcurrentRuns) return this.server.acquire(signal, kind);
    if (limit === 0) throw new ResourceExhaustedError('tenant_concurrent_runs', `tenant "${tenant}" may not run anything (its concurrentRuns quota is 0)`);
    let gate = this.gates.get(tenant);
    if (!gate) {
      gate = new RunSlots({ maxConcurrent: limit, maxQueued: this.options.maxQueuedRuns, maxWaitMs: this.options.maxQueueWaitMs, refusals: tenantRefusals(tenant) });
      this.gates.set(tenant, gate);
    }
    gate.setMaxConcurrent(limit);
    const own = await gate.acquire(signal, kind);
    try {
      return bothSlots(own, await this.server.acquire(signal, kind));
    } catch (err) {
      own.release();
      throw err;
    }
  }
}
