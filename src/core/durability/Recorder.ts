import type { RunTuple } from '../../sandbox/Sandbox';
import type { Tracing } from '../../tracing/Tracing';
import { AlreadyExistsError, IllegalStateError, NotFoundError, ResourceExhaustedError, UnavailableError } from '../errors';
import { newStepId } from '../ids';
import type { Interpreter } from '../Interpreter';
import type { Interpreters } from '../Interpreters';
import type { NameTable } from '../NameTable';
import type { Registration } from '../Registration';
import type { RegistrationIndex } from '../RegistrationIndex';
import type { TenantLedger } from '../TenantLedger';
import type { BrokenRecipe, CoreLogger, ReleaseResult, RunReport } from '../types';
import { NameTakenError, storedSpec, type InterpreterRecipe, type RecipeStep, type RecipeStore } from './RecipeStore';

/** What the recorder knows of one interpreter's recipe. */
interface RecipeState {
  /** Its recipe is in the store (it holds, or held, registrations there). */
  stored: boolean;
  /** The steps it ran before its recipe was stored (then the store has them). */
  steps: RecipeStep[];
  /** The ids of every step it ran (replayed or live), so a replica replays only the others. */
  stepIds: Set<string>;
}

/** A step as the caller knows it: the recorder gives it its id and what the run registered. */
export type StepBase = Omit<RecipeStep, 'id' | 'registrations'>;

export interface RecorderDeps {
  store?: RecipeStore;
  interpreters: Interpreters;
  index: RegistrationIndex;
  names: NameTable;
  ledger: TenantLedger;
  logger?: CoreLogger;
  /** A traced request's store write is a span (`isogear.store.commit`). */
  tracing?: Tracing;
}

/**
 * Durability's write side, a layer above the core: it commits a run's registrations once their
 * step is stored (the recipe is created with the first registration, appended to after), stores
 * releases before they happen here, and runs the store work of each interpreter in order. It
 * keeps what it knows of each interpreter's recipe beside the interpreter, never in it. Without
 * a store it commits at once and stores nothing.
 */
export class Recorder {
  private readonly recipes = new WeakMap<Interpreter, RecipeState>();
  /** Store work per interpreter, in order (see serial). */
  private readonly chains = new Map<string, Promise<void>>();
  private readonly brokenRecipes = new Map<string, BrokenRecipe>();
  private failures = 0;

  constructor(private readonly deps: RecorderDeps) {}

  get store(): RecipeStore | undefined {
    return this.deps.store;
  }

  /** Changes the store refused (each answered UNAVAILABLE). */
  get storeWriteFailures(): number {
    return this.failures;
  }

  isStored(interp: Interpreter): boolean {
    return this.recipes.get(interp)?.stored ?? false;
  }

  setStored(interp: Interpreter, stored: boolean): void {
    this.state(interp).stored = stored;
  }

  /** Whether `interp` ran (or replayed) step `stepId` already. */
  ran(interp: Interpreter, stepId: string): boolean {
    return this.recipes.get(interp)?.stepIds.has(stepId) ?? false;
  }

  /** Once the recipe is stored, the store has the steps: only their ids stay here (sources can be large). */
  noteStep(interp: Interpreter, step: RecipeStep): void {
    const s = this.state(interp);
    if (!s.stored) s.steps.push(step);
    s.stepIds.add(step.id);
  }

  /** Stored interpreters that could not be rebuilt here (they stay stored). */
  broken(): BrokenRecipe[] {
    return [...this.brokenRecipes.values()];
  }

  noteBroken(recipe: InterpreterRecipe, reason: string): void {
    this.brokenRecipes.set(recipe.interpreterId, { interpreterId: recipe.interpreterId, tenant: recipe.tenant, name: recipe.name, reason });
    this.deps.logger?.error({ interpreterId: recipe.interpreterId, tenant: recipe.tenant, name: recipe.name, reason }, 'stored interpreter is broken: it could not be rebuilt');
  }

  clearBroken(interpreterId: string): void {
    this.brokenRecipes.delete(interpreterId);
  }

  /**
   * A handler run (a Trigger's, a schedule's or a consumer's) that succeeded and registered: its
   * step is committed like any run's. A refusal (quota, store) turns the run's report into a
   * failure that says why; nothing of it is kept.
   */
  async commitHandlerRun(interp: Interpreter, report: RunReport, tuple: RunTuple | undefined, base: StepBase): Promise<void> {
    if (report.outcome !== 'succeeded' || !tuple || tuple.registrations.length === 0) return;
    await this.commitStep(interp, tuple, report.executionId, base).catch((err: unknown) => {
      report.outcome = 'failed';
      report.result = null;
      report.error = { name: err instanceof ResourceExhaustedError ? 'ResourceExhaustedError' : 'StoreError', message: err instanceof Error ? err.message : String(err), stack: '' };
    });
  }

