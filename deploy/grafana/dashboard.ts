/**
 * The isogear Grafana dashboard, built in code with Grafana's foundation SDK.
 *
 *   npm run dashboard            # writes deploy/grafana/isogear.json
 *
 * The output is deterministic (same input, same bytes), so CI can regenerate it and fail on a
 * diff. Every query is filtered by the `namespace` and `instance` template variables and reads
 * from the Prometheus data source chosen in the `datasource` variable; the only other variable
 * a query uses is Grafana's `$__rate_interval`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as common from '@grafana/grafana-foundation-sdk/common';
import * as dashboard from '@grafana/grafana-foundation-sdk/dashboard';
import * as prometheus from '@grafana/grafana-foundation-sdk/prometheus';
import * as timeseries from '@grafana/grafana-foundation-sdk/timeseries';

export const OUTPUT = join(__dirname, 'isogear.json');

/** Every panel and query reads from the data source picked in the `datasource` variable. */
const DATASOURCE: common.DataSourceRef = { type: 'prometheus', uid: '${datasource}' };

/** The label filter every query carries. */
export const SELECTOR = 'namespace=~"$namespace", instance=~"$instance"';

/** `metric{<selector>, extra}`. */
function sel(metric: string, extra?: string): string {
  return `${metric}{${SELECTOR}${extra ? `, ${extra}` : ''}}`;
}

/** `rate(metric{<selector>, extra}[$__rate_interval])`. */
function rate(metric: string, extra?: string): string {
  return `rate(${sel(metric, extra)}[$__rate_interval])`;
}

interface Query {
  expr: string;
  legend: string;
}

interface PanelSpec {
  title: string;
  description: string;
  unit: string;
  queries: Query[];
  stacked?: boolean;
  /** refIds of queries drawn below the axis (e.g. disposals against creations). */
  negativeRefIds?: string[];
  min?: number;
  max?: number;
}

function refId(index: number): string {
  return String.fromCharCode('A'.charCodeAt(0) + index);
}

const quantile = (q: number, metric: string, by: string): string =>
  `histogram_quantile(${q}, sum by (${by}, le) (${rate(metric)}))`;

