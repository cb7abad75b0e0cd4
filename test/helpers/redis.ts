import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './process';

/** True when Debian's `redis-server` is on PATH. */
export const HAVE_REDIS: boolean = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;

export interface TestRedis {
  url: string;
  port: number;
  /** Kills the server and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /**
   * Kills the server (SIGKILL: every client sees its connection drop) and starts it again on the
   * same port. Without `persist` it comes back empty, as a Redis without persistence does after a
   * crash; with it, it reloads its append-only file.
   */
  restart(): Promise<void>;
}

/**
 * Mocha `before` guard for tests that need a real Redis: CI must have it (.ci/run installs Debian's
 * redis-server package), so there a missing one fails the suite; a developer without it gets a
 * loud warning and a skip.
 */
export function requireRedis(ctx: Mocha.Context): void {
  if (HAVE_REDIS) return;
  if (process.env.CI) throw new Error("redis-server is not installed: .ci/run must install Debian's redis-server package");
  console.warn('\n    !!! redis-server is not installed (apt-get install redis-server): SKIPPING the Redis store tests !!!\n');
  ctx.skip();
}

/** Sends PING on a fresh socket; true when +PONG comes back. */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.on('error', () => done(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts a real redis-server on 127.0.0.1 on a port the OS picked, in its own temporary directory,
 * and resolves once it answers PING. No RDB snapshots; an append-only file (fsync always) only
 * with `persist`.
 */
export async function startRedis(options: { persist?: boolean } = {}): Promise<TestRedis> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-redis-'));
  const persistence = options.persist ? ['--appendonly', 'yes', '--appendfsync', 'always'] : ['--appendonly', 'no'];
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let output = '';

  /** Starts redis on `port` and waits for PING; false when it exited first (the port was taken). */
  async function launch(port: number): Promise<boolean> {
    output = '';
    const proc = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...persistence, '--dir', dir, '--logfile', ''],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child = proc;
    let gone = false;
    exited = new Promise((resolve) =>
      proc.once('exit', () => {
        gone = true;
        resolve();
      }),
    );
    proc.stdout?.on('data', (c: Buffer) => (output += c.toString()));
    proc.stderr?.on('data', (c: Buffer) => (output += c.toString()));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (gone) return false;
      if (await ping(port)) return true;
      await sleep(20);
    }
    proc.kill('SIGKILL');
    await exited;
    throw new Error(`redis-server on port ${port} did not answer PING within 10 s\n${output}`);
  }

  async function kill(): Promise<void> {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    child = undefined;
  }

  let port = 0;
  try {
    // Between closing the probe socket and redis binding, another process may take the port.
    for (let attempt = 0; ; attempt++) {
      port = await freePort();
      if (await launch(port)) break;
      if (attempt === 4) throw new Error(`redis-server would not start:\n${output}`);
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  let stopped = false;
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async stop() {
      if (stopped) return;
      stopped = true;
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      if (stopped) throw new Error('restart after stop');
      await kill();
      if (!(await launch(port))) throw new Error(`redis-server could not restart on port ${port}:\n${output}`);
    },
  };
}
