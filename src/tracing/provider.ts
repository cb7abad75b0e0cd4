import os from 'node:os';
import type { TextMapPropagator } from '@opentelemetry/api';
import type { Sampler, SpanExporter } from '@opentelemetry/sdk-trace';
import type { TracingSettings } from './settings';
import { Tracing } from './Tracing';

/** A server's tracing: the Tracing its parts share, and `shutdown`, which exports what is left. */
export interface TracingSetup {
  tracing: Tracing;
  shutdown(): Promise<void>;
}

/** The name (instrumentation scope) isogear's spans carry. */
export const SCOPE = 'isogear';

/**
 * Builds the OpenTelemetry SDK for `settings`: an OTLP exporter of the chosen protocol behind a
 * batching processor, the sampler, the propagators and the resource. Off (no settings): nothing
 * of the SDK is even loaded. The exporter packages read the rest of their standard variables
 * (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE, …) from the process
 * environment themselves.
 */
export function startTracing(settings: TracingSettings | undefined, version: string): TracingSetup {
  if (!settings) return { tracing: Tracing.off, shutdown: async () => undefined };
  // Loaded only now: the SDK costs about 100 ms of start-up when nothing uses it. (require, not
  // import(): in this CommonJS build import() would load the packages' ESM copies beside the
  // CommonJS ones the rest of the server uses.)
  /* eslint-disable @typescript-eslint/no-require-imports */
  const sdk = require('@opentelemetry/sdk-trace') as typeof import('@opentelemetry/sdk-trace');
  const { resourceFromAttributes } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources');
  const core = require('@opentelemetry/core') as typeof import('@opentelemetry/core');
  /* eslint-enable @typescript-eslint/no-require-imports */
  const exporter = exporterFor(settings);
  const provider = new sdk.TracerProvider({
    resource: resourceFromAttributes({ 'service.version': version, 'host.name': os.hostname(), ...settings.resource }),
    sampler: samplerFor(settings, sdk),
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter, ...settings.batch })],
  });
  const propagators: TextMapPropagator[] = settings.propagators.map((p) => (p === 'tracecontext' ? new core.W3CTraceContextPropagator() : new core.W3CBaggagePropagator()));
  const propagator = propagators.length === 0 ? undefined : propagators.length === 1 ? propagators[0] : new core.CompositePropagator({ propagators });
  return {
    tracing: new Tracing(provider.getTracer(SCOPE, version), propagator),
    shutdown: () => provider.shutdown(),
  };
}

/* eslint-disable @typescript-eslint/no-require-imports */
function exporterFor(settings: TracingSettings): SpanExporter {
  switch (settings.protocol) {
    case 'grpc':
      return new (require('@opentelemetry/exporter-trace-otlp-grpc') as typeof import('@opentelemetry/exporter-trace-otlp-grpc')).OTLPTraceExporter({ url: settings.url });
    case 'http/json':
      return new (require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter({ url: settings.url });
    case 'http/protobuf':
      return new (require('@opentelemetry/exporter-trace-otlp-proto') as typeof import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter({ url: settings.url });
  }
}
/* eslint-enable @typescript-eslint/no-require-imports */

function samplerFor(settings: TracingSettings, sdk: typeof import('@opentelemetry/sdk-trace')): Sampler {
  const root = (name: string): Sampler =>
    name === 'always_off' ? new sdk.AlwaysOffSampler() : name === 'traceidratio' ? new sdk.TraceIdRatioBasedSampler(settings.ratio) : new sdk.AlwaysOnSampler();
  if (!settings.sampler.startsWith('parentbased_')) return root(settings.sampler);
  return new sdk.ParentBasedSampler({ root: root(settings.sampler.slice('parentbased_'.length)) });
}