const PANELS: PanelSpec[] = [
  {
    title: 'Isolates by kind',
    description:
      'Live V8 isolates (isogear_isolates), by kind: dedicated (one isolate-mode interpreter each), ' +
      'shared (hosting shared-mode interpreters) and pooled (warm, unused). Each isolate costs memory ' +
      'up to its heap limit; dedicated isolates that keep growing while registrations do not point to a leak.',
    unit: 'short',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (kind) (${sel('isogear_isolates')})`, legend: '{{kind}}' }],
  },
  {
    title: 'Interpreters by mode and state',
    description:
      'Live interpreters (isogear_interpreters), by isolation mode (shared, isolate) and lifecycle ' +
      'state (ready, draining, failed). Draining interpreters are kept alive by references until the ' +
      'last one is released; failed ones should be rare and short-lived.',
    unit: 'short',
    stacked: true,
    min: 0,
    queries: [
      { expr: `sum by (mode, state) (${sel('isogear_interpreters')})`, legend: '{{mode}} / {{state}}' },
    ],
  },
  {
    title: 'Interpreter references by owner',
    description:
      'References held on interpreters (isogear_interpreter_references), by owner kind: registration ' +
      '(a registered handler keeps its interpreter alive) and execution (a run in progress). An ' +
      'interpreter is disposed when its last reference is released.',
    unit: 'short',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (owner) (${sel('isogear_interpreter_references')})`, legend: '{{owner}}' }],
  },
  {
    title: 'Registrations',
    description:
      'Registrations not yet released (isogear_registrations), broken ones included, per instance, and of ' +
      'those the paused ones (isogear_registrations_paused: Trigger skips them until they are resumed). ' +
      'Compare with dedicated isolates: isolates should follow registrations up and down.',
    unit: 'short',
    min: 0,
    queries: [
      { expr: `sum by (instance) (${sel('isogear_registrations')})`, legend: '{{instance}}' },
      { expr: `sum by (instance) (${sel('isogear_registrations_paused')})`, legend: '{{instance}} paused' },
    ],
  },
  {
    title: 'Executions per second by outcome',
    description:
      'Runs ended per second (rate of isogear_executions_total), by outcome: succeeded, failed ' +
      '(script threw), timed_out, memory_exceeded (isolate killed at its heap limit) and aborted ' +
      '(cancelled by the caller or by shutdown). Includes Execute calls, Register loads and handler runs.',
    unit: 'ops',
    stacked: true,
    min: 0,
    queries: [
      { expr: `sum by (outcome) (${rate('isogear_executions_total')})`, legend: '{{outcome}}' },
    ],
  },
  {
    title: 'Executions in flight by mode',
    description:
      'Runs in progress right now (isogear_executions_in_flight: Execute calls, Register loads and ' +
      'handler runs), by isolation mode.',
    unit: 'short',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (mode) (${sel('isogear_executions_in_flight')})`, legend: '{{mode}}' }],
  },
  {
    title: 'Run latency p50 / p95 / p99 by mode and kind',
    description:
      'Wall time of runs, from the isogear_execution_duration_seconds histogram (histogram_quantile ' +
      'over the rate of its buckets), by isolation mode and run kind (execute: Execute and Register ' +
      'loads; trigger: handler runs). Quantiles are interpolated within buckets; empty series mean ' +
      'no runs of that mode and kind in the window.',
    unit: 's',
    min: 0,
    queries: [
      {
        expr: quantile(0.5, 'isogear_execution_duration_seconds_bucket', 'mode, kind'),
        legend: 'p50 {{mode}} {{kind}}',
      },
      {
        expr: quantile(0.95, 'isogear_execution_duration_seconds_bucket', 'mode, kind'),
        legend: 'p95 {{mode}} {{kind}}',
      },
      {
        expr: quantile(0.99, 'isogear_execution_duration_seconds_bucket', 'mode, kind'),
        legend: 'p99 {{mode}} {{kind}}',
      },
    ],
  },
  {
    title: 'Isolate churn: created vs disposed by reason',
    description:
      'Isolates created per second by kind (rate of isogear_isolates_created_total, above the axis) ' +
      'against isolates disposed per second by kind and reason (rate of ' +
      'isogear_isolates_disposed_total, below the axis): released, replaced, memory_limit, failed, ' +
      'unresponsive, shutdown. Any memory_limit or unresponsive disposal is worth a look.',
    unit: 'ops',
    negativeRefIds: ['B'],
    queries: [
      { expr: `sum by (kind) (${rate('isogear_isolates_created_total')})`, legend: 'created {{kind}}' },
      {
        expr: `sum by (kind, reason) (${rate('isogear_isolates_disposed_total')})`,
        legend: 'disposed {{kind}} ({{reason}})',
      },
    ],
  },
  {
    title: 'Heap in use by kind',
    description:
      'V8 heap in use plus external memory counted against the limit (isogear_heap_used_bytes), ' +
      'summed over the live isolates of each kind.',
    unit: 'bytes',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (kind) (${sel('isogear_heap_used_bytes')})`, legend: '{{kind}}' }],
  },
  {
    title: 'gRPC request rate by method',
    description:
      'RPCs completed per second (rate of grpc_server_handled_total), by service and method, all ' +
      'status codes included.',
    unit: 'reqps',
    stacked: true,
    min: 0,
    queries: [
      {
        expr: `sum by (grpc_service, grpc_method) (${rate('grpc_server_handled_total')})`,
        legend: '{{grpc_method}}',
      },
    ],
  },
  {
    title: 'gRPC error ratio by method',
    description:
      'Share of RPCs that completed with a status code other than OK, by method: rate of ' +
      'grpc_server_handled_total{grpc_code!="OK"} over the rate of all of them. Includes client ' +
      'errors such as INVALID_ARGUMENT and NOT_FOUND; a method without errors shows 0, a method ' +
      'without traffic shows nothing.',
    unit: 'percentunit',
    min: 0,
    max: 1,
    queries: [
      {
        expr:
          `(sum by (grpc_service, grpc_method) (${rate('grpc_server_handled_total', 'grpc_code!="OK"')})` +
          ` or sum by (grpc_service, grpc_method) (${rate('grpc_server_handled_total')}) * 0)` +
          ` / sum by (grpc_service, grpc_method) (${rate('grpc_server_handled_total')})`,
        legend: '{{grpc_method}}',
      },
    ],
  },
  {
    title: 'gRPC latency p99 by method',
    description:
      '99th percentile of RPC handling time, from the grpc_server_handling_seconds histogram ' +
      '(histogram_quantile over the rate of its buckets), by method.',
    unit: 's',
    min: 0,
    queries: [
      {
        expr: quantile(0.99, 'grpc_server_handling_seconds_bucket', 'grpc_service, grpc_method'),
        legend: '{{grpc_method}}',
      },
    ],
  },
  {
    title: 'Durable registrations: restore and store',
    description:
      'Stored interpreters still to rebuild at start-up (isogear_restore_pending; the server answers ' +
      'UNAVAILABLE until 0), those that could not be rebuilt (isogear_stored_interpreters_broken: listed ' +
      'FAILED, see the log) and changes the store refused per second (rate of isogear_store_write_failures_total).',
    unit: 'short',
    min: 0,
    queries: [
      { expr: `sum by (instance) (${sel('isogear_restore_pending')})`, legend: 'pending restore {{instance}}' },
      { expr: `sum by (instance) (${sel('isogear_stored_interpreters_broken')})`, legend: 'broken {{instance}}' },
      { expr: `sum by (instance) (${rate('isogear_store_write_failures_total')})`, legend: 'store refusals/s {{instance}}' },
    ],
  },
  {
    title: 'Rollbacks and TypeScript transpiles per second',
    description:
      'Rollback calls per second by result (rate of isogear_rollbacks_total): succeeded moved the name to a ' +
      're-created version; failed means a replay failed, timed out or was cancelled and nothing changed (the ' +
      "answer's error says which step and why). TypeScript modules stripped of their types per second " +
      '(rate of isogear_typescript_transpiles_total): hit came from the transpile cache, miss was transpiled.',
    unit: 'ops',
    min: 0,
    queries: [
      { expr: `sum by (result) (${rate('isogear_rollbacks_total')})`, legend: 'rollback {{result}}' },
      { expr: `sum by (result) (${rate('isogear_typescript_transpiles_total')})`, legend: 'transpile {{result}}' },
    ],
  },
];

