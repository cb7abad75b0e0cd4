import type { RunTuple } from '../../sandbox/Sandbox';
import { newToken } from '../ids';
import type { Interpreter } from '../Interpreter';
import type { Interpreters } from '../Interpreters';
import type { NameTable } from '../NameTable';
import { describeSource, type RegistrationSpec } from '../Registration';
import type { RegistrationIndex, RestoredState } from '../RegistrationIndex';
import { invokeWork, loadWork, type Runner } from '../Runner';
import type { CoreLogger, RestoreStatus, RunReport } from '../types';
import { outcomeText } from '../validation';
import type { InterpreterRecipe, RecipeStep } from './RecipeStore';
import type { Recorder } from './Recorder';

export interface RestorerDeps {
  interpreters: Interpreters;
  index: RegistrationIndex;
  names: NameTable;
  runner: Runner;
  recorder: Recorder;
  /** The heap limit of a recipe that does not say (a shared-mode one). */
  defaultMemoryMb: number;
  logger?: CoreLogger;
  closed(): boolean;
}

/**
 * Durability's read side: rebuilds interpreters from their recipes, at start-up (every stored
 * recipe, `concurrency` at a time) and for a replica (one recipe, or the steps of it this server
 * has not run). Each step is replayed in order with the ids it had; a recipe that cannot be
 * replayed is never dropped: its interpreter is listed FAILED with its registrations broken.
 */
export class Restorer {
  private restoring: { total: number; done: number } | undefined;
  private restoredCount = 0;

  constructor(private readonly deps: RestorerDeps) {}

