import { AsyncLocalStorage } from 'node:async_hooks';
import { createContextKey, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type TextMapGetter, type TextMapPropagator, type Tracer } from '@opentelemetry/api';

/**
 * The server's spans, for every layer (api, core, sandbox) through one small interface.
 *
 * - Off (no OTLP endpoint): `start` returns undefined and `within` calls straight through, so a
 *   call site costs one property read and nothing is allocated.
 * - On: each server has its own tracer and its own current-span store (an AsyncLocalStorage),
 *   never the process-wide OpenTelemetry globals, so two servers in one process (the tests) do
 *   not see each other's spans, and an application embedding the core keeps its own setup.
 * - A span below the RPC starts only inside a trace an RPC began: restoring stored interpreters
 *   at start-up, following other replicas and the warm pool make no traces of their own.
 *
 * No span or attribute carries script source, arguments, payloads, results or script messages:
 * only ids, names, kinds, counts, outcomes and durations.
 *
 * Times: the SDK would stamp each span's start with Date.now(), in whole milliseconds, so a
 * 20 µs queue wait could show up to a millisecond away from the run it preceded. Here each call's
 * spans share one anchor, taken when the call arrives (wall clock minus the monotonic clock): a
 * span starts and ends at anchor + performance.now(), so the spans of one call nest and order to
 * the microsecond, and none drifts from the wall clock by more than the call lasts. End spans
 * with `end`, not `span.end()`.
 */
/** Reads a W3C context from a plain record (a stream entry's fields). */
const RECORD_GETTER: TextMapGetter<Record<string, string>> = {
  get: (carrier, key) => (Object.prototype.hasOwnProperty.call(carrier, key) ? carrier[key] : undefined),
  keys: (carrier) => Object.keys(carrier),
};

export class Tracing {
  /** Tracing off: what every part uses unless the server configured an exporter. */
  static readonly off = new Tracing(undefined, undefined);

  private readonly current = new AsyncLocalStorage<Context>();

  constructor(
    private readonly tracer: Tracer | undefined,
    private readonly propagator: TextMapPropagator | undefined,
  ) {}

  get on(): boolean {
    return this.tracer !== undefined;
  }

  /**
   * A server span for an incoming call, child of the caller's span when its metadata carries a
   * W3C `traceparent` (and `tracestate`); `fn` runs with it current.
   */
  serve<C, T>(name: string, carrier: C, getter: TextMapGetter<C>, attributes: Attributes, fn: (span: Span | undefined) => T): T {
    if (!this.tracer) return fn(undefined);
    const remote = this.propagator ? this.propagator.extract(ROOT_CONTEXT, carrier, getter) : ROOT_CONTEXT;
    const parent = remote.setValue(ANCHOR, Date.now() - performance.now());
    const span = this.tracer.startSpan(name, { kind: SpanKind.SERVER, attributes, startTime: clock(parent) }, parent);
    return this.current.run(trace.setSpan(parent, span), () => fn(span));
  }

  /**
   * A span that starts work no call asked for (a schedule's tick, a stream entry): a root, or the
   * child of the W3C context `carrier` holds (a stream entry's `traceparent` field); `fn` runs with it current.
   */
  begin<T>(name: string, kind: 'internal' | 'consumer', carrier: Record<string, string> | undefined, attributes: Attributes, fn: (span: Span | undefined) => T): T {
    if (!this.tracer) return fn(undefined);
    const remote = carrier && this.propagator ? this.propagator.extract(ROOT_CONTEXT, carrier, RECORD_GETTER) : ROOT_CONTEXT;
    const parent = remote.setValue(ANCHOR, Date.now() - performance.now());
    const span = this.tracer.startSpan(name, { kind: kind === 'consumer' ? SpanKind.CONSUMER : SpanKind.INTERNAL, attributes, startTime: clock(parent) }, parent);
    return this.current.run(trace.setSpan(parent, span), () => fn(span));
  }

  /** Ends `span` now, on its call's clock. */
  end(span: Span): void {
    span.end(clock(this.current.getStore()));
  }

  /** A span under the current one, not yet current itself (see `within`); undefined when off or outside a trace. */
  start(name: string, attributes?: Attributes): Span | undefined {
    if (!this.tracer) return undefined;
    const parent = this.current.getStore();
    if (!parent) return undefined;
    return this.tracer.startSpan(name, { attributes, startTime: clock(parent) }, parent);
  }

  /** Runs `fn` with `span` current: the spans it starts (and those of what it awaits) are the span's children. */
  within<T>(span: Span | undefined, fn: () => T): T {
    if (!span) return fn();
    return this.current.run(trace.setSpan(this.current.getStore() ?? ROOT_CONTEXT, span), fn);
  }

  /**
   * Runs `fn` outside any trace: work a request merely set off (the warm pool's refills) makes no
   * spans in that request's trace, however long after it runs.
   */
  outside<T>(fn: () => T): T {
    return this.tracer ? this.current.exit(fn) : fn();
  }

  /** A span around `fn`: current while it runs, ended when it settles, marked failed when it throws. */
  span<T>(name: string, attributes: Attributes | undefined, fn: (span: Span | undefined) => Promise<T>): Promise<T> {
    const span = this.start(name, attributes);
    return span ? this.around(span, fn) : fn(undefined);
  }

  private async around<T>(span: Span, fn: (span: Span) => Promise<T>): Promise<T> {
    try {
      return await this.within(span, () => fn(span));
    } catch (err) {
      failed(span, errorType(err));
      throw err;
    } finally {
      this.end(span);
    }
  }
}

/** Where a call's clock is anchored (ms since the epoch at performance.now() = 0), in its context. */
const ANCHOR = createContextKey('isogear clock anchor');

/** Now, in ms since the epoch, on the clock of the call `context` belongs to. */
function clock(context: Context | undefined): number {
  const anchor = context?.getValue(ANCHOR) as number | undefined;
  return (anchor ?? Date.now() - performance.now()) + performance.now();
}

/** Marks a span failed with `type` (an error class or an outcome, never a message a script wrote). */
export function failed(span: Span | undefined, type: string): void {
  if (!span) return;
  span.setAttribute('error.type', type);
  span.setStatus({ code: SpanStatusCode.ERROR });
}

/** What kind of error `err` is, for `error.type`: its class name, never its message. */
export function errorType(err: unknown): string {
  if (err instanceof Error) return err.name || err.constructor.name;
  return typeof err;
}
