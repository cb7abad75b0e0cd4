import path from 'node:path';
import type { Config } from '../config';
import type { Logger } from '../logger';
import { RedisStore, redactRedisUrl } from './RedisStore';
import { SqliteWorkerStore } from './SqliteWorkerStore';
import type { RecipeStore } from '../core/durability/RecipeStore';

/** ISOGEAR_STORE as it may be logged: a Redis URL without its password. */
export function redactStoreUrl(store: string): string {
  return /^rediss?:\/\//i.test(store) ? redactRedisUrl(store) : store;
}

/** The store ISOGEAR_STORE names, open; undefined for `memory` (nothing durable). Rejects with StoreError. */
export async function openStore(config: Pick<Config, 'store' | 'dataDir' | 'maxVersions'>, logger: Logger): Promise<RecipeStore | undefined> {
  if (config.store === 'memory') {
    logger.warn({}, 'ISOGEAR_STORE=memory: registrations live in this process only and are lost when it ends');
    return undefined;
  }
  if (config.store === 'sqlite') return SqliteWorkerStore.open(path.resolve(config.dataDir), { maxVersions: config.maxVersions });
  return RedisStore.open(config.store, { logger, maxVersions: config.maxVersions });
}
