import fc from 'fast-check';
import { NAMES, TRIGGERS, type Mode } from './model';

/**
 * The commands of the refcount model test, as plain data: fast-check generates and shrinks
 * them, a regression test spells one sequence out literally. Ids do not exist when a sequence is
 * generated, so commands name interpreters and registrations by `pick`, an index taken modulo
 * whatever the model holds when the command runs; triggers and names are indexes into
 * TRIGGERS / NAMES.
 */

/** How a script given to Execute ends after registering its handlers. */
export type Ending = 'ok' | 'throw' | 'loop' | 'hang';

/** A live interpreter (or registration), a disposed one (or a released one), or an id never issued. */
export type Target = { kind: 'live'; pick: number } | { kind: 'gone'; pick: number } | { kind: 'unknown' };

/** What the handlers do when a sequential Trigger runs them. */
export type TriggerAction = 'fast' | 'throw' | 'register' | 'hang' | 'loop';

/**
 * How the slow Trigger of a SlowTriggerRelease batch ends: cancelled by the client (or, from
 * another client, by CancelExecution of its TRIGGER execution picked from ListExecutions), past its
 * deadline, timed out, spinning to success (and registering a handler), or spinning into a
 * memory bomb that kills the released registration's dedicated isolate (DRAINING → FAILED).
 */
export type SlowEnd = 'cancel' | 'cancelById' | 'deadline' | 'timeout' | 'spin' | 'spinRegister' | 'spinBomb';

/**
 * One call of a concurrent batch. The `start…` ones are background runs (StartExecute,
 * StartTrigger): the call answers at once and the batch waits for each with WaitExecution.
 */
export type MixOp =
  | { op: 'execute'; mode: Mode; triggers: number[] }
  | { op: 'register'; mode: Mode; trigger: number }
  | { op: 'registerIn'; pick: number; trigger: number }
  | { op: 'executeIn'; pick: number; triggers: number[] }
  | { op: 'releaseReg'; pick: number }
  | { op: 'releaseItp'; pick: number }
  | { op: 'trigger'; trigger: number }
  | { op: 'startExecute'; mode: Mode; triggers: number[] }
  | { op: 'startExecuteIn'; pick: number; triggers: number[] }
  | { op: 'startTrigger'; trigger: number };

/** Where a StartExecute runs: a new interpreter (named: an upgrade if `replace`), or an existing one. */
export type StartTarget = { kind: 'new'; mode: Mode; name: number | null; replace: boolean } | { kind: 'in'; target: Target };

/**
 * How a run that CancelExecution stops goes on until then: it hangs, spins (its code is stopped
 * only at its timeout, or with its fresh dedicated isolate), or spins briefly, then registers and
 * succeeds, so that the cancel races the run's end (and code cancelled meanwhile goes on to
 * register after its run ended).
 */
export type VictimBody = 'hang' | 'loop' | 'spin';

/**
 * The execution a `cancelById` stops, synchronous (its caller waits on a first client, the
 * cancel comes from a second) or background. An Execute registers `triggers` first. A Trigger
 * fans out to the trigger of the registration `pick` names: `fanOut` cancels the TRIGGER
 * execution (every handler run hangs), `handler` only the HANDLER run of that registration (the
 * others register a handler on `registerOn` and succeed); `handlerSpin` too, but that run spins
 * for a while (its code goes on after the cancel, holding its isolate, and it may end first),
 * and its interpreter is released once the fan-out has answered. `early`: cancel as soon as it
 * is listed RUNNING, possibly while its new interpreter is still being made, rather than once
 * its code runs. `spinMs`: how long a `spin` body spins, and how long after picking it the cancel
 * is sent.
 */
export type Victim =
  | {
      kind: 'execute';
      background: boolean;
      target: { kind: 'new'; mode: Mode; name: number | null } | { kind: 'live'; pick: number };
      triggers: number[];
      body: VictimBody;
      early: boolean;
      spinMs: number;
    }
  | { kind: 'trigger'; background: boolean; pick: number; registerOn: number; which: 'fanOut' | 'handler' | 'handlerSpin' };

