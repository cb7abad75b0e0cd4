import { IllegalStateError } from './errors';
import type { CancelCause, ExecuteResult, ExecutionInfo, ExecutionKind, ExecutionState, TriggerRunResult } from './types';

/** Why a run was stopped from outside: carried as its AbortSignal's reason, so the outcome's message can say it. */
export class CancelReason {
  constructor(
    readonly cause: CancelCause,
    readonly message: string,
  ) {}
}

/** What a DONE execution produced. */
export type ExecutionResponse = { kind: 'execute'; result: ExecuteResult } | { kind: 'trigger'; results: TriggerRunResult[] };

export interface ExecutionInit {
  id: string;
  seq: number;
  tenant: string;
  kind: ExecutionKind;
  background: boolean;
  interpreterId?: string;
  registrationId?: string;
  trigger?: string;
  /** A HANDLER's fan-out: cancelling the parent cancels it. */
  parent?: Execution;
}

/**
 * One execution: QUEUED → RUNNING → DONE, once each. It owns the AbortSignal its run honours,
 * so anyone allowed to (CancelExecution, the caller giving up, shutdown) can stop it through
 * `cancel`; a fan-out cancels its running handler runs with it. It holds no reference on an
 * interpreter (its run does); the ExecutionTable lists it and keeps it once DONE if it ran in
 * the background.
 */
export class Execution {
  readonly id: string;
  readonly seq: number;
  readonly tenant: string;
  readonly kind: ExecutionKind;
  readonly background: boolean;
  readonly registrationId: string;
  readonly trigger: string;
  readonly createdAt = new Date();
  interpreterId: string;
  private stateNow: ExecutionState = 'queued';
  private startedAt?: Date;
  private endedAt?: Date;
  private responseNow?: ExecutionResponse;
  private readonly controller = new AbortController();
  private readonly children = new Set<Execution>();
  private readonly parent?: Execution;
  private readonly doneListeners = new Set<() => void>();
  /** Set by the table: called once, when the execution ends. */
  onDone?: (e: Execution) => void;
  /** Set by the table: called when a cancel takes effect. */
  onCancel?: (e: Execution, cause: CancelCause) => void;

  constructor(init: ExecutionInit) {
    this.id = init.id;
    this.seq = init.seq;
    this.tenant = init.tenant;
    this.kind = init.kind;
    this.background = init.background;
    this.interpreterId = init.interpreterId ?? '';
    this.registrationId = init.registrationId ?? '';
    this.trigger = init.trigger ?? '';
    this.parent = init.parent;
    if (this.parent) {
      this.parent.children.add(this);
      // a fan-out cancelled before this handler run began: it starts cancelled
      if (this.parent.signal.aborted) this.controller.abort(this.parent.signal.reason);
    }
  }

  get state(): ExecutionState {
    return this.stateNow;
  }

  /** Aborts when the execution is cancelled; its run honours it. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** How it was cancelled, if it was. */
  get cancelReason(): CancelReason | undefined {
    const r: unknown = this.controller.signal.reason;
    return r instanceof CancelReason ? r : undefined;
  }

  get response(): ExecutionResponse | undefined {
    return this.responseNow;
  }

  /** It got its run slot. */
  start(): void {
    if (this.stateNow !== 'queued') throw new IllegalStateError(`execution ${this.id} started while ${this.stateNow}`);
    this.stateNow = 'running';
    this.startedAt = new Date();
  }

  /** It ended with `response`. Ending twice is a bug. */
  finish(response: ExecutionResponse): void {
    if (this.stateNow === 'done') throw new IllegalStateError(`execution ${this.id} ended twice`);
    this.stateNow = 'done';
    this.startedAt ??= new Date();
    this.endedAt = new Date();
    this.responseNow = response;
    this.parent?.children.delete(this);
    this.onDone?.(this);
    for (const listener of [...this.doneListeners]) listener();
    this.doneListeners.clear();
  }

  /**
   * Stops it: its signal aborts with `reason` (a queued run leaves the queue, a running one ends
   * OUTCOME_ABORTED), and so do its running handler runs. A DONE or already cancelled execution
   * is left as it is; returns whether this call cancelled it.
   */
  cancel(reason: CancelReason): boolean {
    return this.stop(reason, false);
  }

  /** `withParent`: a handler run stopped with its fan-out (counted once, as the fan-out's cancel). */
  private stop(reason: CancelReason, withParent: boolean): boolean {
    if (this.stateNow === 'done' || this.controller.signal.aborted) return false;
    this.controller.abort(reason);
    if (!withParent) this.onCancel?.(this, reason.cause);
    for (const child of [...this.children]) child.stop(reason, true);
    return true;
  }

  /** Calls `listener` once when it is DONE (at once if it is); the returned function unsubscribes. */
  whenDone(listener: () => void): () => void {
    if (this.stateNow === 'done') {
      listener();
      return () => undefined;
    }
    this.doneListeners.add(listener);
    return () => this.doneListeners.delete(listener);
  }

  info(): ExecutionInfo {
    const r = this.responseNow;
    return {
      id: this.id,
      state: this.stateNow,
      kind: this.kind,
      interpreterId: this.interpreterId,
      registrationId: this.registrationId,
      trigger: this.trigger,
      createdAt: this.createdAt,
      startedAt: this.startedAt,
      endedAt: this.endedAt,
      background: this.background,
      executeResult: r?.kind === 'execute' ? r.result : undefined,
      triggerResults: r?.kind === 'trigger' ? r.results : undefined,
    };
  }
}
