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
import { kubectlAvailable, OVERLAYS, readText, renderOverlay, ROOT } from '../helpers/deploy';
import { copies, execForm, imageEnv, imageUser, imageVolumes, of, parseDockerfile, workdir, type ParsedDockerfile } from '../helpers/dockerfile';
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

/** The embedded store's native addon, where `bindings` looks for it, and what its build leaves beside it. */
/** better-sqlite3 13's own Node-API binary for the image's system (in its npm tarball, under the lockfile's hash). */
const SQLITE_ADDON = `node_modules/better-sqlite3/prebuilds/linux-${process.arch}.node`;
const SQLITE_LEFTOVERS = ['deps', 'src', 'prebuilds/darwin-arm64.node', 'prebuilds/win32-x64.node', 'prebuilds/linuxmusl-x64.node'].map((p) => `node_modules/better-sqlite3/${p}`);
/** The patched addon the build stage compiles; isolated-vm's own prebuilt binaries are unpatched and removed. */
const IVM_ADDON = 'node_modules/isolated-vm/build/Release/isolated_vm.node';
const IVM_LEFTOVERS = ['prebuilds', 'src', 'vendor'].map((p) => `node_modules/isolated-vm/${p}`);

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

  it('builds on the official Node 24 image and runs on its slim variant, same Node and Debian release', () => {
    assert.equal(df.stages.length, 2);
    const [build, runtime] = df.stages;
    assert.match(build.image, /^node:24-(bookworm|trixie)$/);
    const release = /^node:24-([a-z]+)$/.exec(build.image)?.[1];
    assert.equal(runtime.image, `node:24-${release}-slim`, 'the addon compiled in the build stage needs the same ABI and glibc');
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

  it('runs as the user the Kubernetes manifests expect, whose group (fsGroup) owns the volumes', function () {
    if (!kubectlAvailable()) this.skip();
    for (const overlay of OVERLAYS) {
      const dep = renderOverlay(overlay).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { securityContext: { runAsUser: number; runAsGroup: number; fsGroup?: number } } } } };
      const sc = dep.spec.template.spec.securityContext;
      assert.equal(`${sc.runAsUser}:${sc.runAsGroup}`, imageUser(df), overlay);
      assert.equal(sc.fsGroup, sc.runAsGroup, `${overlay}: the kubelet makes the data volume writable to the image's group`);
    }
  });

  it('compiles nothing for better-sqlite3 (its binary is in the npm tarball) and ships only what runs', () => {
    const [build] = df.stages;
    assert.ok(!/npm_config_build_from_source/.test(df.stages.flatMap((st) => of(st, 'ENV')).map((e) => e.getArgumentsContent()).join('\n')), 'no source build is asked for');
    const runs = of(build, 'RUN').map((r) => r.getArgumentsContent() ?? '');
    // The leftovers' removal is rehearsed below; here: it happens after the prune, in the build stage.
    const trim = runs.find((r) => r.includes('node_modules/isolated-vm/prebuilds'));
    assert.ok(trim && trim.indexOf('npm prune') < trim.indexOf('rm -rf'), 'leftovers are removed after the prune');
    assert.ok(!trim.includes(SQLITE_ADDON) && !trim.includes('build/Release') && !/prebuilds\/linux-/.test(trim), 'the addons themselves stay');
  });

  it('gives the service user its data directory, ISOGEAR_DATA_DIR, as a VOLUME; the manifests mount their data volume there', function () {
    const env = imageEnv(df);
    const dataDir = env.ISOGEAR_DATA_DIR;
    assert.ok(dataDir?.startsWith('/'), 'the image sets an absolute ISOGEAR_DATA_DIR (the default ./data is under the read-only /app)');
    assert.equal(loadConfig(env).dataDir, dataDir);
    assert.deepEqual(imageVolumes(df), [dataDir], 'declared a VOLUME: `docker run` keeps it outside the container layer, writable under --read-only');
    const [uid, gid] = imageUser(df).split(':');
    const runs = of(df.final, 'RUN').map((r) => r.getArgumentsContent() ?? '');
    const escaped = dataDir.replace(/[/.]/g, '\\$&');
    assert.ok(runs.some((r) => new RegExp(`mkdir -p ${escaped}(\\s|$)`).test(r)), `${dataDir} is created`);
    assert.ok(runs.some((r) => new RegExp(`chown ${uid}:${gid} ${escaped}(\\s|$)`).test(r)), `${dataDir} is owned by ${uid}:${gid}, the USER`);
    const volumeAt = df.final.instructions.findIndex((i) => i.getKeyword() === 'VOLUME');
    const chownAt = df.final.instructions.findIndex((i) => i.getKeyword() === 'RUN' && (i.getArgumentsContent() ?? '').includes(`chown ${uid}:${gid} ${dataDir}`));
    assert.ok(chownAt < volumeAt, 'the ownership is set before VOLUME (later changes to a volume path are discarded)');
    if (!kubectlAvailable()) this.skip();
    for (const overlay of OVERLAYS) {
      const dep = renderOverlay(overlay).find((o) => o.kind === 'Deployment') as unknown as { spec: { template: { spec: { containers: { volumeMounts?: { mountPath: string; readOnly?: boolean }[] }[] } } } };
      const mounts = dep.spec.template.spec.containers[0].volumeMounts ?? [];
      assert.ok(mounts.some((m) => m.mountPath === dataDir && !m.readOnly), `${overlay} mounts a writable volume at ${dataDir}`);
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
    /** Stands in for the volume at the image's ISOGEAR_DATA_DIR: outside the tree, writable. */
    let dataDir: string;

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
      dataDir = path.join(tmp, 'volume-data');
      mkdirSync(dataDir, { mode: 0o750 });
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
      const addon = path.join(runtimeDir, IVM_ADDON);
      assert.ok(existsSync(addon), 'the compiled isolated-vm addon is kept');
      assert.ok(readFileSync(addon).includes(ENGINE_PATCH_MARKER), 'the addon is the one built with the module-handles patch');
      for (const p of IVM_LEFTOVERS) assert.ok(!existsSync(path.join(runtimeDir, p)), `${p} (unpatched binaries, sources) is removed`);
      assert.ok(existsSync(path.join(runtimeDir, SQLITE_ADDON)), "better-sqlite3's binary for this system is kept");
      for (const p of SQLITE_LEFTOVERS) assert.ok(!existsSync(path.join(runtimeDir, p)), `${p} (sources, other systems) is removed`);
      assert.ok(existsSync(path.join(runtimeDir, 'proto/isogear/v1/gears.proto')), 'proto/ ships: the server loads it for reflection');
      assert.ok(!existsSync(path.join(runtimeDir, 'src')), 'no TypeScript sources in the runtime');
    });

    it('the better-sqlite3 addon in the tree loads and keeps a database in the data directory', () => {
      const script = [
        "const Database = require('better-sqlite3');",
        'const db = new Database(process.argv[1]);',
        "db.pragma('journal_mode = WAL');",
        "db.exec('CREATE TABLE IF NOT EXISTS t (v TEXT)');",
        "db.prepare('INSERT INTO t VALUES (?)').run('rehearsal');",
        "process.stdout.write(JSON.stringify(db.prepare('SELECT v, sqlite_version() AS version FROM t').get()));",
        'db.close();',
      ].join('\n');
      const file = path.join(dataDir, 'addon-check.db');
      const out = execFileSync(process.execPath, ['-e', script, file], { cwd: runtimeDir, encoding: 'utf8', env: { PATH: process.env.PATH ?? '', ...imageEnv(df) } });
      const row = JSON.parse(out) as { v: string; version: string };
      assert.equal(row.v, 'rehearsal');
      assert.match(row.version, /^3\.\d+\.\d+$/);
      rmSync(file, { force: true });
    });

    interface Started {
      grpcAddress: string;
      metricsAddress: string;
      healthAddress: string;
      config: Record<string, unknown>;
    }
    interface Running {
      started: Started;
      /** Sends SIGTERM and resolves with how the process ended, and its output. */
      stop(): Promise<{ exit: string; out: string; err: string }>;
    }

    /**
     * The production overlay's settings with its Secrets made here: API keys and a TLS certificate
     * in a directory standing in for /etc/isogear, the data volume in `dataDir`.
     */
    function productionSetup(): { env: NodeJS.ProcessEnv; settings: Record<string, string>; apiKey: string; caCert: Buffer; close(): void } {
      const settings = (renderOverlay('production').find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('isogear-config')) as unknown as { data: Record<string, string> }).data;
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
      const imageDataDir = imageEnv(df).ISOGEAR_DATA_DIR;
      const mounted = Object.fromEntries(
        Object.entries(settings).map(([k, v]) => [k, v.startsWith('/etc/isogear/') ? path.join(secrets, v.slice('/etc/isogear/'.length)) : imageDataDir && v === imageDataDir ? dataDir : v]),
      );
      const env: NodeJS.ProcessEnv = {
        PATH: process.env.PATH ?? '',
        HOME: '/nonexistent',
        ...imageEnv(df),
        ...mounted,
        // Tests listen on loopback only; everything else is the production overlay's.
        ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0',
        ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0',
        ISOGEAR_HEALTH_ADDRESS: '127.0.0.1:0',
      };
      assert.equal(env.ISOGEAR_DATA_DIR, dataDir, 'the store writes to the stand-in volume');
      return { env, settings, apiKey, caCert: ca.cert, close: () => pki.close() };
    }

    /** Runs the image's CMD in the runtime tree and waits for its start line. */
    async function startServer(env: NodeJS.ProcessEnv): Promise<Running> {
      const cmd = execForm(of(df.final, 'CMD')[0]) ?? [];
      assert.equal(cmd[0], 'node');
      const child = spawn(process.execPath, cmd.slice(1), { cwd: runtimeDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      const exited = new Promise<string>((resolve) => child.on('exit', (code, signal) => resolve(`code ${code} signal ${signal}`)));
      const started = await new Promise<Started>((resolve, reject) => {
        child.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          const line = out.split('\n').find((l) => l.includes('isogear started'));
          if (line) resolve(JSON.parse(line) as Started);
        });
        child.on('exit', (code) => reject(new Error(`exited ${code} before starting\n${out}\n${err}`)));
      });
      return {
        started,
        stop: async () => {
          child.kill('SIGTERM');
          return { exit: await exited, out, err };
        },
      };
    }

    it('CMD starts the server with the production settings; health, Execute in both modes and /metrics work; SIGTERM exits 0', async function () {
      if (!kubectlAvailable()) this.skip();
      const setup = productionSetup();
      const { settings, apiKey } = setup;
      const server = await startServer(setup.env);
      const { started } = server;
      assert.equal(started.config.maxInterpreters, Number(settings.ISOGEAR_MAX_INTERPRETERS), 'the ConfigMap settings are in effect');
      // TLS with an API key, as production clients connect; probes in plaintext on the health port
      const client = new TestClient(started.grpcAddress, apiKey, grpc.credentials.createSsl(setup.caCert), { 'grpc.ssl_target_name_override': 'localhost' });
      const probe = new TestClient(started.healthAddress);
      const plaintext = new TestClient(started.grpcAddress, apiKey);
      let stopped: { exit: string; out: string; err: string } | undefined;
      try {
        assert.equal(await probe.healthCheck(''), 'SERVING');
        assert.equal(await probe.healthCheck(SERVICE_NAME), 'SERVING');
        assert.equal(await client.healthCheck(SERVICE_NAME), 'SERVING');
        await assert.rejects(plaintext.healthCheck(''), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE, 'production serves TLS only');
        await assert.rejects(new TestClient(started.grpcAddress, undefined, grpc.credentials.createSsl(setup.caCert), { 'grpc.ssl_target_name_override': 'localhost' }).execute({ source: 'export default 1' }), (e: grpc.ServiceError) => e.code === grpc.status.UNAUTHENTICATED);
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
        stopped = await server.stop();
        setup.close();
      }
      assert.equal(stopped.exit, 'code 0 signal null', `stdout: ${stopped.out}\nstderr: ${stopped.err}`);
      assert.match(stopped.out, /"msg":"stopped"/);
    });

    it('a registration survives a restart: the embedded store in the data volume restores it before health says SERVING', async function () {
      if (!kubectlAvailable()) this.skip();
      const setup = productionSetup();
      const connect = (s: Started): TestClient => new TestClient(s.grpcAddress, setup.apiKey, grpc.credentials.createSsl(setup.caCert), { 'grpc.ssl_target_name_override': 'localhost' });
      const trigger = 'rehearsal.restart';
      let registrationId = '';
      try {
        const first = await startServer(setup.env);
        const before = connect(first.started);
        try {
          const res = await before.register({ trigger, source: 'export default (p) => p.n * 6' });
          registrationId = res.registration?.id ?? '';
          assert.match(registrationId, /^reg_/);
        } finally {
          before.close();
          const stopped = await first.stop();
          assert.equal(stopped.exit, 'code 0 signal null', stopped.err);
        }
        assert.ok(readdirSync(dataDir).length > 0, 'the store wrote into ISOGEAR_DATA_DIR (the volume)');

        const second = await startServer(setup.env);
        const after = connect(second.started);
        const probe = new TestClient(second.started.healthAddress);
        try {
          assert.equal(await probe.healthCheck(''), 'SERVING');
          const res = await after.trigger({ trigger, payload: { n: 7 } });
          assert.deepEqual(
            res.results.map((r) => [r.registrationId, r.result]),
            [[registrationId, 42]],
            'the same registration, restored, answers',
          );
          await after.release({ registrationId });
        } finally {
          after.close();
          probe.close();
          const stopped = await second.stop();
          assert.equal(stopped.exit, 'code 0 signal null', stopped.err);
        }
      } finally {
        setup.close();
      }
    });
  });
});
