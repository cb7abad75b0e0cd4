/**
 * `isogear tail`: the Watch stream as it happens, one line per event (or, with --json, one
 * WatchEvent as JSON per line), until interrupted. A lost connection is not the end: tail says so
 * on stderr and watches again, backing off between attempts; the server keeps no history, so the
 * events in between are lost, and tail says that too.
 */
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { IsogearRpcError, pb, type IsogearClient, type WatchInit } from '../client';
import { EXIT, modeName, ms, outcomeName, registrationSource, stateName, type GlobalOptions, type Io } from './common';

/**
 * Waits between reconnect attempts: the first, doubled after each failed attempt up to the
 * longest, and the first again once a watch is open.
 */
export const RECONNECT = { firstMs: 250, maxMs: 5000 } as const;

const KIND_WIDTH = 'interpreter'.length;

/** A registration event's kind word. */
const CHANGE_WORDS: Partial<Record<pb.RegistrationChange, string>> = {
  [pb.RegistrationChange.REGISTRATION_CHANGE_CREATED]: 'registered',
  [pb.RegistrationChange.REGISTRATION_CHANGE_RELEASED]: 'released',
  [pb.RegistrationChange.REGISTRATION_CHANGE_PAUSED]: 'paused',
  [pb.RegistrationChange.REGISTRATION_CHANGE_RESUMED]: 'resumed',
};

/**
 * Control characters (newlines, tabs, terminal escape sequences) as escapes: one line per event,
 * and what a script logs cannot move the cursor or recolour the terminal of whoever tails it.
 */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;
const ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
const oneLine = (s: string): string => s.replace(CONTROL, (c) => ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);

