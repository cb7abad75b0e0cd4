import { releaseAll, startTestServer, type TestServer } from './server';

/**
 * Gives each test of the calling describe block its own server: registers a mocha beforeEach that
 * starts one (startTestServer(env)) and an afterEach that releases what the test left registered,
 * then closes it (which asserts nothing leaked). Returns a getter for the current test's server.
 */
export function useTestServer(env?: Record<string, string>): () => TestServer {
  let current: TestServer | undefined;
  beforeEach(async () => {
    current = await startTestServer(env);
  });
  afterEach(async () => {
    const t = current;
    current = undefined;
    if (!t) return;
    await releaseAll(t);
    await t.close();
  });
  return () => {
    if (!current) throw new Error('useTestServer: the server exists only while a test (or its hooks) runs');
    return current;
  };
}
