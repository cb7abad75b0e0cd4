/**
 * What the command line's parts share: the exit codes, the io a command writes to, the global
 * options, and how proto values read in a terminal.
 */
import { pb } from '../client';

export const EXIT = { ok: 0, scriptFailed: 1, usage: 2, rpc: 3, notDone: 4 } as const;

/** A usage error found after parsing (bad JSON, an unreadable file, a missing selector): exit code 2. */
export class UsageError extends Error {}

export interface Io {
  out(text: string): void;
  err(text: string): void;
  /** Standard input, read whole (for `exec -`). */
  stdin(): string;
  /**
   * Calls `stop` when the user interrupts (Ctrl-C, SIGINT) or nobody reads stdout any more
   * (EPIPE), until the function it returns is called: for a command that runs until interrupted
   * (`tail`). While no command asked, an interrupt ends the process as usual.
   */
  onInterrupt(stop: () => void): () => void;
}

export interface GlobalOptions {
  address: string;
  apiKey?: string;
  json?: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsServerName?: string;
}

export const ms = (d: { seconds: number; nanos: number } | undefined): string => (d ? `${(d.seconds * 1000 + d.nanos / 1e6).toFixed(1)} ms` : '-');
export const outcomeName = (o: pb.Outcome): string => pb.outcomeToJSON(o).replace(/^OUTCOME_/, '').toLowerCase();
export const modeName = (m: pb.IsolationMode): string => pb.isolationModeToJSON(m).replace(/^ISOLATION_MODE_/, '').toLowerCase();
/** A registration's state in a table: broken (its interpreter FAILED), paused, or active. */
export const registrationState = (r: pb.Registration): string => (r.broken ? 'broken' : r.paused ? 'paused' : 'active');

/** The language of FILE: --language if given, else TypeScript for a .ts, .mts or .cts file, else JavaScript. */
export function languageOf(file: string, option: 'javascript' | 'typescript' | undefined): 'javascript' | 'typescript' {
  return option ?? (/\.[mc]?ts$/.test(file) ? 'typescript' : 'javascript');
}

/** What runs a registration: its trigger, `schedule CRON [TZ]` or `stream NAME (group G)`. */
export function registrationSource(r: pb.Registration): string {
  if (r.schedule) return `schedule ${r.schedule}${r.timezone ? ` ${r.timezone}` : ''}`;
  if (r.stream) return `stream ${r.stream} (group ${r.group})`;
  return r.trigger;
}
export const stateName = (s: pb.InterpreterState): string => pb.interpreterStateToJSON(s).replace(/^INTERPRETER_STATE_/, '').toLowerCase();

/** How long ago `since` was, coarsely: 42s, 3m05s, 2h07m, 3d04h ('-' without a time). */
export function age(since: Date | undefined, now = Date.now()): string {
  if (!since) return '-';
  const s = Math.max(0, Math.floor((now - since.getTime()) / 1000));
  const two = (n: number): string => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${two(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${two(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86_400)}d${two(Math.floor(s / 3600) % 24)}h`;
}

/** Rows as columns padded to their widest cell (the last column is not padded). */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

export function printLogs(io: Io, logs: pb.LogEntry[], truncated: boolean): void {
  for (const l of logs) io.err(`[${l.level}] ${l.message}\n`);
  if (truncated) io.err('[isogear] logs truncated\n');
}

/**
 * Prints an Execute's response as `exec` does (the whole response as JSON is the caller's, with
 * --json): logs to stderr, the result to stdout, a failure as one line on stderr. Returns the
 * exit code.
 */
export function reportExecute(io: Io, res: pb.ExecuteResponse, json: boolean | undefined): number {
  if (!json) {
    printLogs(io, res.logs, res.logsTruncated);
    if (res.outcome === pb.Outcome.OUTCOME_SUCCEEDED) io.out(`${JSON.stringify(res.result ?? null)}\n`);
    for (const r of res.registrations) io.err(`[isogear] registered ${r.id} on ${registrationSource(r)}\n`);
  }
  if (res.outcome === pb.Outcome.OUTCOME_SUCCEEDED) return EXIT.ok;
  io.err(`isogear: ${outcomeName(res.outcome)}: ${res.error?.name ?? 'Error'}: ${res.error?.message ?? ''}\n`);
  return EXIT.scriptFailed;
}
