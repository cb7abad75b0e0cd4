import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Server, ServerCredentials, type ServiceDefinition, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { GearsService } from './api/GearsService';
import { ApiKeys, CertificateTenants, OPEN_ACCESS, type Authenticator } from './auth/ApiKeys';
import type { Config } from './config';
import { UnavailableError } from './core/errors';
import { InterpreterManager } from './core/InterpreterManager';
import type { Logger } from './logger';
import { metricsInterceptor, rpcLabels } from './metrics/grpcInterceptor';
import { IsogearMetrics } from './metrics/metrics';
import { MetricsServer } from './metrics/MetricsServer';
import { openStore } from './store/open';
import { RedisStore } from './store/RedisStore';
import { RedisStreams } from './store/RedisStreams';
import type { ManagerOptions } from './core/options';
import os from 'node:os';
import type { RecipeStore } from './core/durability/RecipeStore';
import { startTracing } from './tracing/provider';
import type { Tracing } from './tracing/Tracing';

/** proto/ sits beside src/ and dist/ alike. */
const PROTO_DIR = path.join(__dirname, '..', 'proto');

/** The server's version, which its spans' resource names (package.json sits beside src/ and dist/ too). */
const VERSION = (JSON.parse(readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }).version;

const FINAL_ANSWER_MS = 1000;
/**
 * Before an exit that cannot wait (a second signal): how long the answers to the calls in flight
 * may take to leave. On loopback or a LAN they leave in well under a millisecond; the wait ends as
 * soon as every client has closed its connection.
 */
const EXIT_FLUSH_MS = 300;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

/** The service name clients and probes ask the health service about. */
export const SERVICE_NAME = 'isogear.v1.GearsService';

/**
 * isolated-vm's onCatastrophicError: V8 hit a fatal error in an isolate (some out-of-memory
 * patterns, e.g. a Map grown past the limit, end here rather than in a memory kill) and the
 * process is no longer trustworthy. Log at fatal (flushed), then abort: `process.exit` never
 * returns here, because exiting waits for the isolate's thread, which isolated-vm parks for
 * good; the process would neither serve nor end. Abort ends it at once (SIGABRT, exit code
 * 134) and the supervisor restarts it.
 */
export function exitOnCatastrophe(logger: Pick<Logger, 'fatal' | 'flush'>, abort: () => void = () => process.abort()): (message: string) => void {
  return (message) => {
    logger.fatal({ message }, 'isolated-vm lost control of an isolate; aborting the process');
    logger.flush?.();
    abort();
  };
}

/** A TLS file could not be read or used; the message names the setting and the file. */
export class TlsFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TlsFileError';
  }
}

