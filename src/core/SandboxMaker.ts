import { BootstrapCompiler } from '../sandbox/bootstrapScript';
import type { Tracing } from '../tracing/Tracing';
import type { CodeCache } from '../sandbox/CodeCache';
import type { Transpiler } from '../sandbox/Transpiler';
import { Sandbox } from '../sandbox/Sandbox';
import { newExecutionId, newToken } from './ids';
import type { IsolateHost } from './IsolateHost';
import { TRIGGER_PATTERN } from './names';
import { sourceCheck } from './sources/rules';

/** A warm sandbox's internal load runs under this timeout. */
const WARM_UP_TIMEOUT_MS = 1000;

export interface SandboxLimits {
  maxLogBytes: number;
  maxValueBytes: number;
  maxRegistrationsPerInterpreter: number;
  /** A traced run's module load and compile is a span (`isogear.module.load`). */
  tracing?: Tracing;
  /** Set when gears.consume has a Redis to read. */
  streams?: unknown;
}

/**
 * Makes interpreters' contexts: a V8 context on a host with the bootstrap installed, set up with
 * the server's limits and code cache. Both placements and the warm pool make them here.
 */
export class SandboxMaker {
  /** The bootstrap's V8 code cache, for every isolate this server makes. */
  private readonly bootstrap = new BootstrapCompiler();
  /** gears.schedule's and gears.consume's check, the same for every interpreter. */
  private readonly checkSource: (kind: string, a: string, b: string) => string;

  constructor(
    private readonly limits: SandboxLimits,
    private readonly codeCache: CodeCache,
    private readonly transpiler?: Transpiler,
  ) {
    this.checkSource = sourceCheck(limits.streams !== undefined);
  }

  /** A context with the bootstrap installed, for interpreter `id` on `host`. */
  make(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox> {
    return Sandbox.create(
      host.isolate,
      {
        track: host.track,
        interpreterId: id,
        registrationPrefix,
        maxLogChars: this.limits.maxLogBytes,
        triggerPattern: TRIGGER_PATTERN,
        maxResultChars: this.limits.maxValueBytes,
        maxRegistrations: this.limits.maxRegistrationsPerInterpreter,
        codeCache: this.codeCache,
        transpiler: this.transpiler,
        tracing: this.limits.tracing,
        checkSource: this.checkSource,
      },
      host.bootstrapScript(this.bootstrap.compile),
    );
  }

  /**
   * A sandbox for the warm pool, with one internal load run through it: the first load in a fresh
   * isolate compiles the bootstrap's functions and warms V8's caches (about 0.6 ms of a first
   * request's time); here it is spent before anyone waits. The run leaves nothing behind: no
   * registrations, no pending run, nothing a script can reach.
   */
  makeWarm(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox> {
    // a request's run may set off the refill: its warm-up is not part of that request's trace
    return this.limits.tracing ? this.limits.tracing.outside(() => this.warmUp(host, id, registrationPrefix)) : this.warmUp(host, id, registrationPrefix);
  }

  private async warmUp(host: IsolateHost, id: string, registrationPrefix: string): Promise<Sandbox> {
    const sandbox = await this.make(host, id, registrationPrefix);
    try {
      const token = newToken();
      const prepared = await sandbox.prepare('export default 0;', {}, token);
      const tuple = await sandbox.load(prepared, newExecutionId(), token, 'execute', '', '', '', WARM_UP_TIMEOUT_MS);
      if (!tuple.ok) throw new Error(`the warm-up run failed: ${tuple.error?.message ?? tuple.code}`);
      return sandbox;
    } catch (err) {
      sandbox.release();
      throw err;
    }
  }
}
