/**
 * The worker thread behind SqliteWorkerStore: it owns the SQLite connection, so each commit's
 * fsync (synchronous=FULL) blocks this thread, never the server's event loop.
 *
 * Messages in: {seq, method, args}. Out: {seq, value} or {seq, error: {name, message, ...}}, and
 * first {ready: description} or {failed: error} for the open.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteStore } from './SqliteStore';
import { NameTakenError } from '../core/durability/RecipeStore';

interface Call {
  seq: number;
  method: 'loadAll' | 'load' | 'create' | 'versions' | 'loadVersion' | 'append' | 'release' | 'setPaused' | 'remove' | 'close';
  args: unknown[];
}

/** What SqliteWorkerStore.open hands the thread: SqliteStore.open's arguments. */
export interface WorkerData {
  dataDir: string;
  maxVersions?: number;
}

export interface WireError {
  name: string;
  message: string;
  tenant?: string;
  interpreterName?: string;
  holder?: string;
}

function wire(err: unknown): WireError {
  if (err instanceof NameTakenError) return { name: err.name, message: err.message, tenant: err.tenant, interpreterName: err.interpreterName, holder: err.holder };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: 'Error', message: String(err) };
}

const port = parentPort;
if (port) {
  let store: SqliteStore | undefined;
  try {
    const { dataDir, maxVersions } = workerData as WorkerData;
    store = SqliteStore.open(dataDir, { maxVersions });
    port.postMessage({ ready: store.description });
  } catch (err) {
    port.postMessage({ failed: wire(err) });
  }
  port.on('message', (call: Call) => {
    const s = store;
    if (!s) return;
    const method = s[call.method] as (...args: unknown[]) => Promise<unknown>;
    method.apply(s, call.args).then(
      (value) => {
        port.postMessage({ seq: call.seq, value });
        if (call.method === 'close') port.close();
      },
      (err: unknown) => port.postMessage({ seq: call.seq, error: wire(err) }),
    );
  });
}