/** Background executions (StartExecute, StartTrigger), cancels and the shared isolates long runs add: a row of their own. */
const BACKGROUND_PANELS: PanelSpec[] = [
  {
    title: 'Background executions by state',
    description:
      'Background executions (isogear_background_executions: StartExecute and StartTrigger), by ' +
      'state: queued (waiting for a run slot; background runs wait behind synchronous requests), ' +
      'running, and done (kept for GetExecution and WaitExecution within ' +
      'ISOGEAR_EXECUTION_RETENTION_MS and ISOGEAR_EXECUTION_RETENTION_BYTES). A queued count that ' +
      'keeps growing means synchronous traffic holds the run slots.',
    unit: 'short',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (state) (${sel('isogear_background_executions')})`, legend: '{{state}}' }],
  },
  {
    title: 'Execution cancels per second by reason',
    description:
      'Executions cancelled per second (rate of isogear_execution_cancels_total), by reason: request ' +
      '(CancelExecution), client (the caller cancelled or its deadline passed) and shutdown. Each ' +
      'cancelled run ends aborted (see Executions per second by outcome).',
    unit: 'ops',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (reason) (${rate('isogear_execution_cancels_total')})`, legend: '{{reason}}' }],
  },
  {
    title: 'Retained background responses',
    description:
      'Bytes of responses kept for DONE background executions (isogear_background_execution_retained_bytes), ' +
      'per instance; bounded by ISOGEAR_EXECUTION_RETENTION_BYTES, oldest dropped first (a dropped ' +
      'execution answers NOT_FOUND, expired). Near the bound, results may be gone before clients wait for them.',
    unit: 'bytes',
    min: 0,
    queries: [
      { expr: `sum by (instance) (${sel('isogear_background_execution_retained_bytes')})`, legend: '{{instance}}' },
    ],
  },
  {
    title: 'Extra shared isolates',
    description:
      'Shared isolates added beyond ISOGEAR_SHARED_ISOLATES because every shared isolate was held by a ' +
      'long run (isogear_shared_isolates_extra), per instance; at most ISOGEAR_EXTRA_SHARED_ISOLATES, ' +
      'retired when idle. Staying above 0 means long runs occupy the shared isolates: run them in ' +
      'isolate mode, or raise ISOGEAR_SHARED_ISOLATES.',
    unit: 'short',
    min: 0,
    queries: [{ expr: `sum by (instance) (${sel('isogear_shared_isolates_extra')})`, legend: '{{instance}}' }],
  },
];

