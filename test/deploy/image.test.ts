/**
 * The container image (deploy/Dockerfile + .dockerignore). No Docker engine runs here, so the
 * checks are: a real Dockerfile linter, the policy rules a security review asks for, the build
 * context .dockerignore admits, and a rehearsal that builds the runtime tree the way the
 * Dockerfile does and runs its CMD against a real client.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import dockerignore from '@balena/dockerignore';
import { validate as lintDockerfile } from 'dockerfile-utils';
import { loadConfig } from '../../src/config';
import { ENGINE_PATCH_MARKER } from '../../src/sandbox/engineCheck';
import { SERVICE_NAME } from '../../src/server';
import { TestPki } from '../helpers/certs';
import { grpc, pb, TestClient } from '../helpers/client';
import { kubectlAvailable, readText, renderOverlay, ROOT } from '../helpers/deploy';
import { copies, execForm, imageEnv, imageUser, of, parseDockerfile, workdir, type ParsedDockerfile } from '../helpers/dockerfile';
import { succeeded } from '../helpers/proto';

const dockerignoreRules = (): string[] => readText('.dockerignore').split('\n');

/** Every file in the repository (not .git) that .dockerignore lets into the build context. */
function buildContext(): string[] {
  const ig = dockerignore().add(dockerignoreRules());
  const files: string[] = [];
  const walk = (rel: string): void => {
    for (const entry of readdirSync(path.join(ROOT, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${entry.name}` : entry.name;
      if (p === '.git') continue;
      if (entry.isDirectory()) walk(p);
      else if (!ig.ignores(p)) files.push(p);
    }
  };
  walk('');
  return files.sort();
}

const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1));

describe('container image (deploy/Dockerfile)', function () {
  this.timeout(30_000);
  let df: ParsedDockerfile;
  before(() => {
    df = parseDockerfile();
  });

  it('passes the Dockerfile linter (dockerfile-utils) with no diagnostics', () => {
    const diagnostics = lintDockerfile(df.text, {});
    assert.deepEqual(
      diagnostics.map((d) => `line ${d.range.start.line + 1}: ${d.message}`),
      [],
    );
  });

  it('the linter is live: it reports a broken Dockerfile', () => {
    const broken = `${df.text}\nEXPOSE 99999\nMAINTAINER someone\nCOPY --chmod\n`;
    assert.ok(lintDockerfile(broken, {}).length >= 2);
  });

  it('builds on the official Node 22 image and runs on its slim variant, same Node and Debian release', () => {
    assert.equal(df.stages.length, 2);
    const [build, runtime] = df.stages;
    assert.match(build.image, /^node:22-([a-z]+)$/);
    const release = /^node:22-([a-z]+)$/.exec(build.image)?.[1];
    assert.equal(runtime.image, `node:22-${release}-slim`, 'the addon compiled in the build stage needs the same ABI and glibc');
    assert.ok(of(build, 'RUN').some((r) => /\bnpm ci\b/.test(r.getArgumentsContent() ?? '')), 'dependencies come from the lockfile (npm ci)');
    assert.ok(of(build, 'RUN').some((r) => /npm prune --omit=dev/.test(r.getArgumentsContent() ?? '')), 'dev dependencies are dropped');
    assert.equal(of(runtime, 'RUN').filter((r) => /\bnpm\b/.test(r.getArgumentsContent() ?? '')).length, 0, 'no npm install in the runtime stage');
  });

  it('follows the review rules hadolint would apply (DL3000, DL3002, DL3004, DL3006/7, DL3009, DL3014/15, DL3020, DL3022, DL3025, DL4006)', () => {
    const stageNames = df.stages.map((s) => s.name);
    for (const [i, stage] of df.stages.entries()) {
      assert.ok(/:[^:]+$/.test(stage.image) && !stage.image.endsWith(':latest'), `${stage.image}: a pinned tag`);
      assert.ok(workdir(stage).startsWith('/'), 'WORKDIR is absolute');
      assert.equal(of(stage, 'ADD').length, 0, 'COPY, not ADD');
      for (const c of copies(stage)) if (c.from) assert.ok(stageNames.slice(0, i).includes(c.from), `COPY --from=${c.from} names an earlier stage`);
      for (const run of of(stage, 'RUN')) {
        const cmd = run.getArgumentsContent() ?? '';
        assert.ok(!/\bsudo\b/.test(cmd), 'no sudo');
        assert.ok(!/(^|&&|;)\s*cd\s/.test(cmd), 'WORKDIR, not cd');
        assert.ok(!/[^|]\|[^|]/.test(cmd) || /pipefail/.test(cmd), 'a pipe needs pipefail');
        if (/apt-get install/.test(cmd)) {
          assert.match(cmd, /apt-get install -y --no-install-recommends/);
          assert.match(cmd, /rm -rf \/var\/lib\/apt\/lists\/\*/, 'apt lists removed in the same layer');
          assert.match(cmd, /apt-get update/, 'update in the same layer as install');
        }
      }
    }
    const user = imageUser(df);
    assert.match(user, /^[1-9]\d*:[1-9]\d*$/, 'the final USER is a numeric, non-root uid:gid');
    assert.ok(execForm(of(df.final, 'CMD')[0]), 'CMD in exec form');
    assert.ok(execForm(of(df.final, 'ENTRYPOINT')[0]), 'ENTRYPOINT in exec form');
  });

  it('starts on the entry point `npm start` uses, under tini as PID 1 forwarding signals', () => {
    const start = (JSON.parse(readText('package.json')) as { scripts: Record<string, string> }).scripts.start;
    const steps = start.split('&&').map((s) => s.trim());
    const run = steps[steps.length - 1].split(/\s+/);
    assert.deepEqual(execForm(of(df.final, 'CMD')[0]), run, `CMD equals the last step of npm start (${start})`);
    assert.ok(run.includes('--no-node-snapshot'));
    for (const step of steps.slice(0, -1)) {
      assert.ok(of(df.stages[0], 'RUN').some((r) => (r.getArgumentsContent() ?? '').includes(step)), `the build stage runs "${step}" as npm start does`);
    }
    const entrypoint = execForm(of(df.final, 'ENTRYPOINT')[0]) ?? [];
    assert.deepEqual(entrypoint, ['/usr/bin/tini', '--']);
    assert.ok(of(df.final, 'RUN').some((r) => /install [^&]*\btini\b/.test(r.getArgumentsContent() ?? '')), 'tini is installed in the runtime stage');
  });

  it('exposes exactly the gRPC and metrics ports the server binds with the image environment', () => {
    const config = loadConfig(imageEnv(df));
    const exposed = of(df.final, 'EXPOSE').flatMap((e) => e.getArguments().map((a) => Number(a.getValue().split('/')[0])));
    assert.deepEqual(exposed.sort(), [portOf(config.grpcAddress), portOf(config.metricsAddress)].sort());
  });

  it('runs as the user the Kubernetes manifests expect', function () {
    if (!kubectlAvailable()) this.skip();
    for (const overlay of ['dev', 'production'] as const) {
      const dep = renderOverlay(overlay).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { securityContext: { runAsUser: number; runAsGroup: number } } } } };
      const sc = dep.spec.template.spec.securityContext;
      assert.equal(`${sc.runAsUser}:${sc.runAsGroup}`, imageUser(df), overlay);
    }
  });

  it('.dockerignore admits exactly what the build stage copies, and no secrets, builds or dependencies', () => {
    const context = buildContext();
    for (const c of copies(df.stages[0])) {
      for (const src of c.sources) {
        assert.ok(context.some((f) => f === src || f.startsWith(`${src}/`)), `COPY ${src}: in the build context`);
      }
    }
    const copied = copies(df.stages[0]).flatMap((c) => c.sources);
    for (const f of context) assert.ok(copied.some((src) => f === src || f.startsWith(`${src}/`)), `${f} is in the context but never copied`);
    const ig = dockerignore().add(dockerignoreRules());
    for (const p of ['node_modules/isolated-vm/package.json', 'dist/main.js', '.git/config', 'test/unit/config.test.ts', 'deploy/Dockerfile', '.env', 'bench-results/latency.json', 'src/x.tmp.ts']) {
      assert.ok(ig.ignores(p), `${p} stays out of the context`);
    }
  });

  describe('rehearsal: the runtime tree the Dockerfile builds serves a real client', function () {
    this.timeout(180_000);
    let tmp: string;
    let runtimeDir: string;

    before(function () {
      tmp = mkdtempSync(path.join(os.tmpdir(), 'isogear-image-'));
      const contextDir = path.join(tmp, 'context');
      const stageDirs: Record<string, string> = {};
      for (const f of buildContext()) {
        mkdirSync(path.dirname(path.join(contextDir, f)), { recursive: true });
        cpSync(path.join(ROOT, f), path.join(contextDir, f));
      }
      for (const stage of df.stages) {
        const dir = path.join(tmp, stage.name);
        stageDirs[stage.name] = dir;
        mkdirSync(dir, { recursive: true });
        const wd = workdir(stage);
        for (const ins of stage.instructions) {
          const keyword = ins.getKeyword();
          if (keyword === 'COPY') {
            const [c] = copies({ ...stage, instructions: [ins] });
            for (const src of c.sources) {
              // COPY --from reads an absolute path in the earlier stage, whose root is its dir here.
              const from = c.from ? path.join(stageDirs[c.from], path.relative(workdir(df.stages.find((s) => s.name === c.from) ?? stage), src)) : path.join(contextDir, src);
              const to = c.dest.endsWith('/') ? path.join(dir, path.relative(wd, path.resolve(wd, c.dest)), path.basename(src)) : path.join(dir, path.relative(wd, path.resolve(wd, c.dest)));
              cpSync(from, to, { recursive: true });
            }
          } else if (keyword === 'RUN') {
            const cmd = ins.getArgumentsContent() ?? '';
            if (/apt-get/.test(cmd)) continue; // OS packages and users: not rehearsable without an engine
            if (/^npm ci\b/.test(cmd)) {
              // Same lockfile, same result: copy the tree `npm ci` made for this checkout
              // instead of downloading and compiling isolated-vm again.
              cpSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), { recursive: true, verbatimSymlinks: true });
              continue;
            }
            execFileSync('sh', ['-c', cmd], { cwd: dir, stdio: 'pipe', env: { ...process.env, npm_config_offline: 'true', npm_config_audit: 'false' } });
          }
        }
      }
      runtimeDir = stageDirs[df.final.name];
      // Root-owned, read-only files in the image; the pod's root filesystem is read-only too.
      const readOnly = (p: string): void => {
        const st = statSync(p);
        if (st.isDirectory()) for (const e of readdirSync(p)) readOnly(path.join(p, e));
        chmodSync(p, st.mode & ~0o222);
      };
      readOnly(runtimeDir);
    });

    after(() => {
      if (!tmp) return;
      const writable = (p: string): void => {
        const st = statSync(p);
        chmodSync(p, st.mode | 0o200);
        if (st.isDirectory()) for (const e of readdirSync(p)) writable(path.join(p, e));
      };
      if (existsSync(tmp)) writable(tmp);
      rmSync(tmp, { recursive: true, force: true });
    });

    it('holds production dependencies only', () => {
      // package-lock marks packages only dev dependencies need with "dev": true.
      const lock = JSON.parse(readText('package-lock.json')) as { packages: Record<string, { dev?: boolean; optional?: boolean }> };
      const installed = Object.entries(lock.packages).filter(([p, info]) => p.startsWith('node_modules/') && !info.optional);
      const dev = installed.filter(([, info]) => info.dev).map(([p]) => p);
      const prod = installed.filter(([, info]) => !info.dev).map(([p]) => p);
      assert.ok(dev.length > 50 && prod.length > 10);
      for (const p of dev) assert.ok(!existsSync(path.join(runtimeDir, p)), `${p} (dev only) is absent`);
      for (const p of prod) assert.ok(existsSync(path.join(runtimeDir, p)), `${p} is present`);
      const addon = path.join(runtimeDir, 'node_modules/isolated-vm/out/isolated_vm.node');
      assert.ok(existsSync(addon), 'the compiled isolated-vm addon is kept');
      assert.ok(readFileSync(addon).includes(ENGINE_PATCH_MARKER), 'the addon is the one built with the module-handles patch');
      assert.ok(existsSync(path.join(runtimeDir, 'proto/isogear/v1/gears.proto')), 'proto/ ships: the server loads it for reflection');
      assert.ok(!existsSync(path.join(runtimeDir, 'src')), 'no TypeScript sources in the runtime');
    });

    it('CMD starts the server with the production settings; health, Execute in both modes and /metrics work; SIGTERM exits 0', async function () {
      if (!kubectlAvailable()) this.skip();
      const cmd = execForm(of(df.final, 'CMD')[0]) ?? [];
      assert.equal(cmd[0], 'node');
      const settings = renderOverlay('production').find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('isogear-config')) as unknown as { data: Record<string, string> };
      // The Secrets production mounts under /etc/isogear: made here, in a directory standing in for it.
      const pki = new TestPki();
      const secrets = path.join(pki.dir, 'etc-isogear');
      mkdirSync(path.join(secrets, 'keys'), { recursive: true });
      mkdirSync(path.join(secrets, 'tls'), { recursive: true });
      const apiKey = 'rehearsal-key';
      writeFileSync(path.join(secrets, 'keys/keys.json'), JSON.stringify({ tenants: [{ name: 'ops', keySha256: createHash('sha256').update(apiKey).digest('hex') }] }));
      const ca = pki.ca('rehearsal-ca');
      const cert = pki.issue(ca, 'rehearsal-server', 'isogear', true);
      writeFileSync(path.join(secrets, 'tls/tls.crt'), cert.cert);
      writeFileSync(path.join(secrets, 'tls/tls.key'), cert.key);
      const mounted = Object.fromEntries(Object.entries(settings.data).map(([k, v]) => [k, v.startsWith('/etc/isogear/') ? path.join(secrets, v.slice('/etc/isogear/'.length)) : v]));
      const env = {
        PATH: process.env.PATH ?? '',
        HOME: '/nonexistent',
        ...imageEnv(df),
        ...mounted,
        // Tests listen on loopback only; everything else is the production overlay's.
        ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0',
        ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0',
        ISOGEAR_HEALTH_ADDRESS: '127.0.0.1:0',
      };
      const child = spawn(process.execPath, cmd.slice(1), { cwd: runtimeDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(`code ${code} signal ${signal}`)));
      const started = await new Promise<{ grpcAddress: string; metricsAddress: string; healthAddress: string; config: Record<string, unknown> }>((resolve, reject) => {
        child.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const line = out.split('\n').find((l) => l.includes('isogear started'));
          if (line) resolve(JSON.parse(line) as { grpcAddress: string; metricsAddress: string; healthAddress: string; config: Record<string, unknown> });
        });
        child.on('exit', (code) => reject(new Error(`exited ${code} before starting\n${out}\n${err}`)));
      });
      assert.equal(started.config.maxInterpreters, Number(settings.data.ISOGEAR_MAX_INTERPRETERS), 'the ConfigMap settings are in effect');
      // TLS with an API key, as production clients connect; probes in plaintext on the health port
      const client = new TestClient(started.grpcAddress, apiKey, grpc.credentials.createSsl(ca.cert), { 'grpc.ssl_target_name_override': 'localhost' });
      const probe = new TestClient(started.healthAddress);
      const plaintext = new TestClient(started.grpcAddress, apiKey);
      try {
        assert.equal(await probe.healthCheck(''), 'SERVING');
        assert.equal(await probe.healthCheck(SERVICE_NAME), 'SERVING');
        assert.equal(await client.healthCheck(SERVICE_NAME), 'SERVING');
        await assert.rejects(plaintext.healthCheck(''), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE, 'production serves TLS only');
        await assert.rejects(new TestClient(started.grpcAddress, undefined, grpc.credentials.createSsl(ca.cert), { 'grpc.ssl_target_name_override': 'localhost' }).execute({ source: 'export default 1' }), (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED);
        for (const mode of [pb.IsolationMode.ISOLATION_MODE_SHARED, pb.IsolationMode.ISOLATION_MODE_ISOLATE]) {
          const res = await client.execute({ source: 'import m from "m"; export default (a) => m(a.n)', modules: { m: 'export default (n) => n * 6' }, args: { n: 7 }, mode });
          succeeded(res);
          assert.equal(res.result, 42);
        }
        const metrics = await new Promise<string>((resolve, reject) => {
          http.get(`http://${started.metricsAddress}/metrics`, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve(body));
          }).on('error', reject);
        });
        assert.match(metrics, /^isogear_executions_total\{.*\} \d+/m);
        // Nothing leaked: both runs are done and their interpreters disposed.
        const interpreters = [...metrics.matchAll(/^isogear_interpreters\{[^}]*\} (\d+)/gm)].reduce((s, m) => s + Number(m[1]), 0);
        assert.equal(interpreters, 0, 'no interpreter outlives its Execute');
        assert.match(metrics, /^isogear_isolates\{kind="dedicated"\} 0$/m);
      } finally {
        for (const c of [client, probe, plaintext]) c.close();
        child.kill('SIGTERM');
        pki.close();
      }
      assert.equal(await exited, 'code 0 signal null', `stdout: ${out}\nstderr: ${err}`);
      assert.match(out, /"msg":"stopped"/);
    });
  });
});
