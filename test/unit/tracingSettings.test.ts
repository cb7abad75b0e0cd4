import assert from 'node:assert/strict';
import { loadConfig } from '../../src/config';
import { tracingSettings } from '../../src/tracing/settings';

describe('tracing settings from the OTEL_* environment', () => {
  it('is off without an OTLP endpoint, and says why', () => {
    const off = tracingSettings({ OTEL_SERVICE_NAME: 'x', OTEL_TRACES_SAMPLER: 'always_on' });
    assert.equal(off.settings, undefined);
    assert.match(off.why, /no OTEL_EXPORTER_OTLP_ENDPOINT/);
    assert.deepEqual(off.warnings, []);
    assert.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: '  ' }).settings, undefined, 'blank is unset');
  });

  it('is off when the SDK is disabled or the exporter is none', () => {
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' };
    assert.equal(tracingSettings({ ...endpoint, OTEL_SDK_DISABLED: 'TRUE' }).settings, undefined);
    assert.notEqual(tracingSettings({ ...endpoint, OTEL_SDK_DISABLED: 'false' }).settings, undefined);
    assert.equal(tracingSettings({ ...endpoint, OTEL_TRACES_EXPORTER: 'none' }).settings, undefined);
    const zipkin = tracingSettings({ ...endpoint, OTEL_TRACES_EXPORTER: 'zipkin' });
    assert.equal(zipkin.settings, undefined);
    assert.match(zipkin.warnings.join('\n'), /OTEL_TRACES_EXPORTER: "zipkin" is not supported/);
    assert.notEqual(tracingSettings({ ...endpoint, OTEL_TRACES_EXPORTER: 'otlp,console' }).settings, undefined, 'otlp among others still exports');
  });

  it('defaults to OTLP/HTTP protobuf at the base endpoint’s /v1/traces, parent-based always-on sampling and W3C propagation', () => {
    const s = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).settings;
    assert.deepEqual(s, {
      protocol: 'http/protobuf',
      url: 'http://collector:4318/v1/traces',
      sampler: 'parentbased_always_on',
      ratio: 1,
      propagators: ['tracecontext', 'baggage'],
      resource: { 'service.name': 'isogear' },
      batch: { scheduledDelayMillis: 5000, exportTimeoutMillis: 30_000, maxQueueSize: 2048, maxExportBatchSize: 512 },
    });
  });

  it('takes the protocol, the signal’s own endpoint as it is, and gRPC’s endpoint without a path', () => {
    assert.equal(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).settings?.url, 'http://c:4317');
    const json = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }).settings;
    assert.deepEqual([json?.protocol, json?.url], ['http/json', 'http://c:4318/v1/traces']);
    const own = tracingSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://traces.example:443/custom',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc',
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf',
    }).settings;
    assert.deepEqual([own?.protocol, own?.url], ['http/protobuf', 'https://traces.example:443/custom'], 'the traces-specific variables win');
  });

  it('reads the sampler, the propagators, the resource and the batch settings', () => {
    const s = tracingSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.25',
      OTEL_PROPAGATORS: 'tracecontext',
      OTEL_SERVICE_NAME: 'gears-eu',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=prod,team=a%2Cb,service.name=ignored',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_BSP_MAX_QUEUE_SIZE: '64',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '32',
    });
    assert.deepEqual(s.warnings, []);
    assert.equal(s.settings?.sampler, 'parentbased_traceidratio');
    assert.equal(s.settings?.ratio, 0.25);
    assert.deepEqual(s.settings?.propagators, ['tracecontext']);
    assert.deepEqual(s.settings?.resource, { 'deployment.environment.name': 'prod', team: 'a,b', 'service.name': 'gears-eu' });
    assert.deepEqual(s.settings?.batch, { scheduledDelayMillis: 100, exportTimeoutMillis: 30_000, maxQueueSize: 64, maxExportBatchSize: 32 });
    assert.deepEqual(tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_PROPAGATORS: 'none' }).settings?.propagators, []);
  });

  it('warns about each invalid value and uses its default, never refusing to start', () => {
    const s = tracingSettings({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'grcp',
      OTEL_TRACES_SAMPLER: 'sometimes',
      OTEL_PROPAGATORS: 'b3,tracecontext',
      OTEL_RESOURCE_ATTRIBUTES: 'novalue,k=%E0%A4%A',
      OTEL_BSP_SCHEDULE_DELAY: 'soon',
      OTEL_BSP_MAX_QUEUE_SIZE: '10',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '20',
    });
    assert.equal(s.settings?.protocol, 'http/protobuf');
    assert.equal(s.settings?.sampler, 'parentbased_always_on');
    assert.deepEqual(s.settings?.propagators, ['tracecontext']);
    assert.equal(s.settings?.batch.scheduledDelayMillis, 5000);
    assert.equal(s.settings?.batch.maxExportBatchSize, 10);
    const text = s.warnings.join('\n');
    for (const pattern of [/OTEL_EXPORTER_OTLP_PROTOCOL: "grcp" is not one of grpc, http\/protobuf, http\/json: using http\/protobuf/, /OTEL_TRACES_SAMPLER: "sometimes"/, /OTEL_PROPAGATORS: "b3" is not supported/, /OTEL_RESOURCE_ATTRIBUTES: "novalue"/, /OTEL_RESOURCE_ATTRIBUTES: "k=%E0%A4%A"/, /OTEL_BSP_SCHEDULE_DELAY: "soon"/, /OTEL_BSP_MAX_EXPORT_BATCH_SIZE \(20\) is above OTEL_BSP_MAX_QUEUE_SIZE \(10\)/]) {
      assert.match(text, pattern);
    }
    assert.equal(s.warnings.length, 7);
    const ratio = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' });
    assert.equal(ratio.settings?.ratio, 1);
    assert.match(ratio.warnings[0], /OTEL_TRACES_SAMPLER_ARG: "2" is not a ratio from 0 to 1/);
    const notUrl = tracingSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4317' });
    assert.equal(notUrl.settings, undefined);
    assert.match(notUrl.warnings[0], /OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4317" is not an http:\/\/ or https:\/\/ URL: tracing is off/);
  });

  it('the config check, which refuses unknown ISOGEAR_* variables, leaves OTEL_* alone', () => {
    const config = loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_SOMETHING_NEW: '1', OTEL_TRACES_SAMPLER: 'nonsense' });
    assert.equal(config.tracing.settings?.protocol, 'grpc');
    assert.match(config.tracing.warnings.join('\n'), /OTEL_TRACES_SAMPLER: "nonsense"/);
    assert.throws(() => loadConfig({ ISOGEAR_TRACING: 'on' }), /ISOGEAR_TRACING is not an isogear setting/);
  });
});