/** Schedules (gears.schedule) and stream consumers (gears.consume). */
const SOURCE_PANELS: PanelSpec[] = [
  {
    title: 'Runs per second by kind',
    description:
      'Runs ended per second (rate of isogear_executions_total) by kind: execute (Execute calls and Register ' +
      'loads), trigger (handler runs of a Trigger), schedule (ticks of gears.schedule) and stream (entries ' +
      'of gears.consume consumers).',
    unit: 'ops',
    stacked: true,
    min: 0,
    queries: [{ expr: `sum by (kind) (${rate('isogear_executions_total')})`, legend: '{{kind}}' }],
  },
  {
    title: 'Consumer lag and pending entries',
    description:
      'Per instance: entries in the streams its consumers read that their groups have not read yet ' +
      '(isogear_stream_lag_entries), and entries delivered but not acknowledged yet ' +
      '(isogear_stream_pending_entries: being handled, or failed and waiting for a retry). Lag that ' +
      'keeps growing means the consumers do not keep up: add replicas or speed the handler up.',
    unit: 'short',
    min: 0,
    queries: [
      { expr: `sum by (instance) (${sel('isogear_stream_lag_entries')})`, legend: '{{instance}} lag' },
      { expr: `sum by (instance) (${sel('isogear_stream_pending_entries')})`, legend: '{{instance}} pending' },
    ],
  },
  {
    title: 'Stream entries and dead letters per second',
    description:
      'Entries handled by consumers per second (rate of isogear_stream_entries_total) by result: ' +
      'acknowledged (the handler succeeded), retried (it failed; the entry stays pending) and dead_letter ' +
      '(given up after ISOGEAR_STREAM_MAX_DELIVERIES failed deliveries; the log has each one), and ' +
      'schedule ticks skipped because the previous run was still going (isogear_schedule_ticks_skipped_total).',
    unit: 'ops',
    min: 0,
    queries: [
      { expr: `sum by (result) (${rate('isogear_stream_entries_total')})`, legend: '{{result}}' },
      { expr: `sum(${rate('isogear_schedule_ticks_skipped_total')})`, legend: 'skipped ticks' },
    ],
  },
  {
    title: 'Events Redis',
    description:
      'Per instance: whether the events Redis answered the consumers\' last call (isogear_events_redis_up, ' +
      '1 or 0; 1 while no consumer runs), and failed calls per second (rate of ' +
      'isogear_events_redis_errors_total, each retried with backoff).',
    unit: 'short',
    min: 0,
    queries: [
      { expr: `min by (instance) (${sel('isogear_events_redis_up')})`, legend: '{{instance}} up' },
      { expr: `sum by (instance) (${rate('isogear_events_redis_errors_total')})`, legend: '{{instance}} errors/s' },
    ],
  },
];

/** The dashboard's sections, top to bottom: panels two to a line, each titled section under a row. */
const SECTIONS: { row?: string; panels: PanelSpec[] }[] = [
  { panels: PANELS },
  { row: 'Background executions', panels: BACKGROUND_PANELS },
  { row: 'Schedules and stream consumers', panels: SOURCE_PANELS },
];

const PANEL_WIDTH = 12;
const PANEL_HEIGHT = 8;
const GRID_WIDTH = 24;