  /**
   * Commits a finished run's registrations (RegistrationIndex.commit); with a store, once its
   * step is stored. What would pass the tenant's registrations quota is refused
   * (ResourceExhaustedError) and none of it kept. The step is stored (the step is created with the interpreter's recipe, or appended to it). When
   * nothing durable changes the commit happens before this returns, in the caller's synchronous
   * step; otherwise once the store has it. Rejects, with nothing kept, when the store refuses.
   * `replaceName`: an upgrade taking that name; `after` runs in the same synchronous step as the
   * commit (the upgrade's swap).
   *
   * With a store, the upgrades of one name commit one at a time: each reads the name's holder
   * when its turn comes, so the store and the name table move together. (Concurrent upgrades
   * once read the same old holder at the start: one that registered nothing then removed that
   * stale holder from the store and, by its swap, released in memory only the interpreter the
   * other had just stored under the name, which came back, name and all, at the next restart.)
   */
  commitStep(interp: Interpreter, tuple: RunTuple, execId: string, base: StepBase, replaceName?: string, after?: () => void): Promise<Registration[]> {
    if (replaceName === undefined || !this.deps.store) return this.commitStepNow(interp, tuple, execId, base, replaceName, after);
    return this.serial(`name:${interp.tenant}/${replaceName}`, () => this.commitStepNow(interp, tuple, execId, base, replaceName, after));
  }

  private async commitStepNow(interp: Interpreter, tuple: RunTuple, execId: string, base: StepBase, replaceName?: string, after?: () => void): Promise<Registration[]> {
    const { store, index, names, ledger } = this.deps;
    const overQuota = tuple.registrations.length > 0 ? ledger.registrationRefusal(interp.tenant, tuple.registrations.length) : undefined;
    if (overQuota) {
      interp.abandonRun(execId);
      throw overQuota;
    }
    const step: RecipeStep = {
      ...base,
      id: newStepId(),
      registrations: tuple.registrations.map(storedSpec),
    };
    const n = step.registrations.length;
    const oldHolder = replaceName ? names.holder(interp.tenant, replaceName) : undefined;
    const oldStored = oldHolder !== undefined && this.isStored(oldHolder);
    if (!store || (!this.isStored(interp) && n === 0 && !oldStored)) {
      const out = index.commit(interp, tuple, execId);
      if (store && interp.accepting) this.noteStep(interp, step);
      after?.();
      return out;
    }
    ledger.countRegistrations(interp.tenant, n); // held while the step is written, so a concurrent request sees the quota used
    return this.serial(interp.id, async () => {
      if (!interp.accepting) {
        // released (or failed) while this waited its turn: nothing of it is kept, nor stored
        ledger.countRegistrations(interp.tenant, -n);
        const out = index.commit(interp, tuple, execId);
        after?.();
        return out;
      }
      let created = false;
      let replaced: string | undefined;
      try {
        if (this.isStored(interp)) await this.write('append', n, () => store.append(interp.id, step));
        else if (n > 0) {
          replaced = (await this.write('create', n, () => store.create(this.recipeOf(interp, [...this.state(interp).steps, step], replaceName ?? interp.name), replaceName !== undefined))).replaced;
          created = true;
          const s = this.state(interp);
          s.stored = true;
          s.steps.length = 0;
        } else if (oldHolder && this.isStored(oldHolder)) {
          // an upgrade that registers nothing: the old holder of the name goes, and nothing replaces it
          await this.write('remove', 0, () => store.remove(oldHolder.id));
          this.setStored(oldHolder, false);
        }
      } catch (err) {
        ledger.countRegistrations(interp.tenant, -n);
        interp.abandonRun(execId);
        throw err instanceof NameTakenError
          ? new AlreadyExistsError(`an interpreter named "${err.interpreterName}" already exists; set replace to upgrade it`)
          : this.storeFailure(err, 'the registrations');
      }
      ledger.countRegistrations(interp.tenant, -n);
      const out = index.commit(interp, tuple, execId);
      if (out.length < n) {
        // stored, but the interpreter stopped taking registrations meanwhile (its isolate died)
        this.unstore(interp, created, step.registrations.map((r) => r.id));
      } else this.noteStep(interp, step);
      after?.();
      // another server's interpreter held the name: it went from the store with this step
      const other = replaced && replaced !== oldHolder?.id ? this.deps.interpreters.get(replaced) : undefined;
      if (other) this.dropUnstored(other);
      return out;
    });
  }

