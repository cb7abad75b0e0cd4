import type { Reference } from './Reference';
import type { TupleRegistration } from '../sandbox/Sandbox';
import type { RegistrationInfo, RegistrationKind, RegistrationStats, ScriptError } from './types';

/**
 * What a registration is before it is live: as the sandbox reports it (its tuple's form), and as a
 * recipe keeps it. Its kind says what runs its handler: a trigger (gears.register), a cron
 * schedule (gears.schedule: `cron`, `timezone`, '' for UTC) or a Redis stream (gears.consume:
 * `stream`, `group`). A recipe stored before schedules and consumers has no `kind`: a trigger.
 */
export type RegistrationSpec = Omit<TupleRegistration, 'kind'> & { kind?: RegistrationKind };

/** The kind of a spec (a recipe stored before kinds existed holds triggers only). */
export const kindOf = (spec: RegistrationSpec): RegistrationKind => spec.kind ?? 'trigger';

/** What a registration is bound to, for messages and replay checks: its trigger, cron or stream. */
export function describeSource(spec: RegistrationSpec): string {
  switch (kindOf(spec)) {
    case 'schedule':
      return `schedule ${JSON.stringify(spec.cron ?? '')}${spec.timezone ? ` in ${spec.timezone}` : ''}`;
    case 'stream':
      return `stream ${JSON.stringify(spec.stream ?? '')} (group ${spec.group ?? ''})`;
    default:
      return `trigger ${spec.trigger}`;
  }
}

/** What a source adds to a registration's stats (a schedule's skipped ticks, a consumer's position), kept by the source that runs it. */
export type SourceStats = Pick<RegistrationStats, 'skippedTicks' | 'nextRunAt' | 'pendingEntries' | 'lag' | 'lastEntryId' | 'deadLetters'>;

/** A handler bound to a trigger, a schedule or a stream, living in one interpreter, holding one reference on it. */
export class Registration {
  readonly createdAt = new Date();
  runs = 0;
  failures = 0;
  totalTimeMs = 0;
  lastError: ScriptError | undefined;
  lastRunAt: Date | undefined;
  /** Paused (PauseRegistrations): Trigger skips it. Changed only by the Recorder, once stored. */
  paused = false;
  /** Kept by its schedule or consumer. */
  readonly sourceStats: SourceStats = {};
  readonly kind: RegistrationKind;
  /** The trigger bound; '' for a schedule or a consumer. */
  readonly trigger: string;
  readonly description: string;

  constructor(
    /** What it is bound to (its id, kind, trigger, cron or stream). */
    readonly spec: RegistrationSpec,
    readonly seq: number,
    readonly interpreterId: string,
    readonly reference: Reference,
    /** Its interpreter's tenant. */
    readonly tenant: string,
  ) {
    this.kind = kindOf(spec);
    this.trigger = this.kind === 'trigger' ? spec.trigger : '';
    this.description = spec.description;
  }

  get id(): string {
    return this.spec.id;
  }

  recordRun(ok: boolean, wallTimeMs: number, error: ScriptError | undefined): void {
    this.runs += 1;
    this.totalTimeMs += wallTimeMs;
    this.lastRunAt = new Date();
    if (!ok) {
      this.failures += 1;
      this.lastError = error;
    }
  }

  info(broken: boolean): RegistrationInfo {
    return {
      id: this.id,
      kind: this.kind,
      trigger: this.trigger,
      schedule: this.spec.cron ?? '',
      timezone: this.spec.timezone ?? '',
      stream: this.spec.stream ?? '',
      group: this.spec.group ?? '',
      interpreterId: this.interpreterId,
      description: this.description,
      createdAt: this.createdAt,
      stats: {
        runs: this.runs,
        failures: this.failures,
        lastError: this.lastError,
        totalTimeMs: this.totalTimeMs,
        lastRunAt: this.lastRunAt,
        ...this.sourceStats,
      },
      broken,
      paused: this.paused,
    };
  }
}
