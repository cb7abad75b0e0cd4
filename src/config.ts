import os from 'node:os';
import { DEFAULTS, MIN_MEMORY_MB } from './core/options';
import { DEFAULT_MAX_VERSIONS } from './core/durability/RecipeStore';
import type { IsolationMode } from './core/types';
import { tracingSettings, type TracingChoice } from './tracing/settings';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

/** One validated, typed configuration: every ISOGEAR_* setting with its default applied. */
export interface Config {
  /** Tracing, from OpenTelemetry's own OTEL_* variables (never an ISOGEAR_* one): off without an OTLP endpoint. */
  tracing: TracingChoice;
  grpcAddress: string;
  metricsAddress: string;
  /** host:port of a plaintext server with grpc.health.v1 only ('' for none): probes that cannot speak TLS. */
  healthAddress: string;
  defaultMode: IsolationMode;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultMemoryMb: number;
  maxMemoryMb: number;
  sharedIsolates: number;
  sharedIsolateMemoryMb: number;
  maxInterpreters: number;
  maxSourceBytes: number;
  maxLogBytes: number;
  maxValueBytes: number;
  maxRegistrationsPerInterpreter: number;
  maxConcurrentRuns: number;
  maxQueuedRuns: number;
  maxQueueWaitMs: number;
  maxResponseBytes: number;
  warmIsolates: number;
  warmContexts: number;
  codeCacheBytes: number;
  shutdownGraceMs: number;
  logLevel: LogLevel;
  /** Path of the API keys file; '' runs the server open, as the one default tenant. */
  apiKeysFile: string;
  /** Quotas of each tenant unless its keys-file entry overrides them. */
  tenantMaxInterpreters: number;
  tenantMaxRegistrations: number;
  tenantMaxConcurrentRuns: number;
  tenantMaxDedicatedMemoryMb: number;
  tenantMaxBackgroundExecutions: number;
  executionRetentionMs: number;
  executionRetentionBytes: number;
  extraSharedIsolates: number;
  watchBuffer: number;
  tenantMaxWatchers: number;
  /** PEM certificate chain and key: gRPC over TLS ('' for both: plaintext). */
  tlsCertFile: string;
  tlsKeyFile: string;
  /** PEM CA bundle: client certificates are required and must chain to it (mTLS). */
  tlsClientCaFile: string;
  /** 'cn': a verified client certificate's subject CN is the caller's tenant. */
  tlsClientTenant: 'none' | 'cn';
  /** Adds a `tenant` label to the run metrics and exports per-tenant gauges (one series per tenant). */
  metricsTenantLabel: boolean;
  /**
   * Where recipes of interpreters with registrations are kept: 'sqlite' (the embedded file in
   * dataDir), 'memory' (nothing durable), or a redis:// or rediss:// URL (shared by replicas).
   */
  store: string;
  /** Directory of the embedded store. */
  dataDir: string;
  /** Interpreters rebuilt at once at start-up. */
  restoreConcurrency: number;
  /** Versions a named interpreter keeps (ListVersions, Rollback), the current one included. */
  maxVersions: number;
  /** The Redis gears.consume reads streams from: a redis:// URL, or '' (none: gears.consume fails). Defaults to a Redis store's. */
  eventsRedisUrl: string;
  /** Deliveries of a stream entry before it is acknowledged as a dead letter. */
  streamMaxDeliveries: number;
  /** How long an entry stays pending on a consumer before another consumer may claim it. */
  streamClaimIdleMs: number;
  /** The first retry of a failed entry waits this long; each next one twice as long. */
  streamRetryMs: number;
}

/** A setting is missing its mark; the message names the variable. Start-up stops. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Parser<T> = (raw: string, variable: string) => T;

const int =
  (min: number, max: number): Parser<number> =>
  (raw, variable) => {
    if (!/^\d+$/.test(raw.trim())) throw new ConfigError(`${variable} must be a whole number, got ${JSON.stringify(raw)}`);
    const n = Number(raw.trim());
    if (n < min || n > max) throw new ConfigError(`${variable} must be between ${min} and ${max}, got ${n}`);
    return n;
  };

const address: Parser<string> = (raw, variable) => {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw.trim());
  if (!m || Number(m[2]) > 65535) throw new ConfigError(`${variable} must be host:port (e.g. 0.0.0.0:50051), got ${JSON.stringify(raw)}`);
  return raw.trim();
};

const oneOf =
  <T extends string>(...values: T[]): Parser<T> =>
  (raw, variable) => {
    const v = raw.trim().toLowerCase() as T;
    if (!values.includes(v)) throw new ConfigError(`${variable} must be one of ${values.join(', ')}, got ${JSON.stringify(raw)}`);
    return v;
  };

const bool: Parser<boolean> = (raw, variable) => {
  const v = raw.trim().toLowerCase();
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw new ConfigError(`${variable} must be true or false, got ${JSON.stringify(raw)}`);
};

/** A file path, or '' for none. */
const optionalPath: Parser<string> = (raw, variable) => {
  const v = raw.trim();
  if (v.includes('\0')) throw new ConfigError(`${variable} must be a file path, got ${JSON.stringify(raw)}`);
  return v;
};

