import type { Sandbox } from '../sandbox/Sandbox';
import type { RecipeStep } from '../store/types';
import { IllegalStateError } from './errors';
import type { IsolateHost } from './IsolateHost';
import { Reference, type ReferenceCounted } from './Reference';
import type { Registration } from './Registration';
import type { InterpreterInfo, InterpreterState, IsolationMode, OwnerKind } from './types';

/**
 * The reference-counted unit scripts run in: one V8 context (its Sandbox) on a dedicated or a
 * shared isolate. It counts references by owner kind and calls `onUnreferenced` the moment the
 * last one goes; the manager then disposes it. State moves READY → DRAINING → DISPOSED, or to
 * FAILED when its isolate dies.
 */
export class Interpreter implements ReferenceCounted {
  createdAt = new Date();
  readonly registrations = new Map<string, Registration>();
  /** With a store: the steps it ran before its recipe was stored (then the store has them), and the ids of all. */
  readonly steps: RecipeStep[] = [];
  readonly stepIds = new Set<string>();
  /** Its recipe is in the store (it holds, or held, registrations there). */
  stored = false;
  state: InterpreterState = 'ready';
  failureReason = '';
  cpuTimeMs = 0;
  /** Why its dedicated isolate goes when the last reference does: 'replaced' after an upgrade. */
  disposeReason: 'released' | 'replaced' = 'released';
  private readonly refs: Record<OwnerKind, number> = { registration: 0, execution: 0 };

  constructor(
    readonly id: string,
    readonly seq: number,
    readonly mode: IsolationMode,
    public name: string,
    readonly host: IsolateHost,
    readonly sandbox: Sandbox,
    readonly registrationPrefix: string,
    private readonly onUnreferenced: (interpreter: Interpreter) => void,
    /** The tenant that created it: only that tenant's requests can reach it. */
    readonly tenant: string,
  ) {}

  get references(): number {
    return this.refs.registration + this.refs.execution;
  }

  referencesOf(kind: OwnerKind): number {
    return this.refs[kind];
  }

  /** True while new owners (runs, registrations) may be added. */
  get accepting(): boolean {
    return this.state === 'ready';
  }

  /** Adds an owner. Executions may still run on a DRAINING interpreter's existing handlers. */
  acquire(kind: OwnerKind): Reference {
    if (this.state === 'disposed') {
      throw new IllegalStateError(`cannot acquire a ${kind} reference on disposed interpreter ${this.id}`);
    }
    this.refs[kind] += 1;
    return new Reference(kind, this);
  }

  dropReference(kind: OwnerKind): void {
    if (this.refs[kind] <= 0) {
      throw new IllegalStateError(`${kind} references of ${this.id} would go negative`);
    }
    this.refs[kind] -= 1;
    if (this.references === 0) this.onUnreferenced(this);
  }

  /** No registrations are left but runs are: dispose when they end, take no new owners. */
  beginDraining(): void {
    if (this.state === 'ready') this.state = 'draining';
  }

  fail(reason: string): void {
    if (this.state === 'disposed') return;
    this.state = 'failed';
    this.failureReason = reason;
    this.sandbox.release();
  }

  markDisposed(): void {
    if (this.state !== 'failed') this.state = 'disposed';
    this.sandbox.release();
  }

  infoWithHeap(heapUsedBytes: number): InterpreterInfo {
    return {
      id: this.id,
      name: this.name,
      mode: this.mode,
      state: this.state,
      references: this.references,
      registrationReferences: this.refs.registration,
      executionReferences: this.refs.execution,
      createdAt: this.createdAt,
      heapUsedBytes: this.state === 'ready' || this.state === 'draining' ? heapUsedBytes : 0,
      cpuTimeMs: this.cpuTimeMs,
      failureReason: this.failureReason,
    };
  }

  async info(): Promise<InterpreterInfo> {
    const live = this.state === 'ready' || this.state === 'draining';
    return this.infoWithHeap(live ? await this.host.heapUsedBytes() : 0);
  }
}
