import type { Sandbox } from '../sandbox/Sandbox';
import { IllegalStateError } from './errors';
import type { IsolateHost } from './IsolateHost';
import { Reference, type ReferenceCounted } from './Reference';
import type { Registration } from './Registration';
import type { InterpreterInfo, InterpreterState, IsolationMode, OwnerKind } from './types';

/** What an interpreter is made of, decided when it is created. */
export interface InterpreterInit {
  id: string;
  /** Creation order, for paging. */
  seq: number;
  mode: IsolationMode;
  name: string;
  host: IsolateHost;
  sandbox: Sandbox;
  /** The prefix of the registration ids its sandbox mints. */
  registrationPrefix: string;
  /** The tenant that created it: only that tenant's requests can reach it. */
  tenant: string;
  /** The heap limit it charges against its tenant's dedicated-memory quota (0 in a shared isolate). */
  dedicatedMemoryMb: number;
}

/**
 * The reference-counted unit scripts run in: one V8 context (its Sandbox) on a dedicated or a
 * shared isolate. This file is where references are counted: it counts them by owner kind and
 * calls `onUnreferenced` the moment the last one goes (the interpreter table then disposes it).
 * State moves READY → DRAINING → DISPOSED, or to FAILED when its isolate dies; its sandbox is
 * released exactly once, on the first of FAILED or DISPOSED.
 */
export class Interpreter implements ReferenceCounted {
  readonly id: string;
  readonly seq: number;
  readonly mode: IsolationMode;
  name: string;
  readonly host: IsolateHost;
  readonly registrationPrefix: string;
  readonly tenant: string;
  readonly dedicatedMemoryMb: number;
  createdAt = new Date();
  readonly registrations = new Map<string, Registration>();
  state: InterpreterState = 'ready';
  failureReason = '';
  cpuTimeMs = 0;
  /** Why its dedicated isolate goes when the last reference does: 'replaced' after an upgrade. */
  disposeReason: 'released' | 'replaced' = 'released';
  private readonly refs: Record<OwnerKind, number> = { registration: 0, execution: 0 };
  private readonly box: Sandbox;
  private sandboxReleased = false;

  constructor(
    init: InterpreterInit,
    private readonly onUnreferenced: (interpreter: Interpreter) => void,
    /** Called after each change of state (watchers hear of it). */
    private readonly onStateChange?: (interpreter: Interpreter) => void,
  ) {
    this.id = init.id;
    this.seq = init.seq;
    this.mode = init.mode;
    this.name = init.name;
    this.host = init.host;
    this.box = init.sandbox;
    this.registrationPrefix = init.registrationPrefix;
    this.tenant = init.tenant;
    this.dedicatedMemoryMb = init.dedicatedMemoryMb;
  }

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

  /** True while its context exists (READY or DRAINING): code can run in it. */
  get live(): boolean {
    return this.state === 'ready' || this.state === 'draining';
  }

  /** Its context. Asking for it once it is gone (FAILED, DISPOSED) is a bug. */
  get sandbox(): Sandbox {
    if (this.sandboxReleased) throw new IllegalStateError(`the sandbox of interpreter ${this.id} was used after it was released (${this.state})`);
    return this.box;
  }

  /**
   * Tidy-up calls into its context (commit, abandon, unregister): they have nothing left to tidy
   * once the context is gone with a FAILED or DISPOSED interpreter, so they are skipped then.
   */
  commitRun(execId: string): void {
    if (!this.sandboxReleased) this.box.commit(execId);
  }

  abandonRun(execId: string, token?: string): void {
    if (!this.sandboxReleased) this.box.abandon(execId, token);
  }

  unregister(ids: string[]): void {
    if (!this.sandboxReleased) this.box.unregister(ids);
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
    if (this.state !== 'ready') return;
    this.state = 'draining';
    this.onStateChange?.(this);
  }

  fail(reason: string): void {
    if (this.state === 'disposed') return;
    const was = this.state;
    this.state = 'failed';
    this.failureReason = reason;
    this.releaseSandbox();
    if (was !== 'failed') this.onStateChange?.(this);
  }

  markDisposed(): void {
    const was = this.state;
    if (this.state !== 'failed') this.state = 'disposed';
    this.releaseSandbox();
    if (this.state !== was) this.onStateChange?.(this);
  }

  private releaseSandbox(): void {
    if (this.sandboxReleased) return;
    this.sandboxReleased = true;
    this.box.release();
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
      heapUsedBytes: this.live ? heapUsedBytes : 0,
      cpuTimeMs: this.cpuTimeMs,
      failureReason: this.failureReason,
    };
  }

  async info(): Promise<InterpreterInfo> {
    return this.infoWithHeap(this.live ? await this.host.heapUsedBytes() : 0);
  }
}
