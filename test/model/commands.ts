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
 * How the slow Trigger of a SlowTriggerRelease batch ends: cancelled by the client, past its
 * deadline, timed out, spinning to success (and registering a handler), or spinning into a
 * memory bomb that kills the released registration's dedicated isolate (DRAINING → FAILED).
 */
export type SlowEnd = 'cancel' | 'deadline' | 'timeout' | 'spin' | 'spinRegister' | 'spinBomb';

/** One call of a concurrent batch. */
export type MixOp =
  | { op: 'execute'; mode: Mode; triggers: number[] }
  | { op: 'register'; mode: Mode; trigger: number }
  | { op: 'registerIn'; pick: number; trigger: number }
  | { op: 'executeIn'; pick: number; triggers: number[] }
  | { op: 'releaseReg'; pick: number }
  | { op: 'releaseItp'; pick: number }
  | { op: 'trigger'; trigger: number };

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
  | { op: 'mix'; ops: MixOp[] };

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

const mixOp: fc.Arbitrary<MixOp> = fc.oneof(
  fc.record({ op: fc.constant('execute' as const), mode, triggers: handlers }),
  fc.record({ op: fc.constant('register' as const), mode, trigger }),
  fc.record({ op: fc.constant('registerIn' as const), pick, trigger }),
  fc.record({ op: fc.constant('executeIn' as const), pick, triggers: handlers }),
  fc.record({ op: fc.constant('releaseReg' as const), pick }),
  fc.record({ op: fc.constant('releaseItp' as const), pick }),
  fc.record({ op: fc.constant('trigger' as const), trigger }),
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
      op: fc.constant('slowTriggerRelease' as const),
      pick,
      by,
      end: fc.constantFrom<SlowEnd>('cancel', 'deadline', 'timeout', 'spin', 'spinRegister', 'spinBomb'),
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
      a: fc.record({ mode, triggers: handlers }),
      b: fc.record({ mode, triggers: handlers }),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('mix' as const), ops: fc.array(mixOp, { minLength: 2, maxLength: 4 }) }) },
);

/** ISOGEAR_MAX_INTERPRETERS of a run: mostly out of reach, sometimes small enough to be hit. */
export const maxInterpreters: fc.Arbitrary<number> = fc.oneof({ weight: 3, arbitrary: fc.constant(10_000) }, { weight: 2, arbitrary: fc.constantFrom(2, 3, 4) });

export const commands = (maxLength: number): fc.Arbitrary<Cmd[]> => fc.array(cmd, { minLength: 1, maxLength, size: 'max' });
