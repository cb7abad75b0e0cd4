import type { Cron } from 'croner';
import type { Registration } from '../Registration';
import type { CoreLogger } from '../types';
import type { TickClaims } from './ports';
import { parseCron } from './rules';
import type { SourceRunner } from './SourceRunner';

/** setTimeout's longest delay; a later tick is waited for in steps. */
const MAX_DELAY_MS = 2 ** 31 - 1;
/** How long a run's mark may outlive its time limit should its server die mid-run. */
const RUN_MARK_SLACK_MS = 5000;

interface Job {
  reg: Registration;
  cron: Cron;
  timer?: NodeJS.Timeout;
  /** A run of this schedule is going on this server. */
  running: boolean;
}

export interface SchedulerDeps {
  runner: SourceRunner;
  /** A shared store's claims (each tick runs on one server); none: this server runs every tick. */
  claims?: TickClaims;
  /** The time limit of a run, for how long its mark lives. */
  timeoutMs: number;
  logger?: CoreLogger;
  /** Each tick skipped because the previous run was still going. */
  onSkip?: () => void;
  /** Keeps a run so shutdown can wait for it. */
  track: (run: Promise<unknown>) => void;
}

/**
 * Runs schedules (gears.schedule): one timer per live, unpaused schedule, armed for its next
 * tick. At a tick the run goes through the SourceRunner as `kind="schedule"`; a tick whose
 * previous run is still going is skipped and counted, never queued. A paused schedule has no
 * timer: its missed ticks are not made up when it resumes. With a shared store each tick is
 * claimed first, so one server of the replicas runs it.
 */
export class Scheduler {
  private readonly jobs = new Map<string, Job>();
  private stopped = false;

  constructor(private readonly deps: SchedulerDeps) {}

  get size(): number {
    return this.jobs.size;
  }

  attach(reg: Registration): void {
    if (this.stopped || this.jobs.has(reg.id)) return;
    const job: Job = { reg, cron: parseCron(reg.spec.cron ?? '', reg.spec.timezone ?? ''), running: false };
    this.jobs.set(reg.id, job);
    if (!reg.paused) this.arm(job, Date.now());
  }

  detach(reg: Registration): void {
    const job = this.jobs.get(reg.id);
    if (!job) return;
    this.disarm(job);
    job.cron.stop();
    this.jobs.delete(reg.id);
  }

  pausedChanged(reg: Registration): void {
    const job = this.jobs.get(reg.id);
    if (!job) return;
    this.disarm(job);
    if (!reg.paused && !this.stopped) this.arm(job, Date.now());
  }

  /** No more ticks (shutdown begins); runs going on finish. */
  stop(): void {
    this.stopped = true;
    for (const job of this.jobs.values()) this.disarm(job);
  }

  private disarm(job: Job): void {
    clearTimeout(job.timer);
    job.timer = undefined;
    job.reg.sourceStats.nextRunAt = undefined;
  }

  /** Arms the first tick after `afterMs`. */
  private arm(job: Job, afterMs: number): void {
    const next = job.cron.nextRun(new Date(afterMs));
    if (!next) return;
    job.reg.sourceStats.nextRunAt = next;
    this.wait(job, next.getTime());
  }

  private wait(job: Job, tickMs: number): void {
    const delay = tickMs - Date.now();
    if (delay > MAX_DELAY_MS) {
      job.timer = setTimeout(() => this.wait(job, tickMs), MAX_DELAY_MS);
    } else {
      // (timers may fire a little early: the tick is what was armed, never an earlier one)
      job.timer = setTimeout(() => this.tick(job, tickMs), Math.max(0, delay));
    }
    job.timer.unref();
  }

  private tick(job: Job, tickMs: number): void {
    job.timer = undefined;
    if (this.stopped || job.reg.paused || !this.jobs.has(job.reg.id)) return;
    // the next tick is armed first: the one after this one, or after now when the timer was late
    this.arm(job, Math.max(tickMs, Date.now() - 1));
    const claims = this.deps.claims;
    if (!claims) {
      if (job.running) return this.skip(job);
      this.start(job, tickMs);
      return;
    }
    claims.claim(job.reg.id, tickMs, this.deps.timeoutMs + RUN_MARK_SLACK_MS).then(
      (claim) => {
        if (claim === 'busy') this.skip(job);
        else if (claim === 'won') {
          if (this.stopped || job.reg.paused || !this.jobs.has(job.reg.id)) void claims.finish(job.reg.id, tickMs).catch(() => undefined);
          else this.start(job, tickMs);
        }
      },
      (err: unknown) => this.deps.logger?.warn({ err, registrationId: job.reg.id, tick: new Date(tickMs).toISOString() }, 'schedule: the tick could not be claimed in the shared store; it is not run here'),
    );
  }

  private skip(job: Job): void {
    job.reg.sourceStats.skippedTicks = (job.reg.sourceStats.skippedTicks ?? 0) + 1;
    this.deps.onSkip?.();
  }

  private start(job: Job, tickMs: number): void {
    job.running = true;
    const scheduledAt = new Date(tickMs).toISOString();
    const run = this.deps.runner
      .run({ reg: job.reg, kind: 'schedule', payloadJson: 'null', event: { scheduledAt }, attributes: { 'isogear.schedule.tick': scheduledAt } })
      .catch((err: unknown) => this.deps.logger?.error({ err, registrationId: job.reg.id }, 'schedule: the run failed inside the server'))
      .finally(() => {
        job.running = false;
        if (this.deps.claims) void this.deps.claims.finish(job.reg.id, tickMs).catch((err: unknown) => this.deps.logger?.warn({ err, registrationId: job.reg.id }, 'schedule: the run mark could not be cleared; it expires by itself'));
      });
    this.deps.track(run);
  }
}