/** Local time of day, to the millisecond: 14:03:07.412. */
function clock(t: Date | undefined): string {
  if (!t) return '--:--:--.---';
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${two(t.getHours())}:${two(t.getMinutes())}:${two(t.getSeconds())}.${String(t.getMilliseconds()).padStart(3, '0')}`;
}

/**
 * One event as a line: the time, the kind, then the ids (each says what it is: itp_, reg_,
 * exe_) and what happened.
 *
 *   14:03:07.412  interpreter  itp_…  ready  shared  name svc
 *   14:03:07.415  registered   reg_…  itp_…  on orders.created
 *   14:03:08.020  log          exe_…  itp_…  reg_…  [info] got 7
 *   14:03:08.021  run          exe_…  itp_…  reg_…  on orders.created  failed  wall 1.2 ms  cpu 0.4 ms  TypeError: no way
 *   14:03:09.000  dropped      12 events lost (this watch read too slowly)
 */
export function eventLine(e: pb.WatchEvent): string {
  const head = (kind: string): string => `${clock(e.time)}  ${kind.padEnd(KIND_WIDTH)}  `;
  const fields = (...parts: (string | false | undefined)[]): string => parts.filter((p): p is string => Boolean(p)).join('  ');
  if (e.interpreter) {
    const i = e.interpreter;
    return head('interpreter') + fields(i.id, stateName(i.state), modeName(i.mode), i.name && `name ${oneLine(i.name)}`, i.failureReason && `(${oneLine(i.failureReason)})`);
  }
  if (e.registration) {
    const r = e.registration.registration;
    return head(CHANGE_WORDS[e.registration.change] ?? (e.registration.released ? 'released' : 'registered')) + fields(r?.id, r?.interpreterId, r && `on ${registrationSource(r)}`);
  }
  if (e.run) {
    const r = e.run;
    const error = r.error && `${oneLine(r.error.name || 'Error')}: ${oneLine(r.error.message)}`;
    return head('run') + fields(r.executionId, r.interpreterId, r.registrationId, r.trigger && `on ${r.trigger}`, outcomeName(r.outcome), `wall ${ms(r.wallTime)}`, `cpu ${ms(r.cpuTime)}`, error);
  }
  if (e.log) {
    const l = e.log;
    return head('log') + fields(l.executionId, l.interpreterId, l.registrationId, `[${oneLine(l.entry?.level ?? 'log')}] ${oneLine(l.entry?.message ?? '')}`);
  }
  if (e.dropped !== undefined) return head('dropped') + `${e.dropped} event${e.dropped === 1 ? '' : 's'} lost (this watch read too slowly)`;
  // an event this client does not know yet (a newer server): as JSON, rather than nothing
  return head('event') + JSON.stringify(pb.WatchEvent.toJSON(e));
}

export interface TailInit {
  request: WatchInit;
  /** Each event as the proto JSON mapping, a line each. */
  json: boolean;
  /** Ends the tail: the watch is closed and tail resolves with exit code 0 (Ctrl-C). */
  stop: AbortSignal;
}

/**
 * Whether watching again may help: the server went away or is restarting (UNAVAILABLE), or
 * something between ended the stream (CANCELLED, not by us: ours ends the loop quietly). Every
 * other status (a bad filter, a wrong key, tenant_watchers) would only come back.
 */
const reconnectable = (err: unknown): err is IsogearRpcError => err instanceof IsogearRpcError && (err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.CANCELLED);

/** A wait in seconds as set (0.25 s, 1 s), or a time taken to a tenth (7.8 s). */
const seconds = (msecs: number, digits = 2): string => `${Number((msecs / 1000).toFixed(digits))} s`;
/** A status for a one-line notice, without the empty note grpc-js may leave at its end. */
const statusOf = (err: IsogearRpcError): string => `${err.codeName}: ${err.details.replace(/\s*Resolution note:\s*$/, '').trim()}`;

/** Resolves after `msecs`, or at once when `signal` aborts. */
function pause(msecs: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, msecs);
    signal.addEventListener('abort', done, { once: true });
  });
}

/**
 * Watches until `init.stop` aborts (then resolves with exit code 0), printing each event. Each
 * attempt is a new client from `connect`, so an attempt dials the server then and there. If the
 * first watch cannot open, or a later one fails with a status reconnecting cannot fix, the
 * IsogearRpcError is thrown (exit 3, as every other command's).
 */
export async function tail(io: Io, connect: () => IsogearClient, init: TailInit): Promise<number> {
  const { stop } = init;
  let delay: number = RECONNECT.firstMs;
  let watched = false;
  let lostAt: number | undefined;
  while (!stop.aborted) {
    const client = connect();
    let why: string;
    try {
      const watch = client.watch(init.request, { signal: stop });
      try {
        await watch.ready;
        if (lostAt !== undefined) io.err(`isogear: watching again; any events in the ${seconds(Date.now() - lostAt, 1)} without a connection are lost\n`);
        watched = true;
        lostAt = undefined;
        delay = RECONNECT.firstMs;
        for await (const event of watch) io.out(init.json ? `${JSON.stringify(pb.WatchEvent.toJSON(event))}\n` : `${eventLine(event)}\n`);
        why = 'the server ended the stream';
      } finally {
        watch.close();
      }
    } catch (err) {
      if (stop.aborted) break;
      if (!watched || !reconnectable(err)) throw err;
      why = statusOf(err);
    } finally {
      client.close();
    }
    if (stop.aborted) break;
    if (lostAt === undefined) {
      lostAt = Date.now();
      io.err(`isogear: connection lost (${why}); reconnecting in ${seconds(delay)}\n`);
    } else io.err(`isogear: cannot reconnect yet (${why}); trying again in ${seconds(delay)}\n`);
    await pause(delay, stop);
    delay = Math.min(delay * 2, RECONNECT.maxMs);
  }
  return EXIT.ok;
}

/**
 * Adds `tail` to the program: `connect` makes a client with the global options (one per attempt),
 * `setCode` takes the exit code, and io.onInterrupt is what stops it.
 */
export function addTailCommand(root: Command, io: Io, connect: () => IsogearClient, setCode: (code: number) => void): void {
  root
    .command('tail')
    .description('print live events, one line each, until Ctrl-C: interpreters made and changing state, registrations made and released, runs that ended, console lines (--logs)')
    .option('--interpreter <id>', 'only events of this interpreter')
    .option('--trigger <name>', 'only runs, console lines and registrations of handlers bound to this trigger')
    .option('--registration <id>', "only this registration's runs, console lines and changes")
    .option('--logs', 'also each console line, as it is written')
    .addHelpText(
      'after',
      `
Filters combine: an event is shown if it matches every one given. With --json, each event is
a line of JSON (WatchEvent in the proto JSON mapping). There is no history: tail shows what
happens from when it starts. If the connection is lost (the server restarts), tail says so on
stderr and reconnects: after ${RECONNECT.firstMs / 1000} s, twice as long after each failed attempt, at most ${RECONNECT.maxMs / 1000} s.
Events meanwhile are lost. Ctrl-C ends it with exit 0. A filter the server refuses (an unknown
id: NOT_FOUND), or no server to watch when it starts, exits ${EXIT.rpc}.

Examples:
  $ isogear tail
  $ isogear tail --trigger orders.created --logs
  $ isogear --json tail --interpreter itp_... | jq -c 'select(.run)'`,
    )
    .action(async (o: { interpreter?: string; trigger?: string; registration?: string; logs?: boolean }) => {
      const stopped = new AbortController();
      const off = io.onInterrupt(() => stopped.abort());
      try {
        const request = { interpreterId: o.interpreter, trigger: o.trigger, registrationId: o.registration, includeLogs: o.logs };
        setCode(await tail(io, connect, { request, json: Boolean(root.opts<GlobalOptions>().json), stop: stopped.signal }));
      } finally {
        off();
      }
    });
}
