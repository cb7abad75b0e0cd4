import type { Cmd } from './commands';
import { runScenario, type ScenarioOptions } from './harness';

/**
 * Sequences the refcount model test shrank to, replayed literally through the same harness.
 * Each encodes an interleaving worth keeping whether or not it ever failed against the real
 * server. The ones marked "catches" were shrunk from runs against deliberately broken managers
 * (InterpreterManager / Interpreter / IsolateHost monkey-patched one way each), so each is the
 * shortest known sequence that catches that breakage. The ones about executions (background
 * runs, CancelExecution, queued runs) were written out by hand and checked the same way, against
 * ExecutionTable / Execution / TriggerFanOut / InterpreterManager patched one way each. Batches
 * that race (`mix`, `upgradeRace`) take whichever interleaving the machine gives and check it is
 * a legal one, so those catch their breakage only when the interleaving that exposes it comes up
 * (it did, every time, here).
 */
const replay = (cmds: Cmd[], options: ScenarioOptions = {}) => () => runScenario(cmds, options);

describe('refcount model: regressions', function () {
  this.timeout(120_000);

  it(
    'Release of the last registration while its handler hangs answers DRAINING; the interpreter goes when the Trigger is cancelled',
    // catches: releasing under a run not marking the interpreter DRAINING
    replay([
      { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: null, replace: false },
      { op: 'slowTriggerRelease', pick: 0, by: 'registration', end: 'cancel', registerOn: 0 },
    ]),
  );

  it(
    'an attached Execute racing a Release by interpreter and a Trigger leaves nothing DRAINING behind',
    // catches: the last execution reference of a DRAINING interpreter not disposing it
    replay([
      { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: null, replace: false },
      { op: 'mix', ops: [{ op: 'executeIn', pick: 0, triggers: [] }, { op: 'releaseItp', pick: 0 }, { op: 'trigger', trigger: 0 }] },
    ]),
  );

  it(
    'an attached Register racing a Release by interpreter is refused or released, never kept by a DRAINING interpreter',
    // catches: a DRAINING interpreter accepting new registrations
    replay([
      { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: null, replace: false },
      { op: 'mix', ops: [{ op: 'registerIn', pick: 0, trigger: 0 }, { op: 'releaseItp', pick: 0 }, { op: 'executeIn', pick: 0, triggers: [] }] },
    ]),
  );

  it(
    'an attached Register and a Release by interpreter released first, on a stored interpreter, is refused as released',
    // catches: a step queued behind a stored release re-creating the recipe of a DRAINING interpreter
    replay([
      { op: 'register', mode: 'shared', trigger: 0, bad: false },
      { op: 'mix', ops: [{ op: 'releaseItp', pick: 0 }, { op: 'registerIn', pick: 0, trigger: 0 }, { op: 'executeIn', pick: 0, triggers: [] }] },
    ]),
  );

  it(
    'a Release by registration and by interpreter at once: each answers only what it released',
    // catches: a stored release answering with registrations another release took while it waited
    replay([
      { op: 'mix', ops: [{ op: 'register', mode: 'shared', trigger: 0 }, { op: 'executeIn', pick: 0, triggers: [] }] },
      { op: 'mix', ops: [{ op: 'releaseReg', pick: 0 }, { op: 'releaseItp', pick: 0 }] },
    ]),
  );

  it(
    'two concurrent upgrades of a free name leave one holder and dispose the replaced dedicated isolate',
    // catches: a replaced interpreter keeping its registrations or its dedicated isolate
    replay([{ op: 'upgradeRace', name: 0, a: { mode: 'shared', triggers: [1] }, b: { mode: 'isolate', triggers: [0, 0] } }]),
  );

  it(
    'registration references are exact with three handlers in one interpreter',
    // catches: a per-interpreter count that drifts from the registrations it holds
    replay([{ op: 'execute', mode: 'shared', triggers: [0, 0, 0], ending: 'ok', name: null, replace: false }]),
  );

  it(
    'a handler registering while its interpreter is released by interpreter_id: kept only if the run ended first',
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0, 0], ending: 'ok', name: null, replace: false },
      { op: 'register', mode: 'shared', trigger: 0, bad: false },
      { op: 'slowTriggerRelease', pick: 0, by: 'interpreter', end: 'spinRegister', registerOn: 1 },
      { op: 'trigger', trigger: 1, action: 'register', registerOn: 2 },
      { op: 'slowTriggerRelease', pick: 1, by: 'registration', end: 'spinRegister', registerOn: 2 },
    ]),
  );

  it(
    'an upgrade while the old handlers run: the old interpreter drains, a Trigger in between sees only the new set',
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0, 1], ending: 'ok', name: 0, replace: false },
      { op: 'register', mode: 'shared', trigger: 0, bad: false },
      { op: 'upgradeUnderTrigger', name: 0, mode: 'shared', triggers: [0, 0], ending: 'ok' },
      { op: 'upgradeUnderTrigger', name: 0, mode: 'isolate', triggers: [2], ending: 'hang' },
      { op: 'upgradeUnderTrigger', name: 0, mode: 'isolate', triggers: [], ending: 'ok' },
      { op: 'execute', mode: 'shared', triggers: [1], ending: 'ok', name: 0, replace: false },
    ]),
  );

  it(
    'cancelled and timed-out runs, new and attached, drop their references and keep nothing they registered',
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0], ending: 'ok', name: 1, replace: false },
      { op: 'cancelExecute', target: { kind: 'live', pick: 0 }, triggers: [1, 2], body: 'loop', how: 'deadline' },
      { op: 'cancelExecute', target: { kind: 'live', pick: 0 }, triggers: [1], body: 'hang', how: 'cancel' },
      { op: 'cancelExecute', target: { kind: 'new', mode: 'isolate' }, triggers: [0], body: 'hang', how: 'deadline' },
      { op: 'slowRegister', target: { kind: 'live', pick: 0 }, trigger: 0, end: 'cancel' },
      { op: 'slowRegister', target: { kind: 'new', mode: 'shared' }, trigger: 0, end: 'timeout' },
      { op: 'executeIn', target: { kind: 'live', pick: 0 }, triggers: [2], ending: 'loop' },
      { op: 'trigger', trigger: 0, action: 'hang', registerOn: 0 },
      { op: 'slowTriggerRelease', pick: 0, by: 'interpreter', end: 'deadline', registerOn: 0 },
      { op: 'release', by: 'interpreter', target: { kind: 'gone', pick: 0 } },
      { op: 'release', by: 'registration', target: { kind: 'gone', pick: 0 } },
      { op: 'executeIn', target: { kind: 'gone', pick: 0 }, triggers: [], ending: 'ok' },
    ]),
  );

  it(
    'an upgrade cut short by the client changes nothing, and a named Execute cut short leaves its name free',
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0, 1], ending: 'ok', name: 0, replace: false },
      { op: 'cancelExecute', target: { kind: 'new', mode: 'shared', name: 0 }, triggers: [0], body: 'hang', how: 'deadline' },
      { op: 'cancelExecute', target: { kind: 'new', mode: 'isolate', name: 0 }, triggers: [2], body: 'loop', how: 'cancel' },
      { op: 'trigger', trigger: 0, action: 'fast', registerOn: 0 },
      { op: 'cancelExecute', target: { kind: 'new', mode: 'isolate', name: 1 }, triggers: [1], body: 'hang', how: 'cancel' },
      { op: 'cancelExecute', target: { kind: 'new', mode: 'shared', name: 1 }, triggers: [1], body: 'loop', how: 'deadline' },
      { op: 'execute', mode: 'shared', triggers: [2], ending: 'ok', name: 1, replace: false },
      { op: 'upgradeRace', name: 0, a: { mode: 'isolate', triggers: [2] }, b: { mode: 'shared', triggers: [] } },
    ]),
  );

  it(
    'with ISOGEAR_MAX_INTERPRETERS=3, new interpreters are refused until disposals free a slot, and every refusal leaves nothing',
    replay(
      [
        { op: 'register', mode: 'shared', trigger: 0, bad: false },
        { op: 'register', mode: 'isolate', trigger: 0, bad: false },
        { op: 'execute', mode: 'isolate', triggers: [1], ending: 'ok', name: 0, replace: false },
        { op: 'register', mode: 'shared', trigger: 0, bad: true },
        { op: 'upgradeUnderTrigger', name: 0, mode: 'shared', triggers: [0], ending: 'ok' },
        { op: 'upgradeRace', name: 0, a: { mode: 'shared', triggers: [1] }, b: { mode: 'isolate', triggers: [0] } },
        { op: 'mix', ops: [{ op: 'execute', mode: 'shared', triggers: [] }, { op: 'register', mode: 'shared', trigger: 1 }] },
        { op: 'release', by: 'interpreter', target: { kind: 'live', pick: 0 } },
        { op: 'mix', ops: [{ op: 'execute', mode: 'shared', triggers: [1] }, { op: 'register', mode: 'shared', trigger: 1 }] },
        { op: 'cancelExecute', target: { kind: 'new', mode: 'isolate' }, triggers: [], body: 'hang', how: 'cancel' },
        { op: 'oom', target: { kind: 'new', triggers: [] } },
        { op: 'release', by: 'registration', target: { kind: 'live', pick: 0 } },
        { op: 'cancelExecute', target: { kind: 'new', mode: 'isolate' }, triggers: [0], body: 'loop', how: 'deadline' },
        { op: 'oom', target: { kind: 'new', triggers: [2] } },
        { op: 'execute', mode: 'isolate', triggers: [2], ending: 'ok', name: null, replace: false },
      ],
      { maxInterpreters: 3 },
    ),
  );

  it(
    'memory kills: a new interpreter is gone FAILED; a live one goes FAILED with its registrations listed broken until released; DRAINING goes FAILED too',
    replay([
      { op: 'oom', target: { kind: 'new', triggers: [0, 1] } },
      { op: 'execute', mode: 'isolate', triggers: [0, 1], ending: 'ok', name: 0, replace: false },
      { op: 'register', mode: 'shared', trigger: 0, bad: false },
      { op: 'oom', target: { kind: 'live', pick: 0, via: 'trigger' } },
      { op: 'trigger', trigger: 0, action: 'register', registerOn: 2 },
      { op: 'registerIn', target: { kind: 'live', pick: 0 }, trigger: 2 },
      { op: 'executeIn', target: { kind: 'live', pick: 0 }, triggers: [2], ending: 'ok' },
      { op: 'mix', ops: [{ op: 'trigger', trigger: 0 }, { op: 'registerIn', pick: 0, trigger: 1 }, { op: 'releaseReg', pick: 0 }] },
      { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: 0, replace: false },
      { op: 'upgradeUnderTrigger', name: 0, mode: 'isolate', triggers: [1, 1], ending: 'ok' },
      { op: 'oom', target: { kind: 'live', pick: 0, via: 'execute' } },
      { op: 'execute', mode: 'isolate', triggers: [2, 2], ending: 'ok', name: null, replace: false },
      { op: 'slowTriggerRelease', pick: 99, by: 'interpreter', end: 'spinBomb', registerOn: 0 },
      { op: 'execute', mode: 'isolate', triggers: [2, 2], ending: 'ok', name: null, replace: false },
      { op: 'slowTriggerRelease', pick: 99, by: 'registration', end: 'spinBomb', registerOn: 0 },
      { op: 'release', by: 'interpreter', target: { kind: 'gone', pick: 0 } },
    ]),
  );

  it(
    'background runs: StartExecute into a new, a named, an upgraded and an existing interpreter, and StartTrigger; each applied once DONE and kept unchanged',
    // catches: a background fan-out's handler runs kept (listed) once DONE; an attached StartExecute holding an execution reference
    replay([
      { op: 'startExecute', target: { kind: 'new', mode: 'isolate', name: 0, replace: false }, triggers: [0, 1], ending: 'ok', peek: true },
      { op: 'startExecute', target: { kind: 'new', mode: 'shared', name: 0, replace: false }, triggers: [1], ending: 'ok', peek: false },
      { op: 'startExecute', target: { kind: 'in', target: { kind: 'live', pick: 0 } }, triggers: [2], ending: 'hang', peek: true },
      { op: 'startExecute', target: { kind: 'in', target: { kind: 'live', pick: 0 } }, triggers: [2], ending: 'ok', peek: false },
      { op: 'startTrigger', trigger: 2, action: 'register', registerOn: 1 },
      { op: 'startTrigger', trigger: 1, action: 'loop', registerOn: 0 },
      { op: 'startExecute', target: { kind: 'new', mode: 'shared', name: 0, replace: true }, triggers: [0], ending: 'throw', peek: false },
      { op: 'startExecute', target: { kind: 'new', mode: 'shared', name: 0, replace: true }, triggers: [0], ending: 'ok', peek: true },
      { op: 'startExecute', target: { kind: 'in', target: { kind: 'gone', pick: 0 } }, triggers: [], ending: 'ok', peek: false },
      { op: 'cancelDone', pick: 1, what: 'kept' },
      { op: 'cancelDone', pick: 0, what: 'ended' },
      { op: 'mix', ops: [{ op: 'startExecuteIn', pick: 0, triggers: [1] }, { op: 'releaseItp', pick: 0 }, { op: 'startTrigger', trigger: 0 }, { op: 'startExecute', mode: 'isolate', triggers: [2] }] },
    ]),
  );

  it(
    'CancelExecution from a second client: a synchronous Execute (new, named, upgrade, attached) answers its caller OUTCOME_ABORTED and keeps nothing; a fresh dedicated isolate goes at once',
    // catches: a cancel by id not counted; a cancelled synchronous run left listed; CancelExecution answering before the run is DONE
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0, 1], ending: 'ok', name: 0, replace: false },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'new', mode: 'isolate', name: null }, triggers: [1], body: 'loop', early: false, spinMs: 1 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'new', mode: 'shared', name: 0 }, triggers: [2], body: 'hang', early: false, spinMs: 1 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'new', mode: 'isolate', name: 1 }, triggers: [2], body: 'hang', early: true, spinMs: 1 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'live', pick: 0 }, triggers: [2], body: 'loop', early: false, spinMs: 1 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'live', pick: 0 }, triggers: [2], body: 'spin', early: false, spinMs: 6 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: true, target: { kind: 'new', mode: 'isolate', name: 0 }, triggers: [1], body: 'spin', early: true, spinMs: 3 }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'execute', background: true, target: { kind: 'live', pick: 0 }, triggers: [1], body: 'hang', early: false, spinMs: 1 }, queued: false, sibling: null },
      { op: 'cancelDone', pick: 0, what: 'ended' },
    ]),
  );

  it(
    'CancelExecution of QUEUED runs: ended ABORTED before they started, no interpreter made; a run queued behind them runs normally',
    // catches: the same three, while QUEUED
    replay([
      { op: 'register', mode: 'isolate', trigger: 0, bad: false },
      { op: 'cancelById', victim: { kind: 'execute', background: false, target: { kind: 'new', mode: 'isolate', name: 1 }, triggers: [0], body: 'hang', early: false, spinMs: 1 }, queued: true, sibling: [1] },
      { op: 'cancelById', victim: { kind: 'execute', background: true, target: { kind: 'live', pick: 0 }, triggers: [2], body: 'spin', early: false, spinMs: 1 }, queued: true, sibling: [2, 2] },
      { op: 'cancelById', victim: { kind: 'trigger', background: false, pick: 0, registerOn: 1, which: 'fanOut' }, queued: true, sibling: null },
      { op: 'cancelById', victim: { kind: 'trigger', background: true, pick: 1, registerOn: 2, which: 'fanOut' }, queued: true, sibling: [0] },
    ]),
  );

  it(
    'CancelExecution of a Trigger: the whole fan-out, or one handler run (hanging, or spinning on after the cancel, its interpreter released right after); the others commit',
    // catches: a fan-out's cancel not reaching its handler runs
    replay([
      { op: 'execute', mode: 'shared', triggers: [0, 0], ending: 'ok', name: null, replace: false },
      { op: 'register', mode: 'isolate', trigger: 0, bad: false },
      { op: 'cancelById', victim: { kind: 'trigger', background: false, pick: 0, registerOn: 0, which: 'fanOut' }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'trigger', background: true, pick: 1, registerOn: 1, which: 'handler' }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'trigger', background: false, pick: 2, registerOn: 1, which: 'handlerSpin' }, queued: false, sibling: null },
      { op: 'cancelById', victim: { kind: 'trigger', background: true, pick: 0, registerOn: 2, which: 'handlerSpin' }, queued: false, sibling: null },
      { op: 'slowTriggerRelease', pick: 0, by: 'interpreter', end: 'cancelById', registerOn: 2 },
    ]),
  );

  it(
    'runs waiting QUEUED see what changed when they start: a released interpreter (refused late), registrations released under a fan-out (DRAINING on its references, not run), a name taken by a request',
    // catches: a fan-out running the handler of a registration released while it waited; a queued attached run holding a reference
    replay([
      { op: 'execute', mode: 'isolate', triggers: [0, 0], ending: 'ok', name: 0, replace: false },
      { op: 'register', mode: 'shared', trigger: 0, bad: false },
      { op: 'staleQueued', change: { kind: 'execute', background: true, pick: 0, by: 'registration', triggers: [1] } },
      { op: 'staleQueued', change: { kind: 'trigger', background: false, pick: 0, by: 'interpreter', registerOn: 2 } },
      { op: 'staleQueued', change: { kind: 'trigger', background: true, pick: 0, by: 'registration', registerOn: 2 } },
      { op: 'staleQueued', change: { kind: 'execute', background: false, pick: 0, by: 'interpreter', triggers: [1] } },
      { op: 'staleQueued', change: { kind: 'name', name: 1, mode: 'shared', triggers: [1], rival: { mode: 'isolate', triggers: [2] } } },
    ]),
  );

  /*
   * Found by the model with background runs: two concurrent upgrades of a held name, one
   * registering a handler (A), one registering nothing (B), B committing last. B read the old
   * holder when its commit started, removed that stale holder from the store and then released A
   * in memory only: A's recipe kept the name in the store (the plain Execute below was
   * ALREADY_EXISTS, and a restart brought A back). Upgrades of one name now commit one at a
   * time. The race goes this way most of the time (both runs are trivial shared-mode scripts);
   * the round is repeated so that it comes up.
   */
  it(
    'two concurrent upgrades of a held name, the one registering nothing last: the name is free, and a plain Execute of it succeeds',
    replay([
      { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: 0, replace: false },
      ...Array.from({ length: 5 }, (): Cmd[] => [
        { op: 'upgradeRace', name: 0, a: { mode: 'shared', triggers: [0] }, b: { mode: 'shared', triggers: [] } },
        { op: 'execute', mode: 'shared', triggers: [0], ending: 'ok', name: 0, replace: false },
      ]).flat(),
    ]),
  );

  it(
    'pause, resume and a memory bomb: a paused handler is not run by a Trigger, so the bomb goes in by an attached Execute; pausing moves no reference',
    // found by the model once it paused: the harness sent the bomb through a Trigger of a paused handler
    replay([
      { op: 'startExecute', target: { kind: 'new', mode: 'isolate', name: null, replace: false }, triggers: [0], ending: 'ok', peek: false },
      { op: 'pause', resume: false, by: 'registration', target: { kind: 'live', pick: 0 }, trigger: 0 },
      { op: 'trigger', trigger: 0, action: 'fast', registerOn: 1 },
      { op: 'pause', resume: true, by: 'trigger', target: { kind: 'unknown' }, trigger: 0 },
      { op: 'pause', resume: false, by: 'interpreter', target: { kind: 'live', pick: 0 }, trigger: 0 },
      { op: 'oom', target: { kind: 'live', pick: 0, via: 'trigger' } },
      { op: 'release', by: 'registration', target: { kind: 'live', pick: 0 } },
    ]),
  );
});