  /**
   * Rebuilds the recipes `load` reads, `concurrency` at a time. Requests wait (restoreProgress)
   * from the moment this is called: none may see the registrations half restored.
   */
  async restore(load: () => Promise<InterpreterRecipe[]>, concurrency: number, onProgress?: (done: number, total: number) => void): Promise<RestoreStatus> {
    const progress = { total: 0, done: 0 };
    this.restoring = progress;
    let recipes: InterpreterRecipe[];
    try {
      recipes = await load();
    } catch (err) {
      this.restoring = undefined;
      throw err;
    }
    progress.total = recipes.length;
    this.deps.logger?.info({ interpreters: recipes.length, concurrency }, 'restore: rebuilding stored interpreters from their recipes');
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < recipes.length && !this.deps.closed()) {
        const recipe = recipes[next++];
        await this.deps.recorder.serial(recipe.interpreterId, () => this.rebuild(recipe, 'restore'));
        progress.done += 1;
        onProgress?.(progress.done, recipes.length);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, recipes.length)) }, worker));
    this.restoring = undefined;
    return this.status();
  }

  /** While the start-up restore runs, how far it is (cheap: asked by every request). */
  progress(): { total: number; done: number } | undefined {
    return this.restoring;
  }

  status(): RestoreStatus {
    return {
      restored: this.restoredCount,
      broken: this.deps.recorder.broken(),
      restoring: this.restoring ? { ...this.restoring } : undefined,
      storeWriteFailures: this.deps.recorder.storeWriteFailures,
    };
  }

  /** Rebuilds one recipe in a fresh interpreter with its stored ids (run under the recipe's serial turn). */
  async rebuild(recipe: InterpreterRecipe, why: 'restore' | 'replica'): Promise<void> {
    const { interpreters, recorder, logger } = this.deps;
    if (this.deps.closed() || interpreters.has(recipe.interpreterId)) return;
    const since = performance.now();
    let interp: Interpreter;
    try {
      interp = await interpreters.create(recipe.mode, recipe.memoryMb || this.deps.defaultMemoryMb, '', recipe.tenant, {
        id: recipe.interpreterId,
        prefix: recipe.registrationPrefix,
      });
    } catch (err) {
      // No interpreter to list it under (the server is full): it stays stored for the next start.
      if (this.deps.closed()) return;
      recorder.noteBroken(recipe, `no interpreter could be created for it: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    recorder.setStored(interp, true);
    interp.createdAt = new Date(recipe.createdAtMs);
    // held through the replay: a step that registers nothing must not dispose it
    const hold = interp.acquire('execution');
    try {
      // the name moves with the last step's commit, in one synchronous step: on a replica that
      // follows an upgrade, a Trigger sees the old holder's handlers or the new ones, never both
      const claim = (): void => {
        if (recipe.name) this.claimName(interp, recipe.name);
      };
      const failed = await this.replaySteps(interp, recipe, claim);
      if (failed) {
        claim();
        this.breakInterpreter(interp, recipe, `restore failed: ${failed}`);
        return;
      }
      this.applyReleased(interp, recipe.released);
      this.applyPaused(interp, recipe.paused);
      this.restoredCount += 1;
      recorder.clearBroken(recipe.interpreterId);
      logger?.debug(
        { interpreterId: interp.id, tenant: interp.tenant, steps: recipe.steps.length, registrations: interp.registrations.size, ms: Math.round(performance.now() - since), why },
        'interpreter rebuilt from its recipe',
      );
    } finally {
      hold.release();
      const store = recorder.store;
      if (interp.registrations.size === 0 && recorder.isStored(interp) && store) {
        // every registration of it was released: nothing to keep
        recorder.setStored(interp, false);
        store.remove(interp.id).catch((err: unknown) => logger?.warn({ err, interpreterId: interp.id }, 'store: could not remove a recipe whose registrations were all released'));
      }
    }
  }

  /** Replays the steps of `recipe` this interpreter has not run, in order; returns why one failed. */
  async replaySteps(interp: Interpreter, recipe: InterpreterRecipe, atLast?: () => void): Promise<string | undefined> {
    const restored: RestoredState = { paused: new Set(recipe.paused), released: new Set(recipe.released) };
    for (let k = 0; k < recipe.steps.length; k++) {
      const step = recipe.steps[k];
      if (this.deps.recorder.ran(interp, step.id)) continue;
      const why = await this.replayStep(interp, step, restored, k === recipe.steps.length - 1 ? atLast : undefined);
      if (why) return `step ${k + 1} of ${recipe.steps.length} (${step.kind}) ${why}`;
    }
    return undefined;
  }

  /** Pauses exactly the stored paused registrations of `interp` and resumes the rest (a replica follows both ways). */
  applyPaused(interp: Interpreter, paused: readonly string[]): void {
    const want = new Set(paused);
    const regs = [...interp.registrations.values()];
    // (setPaused leaves alone those already so)
    this.deps.index.setPaused(regs.filter((r) => want.has(r.id)), true);
    this.deps.index.setPaused(regs.filter((r) => !want.has(r.id)), false);
  }

  /** Releases, here, stored registrations the recipe marks released. */
  applyReleased(interp: Interpreter, released: readonly string[]): void {
    const gone = released.map((id) => interp.registrations.get(id)).filter((r) => r !== undefined);
    if (gone.length > 0) this.deps.index.release(interp, gone);
  }

  /** The name goes to `interp`; a holder here that the store no longer has (it was replaced elsewhere) goes. */
  claimName(interp: Interpreter, name: string): void {
    this.deps.names.claim(interp, name, (old) => this.deps.recorder.dropUnstored(old));
  }

  /**
   * A recipe that cannot be replayed: its interpreter goes FAILED (with `reason`) and lists every
   * registration the recipe holds as broken; it stays in the store, and a Release removes it.
   */
  breakInterpreter(interp: Interpreter, recipe: InterpreterRecipe, reason: string): void {
    interp.fail(reason);
    const released = new Set(recipe.released);
    this.deps.index.addBroken(
      interp,
      recipe.steps.flatMap((step) => step.registrations.filter((r) => !released.has(r.id))),
    );
    this.applyReleased(interp, recipe.released);
    this.applyPaused(interp, recipe.paused);
    this.deps.recorder.noteBroken(recipe, reason);
  }

  /** Replays one step; `onCommit` runs in the same synchronous step as its commit. */
  private async replayStep(interp: Interpreter, step: RecipeStep, restored: RestoredState, onCommit?: () => void): Promise<string | undefined> {
    if (!interp.accepting) return `could not run: interpreter ${interp.id} is ${interp.state.toUpperCase()}`;
    const ids = step.registrations.map((r) => r.id);
    if (step.kind === 'trigger' && !interp.registrations.has(step.handlerId ?? '')) {
      return `could not run: its handler ${step.handlerId ?? ''} is not registered`;
    }
    const work =
      step.kind === 'trigger'
        ? invokeWork(interp, step.handlerId ?? '', step.payloadJson ?? '', step.trigger ?? '', ids, step.eventJson)
        : loadWork(
            interp,
            { kind: step.kind, source: step.source ?? '', modules: step.modules ?? {}, argsJson: step.argsJson, trigger: step.trigger, description: step.description, ids, language: step.language },
            newToken(),
          );
    const run = await this.deps.runner.run({ interp, kind: step.kind, timeoutMs: step.timeoutMs, since: performance.now(), work, replay: true });
    let why: string | undefined;
    try {
      why = this.commitReplay(interp, step, run.report, run.tuple, restored, onCommit);
    } finally {
      run.end();
    }
    if (!why) this.deps.recorder.noteStep(interp, step);
    return why;
  }

  /** Commits a replayed run when it registered exactly what the step first did; returns why not. */
  private commitReplay(
    interp: Interpreter,
    step: RecipeStep,
    r: RunReport,
    tuple: RunTuple | undefined,
    restored: RestoredState,
    onCommit?: () => void,
  ): string | undefined {
    if (r.outcome !== 'succeeded' || !tuple) return `${outcomeText(r.outcome)}: ${r.error ? `${r.error.name}: ${r.error.message}` : 'no result'}`;
    // the same ids, each bound to the same trigger, schedule or stream
    const label = (rs: readonly RegistrationSpec[]): string => `[${rs.map((x) => `${describeSource(x)} as ${x.id}`).join(', ')}]`;
    const got = tuple.registrations.map((x) => `${x.id}\n${describeSource(x)}`).join('\n');
    const want = step.registrations.map((x) => `${x.id}\n${describeSource(x)}`).join('\n');
    if (got !== want) {
      interp.abandonRun(r.executionId);
      return `registered ${label(tuple.registrations)} where it first registered ${label(step.registrations)}`;
    }
    if (this.deps.index.commit(interp, tuple, r.executionId, restored).length !== step.registrations.length) return 'stopped taking registrations';
    onCommit?.();
    return undefined;
  }
}
