/**
 * The process's other signals and start-up checks around credentials (src/main.ts): SIGHUP
 * re-reads the API keys file and never ends the process (Node.js would by default); a bad keys
 * file or TLS file stops start-up with exit code 2; an open server warns.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expectStatus, grpc, TestClient } from '../helpers/client';
import { logLines, scratchDataDir, spawnServer, type ServerProcess } from '../helpers/process';
import { SHARED, succeeded } from '../helpers/proto';

const sha = (key: string): string => createHash('sha256').update(key).digest('hex');

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs src/main.ts to its exit; resolves with its exit code and stderr. */
function runToExit(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, ['--no-node-snapshot', '--import', 'tsx', path.join(__dirname, '../../src/main.ts')], {
    env: { ...process.env, ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0', ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0', ISOGEAR_SHARED_ISOLATES: '1', ISOGEAR_DATA_DIR: scratchDataDir(), ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stderr })));
}

describe('signals and credential checks of the process', function () {
  this.timeout(20_000);
  let dir: string;
  let keysPath: string;
  const procs: ServerProcess[] = [];
  const clients: TestClient[] = [];
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-signals-'));
    keysPath = path.join(dir, 'keys.json');
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const p of procs.splice(0)) {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
      await p.exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGHUP re-reads the keys file; the process keeps serving', async () => {
    writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('one') }] }));
    const p = await spawnServer({ ISOGEAR_API_KEYS_FILE: keysPath });
    procs.push(p);
    const two = new TestClient(p.grpcAddress, 'two');
    clients.push(two);
    await expectStatus(two.listInterpreters({}), grpc.status.UNAUTHENTICATED);
    const reloads = (): number => logLines(p.output().stdout).filter((l) => l.msg === 'API keys reloaded').length;
    // the file is unchanged, so the change poll has nothing to do: only SIGHUP re-reads it
    p.child.kill('SIGHUP');
    await until('the reload SIGHUP asks for', () => reloads() === 1);
    writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('two') }] }));
    p.child.kill('SIGHUP');
    await until('the reload of the new file', () => reloads() >= 2);
    succeeded(await two.execute({ source: 'export default 1', mode: SHARED }));
    assert.equal(p.child.exitCode, null, 'still running');
  });

  it('SIGHUP on a server without a keys file changes nothing and ends nothing', async () => {
    const p = await spawnServer();
    procs.push(p);
    const warn = logLines(p.output().stdout).find((l) => l.level === 'warn' && /no ISOGEAR_API_KEYS_FILE: the server is open/.test(String(l.msg)));
    assert.ok(warn, 'an open server says so at start-up');
    p.child.kill('SIGHUP');
    await new Promise((r) => setTimeout(r, 200));
    const client = new TestClient(p.grpcAddress);
    clients.push(client);
    assert.equal(await client.healthCheck(), 'SERVING');
    assert.equal(p.child.exitCode, null);
  });

  it('a port already taken fails start-up with exit code 1 and the reason, after disposing what it made', async () => {
    const first = await spawnServer();
    procs.push(first);
    const taken = await runToExit({ ISOGEAR_GRPC_ADDRESS: first.grpcAddress });
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /isogear: failed to start: .*(EADDRINUSE|No address added out of total 1 resolved)/s);
  });

  it('a bad keys file or an unreadable TLS file stops start-up with exit code 2 and a message naming it', async () => {
    writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: 'plaintext-key' }] }));
    const bad = await runToExit({ ISOGEAR_API_KEYS_FILE: keysPath });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /ISOGEAR_API_KEYS_FILE: .*keys\.json: tenants\[0\]\.keySha256 must be 64 hex digits/);
    assert.doesNotMatch(bad.stderr, /plaintext-key/);
    const tls = await runToExit({ ISOGEAR_TLS_CERT_FILE: path.join(dir, 'none.crt'), ISOGEAR_TLS_KEY_FILE: path.join(dir, 'none.key') });
    assert.equal(tls.code, 2);
    assert.match(tls.stderr, /ISOGEAR_TLS_CERT_FILE: cannot read .*none\.crt: ENOENT/);
  });
});
