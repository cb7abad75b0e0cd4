import path from 'node:path';
import type { Config } from '../config';
import type { Logger } from '../logger';
import { RedisStore } from './RedisStore';
import { SqliteWorkerStore } from './SqliteWorkerStore';
import type { RegistrationStore } from './types';

/** A Redis URL as it may be logged: without its password. */
export function redactStoreUrl(store: string): string {
  if (!/^rediss?:\/\//i.test(store)) return store;
  try {
    const url = new URL(store);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return 'redis://(unparsable)';
  }
}

/** The store ISOGEAR_STORE names, open; undefined for `memory` (nothing durable). Rejects with StoreError. */
export async function openStore(config: Pick<Config, 'store' | 'dataDir'>, logger: Logger): Promise<RegistrationStore | undefined> {
  if (config.store === 'memory') {
    logger.warn({}, 'ISOGEAR_STORE=memory: registrations live in this process only and are lost when it ends');
    return undefined;
  }
  if (config.store === 'sqlite') return SqliteWorkerStore.open(path.resolve(config.dataDir));
  return RedisStore.open(config.store, { logger });
}
