import { InvalidArgumentError } from './errors';
import { isValidName, isValidSpecifier, isValidTrigger, TRIGGER_PATTERN } from './names';
import { MIN_MEMORY_MB, type ManagerOptions } from './options';
import type { JsonValue, Limits, ScriptError } from './types';

/**
 * Request checks: each refuses a malformed field with an InvalidArgumentError that names it and
 * says why, before anything is created or run. Values crossing into and out of a sandbox are
 * checked here too (size, JSON).
 */

/** A request's limits with the server defaults filled in. */
export interface ResolvedLimits {
  timeoutMs: number;
  memoryMb: number;
}

/** isogear's ids are about 40 characters; anything far longer is refused before it is echoed. */
const MAX_ID_CHARS = 128;
const MAX_DESCRIPTION_CHARS = 1024;

export function requireSource(source: unknown, field: string): void {
  if (typeof source !== 'string' || source.trim() === '') throw new InvalidArgumentError(`${field} must not be empty`);
}

export function requireTrigger(trigger: unknown): void {
  if (typeof trigger !== 'string' || trigger === '') throw new InvalidArgumentError('trigger must not be empty');
  if (!isValidTrigger(trigger)) throw new InvalidArgumentError(`trigger must match /${TRIGGER_PATTERN}/`);
}

export function checkName(name: string | undefined): void {
  if (name !== undefined && name !== '' && !isValidName(name)) {
    throw new InvalidArgumentError('name must be 1-128 characters of letters, digits, "_", "." and "-", starting with a letter, digit or "_"');
  }
}

export function checkDescription(description: string): void {
  if (description.length > MAX_DESCRIPTION_CHARS) throw new InvalidArgumentError(`description must be at most ${MAX_DESCRIPTION_CHARS} characters`);
}

export function checkIdLength(id: string, field: string): void {
  if (id.length > MAX_ID_CHARS) {
    throw new InvalidArgumentError(`${field} is ${id.length} characters long; isogear ids are at most ${MAX_ID_CHARS}`);
  }
}

/** `mode` and `interpreter_id` are exclusive: an existing interpreter keeps its mode. */
export function checkAttach(attach: boolean, mode: unknown): void {
  if (attach && mode !== undefined) {
    throw new InvalidArgumentError('mode and interpreter_id are exclusive: an existing interpreter keeps its mode');
  }
}

export function resolveLimits(limits: Limits | undefined, o: ManagerOptions): ResolvedLimits {
  const timeoutMs = limits?.timeoutMs || o.defaultTimeoutMs;
  const memoryMb = limits?.memoryLimitMb || o.defaultMemoryMb;
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1) throw new InvalidArgumentError('limits.timeout_ms must be a positive integer');
  if (timeoutMs > o.maxTimeoutMs) {
    throw new InvalidArgumentError(`limits.timeout_ms ${timeoutMs} is over the server maximum of ${o.maxTimeoutMs}`);
  }
  if (!Number.isInteger(memoryMb) || memoryMb < MIN_MEMORY_MB) {
    throw new InvalidArgumentError(`limits.memory_limit_mb must be at least ${MIN_MEMORY_MB}`);
  }
  if (memoryMb > o.maxMemoryMb) {
    throw new InvalidArgumentError(`limits.memory_limit_mb ${memoryMb} is over the server maximum of ${o.maxMemoryMb}`);
  }
  return { timeoutMs, memoryMb };
}

/** The modules map (specifier → source), checked; source plus modules within `maxSourceBytes`. */
export function checkModules(source: string, modules: Record<string, string> | undefined, maxSourceBytes: number): Record<string, string> {
  const map = modules ?? {};
  let bytes = Buffer.byteLength(source, 'utf8');
  for (const [specifier, text] of Object.entries(map)) {
    if (!isValidSpecifier(specifier)) {
      throw new InvalidArgumentError(`module specifier ${JSON.stringify(specifier.slice(0, 64))} must be 1-256 characters without control characters`);
    }
    if (specifier.startsWith('isogear:')) throw new InvalidArgumentError(`module specifier "${specifier}" is reserved`);
    if (typeof text !== 'string') throw new InvalidArgumentError(`module "${specifier}" must be a string`);
    bytes += Buffer.byteLength(text, 'utf8') + Buffer.byteLength(specifier, 'utf8');
  }
  if (bytes > maxSourceBytes) {
    throw new InvalidArgumentError(`source plus modules is ${bytes} bytes, over the limit of ${maxSourceBytes} bytes (ISOGEAR_MAX_SOURCE_BYTES)`);
  }
  return map;
}

/** `args` or `payload` as JSON for the sandbox ('' for none), within `maxValueBytes`. */
export function encodeValue(value: JsonValue | undefined, field: string, maxValueBytes: number): string {
  if (value === undefined) return '';
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch (err) {
    throw new InvalidArgumentError(`${field} is not a JSON value: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (Buffer.byteLength(json, 'utf8') > maxValueBytes) {
    throw new InvalidArgumentError(`${field} is larger than ${maxValueBytes} bytes of JSON`);
  }
  return json;
}

/** A result the sandbox returned as JSON; too large or not JSON is the script's failure. */
export function decodeResult(json: string, maxValueBytes: number): { ok: true; value: JsonValue } | { ok: false; error: ScriptError } {
  if (Buffer.byteLength(json, 'utf8') > maxValueBytes) {
    return {
      ok: false,
      error: { name: 'RangeError', message: `result is larger than ${maxValueBytes} bytes of JSON`, stack: '' },
    };
  }
  try {
    return { ok: true, value: JSON.parse(json) as JsonValue };
  } catch {
    return { ok: false, error: { name: 'TypeError', message: 'result is not valid JSON', stack: '' } };
  }
}

/** An outcome as words in a message ("timed out"). */
export function outcomeText(outcome: string): string {
  return outcome.replace('_', ' ');
}
