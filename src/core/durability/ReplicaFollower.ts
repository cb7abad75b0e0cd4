import type { Interpreters } from '../Interpreters';
import type { Recorder } from './Recorder';
import type { Restorer } from './Restorer';

/**
 * A replica's side of a shared store: when a recipe changed (another server, or this one, wrote
 * it), this server's copy is made to match. New recipes are rebuilt, new steps replayed,
 * released registrations released, removed recipes dropped. It works under the same
 * per-interpreter turn as this server's own writes: its own change can arrive on the follow
 * connection before the write's reply, and replaying it then would run the step twice.
 */
export class ReplicaFollower {
  constructor(
    private readonly interpreters: Interpreters,
    private readonly recorder: Recorder,
    private readonly restorer: Restorer,
    private readonly closed: () => boolean,
  ) {}

  /** Applies the stored recipe of `interpreterId` here (`replacedBy`: the recipe whose upgrade removed it). Idempotent. */
  apply(interpreterId: string, replacedBy?: string): Promise<void> {
    return this.recorder.serial(interpreterId, async () => {
      const store = this.recorder.store;
      if (!store || this.closed()) return;
      const recipe = await store.load(interpreterId);
      const local = this.interpreters.get(interpreterId);
      const stored = local !== undefined && this.recorder.isStored(local);
      if (!recipe) {
        // An upgrade elsewhere removed it: rebuild its successor first, which takes the name and
        // drops this one in the same step as its last commit (never both sets, nor neither).
        // The successor's work never waits on this one's, so this cannot deadlock.
        if (stored && replacedBy && local.name) await this.apply(replacedBy);
        if (local && this.recorder.isStored(local)) this.recorder.dropUnstored(local);
        return;
      }
      if (!local) return this.restorer.rebuild(recipe, 'replica');
      if (!stored || local.tenant !== recipe.tenant) return;
      const hold = local.acquire('execution');
      try {
        if (recipe.name && local.name !== recipe.name) this.restorer.claimName(local, recipe.name);
        if (local.state !== 'failed') {
          const failed = await this.restorer.replaySteps(local, recipe);
          if (failed) this.restorer.breakInterpreter(local, recipe, `its copy here diverged from the stored recipe: ${failed}`);
        }
        this.restorer.applyReleased(local, recipe.released);
        this.restorer.applyPaused(local, recipe.paused);
      } finally {
        hold.release();
      }
    });
  }

  /** Compares every recipe (stored, or held here) again: changes may have been missed. */
  async resync(concurrency = 4): Promise<void> {
    const store = this.recorder.store;
    if (!store) return;
    const ids = new Set((await store.loadAll()).map((r) => r.interpreterId));
    for (const i of this.interpreters.values()) if (this.recorder.isStored(i)) ids.add(i.id);
    const all = [...ids];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < all.length && !this.closed()) await this.apply(all[next++]);
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, all.length)) }, worker));
  }
}
