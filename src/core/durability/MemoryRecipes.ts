import {
  DEFAULT_MAX_VERSIONS,
  NameTakenError,
  StoreError,
  versionSource,
  type InterpreterRecipe,
  type RecipeStep,
  type RecipeStore,
  type StoredVersion,
} from './RecipeStore';

/** Names are per tenant: keys join tenant and name (a newline occurs in neither). */
const scoped = (tenant: string, name: string): string => `${tenant}\n${name}`;

/** A kept version: the recipe as it stood when it left, and what ListVersions shows of it. */
interface Kept {
  recipe: InterpreterRecipe;
  meta: StoredVersion;
}

/**
 * The recipe store of a server without one (ISOGEAR_STORE=memory): recipes and the versions of
 * named interpreters, in this process, gone with it. It keeps what a durable store keeps, so a
 * name's versions and rollbacks work the same without one. Recipes are copied in and out, as a
 * real store serialises them: nobody shares an array with it.
 */
export class MemoryRecipes implements RecipeStore {
  readonly description: string = 'memory (nothing durable)';
  readonly shared = false;
  private readonly recipes = new Map<string, InterpreterRecipe>();
  /** (tenant, name) → its holder's id. */
  private readonly holders = new Map<string, string>();
  /** (tenant, name) → its kept versions, oldest first. */
  private readonly kept = new Map<string, Kept[]>();

  constructor(private readonly maxVersions = DEFAULT_MAX_VERSIONS) {}

  /** Called before each change (a subclass may refuse it). */
  protected beforeWrite(): void {}

  loadAll(): Promise<InterpreterRecipe[]> {
    return Promise.resolve([...this.recipes.values()].map(copy));
  }

  load(id: string): Promise<InterpreterRecipe | undefined> {
    const r = this.recipes.get(id);
    return Promise.resolve(r ? copy(r) : undefined);
  }

  create(recipe: InterpreterRecipe, replaceName: boolean): Promise<{ replaced?: string; version?: number }> {
    this.beforeWrite();
    if (this.recipes.has(recipe.interpreterId)) return Promise.reject(new StoreError(`${this.description}: create failed: interpreter ${recipe.interpreterId} is stored already`));
    const stored = copy(recipe);
    delete stored.version;
    if (!recipe.name) {
      this.recipes.set(recipe.interpreterId, stored);
      return Promise.resolve({});
    }
    const key = scoped(recipe.tenant, recipe.name);
    const holder = this.holders.get(key);
    if (holder !== undefined && !replaceName) return Promise.reject(new NameTakenError(recipe.tenant, recipe.name, holder));
    if (holder !== undefined) this.keep(holder);
    stored.version = this.newest(key) + 1;
    this.recipes.set(recipe.interpreterId, stored);
    this.holders.set(key, recipe.interpreterId);
    this.trim(key);
    return Promise.resolve(holder === undefined ? { version: stored.version } : { replaced: holder, version: stored.version });
  }

  append(id: string, step: RecipeStep): Promise<void> {
    this.beforeWrite();
    this.recipes.get(id)?.steps.push(copy(step));
    return Promise.resolve();
  }

  release(id: string, ids: string[]): Promise<void> {
    this.beforeWrite();
    const recipe = this.recipes.get(id);
    if (recipe) {
      recipe.released = [...new Set([...recipe.released, ...ids])].sort();
      recipe.paused = recipe.paused.filter((p) => !ids.includes(p));
    }
    return Promise.resolve();
  }

  setPaused(id: string, ids: string[], paused: boolean): Promise<void> {
    this.beforeWrite();
    const recipe = this.recipes.get(id);
    if (recipe) recipe.paused = paused ? [...new Set([...recipe.paused, ...ids])].sort() : recipe.paused.filter((p) => !ids.includes(p));
    return Promise.resolve();
  }

  remove(id: string): Promise<void> {
    this.beforeWrite();
    const recipe = this.recipes.get(id);
    if (recipe?.name) {
      this.keep(id);
      this.trim(scoped(recipe.tenant, recipe.name));
    } else this.recipes.delete(id);
    return Promise.resolve();
  }

  versions(tenant: string, name: string): Promise<StoredVersion[]> {
    const key = scoped(tenant, name);
    const out = (this.kept.get(key) ?? []).map((k) => ({ ...k.meta }));
    const holder = this.holders.get(key);
    const current = holder === undefined ? undefined : this.recipes.get(holder);
    if (current) out.push(metaOf(current, true));
    return Promise.resolve(out);
  }

  loadVersion(tenant: string, name: string, version: number): Promise<InterpreterRecipe | undefined> {
    const key = scoped(tenant, name);
    const holder = this.holders.get(key);
    const current = holder === undefined ? undefined : this.recipes.get(holder);
    if (current && (current.version ?? 1) === version) return Promise.resolve(copy(current));
    const k = this.kept.get(key)?.find((v) => v.meta.version === version);
    return Promise.resolve(k ? copy(k.recipe) : undefined);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  /** How many recipes are live (not kept versions). */
  get size(): number {
    return this.recipes.size;
  }

  /** Moves a live named recipe into its name's history. */
  private keep(id: string): void {
    const recipe = this.recipes.get(id);
    if (!recipe) return;
    this.recipes.delete(id);
    const key = scoped(recipe.tenant, recipe.name);
    if (this.holders.get(key) === id) this.holders.delete(key);
    const list = this.kept.get(key) ?? [];
    list.push({ recipe: { ...recipe, version: recipe.version ?? 1 }, meta: metaOf(recipe, false) });
    this.kept.set(key, list);
  }

  /** The highest version the name has, kept or current (0: none). */
  private newest(key: string): number {
    const list = this.kept.get(key) ?? [];
    const holder = this.holders.get(key);
    const current = holder === undefined ? 0 : (this.recipes.get(holder)?.version ?? 1);
    return Math.max(current, list.length > 0 ? list[list.length - 1].meta.version : 0);
  }

  /** Drops kept versions older than the newest `maxVersions`. */
  private trim(key: string): void {
    const list = this.kept.get(key);
    if (!list) return;
    const floor = this.newest(key) - this.maxVersions;
    const left = list.filter((k) => k.meta.version > floor);
    if (left.length > 0) this.kept.set(key, left);
    else this.kept.delete(key);
  }
}

function metaOf(recipe: InterpreterRecipe, current: boolean): StoredVersion {
  return {
    version: recipe.version ?? 1,
    createdAtMs: recipe.createdAtMs,
    interpreterId: recipe.interpreterId,
    current,
    ...versionSource(recipe),
    ...(recipe.rolledBackFrom !== undefined ? { rolledBackFrom: recipe.rolledBackFrom } : {}),
  };
}

function copy<T>(v: T): T {
  return structuredClone(v);
}
