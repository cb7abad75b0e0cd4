import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pb } from '../helpers/client';
import { freePort } from '../helpers/process';
import { ISOLATE, limits, releaseInterpreters, SHARED } from '../helpers/proto';
import { sleep, startTestServer, type TestServer } from '../helpers/server';

const ROOT = path.join(__dirname, '../..');
const DASHBOARD = path.join(ROOT, 'deploy/grafana/isogear.json');
const RULES = path.join(ROOT, 'deploy/prometheus/isogear.rules.yml');

interface PromResponse<T> {
  status: 'success' | 'error';
  data: T;
  error?: string;
}
interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}
interface RuleGroup {
  name: string;
  rules: { name: string; query: string; health: string; lastError?: string; type: string }[];
}

function havePrometheus(): boolean {
  return spawnSync('prometheus', ['--version'], { stdio: 'ignore' }).status === 0;
}

/** Every `expr` in the dashboard's panels (rows included), with Grafana's variables filled in. */
function dashboardExpressions(): { panel: string; expr: string }[] {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: { title: string; targets?: { expr?: string }[]; panels?: unknown[] }[] };
  const out: { panel: string; expr: string }[] = [];
  const walk = (panels: { title: string; targets?: { expr?: string }[]; panels?: unknown[] }[]): void => {
    for (const p of panels) {
      for (const target of p.targets ?? []) {
        if (!target.expr) continue;
        const expr = target.expr
          .replace(/\$namespace|\$\{namespace[^}]*\}/g, '.*')
          .replace(/\$instance|\$\{instance[^}]*\}/g, '.*')
          .replace(/\$__rate_interval|\$__interval|\$\{__rate_interval\}/g, '20s')
          .replace(/\$__range/g, '5m');
        out.push({ panel: p.title, expr });
      }
      if (p.panels) walk(p.panels as typeof panels);
    }
  };
  walk(dashboard.panels);
  return out;
}

/**
 * Proof against a real Prometheus: it scrapes a real isogear under a mixed workload, loads the
 * alert rules, and must evaluate every dashboard expression to data and every rule without error.
 */