/** Plaintext, TLS, or mTLS (client certificates required and checked against the client CA). */
function serverCredentials(config: Config): ServerCredentials {
  if (!config.tlsCertFile) return ServerCredentials.createInsecure();
  const read = (variable: string, file: string): Buffer => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new TlsFileError(`${variable}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  };
  const cert = read('ISOGEAR_TLS_CERT_FILE', config.tlsCertFile);
  const key = read('ISOGEAR_TLS_KEY_FILE', config.tlsKeyFile);
  const ca = config.tlsClientCaFile ? read('ISOGEAR_TLS_CLIENT_CA_FILE', config.tlsClientCaFile) : null;
  try {
    return ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
  } catch (err) {
    throw new TlsFileError(`the TLS certificate, key or client CA is not usable: ${err instanceof Error ? err.message : String(err)}`);
  }
}

export interface RunningServer {
  /** host:port the gRPC server is bound to (the real port when the config said :0). */
  readonly grpcAddress: string;
  /** host:port serving GET /metrics. */
  readonly metricsAddress: string;
  /** host:port of the plaintext health-only server, when ISOGEAR_HEALTH_ADDRESS is set. */
  readonly healthAddress?: string;
  readonly metrics: IsogearMetrics;
  readonly manager: InterpreterManager;
  /**
   * Re-reads the API keys file (SIGHUP). Resolves true when the new keys are in force, false when
   * the file was rejected (the previous keys stay) or the server runs without one.
   */
  reloadKeys(): Promise<boolean>;
  /**
   * Stops in order: health NOT_SERVING, stop accepting calls, let calls in flight finish for up
   * to `graceMs`, then dispose every isolate and close the server. Idempotent. Once
   * `endCallsNow` has been called it disposes nothing: it resolves where disposal would begin,
   * as the process is exiting.
   */
  shutdown(graceMs?: number): Promise<void>;
  /**
   * For a process that must exit before its calls finish (a second signal): stops accepting
   * calls and answers every GearsService call in flight at once with UNAVAILABLE and `reason`,
   * without waiting for runs or disposing isolates. Resolves once those answers have left (every
   * connection closed) or after EXIT_FLUSH_MS; the process exits next.
   */
  endCallsNow(reason: string): Promise<EndedCalls>;
}

/** What `endCallsNow` did: the calls it answered, and whether every connection closed in time. */
export interface EndedCalls {
  readonly calls: number;
  readonly connectionsClosed: boolean;
}

/**
 * Composes the gRPC server (GearsService, grpc.health.v1, server reflection, the metrics
 * interceptor) over a new isolate manager, binds it, and starts the metrics endpoint.
 */
export async function startServer(config: Config, logger: Logger): Promise<RunningServer> {
  // Read before anything starts: a bad keys file stops start-up (KeysFileError).
  const keys = config.apiKeysFile ? ApiKeys.load(config.apiKeysFile, logger) : undefined;
  const credentials = serverCredentials(config);
  const auth: Authenticator = config.tlsClientTenant === 'cn' ? new CertificateTenants(keys) : (keys ?? OPEN_ACCESS);
  if (config.tlsClientTenant === 'cn') {
    logger.info({ keysFile: keys?.path }, 'tenants from client certificates: each caller is the subject CN of its verified certificate');
  } else if (keys) {
    logger.info({ path: keys.path, tenants: keys.tenantNames.length }, 'API keys loaded: every GearsService call needs "authorization: Bearer <key>"');
  } else {
    logger.warn({}, 'no ISOGEAR_API_KEYS_FILE: the server is open, and every caller is the one tenant "default"');
  }
  const metrics = new IsogearMetrics({ tenantLabel: config.metricsTenantLabel });
  // Opened before anything serves: a store that cannot be opened stops start-up (StoreError).
  const store = await openStore(config, logger);
  if (store) logger.info({ store: store.description }, 'registrations are durable: recipes are kept in the store');
  // this server in consumer groups and tick claims: unique even for servers sharing a process (tests)
  const serverName = `${os.hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  // the events Redis of gears.consume: connected in the background, never a reason not to start
  const streams = config.eventsRedisUrl ? new RedisStreams(config.eventsRedisUrl) : undefined;
  if (streams) logger.info({ events: streams.description }, 'stream consumers read from this Redis');
  // the events connection and the store close together
  const closeStores = async (): Promise<void> => {
    await streams?.close();
    await store?.close();
  };
  const tracing = startTracing(config.tracing.settings, VERSION);
  for (const warning of config.tracing.warnings) logger.warn({}, `tracing: ${warning}`);
  if (config.tracing.settings) logger.info({ endpoint: config.tracing.settings.url, protocol: config.tracing.settings.protocol, sampler: config.tracing.settings.sampler }, 'tracing: spans go to the OTLP endpoint');
  else logger.debug({ why: config.tracing.why }, 'tracing is off');
  let manager: InterpreterManager;
  try {
    const tickClaims = store instanceof RedisStore ? store.tickClaims(serverName) : undefined;
    manager = await createManager(config, logger, metrics, keys, store, tracing.tracing, { streams, tickClaims, serverName });
  } catch (err) {
    await closeStores();
    await tracing.shutdown();
    throw err;
  }
  // Requests wait (UNAVAILABLE) and health says NOT_SERVING until the stored interpreters are back.
  const restored = restoreStored(manager, store, config, logger);
  restored.catch(() => undefined);

  // Requests are bounded by the source/value limits; leave room for modules and proto framing.
  const maxMessage = config.maxSourceBytes + 2 * config.maxValueBytes + 1024 * 1024;
  metrics.observe(manager, keys);
  const server = new Server({
    'grpc.max_receive_message_length': maxMessage,
    // A Trigger response keeps its results and logs within ISOGEAR_MAX_RESPONSE_BYTES; leave
    // room for the fields around them.
    'grpc.max_send_message_length': Math.max(maxMessage, config.maxResponseBytes + 1024 * 1024),
    interceptors: [metricsInterceptor(metrics)],
    // Nothing reads channelz (no channelz service is served); its per-call and per-message
    // bookkeeping is pure cost (about 10 µs of a Trigger's server CPU, measured).
    'grpc.enable_channelz': 0,
  });
  const health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE_NAME]: 'NOT_SERVING' });
  const served: ReturnType<typeof rpcLabels>[] = [];
  const services = recordingServices(server, served);
  health.addToServer(services);
  const gears = new GearsService(manager, logger, auth, tracing.tracing);
  gears.addToServer(services);
  const described = loadSync([path.join(PROTO_DIR, 'isogear/v1/gears.proto'), healthProtoPath], { includeDirs: [PROTO_DIR] });
  new ReflectionService(described).addToServer(services);
  metrics.initRpcs(served);

  let port: number;
  try {
    port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(config.grpcAddress, credentials, (err, p) => (err ? reject(err) : resolve(p)));
    });
  } catch (err) {
    await manager.destroy();
    await closeStores();
    await tracing.shutdown();
    throw err;
  }
  const host = config.grpcAddress.slice(0, config.grpcAddress.lastIndexOf(':'));
  const grpcAddress = `${host}:${port}`;
  // Health alone, in plaintext, for probes that cannot speak TLS (the kubelet's gRPC probe); it
  // shares the statuses of the main server's health service.
  let healthServer: Server | undefined;
  let healthAddress: string | undefined;
  let metricsServer: MetricsServer;
  try {
    if (config.healthAddress) {
      const hs = new Server();
      healthServer = hs;
      health.addToServer(hs);
      const healthPort = await new Promise<number>((resolve, reject) => {
        hs.bindAsync(config.healthAddress, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
      });
      healthAddress = `${config.healthAddress.slice(0, config.healthAddress.lastIndexOf(':'))}:${healthPort}`;
    }
    metricsServer = await MetricsServer.start(config.metricsAddress, metrics.registry);
    await restored;
  } catch (err) {
    healthServer?.forceShutdown();
    server.forceShutdown();
    await manager.destroy();
    await closeStores();
    await tracing.shutdown();
    throw err;
  }
  health.setStatus('', 'SERVING');
  health.setStatus(SERVICE_NAME, 'SERVING');
  keys?.watch();

  // Stops accepting calls (GOAWAY on every connection); resolves once every connection has closed,
  // which each does after its last call. Both ways to stop share it: tryShutdown once.
  let closing: Promise<void> | undefined;
  const closeConnections = (): Promise<void> => (closing ??= new Promise<void>((resolve) => server.tryShutdown(() => resolve())));

  // Set by endCallsNow: the process exits next. Isolates disposed now would still be tearing down
  // on their threads under process.exit, which can crash it (SIGSEGV, see src/serve.ts).
  let exiting = false;

  let stopping: Promise<void> | undefined;
  const shutdown = (graceMs = config.shutdownGraceMs): Promise<void> => {
    stopping ??= (async () => {
      keys?.close();
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(SERVICE_NAME, 'NOT_SERVING');
      // Background executions already accepted may finish within the grace period, like calls in flight.
      manager.stopAccepting();
      const drained = closeConnections();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), graceMs);
      });
      const first = await Promise.race([Promise.all([drained, manager.backgroundSettled()]), timedOut]);
      clearTimeout(timer);
      if (exiting) return;
      // Disposing the isolates ends runs still in flight (OUTCOME_ABORTED); give their calls a
      // moment to deliver that answer before cutting connections.
      await manager.destroy();
      await closeStores();
      if (first === 'timeout') {
        const answered = await Promise.race([drained.then(() => true), sleep(FINAL_ANSWER_MS).then(() => false)]);
        if (!answered) server.forceShutdown();
      }
      await drained;
      // probes keep seeing NOT_SERVING until the end
      if (healthServer) await new Promise<void>((resolve) => healthServer.tryShutdown(() => resolve()));
      await metricsServer.close();
      // the spans still batched go out before the process ends
      await tracing.shutdown().catch((err: unknown) => logger.warn({ err }, 'tracing: the last spans could not be exported'));
    })();
    return stopping;
  };

  const endCallsNow = async (reason: string): Promise<EndedCalls> => {
    exiting = true;
    const closed = closeConnections();
    // A call left to the exit would end as the client's HTTP/2 stack reads the closing socket,
    // which varies with timing: grpc-js says UNAVAILABLE after a FIN, but INTERNAL ("Received
    // RST_STREAM with code 0") after a reset that follows the GOAWAY. A status the server sent
    // first is the one the client keeps.
    const calls = gears.endCallsInFlight(new UnavailableError(reason));
    const connectionsClosed = await Promise.race([closed.then(() => true), sleep(EXIT_FLUSH_MS).then(() => false)]);
    return { calls, connectionsClosed };
  };

  const reloadKeys = (): Promise<boolean> => (keys ? keys.reload() : Promise.resolve(false));
  return { grpcAddress, metricsAddress: metricsServer.address, healthAddress, metrics, manager, reloadKeys, shutdown, endCallsNow };
}

