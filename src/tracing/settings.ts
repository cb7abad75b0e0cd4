/**
 * Tracing's settings, from OpenTelemetry's standard environment variables only (isogear has no
 * ISOGEAR_* variable for them). Nothing is exported unless an OTLP endpoint is set.
 *
 * Invalid values never stop the server (the OpenTelemetry specification asks SDKs to warn and
 * carry on): each one is named in a warning, logged at start-up, and its default is used.
 */

export type OtlpProtocol = 'grpc' | 'http/protobuf' | 'http/json';
export type SamplerName = 'always_on' | 'always_off' | 'traceidratio' | 'parentbased_always_on' | 'parentbased_always_off' | 'parentbased_traceidratio';
export type PropagatorName = 'tracecontext' | 'baggage';

export interface TracingSettings {
  protocol: OtlpProtocol;
  /** Where spans go: the full URL of the traces endpoint (HTTP: `…/v1/traces`; gRPC: the collector's address). */
  url: string;
  sampler: SamplerName;
  /** The ratio of the `traceidratio` samplers, 0 to 1. */
  ratio: number;
  propagators: PropagatorName[];
  /** Resource attributes: OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME (default `isogear`). */
  resource: Record<string, string>;
  batch: { scheduledDelayMillis: number; exportTimeoutMillis: number; maxQueueSize: number; maxExportBatchSize: number };
}

export interface TracingChoice {
  /** Undefined: tracing is off (`why` says why). */
  settings?: TracingSettings;
  why: string;
  warnings: string[];
}

const PROTOCOLS: readonly OtlpProtocol[] = ['grpc', 'http/protobuf', 'http/json'];
const SAMPLERS: readonly SamplerName[] = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'];
const PROPAGATORS: readonly PropagatorName[] = ['tracecontext', 'baggage'];

/** Reads the OTEL_* variables of `env` (other variables are not looked at). */
export function tracingSettings(env: Record<string, string | undefined>): TracingChoice {
  const warnings: string[] = [];
  const get = (name: string): string | undefined => {
    const v = env[name]?.trim();
    return v ? v : undefined;
  };
  if (get('OTEL_SDK_DISABLED')?.toLowerCase() === 'true') return { why: 'OTEL_SDK_DISABLED is true', warnings };
  const exporters = (get('OTEL_TRACES_EXPORTER') ?? 'otlp').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  for (const e of exporters) if (e !== 'otlp' && e !== 'none') warnings.push(`OTEL_TRACES_EXPORTER: "${e}" is not supported (isogear exports over OTLP only; use otlp or none): ignored`);
  if (!exporters.includes('otlp')) return { why: `OTEL_TRACES_EXPORTER is ${exporters.join(',') || 'empty'}`, warnings };

  const signalEndpoint = get('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const endpoint = get('OTEL_EXPORTER_OTLP_ENDPOINT');
  if (!signalEndpoint && !endpoint) return { why: 'no OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set', warnings };

  const protocolVar = get('OTEL_EXPORTER_OTLP_TRACES_PROTOCOL') ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  const protocol = oneOf(get(protocolVar), PROTOCOLS, 'http/protobuf', protocolVar, warnings);
  const base = (signalEndpoint ?? endpoint) as string;
  const which = signalEndpoint ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  let parsed: URL;
  try {
    parsed = new URL(base);
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error('not http');
  } catch {
    warnings.push(`${which}: "${base}" is not an http:// or https:// URL: tracing is off`);
    return { why: `${which} is not a URL`, warnings };
  }
  // The general endpoint is a base: HTTP exports go to its /v1/traces (the signal's own endpoint is used as it is).
  const url = protocol !== 'grpc' && !signalEndpoint ? `${base.replace(/\/+$/, '')}/v1/traces` : base;

  const sampler = oneOf(get('OTEL_TRACES_SAMPLER')?.toLowerCase(), SAMPLERS, 'parentbased_always_on', 'OTEL_TRACES_SAMPLER', warnings);
  let ratio = 1;
  const arg = get('OTEL_TRACES_SAMPLER_ARG');
  if (sampler.endsWith('traceidratio') && arg !== undefined) {
    const n = Number(arg);
    if (Number.isFinite(n) && n >= 0 && n <= 1) ratio = n;
    else warnings.push(`OTEL_TRACES_SAMPLER_ARG: "${arg}" is not a ratio from 0 to 1: using 1`);
  }

  const propagators: PropagatorName[] = [];
  for (const p of (get('OTEL_PROPAGATORS') ?? 'tracecontext,baggage').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean)) {
    if (p === 'none') continue;
    if ((PROPAGATORS as readonly string[]).includes(p)) {
      if (!propagators.includes(p as PropagatorName)) propagators.push(p as PropagatorName);
    } else warnings.push(`OTEL_PROPAGATORS: "${p}" is not supported (tracecontext, baggage or none): ignored`);
  }

  const resource = resourceAttributes(get('OTEL_RESOURCE_ATTRIBUTES'), warnings);
  resource['service.name'] = get('OTEL_SERVICE_NAME') ?? resource['service.name'] ?? 'isogear';

  const batch = {
    scheduledDelayMillis: count(get, 'OTEL_BSP_SCHEDULE_DELAY', 5000, warnings),
    exportTimeoutMillis: count(get, 'OTEL_BSP_EXPORT_TIMEOUT', 30_000, warnings),
    maxQueueSize: count(get, 'OTEL_BSP_MAX_QUEUE_SIZE', 2048, warnings, 1),
    maxExportBatchSize: count(get, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512, warnings, 1),
  };
  if (batch.maxExportBatchSize > batch.maxQueueSize) {
    warnings.push(`OTEL_BSP_MAX_EXPORT_BATCH_SIZE (${batch.maxExportBatchSize}) is above OTEL_BSP_MAX_QUEUE_SIZE (${batch.maxQueueSize}): using ${batch.maxQueueSize}`);
    batch.maxExportBatchSize = batch.maxQueueSize;
  }
  return { settings: { protocol, url, sampler, ratio, propagators, resource, batch }, why: `exporting to ${url} (${protocol})`, warnings };
}

function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], fallback: T, name: string, warnings: string[]): T {
  if (value === undefined) return fallback;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  warnings.push(`${name}: "${value}" is not one of ${allowed.join(', ')}: using ${fallback}`);
  return fallback;
}

function count(get: (name: string) => string | undefined, name: string, fallback: number, warnings: string[], min = 0): number {
  const v = get(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (Number.isInteger(n) && n >= min) return n;
  warnings.push(`${name}: "${v}" is not a whole number of at least ${min}: using ${fallback}`);
  return fallback;
}

/** OTEL_RESOURCE_ATTRIBUTES: `key=value` pairs separated by commas, percent-encoded. */
function resourceAttributes(raw: string | undefined, warnings: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  if (!raw) return out;
  for (const pair of raw.split(',')) {
    if (!pair.trim()) continue;
    const eq = pair.indexOf('=');
    try {
      if (eq <= 0) throw new Error('no key=value');
      out[decodeURIComponent(pair.slice(0, eq).trim())] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch {
      warnings.push(`OTEL_RESOURCE_ATTRIBUTES: "${pair}" is not a percent-encoded key=value pair: ignored`);
    }
  }
  return out;
}
