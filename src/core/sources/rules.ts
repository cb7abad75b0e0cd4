import { Cron } from 'croner';
import type { RegistrationSpec } from '../Registration';
import { kindOf } from '../Registration';
import { isValidTrigger } from '../names';

/** The default consumer group of gears.consume. */
export const DEFAULT_GROUP = 'isogear';
const MAX_CRON = 256;
const MAX_STREAM = 256;
/** The store's keys (its recipes and changes feed) start with this: not streams a script may consume. */
const RESERVED_PREFIX = 'isogear:';
/** Group names: 1–128 letters, digits and `_ . : -`. */
const GROUP_RE = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$/;

const hasControlCharacter = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
};

const quote = (s: string): string => JSON.stringify(s.length > 64 ? `${s.slice(0, 64)}…` : s);

/** Whether `tz` is an IANA time zone this server knows. */
function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** A parsed schedule, stopped (croner computes its ticks; isogear's Scheduler keeps the timers). */
export function parseCron(cron: string, timezone: string): Cron {
  return new Cron(cron, { timezone: timezone || 'UTC', paused: true, mode: '5-or-6-parts' });
}

/**
 * Why gears.schedule's `cron` and `timezone` are refused, or undefined. Five fields, or six with
 * seconds first; croner's nicknames (`@hourly`, `@daily`…) too. An expression that never matches
 * a date (`0 0 31 2 *`) is refused as well: it would never run.
 */
export function scheduleProblem(cron: string, timezone: string): string | undefined {
  if (typeof cron !== 'string' || cron.trim() === '') return 'gears.schedule: the cron expression is invalid: it is empty (five fields, or six with seconds first, like "*/10 * * * * *")';
  if (cron.length > MAX_CRON) return `gears.schedule: the cron expression is invalid: it is longer than ${MAX_CRON} characters`;
  if (typeof timezone !== 'string' || timezone.length > 64 || (timezone !== '' && !isTimeZone(timezone))) {
    return `gears.schedule: options.timezone ${quote(String(timezone))} is not an IANA time zone (like "Europe/Paris" or "UTC")`;
  }
  let job: Cron;
  try {
    job = parseCron(cron, timezone);
  } catch (err) {
    const why = (err instanceof Error ? err.message : String(err)).replace(/^Cron(Pattern|Date)?:\s*/, '');
    return `gears.schedule: the cron expression ${quote(cron)} is invalid: ${why}`;
  }
  try {
    if (job.nextRun() === null) return `gears.schedule: the cron expression ${quote(cron)} is invalid: it never matches a date`;
  } finally {
    job.stop();
  }
  return undefined;
}

/** Why gears.consume's `stream` and `group` are refused, or undefined. */
export function streamProblem(stream: string, group: string): string | undefined {
  if (typeof stream !== 'string' || stream.length < 1 || stream.length > MAX_STREAM || hasControlCharacter(stream)) {
    return `gears.consume: stream must be a Redis key of 1–${MAX_STREAM} characters without control characters, got ${quote(String(stream))}`;
  }
  if (stream.startsWith(RESERVED_PREFIX)) return `gears.consume: stream ${quote(stream)} is refused: keys starting with "${RESERVED_PREFIX}" are isogear's own`;
  if (typeof group !== 'string' || !GROUP_RE.test(group)) {
    return `gears.consume: options.group must be 1–128 letters, digits and _ . : - (starting with a letter, digit or _), got ${quote(String(group))}`;
  }
  return undefined;
}

/** The message gears.consume fails with when the server has no Redis to read streams from. */
export const NO_EVENTS_REDIS =
  'gears.consume needs a Redis to read streams from: set ISOGEAR_EVENTS_REDIS_URL (or use ISOGEAR_STORE=redis://…, whose Redis it then reads)';

/**
 * Why a registration the sandbox reported is refused, or undefined: its trigger name, cron or
 * stream is checked again here (the sandbox shares its context with user code).
 */
export function specProblem(spec: RegistrationSpec, streamsAvailable: boolean): string | undefined {
  switch (kindOf(spec)) {
    case 'trigger':
      return isValidTrigger(spec.trigger) ? undefined : `gears.register: trigger ${JSON.stringify(spec.trigger.slice(0, 64))} is not a valid trigger name`;
    case 'schedule':
      return spec.trigger !== '' ? 'the interpreter reported a schedule bound to a trigger (the script tampered with the sandbox)' : scheduleProblem(spec.cron ?? '', spec.timezone ?? '');
    case 'stream':
      if (spec.trigger !== '') return 'the interpreter reported a consumer bound to a trigger (the script tampered with the sandbox)';
      return streamProblem(spec.stream ?? '', spec.group ?? '') ?? (streamsAvailable ? undefined : NO_EVENTS_REDIS);
  }
}

/**
 * The check the sandbox calls synchronously from gears.schedule and gears.consume, so a bad
 * expression throws where the script called it: '' when accepted, else the message.
 */
export function sourceCheck(streamsAvailable: boolean): (kind: string, a: string, b: string) => string {
  return (kind, a, b) => {
    if (kind === 'schedule') return scheduleProblem(a, b) ?? '';
    if (kind === 'stream') return streamProblem(a, b) ?? (streamsAvailable ? '' : NO_EVENTS_REDIS);
    return `unknown registration kind ${quote(String(kind))}`;
  };
}
