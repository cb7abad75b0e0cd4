#!/usr/bin/env node
/**
 * `isogear`: the command line, a client of a running server. Results go to stdout, script logs
 * and messages to stderr. Exit codes: 0 success, 1 a script failed (its outcome), 2 a usage
 * error, 3 a gRPC error, 4 the execution `wait` waited for is not done yet (wait again).
 *
 * `serve` starts a server, which is the `isogear` package's: it runs this command line with its
 * own `serve` (`main(serve)`); this package's `isogear serve` says where to get it.
 */
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { Command, CommanderError, Option } from 'commander';
import { createClient, IsogearRpcError, pb, type IsogearClient, type Json, type LimitsInit } from '../client';
import { age, EXIT, languageOf, modeName, ms, outcomeName, printLogs, registrationSource, registrationState, reportExecute, stateName, table, UsageError, type GlobalOptions, type Io } from './common';
import { addPauseCommands } from './pause';
import { addVersionCommands } from './versions';
import { addTailCommand } from './tail';

export { EXIT };
export type { GlobalOptions, Io };

/** Starts a server with these flags and resolves with its exit code (the server package's `isogear serve`). */
export type Serve = (settings: string[]) => Promise<number>;

/**
 * The server package's `serve`, when it is installed beside this package. Both packages' bins are
 * `isogear`, and a project that installs the server has both: whichever one npm linked, `isogear
 * serve` starts the server.
 */
async function serverBeside(): Promise<Serve | undefined> {
  try {
    // (a specifier in a variable: the server package is optional, and no compiler should look for it)
    const server = 'isogear/dist/cli/main.js';
    const m = (await import(server)) as { serve?: Serve; default?: { serve?: Serve } };
    return m.serve ?? m.default?.serve;
  } catch {
    return undefined;
  }
}


const readSource = (io: Io, file: string): string => {
  if (file === '-') return io.stdin();
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
};

const parseJson = (flag: string, text: string): Json => {
  try {
    return JSON.parse(text) as Json;
  } catch (err) {
    throw new UsageError(`${flag} must be JSON (${err instanceof Error ? err.message : String(err)}), got ${JSON.stringify(text.slice(0, 60))}`);
  }
};

