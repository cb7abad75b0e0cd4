import type { Span } from '@opentelemetry/api';
import type { SourceMap } from 'node:module';
import type ivm from 'isolated-vm';
import type { Tracing } from '../tracing/Tracing';
import { CodeCache } from './CodeCache';
import { HOUSEKEEPING_TIMEOUT_MS, type CallTracker } from './tracking';
import type { Language, Transpiler } from './Transpiler';

/** Specifier the per-load driver module imports the user's main module by. */
export const MAIN_SPECIFIER = 'isogear:main';

/**
 * A load ready to evaluate: its driver module, and its link. A main module without imports is
 * linked while the host already sends the run (see ModuleLoader.prepare); `linked` settles when
 * that link is done, and rejects with its error.
 */
export interface PreparedLoad {
  driver: ivm.Module;
  linked: Promise<void>;
}

/** isolated-vm's error for evaluating a module whose link has not run yet. */
export const UNINSTANTIATED = 'Module is uninstantiated';

/** A module could not be resolved: a script failure, reported with this name. */
export class ModuleNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModuleNotFoundError';
  }
}

/**
 * Compiles and caches the ES modules of one interpreter. Each interpreter has its own loader, so
 * its module instances are its own: two interpreters importing different sources under the same
 * specifier never share an instance. Within one interpreter, a specifier imported again with the
 * same source reuses the instance (and its state); with a different source it gets a new one.
 * A specifier a request does not supply falls back to the latest source this interpreter loaded
 * under that name.
 *
 * Every module handle is released explicitly: a load's own two when it is done with them, the
 * imported ones with the interpreter. Until a handle is released its module stays alive in the
 * isolate, and through it the context it was linked in, whatever the isolate's own collector
 * decides; left to the Node.js collector (which sees only a small wrapper), a shared isolate
 * kept disposed interpreters' contexts. Releasing on the Node.js thread is safe only with the
 * module-handles lock scripts/patch-isolated-vm.js adds to isolated-vm.
 */