/**
 * `server`, except that each service added through it (by a service's addToServer, the only
 * call these make) also has its methods listed in `methods`: the metrics start their series.
 */
function recordingServices(server: Server, methods: ReturnType<typeof rpcLabels>[]): Server {
  const addService = (definition: ServiceDefinition, implementation: UntypedServiceImplementation): void => {
    for (const m of Object.values(definition)) methods.push(rpcLabels(m));
    server.addService(definition, implementation);
  };
  return new Proxy(server, { get: (target, prop) => (prop === 'addService' ? addService : (Reflect.get(target, prop, target) as unknown)) });
}

function createManager(
  config: Config,
  logger: Logger,
  metrics: IsogearMetrics,
  keys: ApiKeys | undefined,
  store: RecipeStore | undefined,
  tracing: Tracing,
  sources: Pick<ManagerOptions, 'streams' | 'tickClaims' | 'serverName'>,
): Promise<InterpreterManager> {
  return InterpreterManager.create({
    tracing,
    ...sources,
    consumers: { maxDeliveries: config.streamMaxDeliveries, claimIdleMs: config.streamClaimIdleMs, retryMs: config.streamRetryMs },
    sourceEvents: metrics.sources,
    onRunEnd: metrics.recordRun,
    defaultMode: config.defaultMode,
    defaultTimeoutMs: config.defaultTimeoutMs,
    maxTimeoutMs: config.maxTimeoutMs,
    defaultMemoryMb: config.defaultMemoryMb,
    maxMemoryMb: config.maxMemoryMb,
    sharedIsolates: config.sharedIsolates,
    sharedIsolateMemoryMb: config.sharedIsolateMemoryMb,
    maxInterpreters: config.maxInterpreters,
    maxSourceBytes: config.maxSourceBytes,
    maxLogBytes: config.maxLogBytes,
    maxValueBytes: config.maxValueBytes,
    maxRegistrationsPerInterpreter: config.maxRegistrationsPerInterpreter,
    maxConcurrentRuns: config.maxConcurrentRuns,
    maxQueuedRuns: config.maxQueuedRuns,
    maxQueueWaitMs: config.maxQueueWaitMs,
    maxResponseBytes: config.maxResponseBytes,
    warmIsolates: config.warmIsolates,
    warmContextsPerShared: config.warmContexts,
    codeCacheBytes: config.codeCacheBytes,
    executionRetentionMs: config.executionRetentionMs,
    executionRetentionBytes: config.executionRetentionBytes,
    extraSharedIsolates: config.extraSharedIsolates,
    watchBuffer: config.watchBuffer,
    tenantMaxWatchers: config.tenantMaxWatchers,
    // Defaults from the config, overridden per tenant by its keys-file entry (read at each check,
    // so a reloaded file's quotas apply at once).
    tenantQuotas: (tenant) => ({
      interpreters: config.tenantMaxInterpreters,
      registrations: config.tenantMaxRegistrations,
      concurrentRuns: config.tenantMaxConcurrentRuns,
      dedicatedMemoryMb: config.tenantMaxDedicatedMemoryMb,
      backgroundExecutions: config.tenantMaxBackgroundExecutions,
      ...keys?.quotasOf(tenant),
    }),
    store,
    maxVersions: config.maxVersions,
    logger,
    onCatastrophicError: exitOnCatastrophe(logger),
  });
}