const wholeNumber = (flag: string) => (v: string): number => {
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} must be a whole number, got ${JSON.stringify(v)}`);
  return Number(v);
};

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function modulesOf(io: Io, specs: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const spec of specs ?? []) {
    const eq = spec.indexOf('=');
    if (eq <= 0 || eq === spec.length - 1) throw new UsageError(`--module takes name=FILE, got ${JSON.stringify(spec)}`);
    out[spec.slice(0, eq)] = readSource(io, spec.slice(eq + 1));
  }
  return out;
}

const limitsOf = (o: { timeout?: number; memory?: number }): LimitsInit | undefined =>
  o.timeout === undefined && o.memory === undefined ? undefined : { timeoutMs: o.timeout ?? 0, memoryLimitMb: o.memory ?? 0 };

const executionStateName = (s: pb.ExecutionState): string => pb.executionStateToJSON(s).replace(/^EXECUTION_STATE_/, '').toLowerCase();
const executionKindName = (k: pb.ExecutionKind): string => pb.executionKindToJSON(k).replace(/^EXECUTION_KIND_/, '').toLowerCase();

/**
 * What a DONE execution came to, '-' before: an EXECUTE's outcome; for a TRIGGER (or a HANDLER),
 * `succeeded` when every handler run did, the outcome they all had when all failed alike (a
 * cancelled fan-out: `aborted`), else how many failed (`1/3 failed`).
 */
function executionOutcome(e: pb.Execution): string {
  if (e.executeResponse) return outcomeName(e.executeResponse.outcome);
  if (!e.triggerResponse) return '-';
  const results = e.triggerResponse.results;
  const failed = results.filter((r) => r.outcome !== pb.Outcome.OUTCOME_SUCCEEDED);
  if (failed.length === 0) return 'succeeded';
  if (failed.length === results.length && failed.every((r) => r.outcome === failed[0].outcome)) return outcomeName(failed[0].outcome);
  return `${failed.length}/${results.length} failed`;
}

/** Every item of a paginated listing: `fetch(pageToken)` returns a page's items and the next token. */
async function allPages<T>(fetch: (pageToken: string) => Promise<readonly [T[], string]>): Promise<T[]> {
  const all: T[] = [];
  let token = '';
  do {
    const [items, next] = await fetch(token);
    all.push(...items);
    token = next;
  } while (token);
  return all;
}

/** Prints a Trigger's results as `trigger` does (one line per handler); exit 1 if any failed. */
function reportTrigger(io: Io, res: pb.TriggerResponse, json: boolean | undefined): number {
  let failed = 0;
  for (const r of res.results) {
    if (!json) printLogs(io, r.logs, r.logsTruncated);
    if (r.outcome === pb.Outcome.OUTCOME_SUCCEEDED) {
      if (!json) io.out(`${r.registrationId}  ${JSON.stringify(r.result ?? null)}\n`);
    } else {
      failed += 1;
      io.err(`isogear: ${r.registrationId}: ${outcomeName(r.outcome)}: ${r.error?.name ?? 'Error'}: ${r.error?.message ?? ''}\n`);
    }
  }
  return failed > 0 ? EXIT.scriptFailed : EXIT.ok;
}

/** What `exec --detach` and `trigger --detach` print: the execution id, or with --json the whole execution. */
function reportStarted(io: Io, e: pb.Execution, json: boolean | undefined): number {
  io.out(json ? `${JSON.stringify(pb.Execution.toJSON(e))}\n` : `${e.id}\n`);
  return EXIT.ok;
}

function credentialsOf(g: GlobalOptions): { credentials?: grpc.ChannelCredentials; channelOptions?: grpc.ChannelOptions } {
  if (!g.tlsCa && !g.tlsCert && !g.tlsKey) return {};
  if (Boolean(g.tlsCert) !== Boolean(g.tlsKey)) throw new UsageError('--tls-cert and --tls-key go together');
  const read = (flag: string, f: string | undefined): Buffer | null => {
    if (!f) return null;
    try {
      return readFileSync(f);
    } catch (err) {
      throw new UsageError(`${flag}: cannot read ${f}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  };
  return {
    credentials: grpc.credentials.createSsl(read('--tls-ca', g.tlsCa), read('--tls-key', g.tlsKey), read('--tls-cert', g.tlsCert)),
    channelOptions: g.tlsServerName ? { 'grpc.ssl_target_name_override': g.tlsServerName } : {},
  };
}

