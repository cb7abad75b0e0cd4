import type { Reference } from './Reference';
import type { RegistrationInfo, ScriptError } from './types';

/** A handler bound to a trigger, living in one interpreter, holding one reference on it. */
export class Registration {
  readonly createdAt = new Date();
  runs = 0;
  failures = 0;
  totalTimeMs = 0;
  lastError: ScriptError | undefined;
  lastRunAt: Date | undefined;
  /** Paused (PauseRegistrations): Trigger skips it. Changed only by the Recorder, once stored. */
  paused = false;

  constructor(
    readonly id: string,
    readonly seq: number,
    readonly trigger: string,
    readonly interpreterId: string,
    readonly description: string,
    readonly reference: Reference,
    /** Its interpreter's tenant. */
    readonly tenant: string,
  ) {}

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
      trigger: this.trigger,
      interpreterId: this.interpreterId,
      description: this.description,
      createdAt: this.createdAt,
      stats: {
        runs: this.runs,
        failures: this.failures,
        lastError: this.lastError,
        totalTimeMs: this.totalTimeMs,
        lastRunAt: this.lastRunAt,
      },
      broken,
      paused: this.paused,
    };
  }
}
