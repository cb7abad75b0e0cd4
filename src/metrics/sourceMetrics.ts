import { Counter, Gauge, type Registry } from 'prom-client';
import type { ManagerCounters } from '../core/types';

const ENTRY_RESULTS = ['acknowledged', 'retried', 'dead_letter'] as const;

/**
 * The metrics of schedules and stream consumers: what they count as it happens (skipped ticks,
 * entries by result, the events Redis answering) and what the manager reports at each scrape
 * (how many run here, consumer groups' pending entries and lag). Every series exists, at 0,
 * from the first scrape.
 */
export class SourceMetrics {
  private readonly skipped: Counter<string>;
  private readonly entries: Counter<string>;
  private readonly redisErrors: Counter<string>;

  constructor(registers: Registry[], read: () => ManagerCounters | undefined) {
    this.skipped = new Counter({
      name: 'isogear_schedule_ticks_skipped_total',
      help: 'Schedule ticks not run because the previous run of the schedule was still going.',
      registers,
    });
    this.skipped.inc(0);
    this.entries = new Counter({
      name: 'isogear_stream_entries_total',
      help: 'Stream entries handled by consumers, by result: acknowledged (the handler succeeded), retried (it failed; the entry stays pending), dead_letter (it failed ISOGEAR_STREAM_MAX_DELIVERIES times and was acknowledged without success).',
      labelNames: ['result'],
      registers,
    });
    for (const result of ENTRY_RESULTS) this.entries.inc({ result }, 0);
    this.redisErrors = new Counter({
      name: 'isogear_events_redis_errors_total',
      help: 'Calls of stream consumers to the events Redis that failed (each is retried with backoff).',
      registers,
    });
    this.redisErrors.inc(0);
    new Gauge({
      name: 'isogear_events_redis_up',
      help: '0 while any stream consumer\'s last call to the events Redis went unanswered (it backs off and retries), else 1 (also while no consumer runs).',
      registers,
      collect() {
        // (derived at each scrape: a consumer released while Redis was down leaves nothing behind)
        this.set((read()?.sources.redisDown ?? 0) > 0 ? 0 : 1);
      },
    });
    new Gauge({
      name: 'isogear_sources',
      help: 'Registrations running by themselves on this server, by kind: schedule (gears.schedule) and stream (gears.consume consumers).',
      labelNames: ['kind'],
      registers,
      collect() {
        const c = read();
        this.set({ kind: 'schedule' }, c?.sources.schedules ?? 0);
        this.set({ kind: 'stream' }, c?.sources.consumers ?? 0);
      },
    });
    new Gauge({
      name: 'isogear_stream_pending_entries',
      help: 'Entries delivered to the consumer groups this server reads and not acknowledged yet (each group once).',
      registers,
      collect() {
        this.set(read()?.sources.pendingEntries ?? 0);
      },
    });
    new Gauge({
      name: 'isogear_stream_lag_entries',
      help: 'Entries in the streams this server reads that their consumer groups have not read yet (each group once): the consumers\' lag.',
      registers,
      collect() {
        this.set(read()?.sources.lag ?? 0);
      },
    });
  }

  readonly skip = (): void => {
    this.skipped.inc();
  };

  readonly entry = (result: (typeof ENTRY_RESULTS)[number]): void => {
    this.entries.inc({ result });
  };

  readonly redisError = (): void => {
    this.redisErrors.inc();
  };
}
