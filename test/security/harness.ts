import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { assertNoHostPaths, MODES, modeName, outcomeName, stateName } from '../helpers/proto';
import type { TestServer } from '../helpers/server';

/**
 * Shared pieces of the hostile-script suite: the "server still serves" check every attack ends
 * with, precise outcome assertions, and small WebAssembly modules built byte by byte.
 */

/** What a fresh interpreter must answer after any attack: `(a) => a + 1` with 41 is 42. */
export async function assertServing(t: TestServer, after = 'the attack'): Promise<void> {
  for (const mode of MODES) {
    const res = await t.client.execute({ mode, source: 'export default (a) => a + 1;', args: 41 }, { deadlineMs: 10_000 });
    assert.equal(outcomeName(res.outcome), 'OUTCOME_SUCCEEDED', `after ${after}, a ${modeName(mode)} Execute failed: ${JSON.stringify(res.error)}`);
    assert.equal(res.result, 42, `after ${after}, a ${modeName(mode)} Execute answered ${JSON.stringify(res.result)}`);
    assert.equal(stateName(res.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
  }
}

export interface ExpectedRun {
  outcome: keyof typeof pb.Outcome;
  /** Exact error name, when the run did not succeed. */
  name?: string;
  /** Exact message (a string) or a pattern it must match. */
  message?: string | RegExp;
}

/** Asserts how one run (an Execute response or a Trigger result) ended, exactly, and that its error names no host path. */
export function assertRun(res: { outcome: pb.Outcome; error?: pb.ScriptError; result?: unknown }, expected: ExpectedRun, what = 'the run'): void {
  assert.equal(outcomeName(res.outcome), expected.outcome, `${what}: ${JSON.stringify(res.error ?? res.result)}`);
  if (expected.outcome === 'OUTCOME_SUCCEEDED') {
    assert.equal(res.error, undefined);
    return;
  }
  assert.ok(res.error, `${what} carries an error`);
  assert.equal(res.result, undefined, `${what} has no result`);
  if (expected.name !== undefined) assert.equal(res.error.name, expected.name, `${what}: ${JSON.stringify(res.error)}`);
  if (typeof expected.message === 'string') assert.equal(res.error.message, expected.message, what);
  else if (expected.message) assert.match(res.error.message, expected.message, what);
  assertNoHostPaths(res.error, `${what}'s error`, ['isolated-vm']);
}

/** Asserts a stack names only sandbox code: the user's modules, the bootstrap, V8 built-ins. */
export function assertSandboxStack(stack: unknown, what: string): void {
  assert.equal(typeof stack, 'string', `${what}: ${JSON.stringify(stack)}`);
  assertNoHostPaths(stack, what, ['isolated-vm']);
  for (const line of (stack as string).split('\n').slice(1)) {
    if (!/^\s+at /.test(line)) continue;
    assert.match(line, /main\.js|isogear:(bootstrap|driver|enter)|<anonymous>|wasm:\/\/|\(native\)|^\s+at [\w.$<>\s[\]]+$/, `${what} has a frame from outside the sandbox: ${line}`);
  }
}

/** The host's own built-ins, to prove that nothing a script did reached this (the server's) process. */
export function hostBuiltins(): Record<string, unknown> {
  return {
    objectProto: Object.getOwnPropertyNames(Object.prototype).sort(),
    arrayProto: Object.getOwnPropertyNames(Array.prototype).sort(),
    functionProto: Object.getOwnPropertyNames(Function.prototype).sort(),
    promiseThen: Promise.prototype.then,
    jsonStringify: JSON.stringify,
    jsonParse: JSON.parse,
    arrayMap: Array.prototype.map,
    arrayPush: Array.prototype.push,
    reflectApply: Reflect.apply,
    objectKeys: Object.keys,
    globals: Object.getOwnPropertyNames(globalThis).sort(),
  };
}

// ---------------------------------------------------------------- WebAssembly, byte by byte

const WASM_HEADER = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

function section(id: number, content: number[]): number[] {
  return [id, content.length, ...content];
}

/** A module exporting `f: () => void` whose body is `loop br 0 end`: it never returns. */
export const WASM_INFINITE_LOOP: readonly number[] = [
  ...WASM_HEADER,
  ...section(1, [0x01, 0x60, 0x00, 0x00]), // one type: () -> ()
  ...section(3, [0x01, 0x00]), // one function of type 0
  ...section(7, [0x01, 0x01, 0x66, 0x00, 0x00]), // export "f" = function 0
  ...section(10, [0x01, 0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b]), // body: loop br 0 end end
];

/** A module exporting `add: (i32, i32) => i32`. */
export const WASM_ADD: readonly number[] = [
  ...WASM_HEADER,
  ...section(1, [0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f]),
  ...section(3, [0x01, 0x00]),
  ...section(7, [0x01, 0x03, 0x61, 0x64, 0x64, 0x00, 0x00]),
  ...section(10, [0x01, 0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b]),
];

/** A module that defines a memory of `pages` 64 KiB pages (pages < 128). */
export const wasmWithMemory = (pages: number): number[] => [...WASM_HEADER, ...section(5, [0x01, 0x00, pages])];

/** A module that imports a memory as m.mem. */
export const WASM_IMPORTS_MEMORY: readonly number[] = [
  ...WASM_HEADER,
  ...section(2, [0x01, 0x01, 0x6d, 0x03, 0x6d, 0x65, 0x6d, 0x02, 0x00, 0x01]),
];

/** A JavaScript expression that builds the module's bytes inside a script. */
export const wasmBytes = (bytes: readonly number[]): string => `new Uint8Array(${JSON.stringify(bytes)})`;
