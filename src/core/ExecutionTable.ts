import { InvalidArgumentError, NotFoundError, ResourceExhaustedError } from './errors';
import { CancelReason, Execution, type ExecutionResponse } from './Execution';
import { newExecutionId } from './ids';
import { paginate } from './paginate';
import type { CancelCause, ExecuteResult, ExecutionCounters, ExecutionFilter, ExecutionInfo, ExecutionKind, ExecutionState, Page, TriggerRunResult } from './types';

/** What a retained response costs beyond its result, logs and errors: ids, times, the interpreter. */
const RESPONSE_OVERHEAD_BYTES = 512;
/** Ids of executions dropped from retention that still answer "expired" rather than "unknown". */
const MAX_EXPIRED_IDS = 10_000;
const EXECUTION_ID = /^exe_[0-9a-f]{20}$/;
/**
 * Responses one ListExecutions page carries at most (it always holds one execution): within
 * grpc-js's default 4 MiB receive limit, however large the kept responses are.
 */
const LIST_PAGE_BYTES = 1024 * 1024;

export interface ExecutionTableOptions {
  /** How long a DONE background execution is kept (ISOGEAR_EXECUTION_RETENTION_MS). */
  retentionMs: number;
  /** Bytes of responses kept at most, oldest out first (ISOGEAR_EXECUTION_RETENTION_BYTES). */
  retentionBytes: number;
  /** Queued plus running background executions a tenant may have (its backgroundExecutions quota). */
  backgroundQuota(tenant: string): number;
}

export interface OpenExecution {
  tenant: string;
  kind: ExecutionKind;
  background: boolean;
  interpreterId?: string;
  registrationId?: string;
  trigger?: string;
  parent?: Execution;
}

interface Kept {
  execution: Execution;
  bytes: number;
  expiresAt: number;
}

/** Checks an execution id from a request: empty or not an isogear execution id is INVALID_ARGUMENT. */
export function checkExecutionId(id: string): void {
  if (!id) throw new InvalidArgumentError('execution_id must not be empty');
  if (!EXECUTION_ID.test(id)) {
    const shown = id.length > 40 ? `${id.slice(0, 40)}…` : id;
    throw new InvalidArgumentError(`execution_id ${JSON.stringify(shown)} is not an execution id (exe_ and 20 hex digits)`);
  }
}

/**
 * Every execution the server knows: those queued or running (background or not), and DONE
 * background ones, kept for WaitExecution and GetExecution within a time and a byte budget
 * (oldest out first). Each belongs to its tenant: another tenant's id answers as an unknown
 * one. It also holds the tenants' background quotas and counts cancels by cause.
 */