export type Cmd =
  /** Execute in a new interpreter, registering one handler per entry of `triggers`; `name`/`replace` upgrade. */
  | { op: 'execute'; mode: Mode; triggers: number[]; ending: Ending; name: number | null; replace: boolean }
  /** Execute attached to an interpreter (`interpreter_id`). */
  | { op: 'executeIn'; target: Target; triggers: number[]; ending: Ending }
  /** Register in a new interpreter; `bad` sends a module whose default export is not a function. */
  | { op: 'register'; mode: Mode; trigger: number; bad: boolean }
  /** Register attached to an interpreter. */
  | { op: 'registerIn'; target: Target; trigger: number }
  | { op: 'trigger'; trigger: number; action: TriggerAction; registerOn: number }
  /** Release one registration or all of an interpreter's; `gone` targets are double releases. */
  | { op: 'release'; by: 'registration' | 'interpreter'; target: Target }
  /** Pause (or resume) one registration, all of an interpreter's, or all bound to a trigger. */
  | { op: 'pause'; resume: boolean; by: 'registration' | 'interpreter' | 'trigger'; target: Target; trigger: number }
  /** Batch: a Trigger whose handlers are slow, and a Release of one of them while they run. */
  | { op: 'slowTriggerRelease'; pick: number; by: 'registration' | 'interpreter'; end: SlowEnd; registerOn: number }
  /**
   * Batch: an Execute (new or attached) cut short by the client, beside an ordinary Trigger. A
   * new one may be named: an upgrade (`replace`) if the name is held, which must change nothing.
   */
  | {
      op: 'cancelExecute';
      target: { kind: 'new'; mode: Mode; name?: number | null } | { kind: 'live'; pick: number };
      triggers: number[];
      body: 'hang' | 'loop';
      how: 'deadline' | 'cancel';
    }
  /**
   * A memory bomb kills a dedicated isolate: of a new interpreter (after registering), or of a
   * live isolate-mode one through an attached Execute or one of its handlers (it goes FAILED).
   */
  | { op: 'oom'; target: { kind: 'new'; triggers: number[] } | { kind: 'live'; pick: number; via: 'execute' | 'trigger' } }
  /** Register whose module never finishes loading: cut short by the client, or by its timeout. */
  | { op: 'slowRegister'; target: { kind: 'new'; mode: Mode } | { kind: 'live'; pick: number }; trigger: number; end: 'deadline' | 'cancel' | 'timeout' }
  /** Batch: upgrade a named interpreter while its handlers run, then Trigger during the drain. */
  | { op: 'upgradeUnderTrigger'; name: number; mode: Mode; triggers: number[]; ending: Ending }
  /** Batch: two concurrent upgrades of one name. */
  | { op: 'upgradeRace'; name: number; a: { mode: Mode; triggers: number[] }; b: { mode: Mode; triggers: number[] } }
  /** Batch: 2–4 ordinary calls at once. */
  | { op: 'mix'; ops: MixOp[] }
  /**
   * StartExecute, then WaitExecution: its effect enters the model once it is DONE. `peek` looks
   * at it on the way (WaitExecution with a short timeout, GetExecution, ListExecutions).
   */
  | { op: 'startExecute'; target: StartTarget; triggers: number[]; ending: Ending; peek: boolean }
  /** StartTrigger, then WaitExecution: checked like a Trigger, its handlers' registrations kept once DONE. */
  | { op: 'startTrigger'; trigger: number; action: TriggerAction; registerOn: number }
  /**
   * Batch: an execution picked from ListExecutions while it runs (or while it is QUEUED: `queued`
   * takes every free run slot first) is cancelled by CancelExecution from a second client; a
   * second cancel must change nothing. `sibling`: a background Execute queued behind it, which
   * must run normally once the slots are free (registering `sibling`).
   */
  | { op: 'cancelById'; victim: Victim; queued: boolean; sibling: number[] | null }
  /**
   * Batch: a run accepted while every run slot is taken (QUEUED), and, before it gets one, a
   * change it must see when it starts. `execute`: its interpreter is released (by one
   * registration or all): it runs, or, its interpreter gone, fails late (a background run
   * OUTCOME_FAILED, a synchronous one FAILED_PRECONDITION); a queued run holds no reference.
   * `trigger`: registrations bound to it are released; the fan-out holds an execution reference
   * per run already (the interpreter DRAINING, not gone) and does not run the released ones.
   * `name`: a synchronous Execute takes the name a background one waits to create.
   */
  | {
      op: 'staleQueued';
      change:
        | { kind: 'execute'; background: boolean; pick: number; by: 'registration' | 'interpreter'; triggers: number[] }
        | { kind: 'trigger'; background: boolean; pick: number; by: 'registration' | 'interpreter'; registerOn: number }
        | { kind: 'name'; name: number; mode: Mode; triggers: number[]; rival: { mode: Mode; triggers: number[] } };
    }
  /**
   * CancelExecution of an execution that is DONE: a kept background one is returned unchanged;
   * an ended synchronous run (or handler run) is NOT_FOUND. Changes nothing.
   */
  | { op: 'cancelDone'; pick: number; what: 'kept' | 'ended' };