  /**
   * A rollback's commit. `interp` replayed a version's steps (`version.steps`, its registrations
   * committed in its sandbox, none in the index yet): its whole recipe is stored under the name,
   * replacing the holder there (kept as a version), and then, in one synchronous step, `makeLive`
   * makes its `live` registrations live and the name moves to it, the old holder's registrations
   * released (it drains). Runs in the name's turn, as an upgrade's commit does. Rejects, with
   * nothing changed, over the tenant's registrations quota, when the interpreter stopped, or when
   * the store refuses. Resolves with the registrations made live and the version the store gave.
   */
  commitVersion(
    interp: Interpreter,
    version: Pick<InterpreterRecipe, 'name' | 'steps' | 'released' | 'paused' | 'rolledBackFrom'>,
    live: number,
    makeLive: () => Registration[],
  ): Promise<{ registrations: Registration[]; version?: number }> {
    const { store, names, ledger } = this.deps;
    if (!store) throw new IllegalStateError('a rollback needs a recipe store');
    return this.serial(`name:${interp.tenant}/${version.name}`, () =>
      this.serial(interp.id, async () => {
        const overQuota = ledger.registrationRefusal(interp.tenant, live);
        if (overQuota) throw overQuota;
        if (!interp.accepting) throw new UnavailableError(`interpreter ${interp.id} stopped (${interp.state.toUpperCase()}) before the rollback was stored; nothing changed`);
        const oldHolder = names.holder(interp.tenant, version.name);
        const recipe: InterpreterRecipe = { ...this.recipeOf(interp, version.steps, version.name), released: version.released, paused: version.paused, rolledBackFrom: version.rolledBackFrom };
        ledger.countRegistrations(interp.tenant, live); // held while it is written, as a step's are
        let stored: { replaced?: string; version?: number };
        try {
          stored = await this.write('create', live, () => store.create(recipe, true));
        } catch (err) {
          throw this.storeFailure(err, 'the rollback');
        } finally {
          ledger.countRegistrations(interp.tenant, -live);
        }
        const s = this.state(interp);
        s.stored = true;
        s.steps.length = 0;
        for (const step of version.steps) s.stepIds.add(step.id);
        const made = makeLive();
        if (made.length < live) {
          // stored, but the interpreter stopped meanwhile (its isolate died): as an upgrade's step
          // then, its recipe goes again, and the old holder, replaced in the store, goes here too
          this.unstore(interp, true, []);
          names.swap(version.name, interp);
          throw new UnavailableError(`interpreter ${interp.id} stopped (${interp.state.toUpperCase()}) while the rollback was stored; "${version.name}" has no current version now`);
        }
        names.swap(version.name, interp);
        const other = stored.replaced && stored.replaced !== oldHolder?.id ? this.deps.interpreters.get(stored.replaced) : undefined;
        if (other) this.dropUnstored(other);
        return { registrations: made, version: stored.version };
      }),
    );
  }

  /**
   * Releases registrations of a stored interpreter: stored first, then gone here (a crash between
   * the two leaves them released after the restore). The registrations may have gone while this
   * waited its turn (another Release, an upgrade): it releases what is there then, and answers as
   * if it had come after the other.
   */
  release(interp: Interpreter, regs: readonly Registration[], byInterpreter: boolean): Promise<ReleaseResult> {
    const store = this.deps.store;
    return this.serial(interp.id, async () => {
      const live = byInterpreter ? [...interp.registrations.values()] : regs.filter((r) => interp.registrations.get(r.id) === r);
      if (live.length === 0) {
        throw new NotFoundError(
          byInterpreter ? `interpreter ${interp.id} holds no registrations to release` : `registration ${regs[0].id} not found (unknown or already released)`,
        );
      }
      if (store && this.isStored(interp)) {
        const all = live.length === interp.registrations.size;
        try {
          if (all) await this.write('remove', live.length, () => store.remove(interp.id));
          else await this.write('release', live.length, () => store.release(interp.id, live.map((r) => r.id)));
        } catch (err) {
          throw this.storeFailure(err, 'the release');
        }
        if (all) {
          this.setStored(interp, false);
          this.clearBroken(interp.id); // a broken one released: nothing of it is left to rebuild
        }
      }
      this.deps.index.release(interp, live);
      return { releasedRegistrationIds: live.map((r) => r.id), interpreter: interp.infoWithHeap(0) };
    });
  }