/** Builds the program; `run` parses argv with it and returns the exit code. `serve`: the server package's. */
export function program(io: Io, connect: (g: GlobalOptions) => IsogearClient, setCode: (code: number) => void, serve?: Serve): Command {
  const root = new Command('isogear')
    .description(serve ? 'Run JavaScript in isogear interpreters, manage registrations, and start the server.' : 'Run JavaScript in isogear interpreters and manage registrations, on a running isogear server.')
    .addOption(new Option('--address <host:port>', 'server address').env('ISOGEAR_ADDRESS').default('127.0.0.1:50051'))
    .addOption(new Option('--api-key <key>', 'API key, sent as "authorization: Bearer <key>"').env('ISOGEAR_API_KEY'))
    .option('--json', 'print responses as JSON (the proto JSON mapping)')
    .option('--tls-ca <file>', 'connect over TLS, trusting this CA (PEM)')
    .option('--tls-cert <file>', 'client certificate for mTLS (PEM; with --tls-key)')
    .option('--tls-key <file>', 'client private key for mTLS (PEM)')
    .option('--tls-server-name <name>', "the name to check the server's certificate against")

    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .exitOverride();
  root.addHelpText(
    'after',
    `
Exit codes: 0 success, 1 a script failed, 2 usage error, 3 gRPC error, 4 not done yet (wait).

Examples:
  $ isogear serve --default-mode=shared
  $ echo 'export default (a) => a.n * 2' | isogear exec - --args '{"n": 21}'
  $ isogear register orders.created handler.js
  $ isogear trigger orders.created --payload '{"id": 7}'
  $ isogear wait "$(isogear exec --detach job.js --timeout 60000)"
  $ isogear ps --all
  $ isogear ls registrations
  $ isogear tail --trigger orders.created --logs
  $ ISOGEAR_API_KEY=... isogear --address isogear.example:50051 --tls-ca ca.pem ls`,
  );
  const g = (): GlobalOptions => root.opts<GlobalOptions>();
  const withClient = async (fn: (client: IsogearClient, g: GlobalOptions) => Promise<number>): Promise<void> => {
    const client = connect(g());
    try {
      setCode(await fn(client, g()));
    } finally {
      client.close();
    }
  };

  root
    .command('serve')
    .description(
      serve
        ? 'start the server (as `npm start`); flags mirror ISOGEAR_* settings, e.g. --grpc-address=0.0.0.0:50051'
        : 'start a server: the server package\'s command (`npm install isogear`); this package is the client only',
    )
    .allowUnknownOption()
    .allowExcessArguments()
    .argument('[settings...]', 'server flags (--default-mode=shared …), passed through')
    .addHelpText('after', '\nExamples:\n  $ isogear serve\n  $ isogear serve --default-mode=shared --shared-isolates=4')
    .action(async (settings: string[]) => {
      const start = serve ?? (await serverBeside());
      if (!start) {
        throw new UsageError('serve runs the server, which is not in @isogear/client (the client and command line): install the server package, `npm install isogear`, and run its `npx isogear serve`');
      }
      setCode(await start(settings));
    });

  root
    .command('exec')
    .description('run a script once (its default export is called with --args); the result goes to stdout, its logs to stderr')
    .argument('<file>', 'the script, or - for standard input')
    .option('--args <json>', 'arguments for the default export, as JSON')
    .addOption(new Option('--mode <mode>', 'isolation of a new interpreter').choices(['shared', 'isolate']))
    .option('--module <name=file>', 'a module the script may import (repeatable)', collect)
    .option('--timeout <ms>', 'wall-clock limit of the run', wholeNumber('--timeout'))
    .option('--memory <mb>', 'heap limit of a dedicated isolate', wholeNumber('--memory'))
    .option('--name <name>', 'name the new interpreter (unique among live ones)')
    .option('--replace', 'upgrade the interpreter holding --name: it is released once this run succeeds')
    .option('--interpreter <id>', 'run in this existing interpreter instead of a new one')
    .option('--detach', 'run it in the background (StartExecute): print its execution id and exit 0; see wait, ps, cancel')
    .addOption(new Option('--language <language>', 'what FILE and the modules are written in (default: typescript for .ts files)').choices(['javascript', 'typescript']))
    .addHelpText(
      'after',
      `\nExamples:\n  $ isogear exec script.js --args '{"x": 1}' --mode shared\n  $ isogear exec main.js --module util=util.js --name svc --replace\n  $ isogear exec --detach report.js --timeout 60000`,
    )
    .action(async (file: string, o: { args?: string; mode?: 'shared' | 'isolate'; module?: string[]; timeout?: number; memory?: number; name?: string; replace?: boolean; interpreter?: string; detach?: boolean; language?: 'javascript' | 'typescript' }) => {
      const source = readSource(io, file);
      const args = o.args === undefined ? undefined : parseJson('--args', o.args);
      const modules = modulesOf(io, o.module);
      await withClient(async (client, go) => {
        const req = { source, language: languageOf(file, o.language), args, mode: o.mode, modules, limits: limitsOf(o), name: o.name, replace: o.replace, interpreterId: o.interpreter };
        if (o.detach) return reportStarted(io, await client.startExecute(req), go.json);
        const res = await client.execute(req);
        if (go.json) io.out(`${JSON.stringify(pb.ExecuteResponse.toJSON(res))}\n`);
        return reportExecute(io, res, go.json);
      });
    });

  root
    .command('register')
    .description('bind the default export of FILE to TRIGGER; prints the registration id')
    .argument('<trigger>', 'trigger name')
    .argument('<file>', 'the handler module, or - for standard input')
    .addOption(new Option('--mode <mode>', 'isolation of a new interpreter').choices(['shared', 'isolate']))
    .option('--module <name=file>', 'a module the handler may import (repeatable)', collect)
    .option('--timeout <ms>', 'wall-clock limit of loading it', wholeNumber('--timeout'))
    .option('--memory <mb>', 'heap limit of a dedicated isolate', wholeNumber('--memory'))
    .option('--interpreter <id>', 'register in this existing interpreter')
    .option('--description <text>', 'a note shown in listings')
    .addOption(new Option('--language <language>', 'what FILE and the modules are written in (default: typescript for .ts files)').choices(['javascript', 'typescript']))
    .addHelpText('after', '\nExamples:\n  $ isogear register orders.created handler.js --mode isolate\n  $ isogear register orders.created more.js --interpreter itp_...')
    .action(async (trigger: string, file: string, o: { mode?: 'shared' | 'isolate'; module?: string[]; timeout?: number; memory?: number; interpreter?: string; description?: string; language?: 'javascript' | 'typescript' }) => {
      const source = readSource(io, file);
      const modules = modulesOf(io, o.module);
      await withClient(async (client, go) => {
        const res = await client.register({ trigger, source, language: languageOf(file, o.language), mode: o.mode, modules, limits: limitsOf(o), interpreterId: o.interpreter, description: o.description });
        if (go.json) io.out(`${JSON.stringify(pb.RegisterResponse.toJSON(res))}\n`);
        else io.out(`${res.registration?.id ?? ''}\n`);
        if (!go.json) io.err(`[isogear] in interpreter ${res.interpreter?.id ?? ''}\n`);
        return EXIT.ok;
      });
    });

  root
    .command('trigger')
    .description('run every handler bound to TRIGGER with --payload; prints one result per handler')
    .argument('<trigger>', 'trigger name')
    .option('--payload <json>', 'the payload, as JSON')
    .option('--timeout <ms>', 'wall-clock limit of each handler run', wholeNumber('--timeout'))
    .option('--detach', 'run the handlers in the background (StartTrigger): print the execution id and exit 0; see wait, ps, cancel')
    .addHelpText('after', `\nExamples:\n  $ isogear trigger orders.created --payload '{"id": 7}'\n  $ isogear --json trigger tick\n  $ isogear trigger nightly --detach`)
    .action(async (trigger: string, o: { payload?: string; timeout?: number; detach?: boolean }) => {
      const payload = o.payload === undefined ? undefined : parseJson('--payload', o.payload);
      await withClient(async (client, go) => {
        const req = { trigger, payload, limits: limitsOf(o) };
        if (o.detach) return reportStarted(io, await client.startTrigger(req), go.json);
        const res = await client.trigger(req);
        if (go.json) io.out(`${JSON.stringify(pb.TriggerResponse.toJSON(res))}\n`);
        return reportTrigger(io, res, go.json);
      });
    });

  root
    .command('wait')
    .description('wait until an execution (exec or trigger --detach) is done, then print its result as exec or trigger does, with their exit code')
    .argument('<execution-id>', 'the execution (exe_...)')
    .option('--timeout-ms <ms>', "longest wait (default and maximum: the server's ISOGEAR_MAX_TIMEOUT_MS)", wholeNumber('--timeout-ms'))
    .addHelpText(
      'after',
      `
Once it is done: exit 0 if it succeeded, 1 if it failed (a trigger: if any handler failed).
Not done when the wait ends: its state on stderr, exit ${EXIT.notDone}; run wait again.
--json prints the whole execution (state, times, response) either way.

Examples:
  $ isogear wait exe_...
  $ until isogear wait exe_... --timeout-ms 5000; do [ $? -eq ${EXIT.notDone} ] || break; done`,
    )
    .action(async (executionId: string, o: { timeoutMs?: number }) => {
      await withClient(async (client, go) => {
        const e = await client.waitExecution(executionId, { timeoutMs: o.timeoutMs });
        if (go.json) io.out(`${JSON.stringify(pb.Execution.toJSON(e))}\n`);
        if (e.state !== pb.ExecutionState.EXECUTION_STATE_DONE) {
          io.err(`isogear: ${e.id} is ${executionStateName(e.state)}, not done yet\n`);
          return EXIT.notDone;
        }
        if (e.executeResponse) return reportExecute(io, e.executeResponse, go.json);
        if (e.triggerResponse) return reportTrigger(io, e.triggerResponse, go.json);
        io.err(`isogear: ${e.id} is done but the server sent no response\n`);
        return EXIT.scriptFailed;
      });
    });

  root
    .command('ps')
    .description('list executions as a table: those queued or running (default), or with --all also the DONE background ones the server keeps')
    .option('--all', 'include DONE background executions (kept for ISOGEAR_EXECUTION_RETENTION_MS)')
    .addOption(new Option('--state <state>', 'only executions in this state').choices(['queued', 'running', 'done']))
    .option('--interpreter <id>', 'only executions running in this interpreter')
    .addHelpText('after', '\nExamples:\n  $ isogear ps\n  $ isogear ps --all\n  $ isogear --json ps --state done')
    .action(async (o: { all?: boolean; state?: 'queued' | 'running' | 'done'; interpreter?: string }) => {
      await withClient(async (client, go) => {
        const list = (state: 'queued' | 'running' | 'done' | undefined): Promise<pb.Execution[]> =>
          allPages(async (pageToken) => {
            const page = await client.listExecutions({ pageSize: 100, pageToken, state, interpreterId: o.interpreter });
            return [page.executions, page.nextPageToken] as const;
          });
        let all: pb.Execution[];
        if (o.state || o.all) all = await list(o.state);
        else {
          // Queued ones first, then running ones: states only move forward, so one that started
          // between the two listings is in the second (it replaces its queued row), never in neither.
          // (Listing every state and dropping the DONE ones would fetch every retained response.)
          const byId = new Map<string, pb.Execution>();
          for (const e of [...(await list('queued')), ...(await list('running'))]) byId.set(e.id, e);
          all = [...byId.values()].sort((a, b) => (a.createdAt?.getTime() ?? 0) - (b.createdAt?.getTime() ?? 0));
        }
        if (go.json) io.out(`${JSON.stringify(all.map((e) => pb.Execution.toJSON(e)))}\n`);
        else {
          const now = Date.now();
          io.out(
            table(
              ['ID', 'KIND', 'STATE', 'OUTCOME', 'RUN', 'INTERPRETER', 'TRIGGER', 'REGISTRATION', 'AGE'],
              all.map((e) => [
                e.id,
                executionKindName(e.kind),
                executionStateName(e.state),
                executionOutcome(e),
                e.background ? 'background' : 'sync',
                e.interpreterId || '-',
                e.trigger || '-',
                e.registrationId || '-',
                age(e.createdAt, now),
              ]),
            ),
          );
        }
        return EXIT.ok;
      });
    });

  root
    .command('cancel')
    .description('cancel a queued or running execution (it ends aborted); prints its state after the cancel, and its outcome once done')
    .argument('<execution-id>', 'the execution (exe_...)')
    .addHelpText(
      'after',
      `
The execution ends aborted at once (if it is still finishing up, the state printed is running:
isogear wait ID). Its code stops at once in a new isolate-mode interpreter; in a shared isolate,
or as a handler, the code runs on until its own timeout, holding its run slot.

Examples:
  $ isogear cancel exe_...
  $ isogear --json cancel exe_...`,
    )
    .action(async (executionId: string) => {
      await withClient(async (client, go) => {
        const e = await client.cancelExecution(executionId);
        if (go.json) io.out(`${JSON.stringify(pb.Execution.toJSON(e))}\n`);
        else if (e.state === pb.ExecutionState.EXECUTION_STATE_DONE) io.out(`${executionStateName(e.state)}  ${executionOutcome(e)}\n`);
        else io.out(`${executionStateName(e.state)}\n`);
        return EXIT.ok;
      });
    });

  root
    .command('release')
    .description('release one registration, or every registration of an interpreter')
    .argument('[registration-id]', 'the registration (reg_...)')
    .option('--interpreter <id>', "release all of this interpreter's registrations")
    .addHelpText('after', '\nExamples:\n  $ isogear release reg_...\n  $ isogear release --interpreter itp_...')
    .action(async (registrationId: string | undefined, o: { interpreter?: string }) => {
      if (Boolean(registrationId) === Boolean(o.interpreter)) throw new UsageError('give a registration id or --interpreter ID (one of them)');
      await withClient(async (client, go) => {
        const res = await client.release(registrationId ? { registrationId } : { interpreterId: o.interpreter as string });
        if (go.json) io.out(`${JSON.stringify(pb.ReleaseResponse.toJSON(res))}\n`);
        else for (const id of res.releasedRegistrationIds) io.out(`${id}\n`);
        return EXIT.ok;
      });
    });

  root
    .command('ls')
    .description('list interpreters (default) or registrations, as a table')
    .addArgument(new Command().createArgument('[what]', 'interpreters or registrations').choices(['interpreters', 'registrations']).default('interpreters'))
    .option('--name <name>', 'interpreters with this name')
    .addOption(new Option('--mode <mode>', 'interpreters of this mode').choices(['shared', 'isolate']))
    .option('--trigger <trigger>', 'registrations bound to this trigger')
    .option('--interpreter <id>', 'registrations of this interpreter')
    .addHelpText('after', '\nExamples:\n  $ isogear ls\n  $ isogear ls registrations --trigger orders.created\n  $ isogear --json ls interpreters --mode shared')
    .action(async (what: 'interpreters' | 'registrations', o: { name?: string; mode?: 'shared' | 'isolate'; trigger?: string; interpreter?: string }) => {
      await withClient(async (client, go) => {
        if (what === 'interpreters') {
          const all = await allPages(async (pageToken) => {
            const page = await client.listInterpreters({ pageSize: 1000, pageToken, name: o.name, mode: o.mode });
            return [page.interpreters, page.nextPageToken] as const;
          });
          if (go.json) io.out(`${JSON.stringify(all.map((i) => pb.Interpreter.toJSON(i)))}\n`);
          else
            io.out(
              table(
                ['ID', 'NAME', 'MODE', 'STATE', 'REGISTRATIONS', 'RUNNING', 'HEAP'],
                all.map((i) => [i.id, i.name || '-', modeName(i.mode), stateName(i.state), String(i.registrationReferences), String(i.executionReferences), `${Math.round(i.heapUsedBytes / 1024)} KiB`]),
              ),
            );
        } else {
          const all = await allPages(async (pageToken) => {
            const page = await client.listRegistrations({ pageSize: 1000, pageToken, trigger: o.trigger, interpreterId: o.interpreter });
            return [page.registrations, page.nextPageToken] as const;
          });
          if (go.json) io.out(`${JSON.stringify(all.map((r) => pb.Registration.toJSON(r)))}\n`);
          else
            io.out(
              table(
                ['ID', 'SOURCE', 'INTERPRETER', 'STATE', 'RUNS', 'FAILURES', 'DESCRIPTION'],
                all.map((r) => [r.id, registrationSource(r), r.interpreterId, registrationState(r), String(r.stats?.runs ?? 0), String(r.stats?.failures ?? 0), r.description]),
              ),
            );
        }
        return EXIT.ok;
      });
    });

  root
    .command('get')
    .description('show one interpreter and its registrations')
    .argument('<interpreter-id>', 'the interpreter (itp_...)')
    .addHelpText('after', '\nExamples:\n  $ isogear get itp_...\n  $ isogear --json get itp_...')
    .action(async (interpreterId: string) => {
      await withClient(async (client, go) => {
        const res = await client.getInterpreter(interpreterId);
        if (go.json) {
          io.out(`${JSON.stringify(pb.GetInterpreterResponse.toJSON(res))}\n`);
          return EXIT.ok;
        }
        const i = res.interpreter;
        if (i) {
          io.out(
            table(
              ['FIELD', 'VALUE'],
              [
                ['id', i.id],
                ['name', i.name || '-'],
                ['mode', modeName(i.mode)],
                ['state', stateName(i.state)],
                ['references', `${i.references} (${i.registrationReferences} registrations, ${i.executionReferences} runs)`],
                ['heap', `${Math.round(i.heapUsedBytes / 1024)} KiB`],
                ['cpu', ms(i.cpuTime)],
                ['failure', i.failureReason || '-'],
              ],
            ),
          );
        }
        if (res.registrations.length > 0) {
          io.out('\n');
          io.out(
            table(
              ['REGISTRATION', 'SOURCE', 'STATE', 'RUNS', 'FAILURES', 'DESCRIPTION'],
              res.registrations.map((r) => [r.id, registrationSource(r), registrationState(r), String(r.stats?.runs ?? 0), String(r.stats?.failures ?? 0), r.description]),
            ),
          );
        }
        return EXIT.ok;
      });
    });

  addPauseCommands(root, io, withClient);
  addVersionCommands(root, io, withClient);
  addTailCommand(root, io, () => connect(g()), setCode);

  return root;
}