const mode = fc.constantFrom<Mode>('shared', 'isolate');
const trigger = fc.nat({ max: TRIGGERS.length - 1 });
const handlers = fc.array(trigger, { maxLength: 3 });
const pick = fc.nat({ max: 99 });
const name = fc.nat({ max: NAMES.length - 1 });
const ending: fc.Arbitrary<Ending> = fc.oneof(
  { weight: 6, arbitrary: fc.constant<Ending>('ok') },
  { weight: 1, arbitrary: fc.constant<Ending>('throw') },
  { weight: 1, arbitrary: fc.constant<Ending>('loop') },
  { weight: 1, arbitrary: fc.constant<Ending>('hang') },
);
const target: fc.Arbitrary<Target> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('live' as const), pick }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('gone' as const), pick }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'unknown' as const }) },
);
const by = fc.constantFrom<'registration' | 'interpreter'>('registration', 'interpreter');

/** The handlers of each side of an upgradeRace (none: an upgrade that only frees the name). */
const raceHandlers = fc.array(trigger, { minLength: 0, maxLength: 3 });

const mixOp: fc.Arbitrary<MixOp> = fc.oneof(
  fc.record({ op: fc.constant('execute' as const), mode, triggers: handlers }),
  fc.record({ op: fc.constant('register' as const), mode, trigger }),
  fc.record({ op: fc.constant('registerIn' as const), pick, trigger }),
  fc.record({ op: fc.constant('executeIn' as const), pick, triggers: handlers }),
  fc.record({ op: fc.constant('releaseReg' as const), pick }),
  fc.record({ op: fc.constant('releaseItp' as const), pick }),
  fc.record({ op: fc.constant('trigger' as const), trigger }),
  fc.record({ op: fc.constant('startExecute' as const), mode, triggers: handlers }),
  fc.record({ op: fc.constant('startExecuteIn' as const), pick, triggers: handlers }),
  fc.record({ op: fc.constant('startTrigger' as const), trigger }),
);

const victim: fc.Arbitrary<Victim> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('execute' as const),
      background: fc.boolean(),
      target: fc.oneof(
        fc.record({ kind: fc.constant('new' as const), mode, name: fc.option(name, { nil: null, freq: 2 }) }),
        fc.record({ kind: fc.constant('live' as const), pick }),
      ),
      triggers: handlers,
      body: fc.constantFrom<VictimBody>('hang', 'hang', 'loop', 'spin'),
      early: fc.boolean(),
      spinMs: fc.constantFrom(1, 3, 6, 10, 20, 60),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('trigger' as const),
      background: fc.boolean(),
      pick,
      registerOn: trigger,
      which: fc.constantFrom<'fanOut' | 'handler' | 'handlerSpin'>('fanOut', 'handler', 'handlerSpin'),
    }),
  },
);

