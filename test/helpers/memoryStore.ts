import { NameTakenError, StoreError, type InterpreterRecipe, type RecipeStep, type RecipeStore } from '../../src/core/durability/RecipeStore';

/**
 * A store in this process's memory, for manager tests: it outlives a manager (so a second one
 * restores from it) and can be told to refuse writes. Recipes are copied in and out, as a real
 * store serialises them.
 */
export class MemoryStore implements RecipeStore {
  readonly description = 'memory (test)';
  readonly shared = false;
  /** The next writes fail with StoreError while this is set. */
  failWrites: string | undefined;
  writes = 0;
  private readonly recipes = new Map<string, InterpreterRecipe>();

  private copy<T>(v: T): T {
    return JSON.parse(JSON.stringify(v)) as T;
  }

  private write(): void {
    if (this.failWrites) throw new StoreError(this.failWrites);
    this.writes += 1;
  }

  loadAll(): Promise<InterpreterRecipe[]> {
    return Promise.resolve([...this.recipes.values()].map((r) => this.copy(r)));
  }

  load(id: string): Promise<InterpreterRecipe | undefined> {
    const r = this.recipes.get(id);
    return Promise.resolve(r ? this.copy(r) : undefined);
  }

  create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string }> {
    this.write();
    let replaced: string | undefined;
    if (recipe.name) {
      const holder = [...this.recipes.values()].find((r) => r.tenant === recipe.tenant && r.name === recipe.name);
      if (holder && !replaceName) return Promise.reject(new NameTakenError(recipe.tenant, recipe.name, holder.interpreterId));
      if (holder) {
        this.recipes.delete(holder.interpreterId);
        replaced = holder.interpreterId;
      }
    }
    this.recipes.set(recipe.interpreterId, this.copy(recipe));
    return Promise.resolve(replaced ? { replaced } : {});
  }

  append(id: string, step: RecipeStep): Promise<void> {
    this.write();
    this.recipes.get(id)?.steps.push(this.copy(step));
    return Promise.resolve();
  }

  release(id: string, ids: string[]): Promise<void> {
    this.write();
    const recipe = this.recipes.get(id);
    if (recipe) {
      recipe.released.push(...ids);
      recipe.paused = recipe.paused.filter((p) => !ids.includes(p));
    }
    return Promise.resolve();
  }

  setPaused(id: string, ids: string[], paused: boolean): Promise<void> {
    this.write();
    const recipe = this.recipes.get(id);
    if (recipe) recipe.paused = paused ? [...new Set([...recipe.paused, ...ids])].sort() : recipe.paused.filter((p) => !ids.includes(p));
    return Promise.resolve();
  }

  remove(id: string): Promise<void> {
    this.write();
    this.recipes.delete(id);
    return Promise.resolve();
  }

  /** Puts a recipe in as it is (a test's hand-made one). */
  put(recipe: InterpreterRecipe): void {
    this.recipes.set(recipe.interpreterId, this.copy(recipe));
  }

  get size(): number {
    return this.recipes.size;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