export class ExecutionTable {
  private seq = 0;
  private readonly live = new Map<string, Execution>();
  /** In the order they ended, so the oldest is first out. */
  private readonly kept = new Map<string, Kept>();
  private keptBytes = 0;
  private readonly expired = new Map<string, { tenant: string; why: string }>();
  private readonly backgroundOf = new Map<string, number>();
  private readonly cancels: Record<CancelCause, number> = { request: 0, client: 0, shutdown: 0 };
  private readonly tasks = new Set<Promise<unknown>>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly options: ExecutionTableOptions) {}

  /**
   * A new QUEUED execution. A background EXECUTE or TRIGGER counts against its tenant's quota
   * (RESOURCE_EXHAUSTED beyond it) until it is DONE.
   */
  open(init: OpenExecution): Execution {
    const counted = init.background && !init.parent;
    if (counted) {
      const quota = this.options.backgroundQuota(init.tenant);
      const now = this.backgroundOf.get(init.tenant) ?? 0;
      if (now >= quota) {
        throw new ResourceExhaustedError(
          'tenant_background_executions',
          `tenant "${init.tenant}" has ${now} background executions queued or running, its quota (ISOGEAR_TENANT_MAX_BACKGROUND_EXECUTIONS, quota backgroundExecutions is ${quota}); wait for some to end`,
          1000,
        );
      }
      this.backgroundOf.set(init.tenant, now + 1);
    }
    const execution = new Execution({ ...init, id: newExecutionId(), seq: ++this.seq });
    execution.onDone = (e) => this.ended(e, counted);
    execution.onCancel = (_e, cause) => (this.cancels[cause] += 1);
    this.live.set(execution.id, execution);
    return execution;
  }

  /** The caller's execution `id`: queued, running, or DONE and kept. NOT_FOUND says whether it expired. */
  find(id: string, tenant: string): Execution {
    checkExecutionId(id);
    const found = this.live.get(id) ?? this.kept.get(id)?.execution;
    if (found && found.tenant === tenant) return found;
    const gone = this.expired.get(id);
    if (gone && gone.tenant === tenant) throw new NotFoundError(`execution ${id} expired: ${gone.why}`);
    throw new NotFoundError(`execution ${id} not found (unknown, or a synchronous or handler run that ended: those are kept only while they run)`);
  }

  /** The tenant's executions in creation order, optionally only those in `state` or in one interpreter. */
  list(filter: ExecutionFilter & { tenant: string }): Page<ExecutionInfo> {
    const mine: Execution[] = [];
    for (const e of this.live.values()) if (e.tenant === filter.tenant) mine.push(e);
    for (const k of this.kept.values()) if (k.execution.tenant === filter.tenant) mine.push(k.execution);
    mine.sort((a, b) => a.seq - b.seq);
    const page = paginate(
      mine,
      (e) => e.seq,
      (e) => (!filter.state || e.state === filter.state) && (!filter.interpreterId || e.interpreterId === filter.interpreterId),
      filter,
      // kept responses may be large: a page carries about LIST_PAGE_BYTES of them at most
      { cost: (e) => this.kept.get(e.id)?.bytes ?? RESPONSE_OVERHEAD_BYTES, max: LIST_PAGE_BYTES },
    );
    return { items: page.items.map((e) => e.info()), nextPageToken: page.nextPageToken };
  }

  /**
   * Resolves with the execution as it is once it is DONE, `ms` passed, or `signal` aborted. A
   * waiter is a listener and a timer: it holds no run slot.
   */
  wait(execution: Execution, ms: number, signal?: AbortSignal): Promise<ExecutionInfo> {
    if (execution.state === 'done' || ms <= 0 || signal?.aborted) return Promise.resolve(execution.info());
    return new Promise((resolve) => {
      const answer = (): void => {
        clearTimeout(timer);
        unsubscribe();
        signal?.removeEventListener('abort', answer);
        resolve(execution.info());
      };
      const timer = setTimeout(answer, ms);
      const unsubscribe = execution.whenDone(answer);
      signal?.addEventListener('abort', answer, { once: true });
    });
  }

  /** Cancels every queued or running background execution (shutdown). */
  cancelBackground(reason: CancelReason): void {
    for (const e of [...this.live.values()]) if (e.background && e.kind !== 'handler') e.cancel(reason);
  }

  /** Keeps `task` (a background run) so shutdown can wait for it. */
  track(task: Promise<unknown>): void {
    this.tasks.add(task);
    task.then(
      () => this.tasks.delete(task),
      () => this.tasks.delete(task),
    );
  }

  /** Resolves once every background run started so far has ended. */
  async settled(): Promise<void> {
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
  }

  counters(): ExecutionCounters {
    const background: Record<ExecutionState, number> = { queued: 0, running: 0, done: this.kept.size };
    for (const e of this.live.values()) if (e.background && e.kind !== 'handler') background[e.state] += 1;
    return { background, retainedBytes: this.keptBytes, cancels: { ...this.cancels }, live: this.live.size };
  }

  destroy(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private ended(e: Execution, counted: boolean): void {
    this.live.delete(e.id);
    if (counted) {
      const n = (this.backgroundOf.get(e.tenant) ?? 1) - 1;
      if (n > 0) this.backgroundOf.set(e.tenant, n);
      else this.backgroundOf.delete(e.tenant);
    }
    // Synchronous runs' callers have their response; a background fan-out keeps its handlers' results.
    if (!counted || !e.response) return;
    const bytes = responseBytes(e.response);
    this.kept.set(e.id, { execution: e, bytes, expiresAt: performance.now() + this.options.retentionMs });
    this.keptBytes += bytes;
    const budget = this.options.retentionBytes;
    for (const [id, k] of this.kept) {
      if (this.keptBytes <= budget) break;
      this.drop(id, k, `DONE background executions are kept within ${budget} bytes of responses (ISOGEAR_EXECUTION_RETENTION_BYTES), oldest out first`);
    }
    this.arm();
  }

  private drop(id: string, k: Kept, why: string): void {
    this.kept.delete(id);
    this.keptBytes -= k.bytes;
    this.expired.set(id, { tenant: k.execution.tenant, why });
    if (this.expired.size > MAX_EXPIRED_IDS) this.expired.delete(this.expired.keys().next().value as string);
  }

  /** One timer, for the oldest kept execution's expiry. */
  private arm(): void {
    if (this.timer) return;
    const first = this.kept.values().next();
    if (first.done) return;
    this.timer = setTimeout(() => this.sweep(), Math.max(1, first.value.expiresAt - performance.now()));
    this.timer.unref();
  }

  private sweep(): void {
    this.timer = undefined;
    const now = performance.now();
    for (const [id, k] of this.kept) {
      if (k.expiresAt > now) break;
      this.drop(id, k, `DONE background executions are kept for ${this.options.retentionMs} ms (ISOGEAR_EXECUTION_RETENTION_MS)`);
    }
    this.arm();
  }
}

/** About what a response costs to keep: its results, logs and errors, and a fixed overhead. */
function responseBytes(r: ExecutionResponse): number {
  const run = (x: ExecuteResult | TriggerRunResult): number =>
    RESPONSE_OVERHEAD_BYTES +
    (x.resultBytes ?? 0) +
    x.logs.reduce((n, l) => n + l.message.length + 8, 0) +
    (x.error ? x.error.name.length + x.error.message.length + x.error.stack.length : 0);
  return r.kind === 'execute' ? run(r.result) + r.result.registrations.length * 256 : r.results.reduce((n, x) => n + run(x), RESPONSE_OVERHEAD_BYTES);
}