/** Parses `argv` (without node and the script) and runs the command; resolves with the exit code. */
export async function run(argv: string[], io: Io, connect?: (g: GlobalOptions) => IsogearClient, serve?: Serve): Promise<number> {
  let code: number = EXIT.ok;
  // Each client its own connection (not grpc-js's process-wide pool): a new client of tail's, made
  // to reconnect, dials the server then and there instead of waiting out a lost connection's backoff.
  const open =
    connect ??
    ((g: GlobalOptions) => {
      const tls = credentialsOf(g);
      return createClient(g.address, { apiKey: g.apiKey, credentials: tls.credentials, channelOptions: { ...tls.channelOptions, 'grpc.use_local_subchannel_pool': 1 } });
    });
  const prog = program(io, open, (c) => (code = c), serve);
  try {
    await prog.parseAsync(argv, { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof UsageError) {
      io.err(`isogear: ${err.message}\n`);
      return EXIT.usage;
    }
    if (err instanceof IsogearRpcError) {
      io.err(`isogear: ${err.codeName}: ${err.details}${err.limit ? ` (limit ${err.limit})` : ''}\n`);
      return EXIT.rpc;
    }
    throw err;
  }
}

/** Runs the command line on this process's arguments and sets its exit code (the `isogear` bin). */
export function main(serve?: Serve): void {
  // Ctrl-C stops a command that asked (tail) instead of killing the process; so does a reader of
  // stdout going away (`isogear tail | head`), which would otherwise end in an EPIPE stack trace.
  const stops = new Set<() => void>();
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    for (const stop of stops) stop();
  });
  const io: Io = {
    out: (s) => process.stdout.write(s),
    err: (s) => process.stderr.write(s),
    stdin: () => readFileSync(0, 'utf8'),
    onInterrupt: (stop) => {
      stops.add(stop);
      process.once('SIGINT', stop);
      return () => {
        stops.delete(stop);
        process.off('SIGINT', stop);
      };
    },
  };
  run(process.argv.slice(2), io, undefined, serve).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`isogear: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

if (require.main === module) main();
