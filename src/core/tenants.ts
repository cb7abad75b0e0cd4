/** The tenant every request belongs to when the server runs without a keys file. */
export const DEFAULT_TENANT = 'default';

/** Per-tenant quotas, as the keys file names them; a missing one falls back to the server default. */
export const QUOTA_NAMES = ['interpreters', 'registrations', 'concurrentRuns', 'dedicatedMemoryMb', 'backgroundExecutions'] as const;

export type QuotaName = (typeof QUOTA_NAMES)[number];

/**
 * Overrides for one tenant: live interpreters, live registrations, runs executing at once,
 * megabytes of heap limit summed over its dedicated isolates, and background executions queued
 * or running. 0 means "none allowed".
 */
export type TenantQuotas = Partial<Record<QuotaName, number>>;
