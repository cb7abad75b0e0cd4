import type { Sandbox } from '../../sandbox/Sandbox';
import type { Interpreter } from '../Interpreter';
import type { IsolateDisposeReason, IsolateHost } from '../IsolateHost';
import type { IsolateKind, IsolationMode } from '../types';

/**
 * Where and how an interpreter lives: the one interface the isolation modes implement
 * (DedicatedPlacement for ISOLATION_MODE_ISOLATE, SharedPlacement for ISOLATION_MODE_SHARED).
 * The rest of the core picks a placement by the request's mode once, and never branches on the
 * mode again to decide where code runs, what a new interpreter costs or what its end frees.
 */
export interface Placement {
  readonly mode: IsolationMode;
  /** Heap MB an interpreter asking for `memoryMb` charges against its tenant's dedicated-memory quota. */
  chargeMb(memoryMb: number): number;
  /**
   * A home for a new interpreter: a host it is admitted to and a bootstrapped context, warm when
   * the pool has one (never for `fixed` ids: a rebuilt interpreter keeps its own). Throws
   * RESOURCE_EXHAUSTED when there is no room, UNAVAILABLE when the context cannot be made.
   */
  place(memoryMb: number, fixed?: FixedIds): Promise<Placed>;
  /** A placement no interpreter was made for (the server closed meanwhile): its context and room go. */
  abandon(placed: Placed): void;
  /** The interpreter living here is gone: what it held goes (its dedicated isolate, its room on a shared one). */
  vacate(interp: Interpreter): void;
  /** Every isolate this placement owns (a disposed shared one until it is replaced). */
  hosts(): readonly IsolateHost[];
  /** Isolates created and disposed (by reason), for counters and metrics. */
  readonly tally: IsolateTally;
  /** Disposes every isolate (shutdown). */
  destroy(): void;
}

/** The ids a rebuilt interpreter keeps. */
export interface FixedIds {
  id: string;
  prefix: string;
}

/** What a placement hands to the new interpreter. */
export interface Placed {
  host: IsolateHost;
  sandbox: Sandbox;
  id: string;
  registrationPrefix: string;
  /** What it charges against its tenant's dedicated-memory quota (see chargeMb). */
  dedicatedMemoryMb: number;
  /** Taken ready-made from the warm pool (a span's `isogear.warm_pool.hit`). */
  warm: boolean;
}

/** Told of every death of an isolate a placement owns, after the placement's own bookkeeping. */
export type HostDeathListener = (host: IsolateHost, reason: IsolateDisposeReason) => void;

/** Isolates of one kind created and disposed, and why they went. */
export class IsolateTally {
  created = 0;
  disposed = 0;
  readonly disposedByReason = new Map<IsolateDisposeReason, number>();

  constructor(readonly kind: IsolateKind) {}

  noteDisposed(reason: IsolateDisposeReason): void {
    this.disposed += 1;
    this.disposedByReason.set(reason, (this.disposedByReason.get(reason) ?? 0) + 1);
  }
}
