import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { loadConfig, type Config } from '../../src/config';
import type { InterpreterManager } from '../../src/core/InterpreterManager';
import { createLogger } from '../../src/logger';
import { startServer, type RunningServer } from '../../src/server';
import { TestClient } from './client';

export interface TestServer {
  server: RunningServer;
  client: TestClient;
  manager: InterpreterManager;
  config: Config;
  /** JSON log lines the server wrote. */
  logs: Record<string, unknown>[];
  /** Asserts nothing leaked, then closes client and server. */
  close(): Promise<void>;
}

/** Starts a real server on 127.0.0.1:0 with small limits unless overridden. */
export async function startTestServer(env: Record<string, string> = {}): Promise<TestServer> {
  // each server its own embedded store, unless the test chose one
  const dataDir = env.ISOGEAR_DATA_DIR === undefined && env.ISOGEAR_STORE === undefined ? mkdtempSync(path.join(os.tmpdir(), 'isogear-data-')) : undefined;
  const config = loadConfig({
    ...(dataDir ? { ISOGEAR_DATA_DIR: dataDir } : {}),
    ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0',
    ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0',
    ISOGEAR_SHARED_ISOLATES: '2',
    ISOGEAR_SHARED_MEMORY_MB: '128',
    ISOGEAR_LOG_LEVEL: 'debug',
    ...env,
  });
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const server = await startServer(config, createLogger(config.logLevel, sink));
  const client = new TestClient(server.grpcAddress);
  let closed = false;
  return {
    server,
    client,
    manager: server.manager,
    config,
    logs,
    async close() {
      if (closed) return;
      closed = true;
      try {
        await assertNoLeaks(server.manager);
      } finally {
        client.close();
        await server.shutdown(2000);
        if (dataDir) rmSync(dataDir, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Waits (bounded) for runs still in flight to end, then asserts no interpreter, registration,
 * reference or dedicated isolate is left.
 */
export async function assertNoLeaks(manager: InterpreterManager, waitMs = 5000): Promise<void> {
  await waitIdle(manager, waitMs);
  const c = manager.counters();
  assert.deepEqual(
    {
      interpreters: c.interpreters,
      registrations: c.registrations,
      dedicatedIsolates: c.dedicatedIsolates,
      references: c.references,
      executionsInFlight: c.executionsInFlight,
      executionsLive: c.executions.live,
    },
    { interpreters: 0, registrations: 0, dedicatedIsolates: 0, references: { registration: 0, execution: 0 }, executionsInFlight: 0, executionsLive: 0 },
    'something leaked',
  );
  assert.equal(c.isolatesCreated.dedicated, c.isolatesDisposed.dedicated, 'every dedicated isolate created was disposed');
}

/** Waits (bounded, never failing) until no run is in flight. */
export async function waitIdle(manager: InterpreterManager, ms: number): Promise<void> {
  const until = Date.now() + ms;
  const busy = (): boolean => {
    const c = manager.counters();
    return c.executionsInFlight > 0 || c.executions.live > 0;
  };
  while (busy() && Date.now() < until) await sleep(10);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A promise with its resolve exposed. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
