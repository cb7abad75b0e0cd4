import { KeysFileError } from './auth/ApiKeys';
import { ConfigError, loadConfig } from './config';
import { createLogger } from './logger';
import { startServer, TlsFileError, type RunningServer } from './server';
import { redactStoreUrl } from './store/open';
import { StoreError } from './core/durability/RecipeStore';

/** After a graceful shutdown, how long the event loop may take to end by itself. */
const EXIT_WAIT_MS = 5000;

/** Serves until a signal: config → start → signals. SIGTERM/SIGINT drain; a second signal exits at once. src/main.ts calls it once its checks pass. */
async function serve(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env, process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`isogear: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);

  // Handlers go in before anything is announced: a supervisor may signal the moment it reads the
  // start-up line. A signal during start-up is honoured once the server is up.
  const started: { server?: RunningServer } = {};
  let pending: NodeJS.Signals | undefined;
  let signals = 0;
  const stop = (running: RunningServer, signal: NodeJS.Signals): void => {
    logger.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down');
    running.shutdown().then(
      () => {
        // a second signal came: exitNow ends the process
        if (signals > 1) return;
        logger.info({}, 'stopped');
        // Let the event loop end instead of calling process.exit: Node then runs its environment
        // cleanup, where isolated-vm joins the threads still tearing down disposed isolates.
        // process.exit skips that and runs C++ static destructors under them (a SIGSEGV at exit
        // about once in 30 shutdowns after load). If something still holds the loop, exit anyway.
        process.exitCode = 0;
        setTimeout(() => {
          logger.warn({ afterMs: EXIT_WAIT_MS }, 'the event loop did not end after shutdown: exiting');
          process.exit(0);
        }, EXIT_WAIT_MS).unref();
      },
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  // A second signal: exit 1 without waiting for runs, but answer the calls in flight first
  // (UNAVAILABLE, retry elsewhere) rather than leave their status to how the client reads the
  // closing socket. A third signal, or one before the server is up, exits at once.
  const exitNow = (signal: NodeJS.Signals): void => {
    if (signals === 2) logger.warn({ signal }, 'second signal: exiting now');
    const running = started.server;
    if (signals > 2 || !running) process.exit(1);
    process.exitCode = 1;
    running.endCallsNow(`the server is exiting: a second signal (${signal}) ended its graceful shutdown before this call finished; retry it`).then(
      (ended) => {
        logger.info(ended, 'calls in flight answered UNAVAILABLE');
        process.exit(1);
      },
      (err: unknown) => {
        logger.error({ err }, 'calls in flight could not be answered');
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1;
    if (signals > 1) exitNow(signal);
    else if (started.server) stop(started.server, signal);
    else pending = signal;
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // SIGHUP re-reads the API keys file (it is also polled for changes).
  process.on('SIGHUP', () => void started.server?.reloadKeys());

  let server: RunningServer;
  try {
    server = await startServer(config, logger);
  } catch (err) {
    if (err instanceof KeysFileError) {
      process.stderr.write(`isogear: ISOGEAR_API_KEYS_FILE: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof TlsFileError) {
      process.stderr.write(`isogear: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof StoreError) {
      process.stderr.write(`isogear: ISOGEAR_STORE: ${err.message}\n`);
      // isolates may exist already (the restore read failed): let the event loop end, as below
      process.exitCode = 2;
      setTimeout(() => process.exit(2), EXIT_WAIT_MS).unref();
      return;
    }
    throw err;
  }
  started.server = server;
  logger.info({ config: { ...config, store: redactStoreUrl(config.store) }, grpcAddress: server.grpcAddress, metricsAddress: server.metricsAddress, healthAddress: server.healthAddress }, 'isogear started');
  if (pending) stop(server, pending);
}

/** Starts serving; a start that fails prints one line with the cause and exits 1. */
export function serveOrExit(): void {
  serve().catch((err: unknown) => {
    process.stderr.write(`isogear: failed to start: ${err instanceof Error ? err.stack : String(err)}\n`);
    // A start that failed late (a port taken) has created and disposed isolates already: let the
    // event loop end rather than exit under isolated-vm's teardown (see the shutdown path above).
    process.exitCode = 1;
    setTimeout(() => process.exit(1), EXIT_WAIT_MS).unref();
  });
}
