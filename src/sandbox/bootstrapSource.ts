/**
 * The code that runs first in every interpreter's context, before any user code: a script whose
 * completion value is the one dispatcher function the host calls through a `Reference`. Running
 * it replaces or removes the built-ins that would let code run outside a run; the host's first
 * call, `init`, then hands over the interpreter's settings and installs the frozen `gears` and
 * `console` globals and the driver's hook. isolated-vm runs an isolate's calls in the order they
 * were made, so `init`, sent without waiting for it, has run before any call that runs user code.
 *
 * One script for every interpreter of a server, compiled once per isolate (a shared isolate runs
 * it in each new context) with a V8 code cache (see BootstrapCompiler): the settings arrive with
 * `init` instead of being compiled in, and the host waits for two calls per new context (create
 * the context, run this) instead of three.
 *
 * It is a string, not a TypeScript function turned into source, because the TypeScript and tsx
 * toolchains may inject helpers (`__name`, down-levelled syntax) that do not exist in the isolate.
 *
 * Rules this code follows, because user code shares the context with it:
 * - strict mode, so stack-trace CallSites (`Error.prepareStackTrace`) and `fn.caller` never
 *   expose these functions or their closures;
 * - every built-in it needs is captured before user code runs and called through
 *   `Reflect.apply`, so a script that replaces `Map.prototype.get` or `JSON.stringify` cannot
 *   change how its results are copied out;
 * - nothing it creates is reachable from user code except the frozen `gears`/`console` objects
 *   and the token-guarded `__isogear_loaded__` hook used by the per-load driver module;
 * - what it hands the host is still treated as untrusted: the host validates every field.
 *
 * Dispatcher operations (all arguments are strings or numbers):
 * - `init(interpreterId, registrationPrefix, maxLogChars, triggerPattern, maxResultChars,
 *   maxRegistrations, logTap, sourceCheck)`: the first call, exactly once: the interpreter id, its
 *   registration id prefix, the most log characters per run, the trigger-name pattern (RegExp
 *   source, for messages), the most result characters, the most registrations per interpreter,
 *   the host's log tap, and the host's synchronous check of a schedule's cron or a consumer's
 *   stream (kind, a, b) → '' or the message gears.schedule/gears.consume throw with.
 * - `load(execId, token, kind, argsJson, trigger, description, idsCsv)` → Promise<RunTuple>: makes
 *   the run current (the host evaluates the load's driver module next), waits for the driver to
 *   hand over the namespace of the main module, then runs it (kind `execute`) or registers its
 *   default export (kind `register`).
 * - `enter(token)`: the pending load's run becomes current again, right before the host evaluates
 *   its driver a second time (see Sandbox.evaluate).
 * - `invoke(execId, registrationId, payloadJson, trigger, idsCsv, tap, eventJson)` → Promise<RunTuple>:
 *   one handler run; its event is `{trigger, registrationId, executionId}`, or (a schedule's or a
 *   consumer's run) the object `eventJson` holds with `registrationId` and `executionId` first.
 *   `idsCsv` (load and invoke): '' for a new run; for a replayed one (a restore), the ids its
 *   gears.register calls take, in order.
 * - `commit(execId)`: the host accepted a finished run: its registrations become live handlers.
 * - `abandon(execId, token)`: the host gave up on a run (timeout, cancel, a failed call) or refused
 *   its result: settle it if it still runs and drop every registration it made.
 * - `unregister(idsCsv)`: forget released handlers.
 *
 * Each returns (or resolves to) `{t: RunTuple}` with a null prototype, where
 * RunTuple: [ok, valueJson|null, logs [[level, message]…], logsTruncated, registrations
 * [[id, trigger, description, kind, cron|stream, timezone|group]…], error [name, message, stack]|null, code]
 * where code is '' on success, 'script' for a throw, 'handler' when Register's default export
 * is not a function, 'result' when the result cannot be copied, 'abandoned' after `abandon`.
 */