/** The panel `spec`, `index`-th of its section, whose first line is at `top`. */
function panel(spec: PanelSpec, id: number, index: number, top: number): timeseries.PanelBuilder {
  const builder = new timeseries.PanelBuilder()
    .id(id)
    .title(spec.title)
    .description(spec.description)
    .datasource(DATASOURCE)
    .gridPos({
      x: (index % 2) * PANEL_WIDTH,
      y: top + Math.floor(index / 2) * PANEL_HEIGHT,
      w: PANEL_WIDTH,
      h: PANEL_HEIGHT,
    })
    .unit(spec.unit)
    .lineWidth(1)
    .fillOpacity(spec.stacked ? 20 : 10)
    .showPoints(common.VisibilityMode.Never)
    .legend(
      new common.VizLegendOptionsBuilder()
        .displayMode(common.LegendDisplayMode.List)
        .placement(common.LegendPlacement.Bottom)
        .showLegend(true),
    )
    .tooltip(new common.VizTooltipOptionsBuilder().mode(common.TooltipDisplayMode.Multi).sort(common.SortOrder.Descending));
  if (spec.stacked) builder.stacking(new common.StackingConfigBuilder().mode(common.StackingMode.Normal));
  if (spec.min !== undefined) builder.min(spec.min);
  if (spec.max !== undefined) builder.max(spec.max);
  for (const ref of spec.negativeRefIds ?? []) {
    builder.overrideByQuery(ref, [{ id: 'custom.transform', value: common.GraphTransform.NegativeY }]);
  }
  spec.queries.forEach((query, i) => {
    builder.withTarget(
      new prometheus.DataqueryBuilder()
        .datasource(DATASOURCE)
        .refId(refId(i))
        .expr(query.expr)
        .legendFormat(query.legend)
        .range()
        .editorMode(prometheus.QueryEditorMode.Code),
    );
  });
  return builder;
}

function queryVariable(name: string, label: string, query: string, description: string): dashboard.QueryVariableBuilder {
  return new dashboard.QueryVariableBuilder(name)
    .label(label)
    .description(description)
    .datasource(DATASOURCE)
    .query(query)
    .definition(query)
    .refresh(dashboard.VariableRefresh.OnTimeRangeChanged)
    .sort(dashboard.VariableSort.AlphabeticalAsc)
    .multi(true)
    .includeAll(true)
    .allValue('.*')
    .current({ selected: true, text: 'All', value: '$__all' });
}

/** Builds the dashboard model. */
export function buildDashboard(): dashboard.Dashboard {
  const builder = new dashboard.DashboardBuilder('isogear')
    .uid('isogear')
    .description(
      'isogear: V8 isolates, interpreters and their references, registrations, runs and their ' +
        'latency, isolate churn, heap, gRPC traffic and background executions. Generated by deploy/grafana/dashboard.ts; do not edit by hand.',
    )
    .tags(['isogear', 'grpc', 'v8'])
    .editable()
    .tooltip(dashboard.DashboardCursorSync.Crosshair)
    .timezone('browser')
    .time({ from: 'now-1h', to: 'now' })
    .refresh('30s')
    .annotation(
      // Grafana's built-in "Annotations & Alerts"; spelled out so the dashboard has an annotation list.
      new dashboard.AnnotationQueryBuilder()
        .name('Annotations & Alerts')
        .datasource({ type: 'grafana', uid: '-- Grafana --' })
        .enable(true)
        .hide(true)
        .iconColor('rgba(0, 211, 255, 1)')
        .type('dashboard')
        .builtIn(1),
    )
    .withVariable(
      new dashboard.DatasourceVariableBuilder('datasource')
        .label('Data source')
        .description('The Prometheus that scrapes isogear.')
        .type('prometheus'),
    )
    .withVariable(
      queryVariable(
        'namespace',
        'Namespace',
        'label_values(isogear_isolates, namespace)',
        'Kubernetes namespace(s) of the isogear pods.',
      ),
    )
    .withVariable(
      queryVariable(
        'instance',
        'Instance',
        'label_values(isogear_isolates{namespace=~"$namespace"}, instance)',
        'isogear instance(s) (scrape targets) within the selected namespace(s).',
      ),
    );
  let id = 1;
  let top = 0;
  for (const section of SECTIONS) {
    if (section.row) {
      // An expanded row: Grafana places the panels that follow it under it (only a collapsed row holds them).
      builder.withRow(new dashboard.RowBuilder(section.row).id(id++).collapsed(false).gridPos({ x: 0, y: top, w: GRID_WIDTH, h: 1 }));
      top += 1;
    }
    section.panels.forEach((spec, i) => builder.withPanel(panel(spec, id++, i, top)));
    top += Math.ceil(section.panels.length / 2) * PANEL_HEIGHT;
  }
  return builder.build();
}

/** The dashboard as the bytes written to isogear.json. */
export function renderDashboard(): string {
  return `${JSON.stringify(buildDashboard(), null, 2)}\n`;
}

if (require.main === module) {
  writeFileSync(OUTPUT, renderDashboard());
  console.log(`wrote ${OUTPUT}`);
}