const PROGRESS_LOG_MS = 2000;

/**
 * Rebuilds the stored interpreters. A shared store is followed first (so no change made while
 * the restore reads is missed), then every recipe is replayed, ISOGEAR_RESTORE_CONCURRENCY at once.
 */
async function restoreStored(manager: InterpreterManager, store: RecipeStore | undefined, config: Config, logger: Logger): Promise<void> {
  if (!store) return;
  const since = performance.now();
  if (store.follow) {
    const apply = (id: string, replacedBy?: string): void => {
      manager.applyStored(id, replacedBy).catch((err: unknown) => logger.error({ err, interpreterId: id }, 'store: a change from another server could not be applied'));
    };
    const resync = (): void => {
      logger.warn({ store: store.description }, 'store: changes may have been missed; comparing every recipe again');
      manager.resync(config.restoreConcurrency).catch((err: unknown) => logger.error({ err }, 'store: the comparison failed'));
    };
    await store.follow(apply, resync);
  }
  let last = performance.now();
  const status = await manager.restore(() => store.loadAll(), config.restoreConcurrency, (done, total) => {
    const now = performance.now();
    if (done === total || now - last >= PROGRESS_LOG_MS) {
      last = now;
      logger.info({ done, total }, 'restore: rebuilding stored interpreters');
    }
  });
  const log = status.broken.length > 0 ? logger.error.bind(logger) : logger.info.bind(logger);
  log(
    { restored: status.restored, broken: status.broken.length, brokenIds: status.broken.map((b) => b.interpreterId), ms: Math.round(performance.now() - since) },
    'restore: stored interpreters are back',
  );
}