/** 'sqlite' (also for ''), 'memory', or a Redis URL with a host. */
const storeSetting: Parser<string> = (raw, variable) => {
  const v = raw.trim();
  if (v === 'sqlite' || v === 'memory') return v;
  if (/^rediss?:\/\//i.test(v)) {
    let url: URL;
    try {
      url = new URL(v);
    } catch {
      throw new ConfigError(`${variable} is not a valid Redis URL (redis://[:password@]host:port[/db])`);
    }
    if (!url.hostname) throw new ConfigError(`${variable} must name the Redis host: redis://host:6379`);
    if (url.pathname && url.pathname !== '/' && !/^\/\d{1,2}$/.test(url.pathname)) {
      throw new ConfigError(`${variable}: the path of a Redis URL is the database number (/0 to /15)`);
    }
    return v;
  }
  // never echo it: a URL may carry a password
  throw new ConfigError(`${variable} must be sqlite, memory, or a redis:// or rediss:// URL`);
};

/** A redis:// or rediss:// URL (as ISOGEAR_STORE takes it), or '' for none. */
const redisUrlSetting: Parser<string> = (raw, variable) => {
  const v = raw.trim();
  if (v === '') return '';
  if (!/^rediss?:\/\//i.test(v)) throw new ConfigError(`${variable} must be a redis:// or rediss:// URL`);
  return storeSetting(v, variable);
};

interface Setting<K extends keyof Config> {
  key: K;
  variable: string;
  parse: Parser<Config[K]>;
  fallback: (partial: Partial<Config>) => Config[K];
}

const MiB = 1024 * 1024;

function setting<K extends keyof Config>(key: K, variable: string, parse: Parser<Config[K]>, fallback: (p: Partial<Config>) => Config[K]): Setting<K> {
  return { key, variable, parse, fallback };
}

/** Order matters where a default depends on an earlier setting. */
const SETTINGS = [
  setting('grpcAddress', 'ISOGEAR_GRPC_ADDRESS', address, () => '0.0.0.0:50051'),
  setting('metricsAddress', 'ISOGEAR_METRICS_ADDRESS', address, () => '0.0.0.0:9464'),
  setting('healthAddress', 'ISOGEAR_HEALTH_ADDRESS', address, () => ''),
  setting('defaultMode', 'ISOGEAR_DEFAULT_MODE', oneOf<IsolationMode>('isolate', 'shared'), (): IsolationMode => DEFAULTS.defaultMode),
  setting('defaultTimeoutMs', 'ISOGEAR_DEFAULT_TIMEOUT_MS', int(1, 3_600_000), () => DEFAULTS.defaultTimeoutMs),
  setting('maxTimeoutMs', 'ISOGEAR_MAX_TIMEOUT_MS', int(1, 3_600_000), () => DEFAULTS.maxTimeoutMs),
  setting('defaultMemoryMb', 'ISOGEAR_DEFAULT_MEMORY_MB', int(MIN_MEMORY_MB, 65_536), () => DEFAULTS.defaultMemoryMb),
  setting('maxMemoryMb', 'ISOGEAR_MAX_MEMORY_MB', int(MIN_MEMORY_MB, 65_536), () => DEFAULTS.maxMemoryMb),
  setting('sharedIsolates', 'ISOGEAR_SHARED_ISOLATES', int(1, 1024), () => Math.max(1, os.availableParallelism())),
  setting('sharedIsolateMemoryMb', 'ISOGEAR_SHARED_MEMORY_MB', int(MIN_MEMORY_MB, 65_536), (p) => p.maxMemoryMb ?? DEFAULTS.maxMemoryMb),
  setting('maxInterpreters', 'ISOGEAR_MAX_INTERPRETERS', int(1, 10_000_000), () => DEFAULTS.maxInterpreters),
  setting('maxSourceBytes', 'ISOGEAR_MAX_SOURCE_BYTES', int(1, 64 * MiB), () => DEFAULTS.maxSourceBytes),
  setting('maxLogBytes', 'ISOGEAR_MAX_LOG_BYTES', int(1, 64 * MiB), () => DEFAULTS.maxLogBytes),
  setting('maxValueBytes', 'ISOGEAR_MAX_VALUE_BYTES', int(1, 64 * MiB), () => DEFAULTS.maxValueBytes),
  setting('maxRegistrationsPerInterpreter', 'ISOGEAR_MAX_REGISTRATIONS_PER_INTERPRETER', int(1, 1_000_000), () => DEFAULTS.maxRegistrationsPerInterpreter),
  setting('maxConcurrentRuns', 'ISOGEAR_MAX_CONCURRENT_RUNS', int(1, 100_000), () => DEFAULTS.maxConcurrentRuns),
  setting('maxQueuedRuns', 'ISOGEAR_MAX_QUEUED_RUNS', int(0, 1_000_000), () => DEFAULTS.maxQueuedRuns),
  setting('maxQueueWaitMs', 'ISOGEAR_MAX_QUEUE_WAIT_MS', int(1, 3_600_000), () => DEFAULTS.maxQueueWaitMs),
  setting('maxResponseBytes', 'ISOGEAR_MAX_RESPONSE_BYTES', int(1024, 1024 * MiB), () => DEFAULTS.maxResponseBytes),
  setting('warmIsolates', 'ISOGEAR_WARM_ISOLATES', int(0, 1024), () => DEFAULTS.warmIsolates),
  setting('warmContexts', 'ISOGEAR_WARM_CONTEXTS', int(0, 1024), () => DEFAULTS.warmContextsPerShared),
  setting('codeCacheBytes', 'ISOGEAR_CODE_CACHE_BYTES', int(0, 4096 * MiB), () => DEFAULTS.codeCacheBytes),
  setting('shutdownGraceMs', 'ISOGEAR_SHUTDOWN_GRACE_MS', int(0, 3_600_000), () => 10_000),
  setting('logLevel', 'ISOGEAR_LOG_LEVEL', oneOf<LogLevel>('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'), (): LogLevel => 'info'),
  setting('apiKeysFile', 'ISOGEAR_API_KEYS_FILE', optionalPath, () => ''),
  // Per-tenant quotas; the defaults are the server-wide limits, so a quota binds only once set.
  setting('tenantMaxInterpreters', 'ISOGEAR_TENANT_MAX_INTERPRETERS', int(0, 1e9), (p) => p.maxInterpreters ?? DEFAULTS.maxInterpreters),
  setting('tenantMaxRegistrations', 'ISOGEAR_TENANT_MAX_REGISTRATIONS', int(0, 1e9), (p) => Math.min(1e9, (p.maxInterpreters ?? DEFAULTS.maxInterpreters) * (p.maxRegistrationsPerInterpreter ?? DEFAULTS.maxRegistrationsPerInterpreter))),
  setting('tenantMaxConcurrentRuns', 'ISOGEAR_TENANT_MAX_CONCURRENT_RUNS', int(0, 1e9), (p) => p.maxConcurrentRuns ?? DEFAULTS.maxConcurrentRuns),
  setting('metricsTenantLabel', 'ISOGEAR_METRICS_TENANT_LABEL', bool, () => false),
  setting('tlsCertFile', 'ISOGEAR_TLS_CERT_FILE', optionalPath, () => ''),
  setting('tlsKeyFile', 'ISOGEAR_TLS_KEY_FILE', optionalPath, () => ''),
  setting('tlsClientCaFile', 'ISOGEAR_TLS_CLIENT_CA_FILE', optionalPath, () => ''),
  setting('tlsClientTenant', 'ISOGEAR_TLS_CLIENT_TENANT', oneOf<'none' | 'cn'>('none', 'cn'), (): 'none' | 'cn' => 'none'),
  setting('store', 'ISOGEAR_STORE', storeSetting, () => 'sqlite'),
  setting('dataDir', 'ISOGEAR_DATA_DIR', optionalPath, () => './data'),
  setting('restoreConcurrency', 'ISOGEAR_RESTORE_CONCURRENCY', int(1, 256), () => 4),
  setting('maxVersions', 'ISOGEAR_MAX_VERSIONS', int(1, 10_000), () => DEFAULT_MAX_VERSIONS),
  setting('eventsRedisUrl', 'ISOGEAR_EVENTS_REDIS_URL', redisUrlSetting, (p) => (p.store && /^rediss?:\/\//i.test(p.store) ? p.store : '')),
  setting('streamMaxDeliveries', 'ISOGEAR_STREAM_MAX_DELIVERIES', int(1, 1000), () => 5),
  setting('streamClaimIdleMs', 'ISOGEAR_STREAM_CLAIM_IDLE_MS', int(10, 86_400_000), () => 60_000),
  setting('streamRetryMs', 'ISOGEAR_STREAM_RETRY_MS', int(1, 3_600_000), () => 1000),
  setting('tenantMaxBackgroundExecutions', 'ISOGEAR_TENANT_MAX_BACKGROUND_EXECUTIONS', int(0, 1e9), () => DEFAULTS.tenantMaxBackgroundExecutions),
  setting('executionRetentionMs', 'ISOGEAR_EXECUTION_RETENTION_MS', int(0, 7 * 24 * 3_600_000), () => DEFAULTS.executionRetentionMs),
  setting('executionRetentionBytes', 'ISOGEAR_EXECUTION_RETENTION_BYTES', int(0, 64 * 1024 * MiB), () => DEFAULTS.executionRetentionBytes),
  setting('extraSharedIsolates', 'ISOGEAR_EXTRA_SHARED_ISOLATES', int(0, 1024), (p) => p.sharedIsolates ?? Math.max(1, os.availableParallelism())),
  setting('watchBuffer', 'ISOGEAR_WATCH_BUFFER', int(1, 1_000_000), () => DEFAULTS.watchBuffer),
  setting('tenantMaxWatchers', 'ISOGEAR_TENANT_MAX_WATCHERS', int(0, 100_000), () => DEFAULTS.tenantMaxWatchers),
  setting('tenantMaxDedicatedMemoryMb', 'ISOGEAR_TENANT_MAX_DEDICATED_MEMORY_MB', int(0, 1e9), (p) => Math.min(1e9, (p.maxInterpreters ?? DEFAULTS.maxInterpreters) * (p.maxMemoryMb ?? DEFAULTS.maxMemoryMb))),
] as Setting<keyof Config>[];

export const CONFIG_VARIABLES: readonly string[] = SETTINGS.map((s) => s.variable);

/** `--default-mode=shared` or `--default-mode shared` mirrors ISOGEAR_DEFAULT_MODE. */
export function flagsToEnv(argv: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const m = /^--([a-z0-9-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}; flags look like --grpc-address=127.0.0.1:50051`);
    const variable = `ISOGEAR_${m[1].toUpperCase().replace(/-/g, '_')}`;
    if (!CONFIG_VARIABLES.includes(variable)) throw new ConfigError(`unknown flag --${m[1]}`);
    let value = m[2];
    if (value === undefined) {
      value = argv[i + 1];
      if (value === undefined) throw new ConfigError(`flag --${m[1]} needs a value`);
      i += 1;
    }
    out[variable] = value;
  }
  return out;
}

/**
 * Reads ISOGEAR_* variables (flags override them), applies defaults and validates. Unknown
 * ISOGEAR_* variables are rejected too: a typo must not silently fall back to a default.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, argv: readonly string[] = []): Config {
  const merged: Record<string, string | undefined> = { ...env, ...flagsToEnv(argv) };
  for (const name of Object.keys(merged)) {
    if (name.startsWith('ISOGEAR_') && !CONFIG_VARIABLES.includes(name)) {
      throw new ConfigError(`${name} is not an isogear setting (known: ${CONFIG_VARIABLES.join(', ')})`);
    }
  }
  const partial: Partial<Config> = {};
  for (const s of SETTINGS) {
    const raw = merged[s.variable];
    (partial as Record<string, unknown>)[s.key] = raw === undefined || raw === '' ? s.fallback(partial) : s.parse(raw, s.variable);
  }
  const config = partial as Config;
  // OTEL_* variables are OpenTelemetry's: read by their own rules, never refused as unknown.
  config.tracing = tracingSettings(merged);
  if (config.defaultTimeoutMs > config.maxTimeoutMs) {
    throw new ConfigError(`ISOGEAR_DEFAULT_TIMEOUT_MS (${config.defaultTimeoutMs}) must not exceed ISOGEAR_MAX_TIMEOUT_MS (${config.maxTimeoutMs})`);
  }
  if (Boolean(config.tlsCertFile) !== Boolean(config.tlsKeyFile)) {
    throw new ConfigError('ISOGEAR_TLS_CERT_FILE and ISOGEAR_TLS_KEY_FILE go together: set both for TLS, or neither');
  }
  if (config.tlsClientCaFile && !config.tlsCertFile) {
    throw new ConfigError('ISOGEAR_TLS_CLIENT_CA_FILE needs TLS: set ISOGEAR_TLS_CERT_FILE and ISOGEAR_TLS_KEY_FILE too');
  }
  if (config.tlsClientTenant === 'cn' && !config.tlsClientCaFile) {
    throw new ConfigError('ISOGEAR_TLS_CLIENT_TENANT=cn needs verified client certificates: set ISOGEAR_TLS_CLIENT_CA_FILE');
  }
  if (config.defaultMemoryMb > config.maxMemoryMb) {
    throw new ConfigError(`ISOGEAR_DEFAULT_MEMORY_MB (${config.defaultMemoryMb}) must not exceed ISOGEAR_MAX_MEMORY_MB (${config.maxMemoryMb})`);
  }
  return config;
}
