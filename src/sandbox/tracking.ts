/**
 * Records a call into the isolate until it settles, with the longest it may legitimately take,
 * so a watchdog can tell a busy isolate from one stuck in code V8 cannot interrupt.
 */
export type CallTracker = <T>(call: Promise<T>, timeoutMs: number) => Promise<T>;

/** Nominal bound for calls that run no user code (compile, link, create a context). */
export const HOUSEKEEPING_TIMEOUT_MS = 5000;
