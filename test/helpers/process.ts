import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import type { Readable } from 'node:stream';

export interface ServerProcess {
  child: ChildProcessByStdio<null, Readable, Readable>;
  grpcAddress: string;
  metricsAddress: string;
  /** Everything the process wrote so far. */
  output(): { stdout: string; stderr: string };
  /** Resolves with `code N signal S` when the process ends. */
  exited: Promise<string>;
}

/**
 * Starts the server as its own process on loopback and waits for its start-up line (logged at
 * info: keep ISOGEAR_LOG_LEVEL at info or below): `src/main.ts` through tsx, or with `compiled`
 * the build in `dist/` exactly as `npm start` runs it (benchmarks: tsx's transform adds a
 * helper call to every function expression it names). `keepOutput: false` stops collecting
 * stdout after start-up, for long runs.
 */
export async function spawnServer(env: Record<string, string> = {}, keepOutput = true, compiled = false): Promise<ServerProcess> {
  const entry = compiled ? [path.join(__dirname, '../../dist/main.js')] : ['--import', 'tsx', path.join(__dirname, '../../src/main.ts')];
  // each server its own embedded store, unless the test chose one (a restart test reuses its own)
  const dataDir = env.ISOGEAR_DATA_DIR === undefined && env.ISOGEAR_STORE === undefined ? mkdtempSync(path.join(os.tmpdir(), 'isogear-data-')) : undefined;
  const child = spawn(process.execPath, ['--no-node-snapshot', ...entry], {
    env: {
      ...process.env,
      ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0',
      ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0',
      ISOGEAR_SHARED_ISOLATES: '1',
      ...(dataDir ? { ISOGEAR_DATA_DIR: dataDir } : {}),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<string>((resolve) =>
    child.on('exit', (code, signal) => {
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
      resolve(`code ${code} signal ${signal}`);
    }),
  );
  let collecting = true;
  const started = await new Promise<{ grpcAddress: string; metricsAddress: string }>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      if (!collecting) return;
      stdout += chunk.toString();
      const line = stdout.split('\n').find((l) => l.includes('isogear started'));
      if (line) {
        collecting = keepOutput;
        resolve(JSON.parse(line) as { grpcAddress: string; metricsAddress: string });
      }
    });
    void exited.then((how) => reject(new Error(`server ${how} before starting\n${stdout}\n${stderr}`)));
  });
  return { child, ...started, output: () => ({ stdout, stderr }), exited };
}

/** The JSON log lines a process wrote to stdout. */
export function logLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** GET /metrics of a server: each sample keyed by `name{labels}` as exposed. */
export function scrapeMetrics(address: string): Promise<Map<string, number>> {
  return new Promise((resolve, reject) => {
    http
      .get(`http://${address}/metrics`, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => {
          const out = new Map<string, number>();
          for (const line of body.split('\n')) {
            const m = /^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$/.exec(line);
            if (m) out.set(m[1], Number(m[2]));
          }
          resolve(out);
        });
      })
      .on('error', reject);
  });
}

const scratchDirs: string[] = [];
process.on('exit', () => {
  for (const d of scratchDirs) rmSync(d, { recursive: true, force: true });
});

/** A data directory of its own for a server a test starts by hand (removed when the tests end). */
export function scratchDataDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'isogear-data-'));
  scratchDirs.push(d);
  return d;
}

/** A loopback port free now (the OS picked it), for a server that must be reached before it logs its address. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts connections on 127.0.0.1:`port` now. */
export function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
