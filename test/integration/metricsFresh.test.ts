import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { useTestServer } from '../helpers/fixture';
import { scrape } from '../helpers/metrics';

const README = readFileSync(path.join(__dirname, '../../README.md'), 'utf8');

interface Documented {
  names: string[];
  type: string;
  /** label → the values the README lists for it */
  values: Map<string, string[]>;
  tenantOnly: boolean;
}

/** The rows of the README's metrics table: names, type, and the label values it spells out ("`kind` = a, b (…), c"). */
function documented(): Documented[] {
  const section = README.slice(README.indexOf('### Metrics'), README.indexOf('### Logs'));
  const rows: Documented[] = [];
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 5 || !cells[1].startsWith('`isogear_') && !cells[1].startsWith('`grpc_')) continue;
    const names = [...cells[1].matchAll(/`([a-z_]+)`/g)].map((m) => m[1]);
    const values = new Map<string, string[]>();
    // "`label` = v1, v2 (note), v3" up to the next backquoted label or the end
    for (const m of cells[3].matchAll(/`([a-z_]+)` = ([^`]+)/g)) {
      const list = m[2]
        .replace(/\([^)]*\)/g, '')
        .split(',')
        .map((v) => v.trim())
        .filter((v) => /^[a-z_]+$/.test(v));
      values.set(m[1], list);
    }
    rows.push({ names, type: cells[2], values, tenantOnly: /only with `ISOGEAR_METRICS_TENANT_LABEL=true`/.test(cells[4]) });
  }
  return rows;
}

describe('metrics on a fresh server', () => {
  const server = useTestServer();

  it('every documented series exists at the first scrape, before any call, with every documented label value', async () => {
    const samples = await scrape(server());
    const rows = documented();
    assert.ok(rows.length >= 25, `the README documents the metrics (${rows.length} rows found)`);
    const keys = [...samples.keys()];
    for (const row of rows) {
      if (row.tenantOnly) continue;
      for (const name of row.names) {
        const series = row.type === 'histogram' ? `${name}_bucket` : name;
        const mine = keys.filter((k) => k === series || k.startsWith(`${series}{`));
        assert.ok(mine.length > 0, `${series} has no series on a fresh server`);
        for (const [label, values] of row.values) {
          for (const v of values) {
            assert.ok(
              mine.some((k) => k.includes(`${label}="${v}"`)),
              `${series}{${label}="${v}"} is documented but missing on a fresh server`,
            );
          }
        }
      }
    }
  });

  it('the run histogram and the gRPC series of every method start at 0', async () => {
    const samples = await scrape(server());
    for (const mode of ['shared', 'isolate']) {
      for (const kind of ['execute', 'trigger']) {
        assert.equal(samples.get(`isogear_execution_duration_seconds_count{kind="${kind}",mode="${mode}"}`), 0);
      }
    }
    const rpc = (name: string, method: string, extra = ''): string => `${name}{${extra}grpc_method="${method}",grpc_service="isogear.v1.GearsService",grpc_type="unary"}`;
    for (const method of ['Execute', 'Trigger', 'StartExecute', 'WaitExecution', 'CancelExecution']) {
      assert.equal(samples.get(rpc('grpc_server_started_total', method)), 0, method);
      assert.equal(samples.get(rpc('grpc_server_handled_total', method, 'grpc_code="OK",')), 0, method);
      assert.equal(samples.get(rpc('grpc_server_handled_total', method, 'grpc_code="RESOURCE_EXHAUSTED",')), 0, method);
      assert.equal(samples.get(rpc('grpc_server_handling_seconds_count', method)), 0, method);
    }
    assert.equal(samples.get('grpc_server_started_total{grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}'), 0);
    assert.equal(samples.get('grpc_server_started_total{grpc_method="ServerReflectionInfo",grpc_service="grpc.reflection.v1.ServerReflection",grpc_type="bidi_stream"}'), 0);
  });
});
