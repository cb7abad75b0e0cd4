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