export class ModuleLoader {
  private readonly instances = new Map<string, Map<string, ivm.Module>>();
  private readonly latest = new Map<string, ivm.Module>();
  /** Main and driver modules of loads still in progress. */
  private readonly loading = new Set<ivm.Module>();
  private released = false;
  /**
   * Links run one at a time per interpreter: isolated-vm refuses to link a module that another
   * linker is linking ("Module is currently being linked by another linker"), which two
   * concurrent loads importing the same cached module would otherwise hit.
   */
  private linking: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly isolate: ivm.Isolate,
    private readonly context: ivm.Context,
    private readonly track: CallTracker,
    private readonly cache?: CodeCache,
    private readonly tracing?: Tracing,
    private readonly transpiler?: Transpiler,
  ) {}

  /**
   * The source maps of the TypeScript modules this interpreter compiled, by the name V8 knows
   * each one under (`specifier#hash`): stacks and messages are mapped back through them.
   */
  readonly sourceMaps = new Map<string, SourceMap>();

  /**
   * Compiles `source` as the main module, links it and its imports against `modules`, and
   * returns a driver module that imports the main module and hands its namespace to the sandbox
   * under `token` once evaluation (top-level await included) has finished. The load's run is
   * made current by the sandbox's `load` call, which the host sends right before evaluating the
   * driver (isolated-vm runs an isolate's calls in order, and nothing runs between two calls), so
   * it is current before any user module's top-level code runs; a per-load "enter" module that
   * the driver imported first used to do this, at the cost of a third compile per load.
   *
   * Fast path: a main module without imports (V8's own list of its module requests, so the test
   * is exact) needs nothing resolved but itself. Its link is started and not waited for: with
   * only modules the resolver returns at once, isolated-vm queues the link's call one microtask
   * after `instantiate` is called, before the caller can send the run, so the link, `load` and
   * the driver's evaluation go to the isolate together: one wait for the isolate less per load.
   * (Sandbox.load evaluates again after the link if isolated-vm ever queued it later.)
   */
  prepare(source: string, modules: Record<string, string>, token: string, language: Language = 'javascript'): Promise<PreparedLoad> {
    if (!this.tracing?.on) return this.prepareLoad(source, modules, token, language);
    return this.tracing.span('isogear.module.load', { 'isogear.module.supplied': 1 + Object.keys(modules).length, 'isogear.language': language }, (span) =>
      this.prepareLoad(source, modules, token, language, span),
    );
  }

  private async prepareLoad(source: string, modules: Record<string, string>, token: string, language: Language, span?: Span): Promise<PreparedLoad> {
    const tokenLiteral = JSON.stringify(token);
    const compiled = await Promise.allSettled([
      this.compileIn(language, source, language === 'typescript' ? 'main.ts' : 'main.js', span),
      // The hand-over stays on line 3: it is the bottom frame of stacks thrown in a default export.
      this.isolate.compileModule(`// isogear: the load's driver\nimport * as ns from ${JSON.stringify(MAIN_SPECIFIER)};\n__isogear_loaded__(${tokenLiteral}, ns);\n`, {
        filename: 'isogear:driver',
      }),
    ].map((p) => this.housekeeping(p)));
    const ok = compiled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (ok.length < compiled.length) {
      for (const m of ok) m.release();
      throw (compiled.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason;
    }
    const [main, driver] = ok;
    if (this.released) {
      for (const m of ok) m.release();
      throw new Error('the interpreter was disposed');
    }
    for (const m of ok) this.loading.add(m);
    const pending = new Map<string, Promise<ivm.Module>>();
    let usedMain = false;
    const resolver = (specifier: string): ivm.Module | Promise<ivm.Module> => {
      if (specifier === MAIN_SPECIFIER && !usedMain) {
        usedMain = true;
        return main;
      }
      let p = pending.get(specifier);
      if (!p) {
        p = this.resolve(specifier, modules, language);
        pending.set(specifier, p);
      }
      return p;
    };
    if (main.dependencySpecifiers.length === 0) {
      // Nothing else is linked, so no other load's link can conflict: no place in `linking`.
      const linked = this.housekeeping(driver.instantiate(this.context, resolver)).then(
        () => this.drop(main),
        (err: unknown) => {
          this.drop(main);
          throw err;
        },
      );
      linked.catch(() => undefined); // the load reports it (Sandbox.load)
      return { driver, linked };
    }
    const linked = this.linking.then(() => this.housekeeping(driver.instantiate(this.context, resolver)));
    this.linking = linked.catch(() => undefined);
    try {
      await linked;
    } catch (err) {
      for (const m of ok) this.drop(m);
      throw err;
    }
    // Linked: the driver's module holds main in the isolate now.
    this.drop(main);
    return { driver, linked: Promise.resolve() };
  }

  /** The load that `driver` came from has finished evaluating: release its handle. */
  finish(driver: ivm.Module): void {
    this.drop(driver);
  }

  /** Releases every module handle this interpreter holds (its context is going away). Idempotent. */
  release(): void {
    this.released = true;
    for (const m of this.loading) m.release();
    this.loading.clear();
    for (const bySource of this.instances.values()) for (const m of bySource.values()) m.release();
    this.instances.clear();
    this.latest.clear();
  }

  /** Compiles a module of the request's language: TypeScript is stripped of its types first, and its source map kept. */
  private async compileIn(language: Language, source: string, specifier: string, span?: Span): Promise<ivm.Module> {
    if (language !== 'typescript') return this.compileUser(source, specifier, span);
    if (!this.transpiler) throw new Error('this server does not take TypeScript');
    const t = this.transpiler.transpile(specifier, source);
    this.sourceMaps.set(t.filename, t.map);
    return this.compileUser(t.code, t.filename, span);
  }

  /**
   * Compiles a module the request supplied, through the server's code cache when it has one.
   * `span`: the load's span, told whether V8 took the cached code (`isogear.code_cache.hit`).
   */
  private async compileUser(source: string, filename: string, span?: Span): Promise<ivm.Module> {
    if (!this.cache?.enabled) {
      span?.setAttribute('isogear.code_cache.hit', false);
      return this.isolate.compileModule(source, { filename });
    }
    const key = CodeCache.key(source);
    const cacheOptions = this.cache.options(key);
    // isolated-vm's compileModule takes the cached-data options (its typings omit them).
    const mod = (await this.isolate.compileModule(source, { filename, ...cacheOptions } as ivm.CompileModuleOptions)) as ivm.Module & {
      cachedData?: ivm.ExternalCopy<ArrayBuffer>;
      cachedDataRejected?: boolean;
    };
    span?.setAttribute('isogear.code_cache.hit', cacheOptions.cachedData !== undefined && !mod.cachedDataRejected);
    if (cacheOptions.cachedData && mod.cachedDataRejected) this.cache.reject(key);
    else if (cacheOptions.produceCachedData && mod.cachedData) this.cache.store(key, mod.cachedData);
    return mod;
  }

  private drop(m: ivm.Module): void {
    if (this.loading.delete(m)) m.release();
  }

  private housekeeping<T>(p: Promise<T>): Promise<T> {
    return this.track(p, HOUSEKEEPING_TIMEOUT_MS);
  }

  private async resolve(specifier: string, modules: Record<string, string>, language: Language): Promise<ivm.Module> {
    const source = Object.prototype.hasOwnProperty.call(modules, specifier) ? modules[specifier] : undefined;
    if (source === undefined) {
      const known = this.latest.get(specifier);
      if (known) return known;
      const offered = Object.keys(modules);
      throw new ModuleNotFoundError(
        `Cannot find module "${specifier}": it is not in the request's modules map` +
          (offered.length > 0 ? ` (which has ${offered.map((s) => `"${s}"`).join(', ')})` : ' (which is empty)'),
      );
    }
    let bySource = this.instances.get(specifier);
    if (!bySource) {
      bySource = new Map();
      this.instances.set(specifier, bySource);
    }
    // (the same text as JavaScript and as TypeScript are two modules)
    const key = language === 'typescript' ? `\u0000ts\u0000${source}` : source;
    let mod = bySource.get(key);
    if (!mod) {
      mod = await this.housekeeping(this.compileIn(language, source, specifier));
      if (this.released) {
        mod.release();
        throw new Error('the interpreter was disposed');
      }
      bySource.set(key, mod);
    }
    this.latest.set(specifier, mod);
    return mod;
  }
}
