import assert from 'node:assert/strict';
import { pb, type TestClient } from './client';
import { sleep, type TestServer } from './server';

export const SHARED = pb.IsolationMode.ISOLATION_MODE_SHARED;
export const ISOLATE = pb.IsolationMode.ISOLATION_MODE_ISOLATE;
/** Both isolation modes, for tests that run once per mode. */
export const MODES: readonly pb.IsolationMode[] = [SHARED, ISOLATE];

export const modeName = (mode: pb.IsolationMode): string => pb.isolationModeToJSON(mode);
export const outcomeName = (o: pb.Outcome): string => pb.outcomeToJSON(o);
export const stateName = (s: pb.InterpreterState | undefined): string => (s === undefined ? 'unset' : pb.interpreterStateToJSON(s));
export const limits = (timeoutMs: number, memoryLimitMb = 0): pb.Limits => ({ timeoutMs, memoryLimitMb });

/** Asserts a run (an Execute response or a Trigger result) succeeded, showing its error if not. */
export function succeeded(res: { outcome: pb.Outcome; error?: pb.ScriptError }): void {
  assert.equal(res.outcome, pb.Outcome.OUTCOME_SUCCEEDED, `run did not succeed: ${JSON.stringify(res.error)}`);
}

/** Host file paths that must never reach a client. */
export const HOST_PATHS: readonly string[] = ['/work/', 'node_modules', '.ts:', 'node:internal', 'file://'];

/**
 * Asserts `value` (a string, or anything JSON shows) names none of HOST_PATHS, nor any of `also`.
 */
export function assertNoHostPaths(value: unknown, what: string, also: readonly string[] = []): void {
  const s = typeof value === 'string' ? value : JSON.stringify(value ?? '');
  for (const leak of [...HOST_PATHS, ...also]) assert.ok(!s.includes(leak), `${what} leaks ${JSON.stringify(leak)}: ${s}`);
}

/** Polls `cond` until it holds; throws after `ms`. */
export async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** Waits until the server has at least `n` runs in flight (a call that was sent has started). */
export function runsInFlight(t: TestServer, n = 1): Promise<void> {
  return waitFor(`${n} run(s) in flight`, () => t.manager.counters().executionsInFlight >= n);
}

const GONE: readonly pb.InterpreterState[] = [pb.InterpreterState.INTERPRETER_STATE_DISPOSED, pb.InterpreterState.INTERPRETER_STATE_FAILED];

/**
 * Releases every registration of each interpreter (ReleaseRequest.interpreter_id) and asserts each
 * is then gone (DISPOSED, or FAILED with no reference left): how a test hands back what it
 * registered, checked like any other call (the server fixture fails a test that leaves
 * registrations). Returns the released registration ids, in order.
 */
export async function releaseInterpreters(client: TestClient, ...interpreterIds: (string | undefined)[]): Promise<string[]> {
  const released: string[] = [];
  for (const id of interpreterIds) {
    assert.ok(id, 'an interpreter id to release');
    const rel = await client.release({ interpreterId: id });
    assert.ok(rel.releasedRegistrationIds.length > 0, `releasing ${id} released something`);
    assert.equal(rel.interpreter?.id, id);
    assert.equal(rel.interpreter?.references, 0, `${id} holds no reference once released`);
    // a FAILED interpreter is freed with its last registration but keeps answering FAILED
    assert.ok(GONE.includes(rel.interpreter?.state as pb.InterpreterState), `${id} is disposed once released, got ${stateName(rel.interpreter?.state)}`);
    released.push(...rel.releasedRegistrationIds);
  }
  return released;
}