export const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      op: fc.constant('execute' as const),
      mode,
      triggers: handlers,
      ending,
      name: fc.option(name, { nil: null, freq: 2 }),
      replace: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('executeIn' as const), target, triggers: handlers, ending }) },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant('register' as const), mode, trigger, bad: fc.oneof({ weight: 5, arbitrary: fc.constant(false) }, fc.constant(true)) }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('registerIn' as const), target, trigger }) },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('trigger' as const),
      trigger,
      action: fc.constantFrom<TriggerAction>('fast', 'fast', 'throw', 'register', 'hang', 'loop'),
      registerOn: trigger,
    }),
  },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('release' as const), by, target }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('pause' as const),
      resume: fc.boolean(),
      by: fc.constantFrom<'registration' | 'interpreter' | 'trigger'>('registration', 'interpreter', 'trigger'),
      target,
      trigger,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('slowTriggerRelease' as const),
      pick,
      by,
      end: fc.constantFrom<SlowEnd>('cancel', 'cancelById', 'deadline', 'timeout', 'spin', 'spinRegister', 'spinBomb'),
      registerOn: trigger,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('cancelExecute' as const),
      target: fc.oneof(
        fc.record({ kind: fc.constant('new' as const), mode, name: fc.option(name, { nil: null }) }),
        fc.record({ kind: fc.constant('live' as const), pick }),
      ),
      triggers: handlers,
      body: fc.constantFrom<'hang' | 'loop'>('hang', 'loop'),
      how: fc.constantFrom<'deadline' | 'cancel'>('deadline', 'cancel'),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('oom' as const),
      target: fc.oneof(
        fc.record({ kind: fc.constant('new' as const), triggers: handlers }),
        fc.record({ kind: fc.constant('live' as const), pick, via: fc.constantFrom<'execute' | 'trigger'>('execute', 'trigger') }),
      ),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('slowRegister' as const),
      target: fc.oneof(fc.record({ kind: fc.constant('new' as const), mode }), fc.record({ kind: fc.constant('live' as const), pick })),
      trigger,
      end: fc.constantFrom<'deadline' | 'cancel' | 'timeout'>('deadline', 'cancel', 'timeout'),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('upgradeUnderTrigger' as const), name, mode, triggers: handlers, ending }) },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant('upgradeRace' as const),
      name,
      a: fc.record({ mode, triggers: raceHandlers }),
      b: fc.record({ mode, triggers: raceHandlers }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('mix' as const), ops: fc.array(mixOp, { minLength: 2, maxLength: 4 }) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('startExecute' as const),
      target: fc.oneof(
        {
          weight: 2,
          arbitrary: fc.record({ kind: fc.constant('new' as const), mode, name: fc.option(name, { nil: null, freq: 3 }), replace: fc.boolean() }),
        },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('in' as const), target }) },
      ),
      triggers: handlers,
      ending,
      peek: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('startTrigger' as const),
      trigger,
      action: fc.constantFrom<TriggerAction>('fast', 'fast', 'throw', 'register', 'register', 'hang', 'loop'),
      registerOn: trigger,
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('cancelById' as const),
      victim,
      queued: fc.oneof({ weight: 3, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      sibling: fc.option(fc.array(trigger, { minLength: 1, maxLength: 2 }), { nil: null, freq: 2 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('staleQueued' as const),
      change: fc.oneof(
        fc.record({ kind: fc.constant('execute' as const), background: fc.boolean(), pick, by, triggers: handlers }),
        fc.record({ kind: fc.constant('trigger' as const), background: fc.boolean(), pick, by, registerOn: trigger }),
        fc.record({
          kind: fc.constant('name' as const),
          name,
          mode,
          triggers: fc.array(trigger, { minLength: 1, maxLength: 2 }),
          rival: fc.record({ mode, triggers: fc.array(trigger, { minLength: 1, maxLength: 2 }) }),
        }),
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('cancelDone' as const), pick, what: fc.constantFrom<'kept' | 'ended'>('kept', 'kept', 'ended') }) },
);

/** ISOGEAR_MAX_INTERPRETERS of a run: mostly out of reach, sometimes small enough to be hit. */
export const maxInterpreters: fc.Arbitrary<number> = fc.oneof({ weight: 3, arbitrary: fc.constant(10_000) }, { weight: 2, arbitrary: fc.constantFrom(2, 3, 4) });

export const commands = (maxLength: number): fc.Arbitrary<Cmd[]> => fc.array(cmd, { minLength: 1, maxLength, size: 'max' });
