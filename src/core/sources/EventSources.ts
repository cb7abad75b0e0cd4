import type { Registration } from '../Registration';
import type { SourceBinding } from '../RegistrationIndex';
import type { Scheduler } from './Scheduler';
import type { StreamConsumers } from './StreamConsumers';

/**
 * The registrations that run by themselves: schedules and stream consumers. The index tells it
 * of each one made live, released, paused or resumed; it hands each to the source of its kind.
 */
export class EventSources implements SourceBinding {
  constructor(
    readonly scheduler: Scheduler,
    readonly consumers: StreamConsumers,
  ) {}

  attach(reg: Registration): void {
    if (reg.kind === 'schedule') this.scheduler.attach(reg);
    else if (reg.kind === 'stream') this.consumers.attach(reg);
  }

  detach(reg: Registration): void {
    if (reg.kind === 'schedule') this.scheduler.detach(reg);
    else if (reg.kind === 'stream') this.consumers.detach(reg);
  }

  pausedChanged(reg: Registration): void {
    if (reg.kind === 'schedule') this.scheduler.pausedChanged(reg);
    else if (reg.kind === 'stream') this.consumers.pausedChanged(reg);
  }

  /** How many run here, and their groups' pending entries and lag, each (stream, group) counted once. */
  counters(): { schedules: number; consumers: number; pendingEntries: number; lag: number; redisDown: number } {
    const groups = new Map<string, { pending: number; lag: number }>();
    for (const reg of this.consumers.registrations()) {
      const s = reg.sourceStats;
      groups.set(`${reg.spec.stream ?? ''}\n${reg.spec.group ?? ''}`, { pending: s.pendingEntries ?? 0, lag: s.lag ?? 0 });
    }
    let pendingEntries = 0;
    let lag = 0;
    for (const g of groups.values()) {
      pendingEntries += g.pending;
      lag += g.lag;
    }
    return { schedules: this.scheduler.size, consumers: this.consumers.size, pendingEntries, lag, redisDown: this.consumers.redisDown };
  }

  /** Shutdown begins: no more ticks, no more reads; runs going on finish. */
  async stop(): Promise<void> {
    this.scheduler.stop();
    await this.consumers.stop();
  }
}