export const BOOTSTRAP_SOURCE = String.raw`(function () {
'use strict';
// Set once by init, the host's first call.
let initialized = false;
// The host's log tap (an isolated-vm Callback whose calls the isolate does not wait for): a run
// started with tap set hands it each console line as it is written, for live watchers.
let logTap = null;
// The host's check of a schedule's cron or a consumer's stream (a synchronous isolated-vm Callback).
let sourceCheck = null;
// A run may ask the host that many times about sources it gets refused, then is refused here: a
// script looping over bad cron expressions cannot keep the host's thread busy for its whole run.
const MAX_REFUSED_CHECKS = 100;
let interpreterId = '', regPrefix = '', maxLogChars = 0, triggerPattern = '', maxResultChars = 0, maxRegistrations = 0;
const g = globalThis;
const apply = Reflect.apply;
const defineProperty = Object.defineProperty, freeze = Object.freeze, keys = Object.keys;
const getPrototypeOf = Object.getPrototypeOf, objectProto = Object.prototype, isArray = Array.isArray;
const stringify = JSON.stringify, parse = JSON.parse, parseIntFn = Number.parseInt;
const StringCtor = String, isFinite = Number.isFinite, PromiseCtor = Promise;
const promiseThen = Promise.prototype.then;
const MapCtor = Map, SetCtor = Set;
const mapGet = Map.prototype.get, mapSet = Map.prototype.set, mapDelete = Map.prototype.delete, mapHas = Map.prototype.has;
const setHas = Set.prototype.has, setAdd = Set.prototype.add, setDelete = Set.prototype.delete;
const strSlice = String.prototype.slice, strIndexOf = String.prototype.indexOf, charCodeAt = String.prototype.charCodeAt;
const numToString = Number.prototype.toString;
const isWellFormed = String.prototype.isWellFormed;
const ErrorCtor = Error, TypeErrorCtor = TypeError, RangeErrorCtor = RangeError;

// Appends without [[Set]]: a script may plant index setters on Array.prototype.
function append(arr, v) {
  defineProperty(arr, arr.length, { value: v, writable: true, enumerable: true, configurable: true });
}

// Everything resolved or handed to the host is wrapped in a null-prototype box: resolving a
// promise with an array would look up a 'then' a script can plant on Array/Object.prototype.
function box(tuple) { return { __proto__: null, t: tuple }; }

// The trigger rule of names.ts (TRIGGER_PATTERN), checked by hand: RegExp.prototype.test calls
// the overridable exec.
function isTriggerChar(c, first) {
  if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95) return true;
  return !first && (c === 46 || c === 58 || c === 47 || c === 64 || c === 45);
}
function isValidTrigger(s) {
  if (typeof s !== 'string' || s.length < 1 || s.length > 256) return false;
  for (let i = 0; i < s.length; i++) if (!isTriggerChar(apply(charCodeAt, s, [i]), i === 0)) return false;
  return true;
}

// Error.prepareStackTrace is disabled: it always reads as undefined and assignments are ignored,
// so V8 formats every stack itself. A script's formatter would otherwise run whenever a stack is
// formatted, including when isolated-vm copies an error out after the run's timeout stopped
// guarding, and it would hand out CallSite objects.
defineProperty(ErrorCtor, 'prepareStackTrace', {
  enumerable: false, configurable: false,
  get: function () { return undefined; },
  set: function (v) {},
});

// Callbacks V8 schedules as tasks of its own. isolated-vm runs a task the isolate posted with no
// timeout, after the host's call returned, so user code in one could spin forever outside every
// run: the isolate (and in shared mode every interpreter on it) would sit wedged until the
// watchdog disposed it. No user callback may be reachable from such a task:
// - Atomics.waitAsync with a finite timeout posts a non-nestable delayed task: isolated-vm 5
//   called std::terminate for one (the whole server process aborted); 7.0.2 drops it, so the
//   promise would never settle. Without a timeout its promise is settled from a posted task. It is
//   removed.
// - FinalizationRegistry cleanup callbacks run from a posted task. The language lets an engine
//   never call them; here they never are (the constructor still checks its argument).
// - WebAssembly.compile/instantiate settle their promise from a posted task (in a shared isolate
//   sometimes never). Here they compile synchronously, inside the run and under its timeout.
// WebAssembly memories live outside the V8 heap, where memory_limit_mb does not reach: one
// script could commit gigabytes of the server's memory. WebAssembly.Memory and modules that
// define or import a memory are refused with a message saying so.
const construct = Reflect.construct, deleteProperty = Reflect.deleteProperty;
const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
const Uint8ArrayCtor = Uint8Array;
const typedArrayProto = getPrototypeOf(Uint8Array.prototype);
const taSet = typedArrayProto.set;
const taBuffer = getOwnPropertyDescriptor(typedArrayProto, 'buffer').get;
const taByteOffset = getOwnPropertyDescriptor(typedArrayProto, 'byteOffset').get;
const taByteLength = getOwnPropertyDescriptor(typedArrayProto, 'byteLength').get;
const dvBuffer = getOwnPropertyDescriptor(DataView.prototype, 'buffer').get;
const dvByteOffset = getOwnPropertyDescriptor(DataView.prototype, 'byteOffset').get;
const dvByteLength = getOwnPropertyDescriptor(DataView.prototype, 'byteLength').get;
const abByteLength = getOwnPropertyDescriptor(ArrayBuffer.prototype, 'byteLength').get;
const sabByteLength = typeof SharedArrayBuffer === 'function' ? getOwnPropertyDescriptor(SharedArrayBuffer.prototype, 'byteLength').get : undefined;

function replaceMethod(target, name, value) {
  defineProperty(target, name, { value: value, writable: true, enumerable: false, configurable: true });
}

if (typeof Atomics === 'object' && Atomics !== null) deleteProperty(Atomics, 'waitAsync');

const FinalizationRegistryCtor = g.FinalizationRegistry;
if (typeof FinalizationRegistryCtor === 'function') {
  const neverCalled = function () {};
  const FinalizationRegistryShim = function FinalizationRegistry(cleanup) {
    if (new.target === undefined) throw new TypeErrorCtor("Constructor FinalizationRegistry requires 'new'");
    if (typeof cleanup !== 'function') throw new TypeErrorCtor('FinalizationRegistry: cleanup must be callable');
    return construct(FinalizationRegistryCtor, [neverCalled], new.target);
  };
  defineProperty(FinalizationRegistryShim, 'prototype', { value: FinalizationRegistryCtor.prototype, writable: false });
  replaceMethod(FinalizationRegistryCtor.prototype, 'constructor', FinalizationRegistryShim);
  replaceMethod(g, 'FinalizationRegistry', FinalizationRegistryShim);
}

// A private copy of a BufferSource, so the bytes checked are the bytes compiled.
function copyBufferSource(source) {
  let buffer, offset = 0, length;
  try {
    buffer = apply(taBuffer, source, []);
    offset = apply(taByteOffset, source, []);
    length = apply(taByteLength, source, []);
  } catch (e) {
    try {
      buffer = apply(dvBuffer, source, []);
      offset = apply(dvByteOffset, source, []);
      length = apply(dvByteLength, source, []);
    } catch (e2) {
      buffer = source;
      try { length = apply(abByteLength, source, []); } catch (e3) {
        try { length = apply(sabByteLength, source, []); } catch (e4) {
          throw new TypeErrorCtor('WebAssembly: the argument must be a BufferSource (an ArrayBuffer or a typed array)');
        }
      }
    }
  }
  const copy = new Uint8ArrayCtor(length);
  apply(taSet, copy, [new Uint8ArrayCtor(buffer, offset, length)]);
  return copy;
}

const WebAssemblyNs = g.WebAssembly;
if (typeof WebAssemblyNs === 'object' && WebAssemblyNs !== null) {
  const ModuleCtor = WebAssemblyNs.Module, InstanceCtor = WebAssemblyNs.Instance;
  const CompileErrorCtor = WebAssemblyNs.CompileError;
  const moduleImports = ModuleCtor.imports;
  const noMemory = 'WebAssembly memories live outside the heap that memory_limit_mb bounds, so isogear does not offer them';

  // The bytes are a module V8 validated: walk its sections looking for a memory section (id 5).
  const definesMemory = function (bytes, length) {
    let p = 8;
    while (p < length) {
      const id = bytes[p++];
      let size = 0, scale = 1, b;
      do { b = bytes[p++]; size += (b & 127) * scale; scale *= 128; } while (b >= 128 && p < length);
      if (id === 5) return true;
      p += size;
    }
    return false;
  };
  const importsMemory = function (mod) {
    const list = moduleImports(mod);
    for (let i = 0; i < list.length; i++) if (list[i].kind === 'memory') return true;
    return false;
  };
  const compileChecked = function (source, newTarget) {
    const bytes = copyBufferSource(source);
    const mod = construct(ModuleCtor, [bytes], newTarget);
    if (definesMemory(bytes, apply(taByteLength, bytes, [])) || importsMemory(mod)) {
      throw new CompileErrorCtor('WebAssembly.Module(): the module defines or imports a memory; ' + noMemory);
    }
    return mod;
  };
  const isModule = function (x) {
    try { moduleImports(x); return true; } catch (e) { return false; }
  };

  const ModuleShim = function Module(bytes) {
    if (new.target === undefined) throw new TypeErrorCtor("WebAssembly.Module must be invoked with 'new'");
    return compileChecked(bytes, new.target);
  };
  defineProperty(ModuleShim, 'prototype', { value: ModuleCtor.prototype, writable: false });
  for (const name of ['imports', 'exports', 'customSections']) {
    if (typeof ModuleCtor[name] === 'function') replaceMethod(ModuleShim, name, ModuleCtor[name]);
  }
  replaceMethod(ModuleCtor.prototype, 'constructor', ModuleShim);
  replaceMethod(WebAssemblyNs, 'Module', ModuleShim);

  replaceMethod(WebAssemblyNs, 'Memory', function Memory() {
    throw new TypeErrorCtor('WebAssembly.Memory is not available: ' + noMemory);
  });
  replaceMethod(WebAssemblyNs, 'compile', function compile(bytes) {
    return new PromiseCtor(function (resolve) { resolve(compileChecked(bytes, ModuleShim)); });
  });
  replaceMethod(WebAssemblyNs, 'instantiate', function instantiate(source, importObject) {
    return new PromiseCtor(function (resolve) {
      if (isModule(source)) {
        resolve(construct(InstanceCtor, [source, importObject]));
        return;
      }
      const mod = compileChecked(source, ModuleShim);
      resolve({ module: mod, instance: construct(InstanceCtor, [mod, importObject]) });
    });
  });
  deleteProperty(WebAssemblyNs, 'compileStreaming');
  deleteProperty(WebAssemblyNs, 'instantiateStreaming');
}

const runs = new MapCtor();      // execId -> run record
const handlers = new MapCtor();  // registrationId -> function
const loads = new MapCtor();     // token -> pending load, or the namespace if the driver came first
const uncommitted = new MapCtor(); // execId -> registrations of a finished run, until the host commits or abandons it
let current = null;              // the run whose code the isolate entered last (console, executionId)
let regCounter = 0, handlerCount = 0;

function clip(s, n) { return s.length > n ? apply(strSlice, s, [0, n]) + '…' : s; }

function safeString(v) {
  try {
    if (typeof v === 'string') return v;
    if (typeof v === 'symbol') return apply(Symbol.prototype.toString, v, []);
    return StringCtor(v);
  } catch (e) {
    return '[unprintable value]';
  }
}

function describeError(e) {
  let name = 'Error', message = '', stack = '';
  if (e !== null && (typeof e === 'object' || typeof e === 'function')) {
    try { const n = e.name; if (typeof n === 'string') name = n; } catch (x) {}
    try { const m = e.message; message = typeof m === 'string' ? m : safeString(e); } catch (x) { message = '[unreadable message]'; }
    try { const s = e.stack; if (typeof s === 'string') stack = s; } catch (x) {}
  } else {
    message = 'a non-Error value was thrown: ' + (typeof e === 'string' ? stringify(e) : safeString(e));
  }
  return [clip(safeString(name), 200), clip(safeString(message), 8192), clip(safeString(stack), 16384)];
}

// Strict JSON: the only values that cross to the host. Anything JSON or protobuf would silently
// change (functions, symbols, NaN, Dates, Maps, class instances, cycles, unpaired surrogates, a
// "__proto__" key) is an error that names where. The size budget is checked at every value, so a
// sparse array with a huge length fails at once instead of running out the timeout.
function spend(budget, n) {
  budget.n -= n;
  if (budget.n < 0) throw new RangeErrorCtor('result is larger than ' + maxResultChars + ' characters');
}
function checkWellFormed(s, what) {
  if (isWellFormed !== undefined && !apply(isWellFormed, s, [])) {
    throw new TypeErrorCtor(what + ' has an unpaired UTF-16 surrogate, which a protobuf string (UTF-8) cannot carry');
  }
}
function toJson(value, path, depth, seen, budget) {
  switch (typeof value) {
    case 'string': {
      const s = stringify(value);
      spend(budget, s.length);
      checkWellFormed(value, path);
      return s;
    }
    case 'number':
      if (!isFinite(value)) throw new TypeErrorCtor(path + ' is ' + safeString(value) + ', which JSON cannot represent');
      spend(budget, 24);
      return apply(numToString, value, []);
    case 'boolean': spend(budget, 5); return value ? 'true' : 'false';
    case 'undefined': spend(budget, 4); return 'null';
    case 'bigint': throw new TypeErrorCtor(path + ' is a BigInt, which JSON cannot represent (convert it to a string or number)');
    case 'symbol': throw new TypeErrorCtor(path + ' is a Symbol, which JSON cannot represent');
    case 'function': throw new TypeErrorCtor(path + ' is a function, which JSON cannot represent');
  }
  if (value === null) { spend(budget, 4); return 'null'; }
  if (depth > 64) throw new RangeErrorCtor(path + ' is nested deeper than 64 levels');
  if (apply(setHas, seen, [value])) throw new TypeErrorCtor(path + ' is a circular reference');
  apply(setAdd, seen, [value]);
  let out;
  if (isArray(value)) {
    const n = value.length;
    out = '[';
    for (let i = 0; i < n; i++) {
      if (i > 0) out += ',';
      spend(budget, 1);
      out += toJson(value[i], path + '[' + i + ']', depth + 1, seen, budget);
    }
    out += ']';
  } else {
    const proto = getPrototypeOf(value);
    if (proto !== objectProto && proto !== null) {
      let what = 'object';
      try { const c = proto.constructor; if (typeof c === 'function' && typeof c.name === 'string' && c.name) what = c.name; } catch (x) {}
      throw new TypeErrorCtor(path + ' is a ' + what + ', not a plain object or array; only JSON values can be returned');
    }
    const ks = keys(value);
    out = '{';
    let first = true;
    for (let i = 0; i < ks.length; i++) {
      const k = ks[i];
      if (k === '__proto__') {
        throw new TypeErrorCtor(path + ' has a key named "__proto__", which cannot be returned: protobuf Struct decoders in JavaScript treat it as the prototype and drop it');
      }
      const v = value[k];
      if (v === undefined) continue;
      const kj = stringify(k);
      spend(budget, kj.length + 2);
      checkWellFormed(k, path + ' key ' + kj);
      const vj = toJson(v, path + '.' + k, depth + 1, seen, budget);
      out += (first ? '' : ',') + kj + ':' + vj;
      first = false;
    }
    out += '}';
  }
  apply(setDelete, seen, [value]);
  return out;
}

function formatLogArg(a) {
  if (typeof a === 'string') return a;
  if (a === undefined) return 'undefined';
  if (typeof a === 'function') return '[Function ' + safeString(a.name) + ']';
  if (typeof a === 'bigint') return safeString(a) + 'n';
  if (a instanceof ErrorCtor) { const d = describeError(a); return d[2] || d[0] + ': ' + d[1]; }
  try {
    const s = stringify(a);
    return typeof s === 'string' ? s : safeString(a);
  } catch (e) {
    return safeString(a);
  }
}

function makeLogger(level) {
  return function () {
    const run = current;
    if (run === null || run.done || run.truncated) return;
    let msg = '';
    for (let i = 0; i < arguments.length; i++) msg += (i > 0 ? ' ' : '') + formatLogArg(arguments[i]);
    // An entry costs its characters plus one, so a flood of empty messages is bounded as well.
    const room = maxLogChars - run.logChars - 1;
    if (msg.length > room) { msg = apply(strSlice, msg, [0, room > 0 ? room : 0]); run.truncated = true; }
    if (msg.length > 0 || !run.truncated) {
      append(run.logs, [level, msg]);
      run.logChars += msg.length + 1;
      if (run.tap && logTap !== null) {
        try { logTap(run.id, level, msg); } catch (e) { /* the host went away: the line is in the run's logs */ }
      }
    }
  };
}

const consoleObject = freeze({
  log: makeLogger('log'), info: makeLogger('info'), warn: makeLogger('warn'),
  error: makeLogger('error'), debug: makeLogger('debug'),
});

// kind 'trigger' (gears.register): target is the trigger; 'schedule': target is the cron, extra
// the time zone; 'stream': target is the stream, extra the group.
function addRegistration(run, kind, target, handler, description, extra) {
  const call = kind === 'trigger' ? 'gears.register' : kind === 'schedule' ? 'gears.schedule' : 'gears.consume';
  if (kind === 'trigger' && !isValidTrigger(target)) {
    throw new TypeErrorCtor('gears.register: trigger must be a string matching /' + triggerPattern + '/, got ' + clip(formatLogArg(target), 100));
  }
  if (kind === 'schedule' && typeof target !== 'string') {
    throw new TypeErrorCtor('gears.schedule: the cron expression is invalid: it must be a string like "*/10 * * * * *", got ' + clip(formatLogArg(target), 100));
  }
  if (kind === 'stream' && typeof target !== 'string') {
    throw new TypeErrorCtor('gears.consume: stream must be a string (a Redis key), got ' + clip(formatLogArg(target), 100));
  }
  if (typeof handler !== 'function') {
    throw new TypeErrorCtor(call + ': handler must be a function, got ' + (handler === null ? 'null' : typeof handler));
  }
  if (typeof description !== 'string') throw new TypeErrorCtor(call + ': options.description must be a string');
  if (description.length > 1024) throw new RangeErrorCtor(call + ': options.description is longer than 1024 characters');
  if (handlerCount + run.regs.length >= maxRegistrations) {
    throw new RangeErrorCtor(call + ': this interpreter already holds ' + maxRegistrations + ' registrations, the most one interpreter may hold');
  }
  if (kind !== 'trigger') {
    if (run.refusedChecks >= MAX_REFUSED_CHECKS) throw new RangeErrorCtor(call + ': refused: this run already had ' + MAX_REFUSED_CHECKS + ' invalid calls');
    if (target.length > 1024 || extra.length > 256) {
      throw new RangeErrorCtor(call + (kind === 'schedule' ? ': the cron expression is invalid: it is too long' : ': stream or group is too long'));
    }
    let problem = 'this server cannot check ' + call;
    if (sourceCheck !== null) {
      try { problem = sourceCheck(kind, target, extra); } catch (e) { problem = call + ': the server could not check it'; }
    }
    if (typeof problem !== 'string') problem = call + ': the server could not check it';
    if (problem !== '') {
      run.refusedChecks += 1;
      throw new TypeErrorCtor(problem);
    }
  }
  let id;
  if (run.ids !== null && run.regs.length < run.ids.length) {
    // a replayed run: the k-th gears.register call takes the k-th id it had (the host checks the
    // triggers); later mints continue past it, so a replayed id is never minted again
    id = run.ids[run.regs.length];
    const n = parseIntFn(apply(strSlice, id, [4 + regPrefix.length]), 36);
    if (n === n && n > regCounter) regCounter = n;
  } else {
    regCounter += 1;
    id = 'reg_' + regPrefix + apply(numToString, regCounter, [36]);
  }
  append(run.regs, [id, kind === 'trigger' ? target : '', description, handler, kind, kind === 'trigger' ? '' : target, kind === 'trigger' ? '' : extra]);
  return id;
}

// idsCsv: the ids a replayed run's registrations take, in order ('' for a new run: mint them)
function newRun(execId, idsCsv, tap) {
  const ids = idsCsv === undefined || idsCsv === '' ? null : splitCsv(idsCsv);
  const run = { id: execId, logs: [], logChars: 0, truncated: false, regs: [], ids: ids, done: false, settle: null, tap: tap === true, refusedChecks: 0 };
  apply(mapSet, runs, [execId, run]);
  return run;
}

function finish(run, ok, valueJson, error, code) {
  run.done = true;
  apply(mapDelete, runs, [run.id]);
  if (current === run) current = null;
  const regs = [];
  if (ok && run.regs.length > 0) {
    for (let i = 0; i < run.regs.length; i++) {
      const r = run.regs[i];
      append(regs, [r[0], r[1], r[2], r[4], r[5], r[6]]);
    }
    apply(mapSet, uncommitted, [run.id, run.regs]);
  }
  run.regs = [];
  return box([ok, valueJson, run.logs, run.truncated, regs, error, code]);
}

// Settles with the value of x (awaited exactly as 'await' would: a native promise is not asked
// for its overridable 'then') or the host's abandon, whichever comes first.
function settleRun(run, x, onValue) {
  return new PromiseCtor(function (resolve) {
    run.settle = resolve;
    (async function () {
      let v;
      try {
        v = await x;
      } catch (e) {
        if (!run.done) resolve(finish(run, false, null, describeError(e), 'script'));
        return;
      }
      if (!run.done) resolve(onValue(v));
    })();
  });
}

function resultOf(run) {
  return function (v) {
    current = run;
    let json;
    try {
      json = toJson(v, 'result', 0, new SetCtor(), { n: maxResultChars });
    } catch (e) {
      const d = describeError(e);
      return finish(run, false, null, [d[0], d[1], ''], 'result');
    }
    return finish(run, true, json, null, '');
  };
}

function startLoad(pending, ns) {
  const run = pending.run;
  if (run.done) return;
  current = run;
  if (pending.kind === 'register') {
    let d;
    try { d = ns.default; } catch (e) { pending.resolve(finish(run, false, null, describeError(e), 'script')); return; }
    if (typeof d !== 'function') {
      const got = d === undefined ? 'the module has no default export' : 'its default export is ' + (d === null ? 'null' : typeof d);
      pending.resolve(finish(run, false, null, ['TypeError', 'Register needs a module whose default export is the handler function (export default function (payload, event) {…}); ' + got, ''], 'handler'));
      return;
    }
    try { addRegistration(run, 'trigger', pending.trigger, d, pending.description, ''); }
    catch (e) { pending.resolve(finish(run, false, null, describeError(e), 'handler')); return; }
    pending.resolve(finish(run, true, 'null', null, ''));
    return;
  }
  let value;
  try {
    const d = ns.default;
    if (typeof d === 'function') {
      const args = pending.argsJson === '' ? undefined : parse(pending.argsJson);
      value = d(args);
    } else {
      value = d;
    }
  } catch (e) {
    pending.resolve(finish(run, false, null, describeError(e), 'script'));
    return;
  }
  apply(promiseThen, settleRun(run, value, resultOf(run)), [pending.resolve]);
}

// The interpreter's settings, then the globals user code sees (in this order: gears, console, the
// driver's hook). Called once, before any call that runs user code.
function init(id, prefix, logChars, pattern, resultChars, registrations, tap, check) {
  if (initialized) throw new TypeErrorCtor('the sandbox is initialized already');
  initialized = true;
  if (typeof tap === 'function') logTap = tap;
  if (typeof check === 'function') sourceCheck = check;
  interpreterId = id;
  regPrefix = prefix;
  maxLogChars = logChars;
  triggerPattern = pattern;
  maxResultChars = resultChars;
  maxRegistrations = registrations;
  const gears = {};
  defineProperty(gears, 'register', {
    enumerable: true,
    value: function register(trigger, handler, options) {
      const run = current;
      if (run === null || run.done) throw new ErrorCtor('gears.register can only be called while a run of this interpreter is in progress');
      let description = '';
      if (options !== undefined && options !== null) {
        if (typeof options !== 'object') throw new TypeErrorCtor('gears.register: options must be an object like {description: "…"}');
        const d = options.description;
        if (d !== undefined) description = d;
      }
      return addRegistration(run, 'trigger', trigger, handler, description, '');
    },
  });
  defineProperty(gears, 'schedule', {
    enumerable: true,
    value: function schedule(cron, handler, options) {
      const run = current;
      if (run === null || run.done) throw new ErrorCtor('gears.schedule can only be called while a run of this interpreter is in progress');
      let description = '', timezone = '';
      if (options !== undefined && options !== null) {
        if (typeof options !== 'object') throw new TypeErrorCtor('gears.schedule: options must be an object like {description: "…", timezone: "Europe/Paris"}');
        const d = options.description, tz = options.timezone;
        if (d !== undefined) description = d;
        if (tz !== undefined) {
          if (typeof tz !== 'string') throw new TypeErrorCtor('gears.schedule: options.timezone must be a string naming an IANA time zone, like "Europe/Paris"');
          timezone = tz;
        }
      }
      return addRegistration(run, 'schedule', cron, handler, description, timezone);
    },
  });
  defineProperty(gears, 'consume', {
    enumerable: true,
    value: function consume(stream, handler, options) {
      const run = current;
      if (run === null || run.done) throw new ErrorCtor('gears.consume can only be called while a run of this interpreter is in progress');
      let description = '', group = 'isogear';
      if (options !== undefined && options !== null) {
        if (typeof options !== 'object') throw new TypeErrorCtor('gears.consume: options must be an object like {group: "…", description: "…"}');
        const d = options.description, gr = options.group;
        if (d !== undefined) description = d;
        if (gr !== undefined) {
          if (typeof gr !== 'string') throw new TypeErrorCtor('gears.consume: options.group must be a string');
          group = gr;
        }
      }
      return addRegistration(run, 'stream', stream, handler, description, group);
    },
  });
  defineProperty(gears, 'interpreterId', { enumerable: true, value: interpreterId });
  defineProperty(gears, 'executionId', { enumerable: true, get: function () { return current === null ? null : current.id; } });
  freeze(gears);
  defineProperty(g, 'gears', { value: gears, writable: false, enumerable: false, configurable: false });
  defineProperty(g, 'console', { value: consoleObject, writable: false, enumerable: false, configurable: false });
  defineProperty(g, '__isogear_loaded__', {
    enumerable: false, writable: false, configurable: false,
    value: function (token, ns) {
      if (arguments.length === 1) {
        // the form a per-load "enter" module used: nothing is stored
        enter(token);
        return;
      }
      const pending = apply(mapGet, loads, [token]);
      if (pending === undefined) { apply(mapSet, loads, [token, { ns: ns }]); return; }
      apply(mapDelete, loads, [token]);
      if (pending.run !== undefined) startLoad(pending, ns);
    },
  });
}

// The pending load's run becomes current (the host's 'enter', right before it evaluates a driver again).
function enter(token) {
  const p = apply(mapGet, loads, [token]);
  if (p !== undefined && p.run !== undefined && !p.run.done) current = p.run;
}

// The host evaluates the load's driver module right after this call, and no code runs between
// two calls: the run is current when the load's user modules start evaluating.
function load(execId, token, kind, argsJson, trigger, description, idsCsv, tap) {
  const run = newRun(execId, idsCsv, tap);
  current = run;
  return new PromiseCtor(function (resolve) {
    run.settle = resolve;
    const pending = { run: run, kind: kind, argsJson: argsJson, trigger: trigger, description: description, resolve: resolve };
    const early = apply(mapGet, loads, [token]);
    if (early !== undefined) { apply(mapDelete, loads, [token]); startLoad(pending, early.ns); }
    else apply(mapSet, loads, [token, pending]);
  });
}

// A schedule's or a consumer's event: its ids first, then what the host sent ({scheduledAt},
// {stream, entryId}); defined, not assigned, so a setter planted on Object.prototype sees nothing.
function sourceEvent(eventJson, registrationId, execId) {
  const event = {};
  defineProperty(event, 'registrationId', { value: registrationId, writable: true, enumerable: true, configurable: true });
  defineProperty(event, 'executionId', { value: execId, writable: true, enumerable: true, configurable: true });
  const extra = parse(eventJson);
  const ks = keys(extra);
  for (let i = 0; i < ks.length; i++) defineProperty(event, ks[i], { value: extra[ks[i]], writable: true, enumerable: true, configurable: true });
  return event;
}

function invoke(execId, registrationId, payloadJson, trigger, idsCsv, tap, eventJson) {
  const run = newRun(execId, idsCsv, tap);
  const handler = apply(mapGet, handlers, [registrationId]);
  if (handler === undefined) {
    return finish(run, false, null, ['Error', 'registration ' + registrationId + ' has no handler in this interpreter', ''], 'script');
  }
  current = run;
  let value;
  try {
    const payload = payloadJson === '' ? undefined : parse(payloadJson);
    const event = eventJson === undefined || eventJson === '' ? { trigger: trigger, registrationId: registrationId, executionId: execId } : sourceEvent(eventJson, registrationId, execId);
    value = handler(payload, event);
  } catch (e) {
    return finish(run, false, null, describeError(e), 'script');
  }
  return settleRun(run, value, resultOf(run));
}

function commit(execId) {
  const regs = apply(mapGet, uncommitted, [execId]);
  if (regs === undefined) return;
  apply(mapDelete, uncommitted, [execId]);
  for (let i = 0; i < regs.length; i++) {
    if (!apply(mapHas, handlers, [regs[i][0]])) handlerCount += 1;
    apply(mapSet, handlers, [regs[i][0], regs[i][3]]);
  }
}

function abandon(execId, token) {
  if (token !== '') apply(mapDelete, loads, [token]);
  apply(mapDelete, uncommitted, [execId]);
  const run = apply(mapGet, runs, [execId]);
  if (run === undefined) return;
  const settle = run.settle;
  finish(run, false, null, null, 'abandoned');
  if (settle !== null) settle(box([false, null, [], false, [], null, 'abandoned']));
}

function splitCsv(csv) {
  const out = [];
  let start = 0;
  while (start <= csv.length) {
    let end = apply(strIndexOf, csv, [',', start]);
    if (end < 0) end = csv.length;
    append(out, apply(strSlice, csv, [start, end]));
    start = end + 1;
  }
  return out;
}

function unregister(idsCsv) {
  const ids = splitCsv(idsCsv);
  for (let i = 0; i < ids.length; i++) if (apply(mapDelete, handlers, [ids[i]])) handlerCount -= 1;
}

return function dispatch(op, a, b, c, d, e, f, h, i) {
  switch (op) {
    case 'init': return init(a, b, c, d, e, f, h, i);
    case 'load': return load(a, b, c, d, e, f, h, i);
    case 'enter': return enter(a);
    case 'invoke': return invoke(a, b, c, d, e, f, h);
    case 'commit': return commit(a);
    case 'abandon': return abandon(a, b);
    case 'unregister': return unregister(a);
  }
  throw new TypeErrorCtor('unknown operation ' + op);
};
})()
`;
