import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from './server';

/** Servers useTestServer started, and those whose current test declared leavesRegistrations(). */
const fixtureServers = new WeakSet<TestServer>();
const leaving = new WeakSet<TestServer>();

/**
 * Gives each test of the calling describe block its own server: registers a mocha beforeEach that
 * starts one (startTestServer(env)) and an afterEach that closes it. Returns a getter for the
 * current test's server.
 *
 * Leaks are caught, not tidied: the afterEach calls close() on the server as the test left it,
 * which asserts no interpreter, registration, reference or dedicated isolate is left. A test
 * releases what it registered through the client's Release (releaseInterpreters in ./proto), so
 * the release is part of what it checks; one that forgets fails in its "after each" hook.
 *
 * A test whose point is to leave registrations behind opts out explicitly, in its body:
 *
 *     leavesRegistrations(server());
 *
 * The afterEach then asserts the test did leave some, releases them, and still asserts nothing
 * else leaked. Grep `leavesRegistrations(` for every test that opts out.
 *
 * A test that failed is tidied (its registrations released, best effort) before close(), so the
 * failure reported is its own, not the registrations it never got to release.
 */
export function useTestServer(env?: Record<string, string>): () => TestServer {
  let current: TestServer | undefined;
  beforeEach(async () => {
    current = await startTestServer(env);
    fixtureServers.add(current);
  });
  afterEach(async function () {
    const t = current;
    current = undefined;
    if (!t) return;
    try {
      if (leaving.has(t)) {
        const released = await releaseRegistrations(t);
        assert.ok(released > 0, 'the test declared leavesRegistrations() but left no registration: drop the declaration');
      } else if (this.currentTest?.state === 'failed') {
        await releaseRegistrations(t).catch(() => undefined);
      }
    } finally {
      await t.close();
    }
  });
  return () => {
    if (!current) throw new Error('useTestServer: the server exists only while a test (or its hooks) runs');
    return current;
  };
}

/**
 * Declares that the running test leaves registrations on `t` (a useTestServer server) on purpose:
 * the fixture releases them after the test instead of failing it. Only for tests where leaving
 * them is the point; every other test releases what it registered.
 */
export function leavesRegistrations(t: TestServer): void {
  if (!fixtureServers.has(t)) throw new Error('leavesRegistrations: only for a server from useTestServer');
  leaving.add(t);
}

/** Releases every interpreter that holds registrations; returns how many registrations went. */
async function releaseRegistrations(t: TestServer): Promise<number> {
  const page = await t.client.listInterpreters({ pageSize: 1000 });
  let released = 0;
  for (const i of page.interpreters) {
    if (i.registrationReferences > 0) released += (await t.client.release({ interpreterId: i.id })).releasedRegistrationIds.length;
  }
  return released;
}