  /**
   * Pauses (or resumes) those of `regs` still live in `interp` and not so already: stored first
   * when the interpreter is, then changed here in one synchronous step (RegistrationIndex). Runs
   * in the interpreter's store turn, so it orders with its releases and replays. Resolves with
   * the registrations it changed; rejects (UNAVAILABLE), with nothing changed, when the store
   * refuses.
   */
  setPaused(interp: Interpreter, regs: readonly Registration[], paused: boolean): Promise<Registration[]> {
    const { store, index } = this.deps;
    const changing = (): Registration[] => regs.filter((r) => interp.registrations.get(r.id) === r && r.paused !== paused);
    if (!store || !this.isStored(interp)) {
      const now = changing();
      index.setPaused(now, paused);
      return Promise.resolve(now);
    }
    return this.serial(interp.id, async () => {
      const now = changing();
      if (now.length > 0 && this.isStored(interp)) {
        try {
          await this.write(paused ? 'pause' : 'resume', now.length, () => store.setPaused(interp.id, now.map((r) => r.id), paused));
        } catch (err) {
          throw this.storeFailure(err, paused ? 'the pause' : 'the resume');
        }
      }
      index.setPaused(now, paused);
      return now;
    });
  }

  /** Its recipe left the store (another server released or replaced it): it goes here too. */
  dropUnstored(interp: Interpreter): void {
    this.setStored(interp, false);
    this.clearBroken(interp.id);
    this.deps.names.unname(interp);
    this.deps.index.releaseAll(interp);
  }

  /** One write to the store: a span of a traced request. `registrations`: how many it adds or removes. */
  private write<T>(operation: 'append' | 'create' | 'remove' | 'release' | 'pause' | 'resume', registrations: number, work: () => Promise<T>): Promise<T> {
    const tracing = this.deps.tracing;
    if (!tracing?.on) return work();
    return tracing.span('isogear.store.commit', { 'isogear.store.operation': operation, 'isogear.store.registrations': registrations }, work);
  }

  /** Resolves once the store work queued for `interpreterId` so far has finished. */
  settled(interpreterId: string): Promise<void> {
    return this.chains.get(interpreterId) ?? Promise.resolve();
  }

  /** Runs store work of one interpreter in order: its writes, releases and replays never interleave. */
  serial<T>(interpreterId: string, work: () => Promise<T>): Promise<T> {
    const before = this.chains.get(interpreterId) ?? Promise.resolve();
    const next = before.then(work);
    const tail = next.then(
      () => undefined,
      () => undefined,
    );
    this.chains.set(interpreterId, tail);
    void tail.then(() => {
      if (this.chains.get(interpreterId) === tail) this.chains.delete(interpreterId);
    });
    return next;
  }

  /** An UNAVAILABLE for a change the store refused (logged and counted). */
  storeFailure(err: unknown, what: string): UnavailableError {
    const why = err instanceof Error ? err.message : String(err);
    this.deps.logger?.error({ err, store: this.deps.store?.description }, `store: ${what} could not be stored`);
    this.failures += 1;
    return new UnavailableError(`${what} could not be stored, so nothing changed: ${why}; retry when the store is back`, { cause: err });
  }

  /** Undoes a stored step whose registrations could not be kept (best effort, logged). */
  private unstore(interp: Interpreter, created: boolean, ids: string[]): void {
    const store = this.deps.store;
    if (!store) return;
    const undo = created ? store.remove(interp.id) : store.release(interp.id, ids);
    if (created) this.setStored(interp, false);
    undo.catch((err: unknown) => this.deps.logger?.error({ err, interpreterId: interp.id }, 'store: could not undo a step whose registrations were not kept'));
  }

  private recipeOf(interp: Interpreter, steps: RecipeStep[], name: string): InterpreterRecipe {
    return {
      interpreterId: interp.id,
      tenant: interp.tenant,
      name,
      mode: interp.mode,
      memoryMb: interp.dedicatedMemoryMb,
      registrationPrefix: interp.registrationPrefix,
      createdAtMs: interp.createdAt.getTime(),
      steps,
      // registrations exist only once their step is stored: an interpreter not stored yet has released none
      released: [],
      paused: [],
    };
  }

  private state(interp: Interpreter): RecipeState {
    let s = this.recipes.get(interp);
    if (!s) {
      s = { stored: false, steps: [], stepIds: new Set() };
      this.recipes.set(interp, s);
    }
    return s;
  }
}
