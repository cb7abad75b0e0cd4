import { MemoryRecipes } from '../../src/core/durability/MemoryRecipes';
import { StoreError, type InterpreterRecipe } from '../../src/core/durability/RecipeStore';

/**
 * The in-process store, for manager tests: it outlives a manager (so a second one restores from
 * it) and can be told to refuse writes.
 */
export class MemoryStore extends MemoryRecipes {
  override readonly description = 'memory (test)';
  /** The next writes fail with StoreError while this is set. */
  failWrites: string | undefined;
  writes = 0;
  private putting = false;

  protected override beforeWrite(): void {
    if (this.putting) return;
    if (this.failWrites) throw new StoreError(this.failWrites);
    this.writes += 1;
  }

  /** Puts a recipe in as it is (a test's hand-made one), taking its name if it has one. */
  put(recipe: InterpreterRecipe): void {
    this.putting = true;
    try {
      void this.create(recipe, true);
    } finally {
      this.putting = false;
    }
  }
}