describe('observability against a real Prometheus', function () {
  this.timeout(120_000);
  let t: TestServer | undefined;
  let prom: ChildProcess | undefined;
  let dir: string | undefined;
  let base = '';

  before(function () {
    if (!havePrometheus()) {
      if (process.env.CI) throw new Error('prometheus is not installed: .ci/run installs Debian\'s prometheus package');
      console.warn('\n    !!! prometheus is not installed (apt-get install prometheus): SKIPPING the live Prometheus test !!!\n');
      this.skip();
    }
  });

  after(async () => {
    prom?.kill('SIGKILL');
    if (dir) rmSync(dir, { recursive: true, force: true });
    // close() asserts nothing leaked: the test releases what its workload registered
    await t?.close();
  });

  async function api<T>(pathAndQuery: string): Promise<PromResponse<T>> {
    const res = await fetch(`${base}${pathAndQuery}`);
    return (await res.json()) as PromResponse<T>;
  }

  async function query(expr: string): Promise<PromResponse<{ resultType: string; result: Sample[] }>> {
    return api(`/api/v1/query?query=${encodeURIComponent(expr)}`);
  }

  async function scalarOf(expr: string): Promise<number | undefined> {
    const r = await query(expr);
    const v = r.data?.result?.[0]?.value?.[1];
    return v === undefined ? undefined : Number(v);
  }

  it('scrapes isogear, evaluates every dashboard expression and every alert rule, and agrees with ListInterpreters', async () => {
    t = await startTestServer({ ISOGEAR_LOG_LEVEL: 'warn', ISOGEAR_MAX_INTERPRETERS: '20' });
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-prom-'));
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    writeFileSync(
      path.join(dir, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        '  evaluation_interval: 1s',
        'rule_files:',
        `  - ${JSON.stringify(RULES)}`,
        'scrape_configs:',
        '  - job_name: isogear',
        '    static_configs:',
        `      - targets: [${JSON.stringify(t.server.metricsAddress)}]`,
        '',
      ].join('\n'),
    );
    prom = spawn(
      'prometheus',
      [
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let promLog = '';
    prom.stderr?.on('data', (c: Buffer) => (promLog += c.toString()));
    for (let i = 0; ; i++) {
      const ready = await fetch(`${base}/-/ready`).then((r) => r.ok, () => false);
      if (ready) break;
      if (i > 200) throw new Error(`prometheus did not become ready: ${promLog}`);
      await sleep(100);
    }

    // A mixed workload over several scrapes: both modes, registrations that stay, triggers,
    // background executions and a cancel, a failure, a timeout, a memory kill, request errors
    // and a capacity refusal.
    const c = t.client;
    const keep = [];
    keep.push(await c.execute({ mode: SHARED, source: 'gears.register("p.t", (p) => p); gears.register("p.t", () => 2);' }));
    keep.push(await c.execute({ mode: ISOLATE, source: 'gears.register("p.t", () => 3);' }));
    // a background run, and a long one cancelled by id (the background executions row); in
    // isolate mode, so the cancel disposes its isolate rather than leave a shared one spinning
    const background = await c.startExecute({ mode: SHARED, source: 'export default "kept"' });
    const spin = await c.startExecute({ mode: ISOLATE, limits: limits(30_000), source: 'for (;;) {}' });
    await c.cancelExecution({ executionId: spin.id });
    for (const e of [background, spin]) assert.equal((await c.waitExecution({ executionId: e.id })).state, pb.ExecutionState.EXECUTION_STATE_DONE);
    const until = Date.now() + 6000;
    while (Date.now() < until) {
      await c.execute({ mode: SHARED, source: 'export default 1' });
      await c.execute({ mode: ISOLATE, source: 'export default 1' });
      await c.trigger({ trigger: 'p.t', payload: 1 });
      await c.execute({ source: 'throw new Error("x")' });
      await c.execute({ source: '' }).catch(() => undefined);
      await sleep(100);
    }
    await c.execute({ mode: SHARED, limits: limits(100), source: 'for (;;) {}' });
    await c.execute({ mode: ISOLATE, limits: limits(10_000, 16), source: 'const a = []; for (;;) a.push(new Array(100000).fill(1.5));' });
    const hold = [];
    for (let i = 0; i < 20; i++) {
      const r = await c.register({ trigger: 'p.cap', source: 'export default () => 1', mode: SHARED }).catch(() => undefined);
      if (r) hold.push(r);
    }
    for (const r of hold) await c.release({ registrationId: r.registration?.id });
    await sleep(3000); // at least two more scrapes, so rates see the whole workload

    // Every dashboard expression is valid and returns data.
    const exprs = dashboardExpressions();
    assert.ok(exprs.length >= 10, `the dashboard has ${exprs.length} expressions`);
    for (const { panel, expr } of exprs) {
      const r = await query(expr);
      assert.equal(r.status, 'success', `dashboard panel "${panel}": ${expr}: ${r.error}`);
      assert.ok(r.data.result.length > 0, `dashboard panel "${panel}" returns no series: ${expr}`);
    }

    // Every alert rule loaded, evaluated without error, and refers only to series that exist.
    let groups: RuleGroup[] = [];
    for (let i = 0; i < 50; i++) {
      groups = (await api<{ groups: RuleGroup[] }>('/api/v1/rules')).data.groups;
      if (groups.length > 0 && groups.every((g) => g.rules.every((r) => r.health === 'ok'))) break;
      await sleep(100);
    }
    const rules = groups.flatMap((g) => g.rules);
    assert.ok(rules.filter((r) => r.type === 'alerting').length >= 5, `alert rules loaded: ${rules.map((r) => r.name).join(', ')}`);
    for (const rule of rules) {
      assert.equal(rule.health, 'ok', `rule ${rule.name}: ${rule.lastError}`);
      const names = new Set(rule.query.match(/\b(isogear_[a-z_]+|grpc_server_[a-z_]+|up|process_[a-z_]+)\b/g) ?? []);
      for (const name of names) {
        const series = await api<unknown[]>(`/api/v1/series?match[]=${encodeURIComponent(name)}`);
        assert.ok(series.data.length > 0, `rule ${rule.name} refers to ${name}, which has no series`);
      }
    }

    // What Prometheus scraped equals what the API reports, once a scrape has seen the quiet state.
    const listed = (await c.listInterpreters({ pageSize: 1000 })).interpreters;
    const live = listed.filter((i) => i.state !== pb.InterpreterState.INTERPRETER_STATE_FAILED);
    const dedicated = live.filter((i) => i.mode === pb.IsolationMode.ISOLATION_MODE_ISOLATE).length;
    let scraped: [number | undefined, number | undefined] = [undefined, undefined];
    for (let i = 0; i < 100; i++) {
      scraped = [await scalarOf('sum(isogear_interpreters{job="isogear"})'), await scalarOf('isogear_isolates{job="isogear",kind="dedicated"}')];
      if (scraped[0] === listed.length && scraped[1] === dedicated) break;
      await sleep(100);
    }
    assert.deepEqual(scraped, [listed.length, dedicated], 'Prometheus sees the interpreters and dedicated isolates ListInterpreters reports');
    assert.equal((await releaseInterpreters(c, ...keep.map((k) => k.interpreterId))).length, 3);
  });
});
