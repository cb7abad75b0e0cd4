/**
 * The Lua scripts of the Redis store (RedisStore): each change of a recipe is one script, so it
 * is atomic across replicas. The key layout they share is described below.
 */

/** The changes stream keeps about this many entries (MAXLEN ~: Redis trims whole nodes). */
const CHANGES_MAXLEN = 10000;

/**
 * Keys, under the prefix p:
 *   p i:<id>            hash: the recipe's fields except steps, released and paused; a named
 *                       one's also version and, when it was created with steps, sourceSha256 and
 *                       sourceBytes of its first step (what ListVersions shows, worked out in JS:
 *                       Lua has no SHA-256); rolledBackFrom when set
 *   p i:<id>:steps      list of step JSON, in append order
 *   p i:<id>:released   set of released registration ids
 *   p i:<id>:paused     set of paused registration ids
 *   p index             sorted set of interpreter ids, scored by creation order
 *   p names             hash "<tenant>\n<name>" -> interpreter id (named ones only)
 *   p seq               counter: one per change
 *   p changes           stream of {id, n[, by]}: n is the seq of the change, so gaps are
 *                       visible; by: the recipe whose upgrade removed this one
 *   p v:<tenant>\n<name>:<version>             a kept version: the i:<id> keys of the recipe
 *   p v:<tenant>\n<name>:<version>:steps       that held the name, renamed as they stood when
 *   p v:<tenant>\n<name>:<version>:released    it left (replaced or removed), its hash with
 *   p v:<tenant>\n<name>:<version>:paused      interpreterId and version added
 *   p versions:<tenant>\n<name>                sorted set of the name's kept versions (member and
 *                                              score: the version); the current one is the
 *                                              holder in names, not in here
 *
 * A kept version is in neither index nor names, so it is never restored. Its keys cannot clash
 * with another name's: the version is the last all-digit segment, and what follows it is fixed.
 * The scripts build keys from the prefix (a replaced recipe's keys are only known inside the
 * script), so they need one Redis (standalone or Sentinel), not a Cluster.
 */
const PRELUDE = `
local p = ARGV[1]
local function meta(id) return p .. 'i:' .. id end
-- base: "<tenant>\\n<name>", the name's field in names
local function history(base) return p .. 'versions:' .. base end
local function kept(base, version) return p .. 'v:' .. base .. ':' .. version end
local PARTS = {'', ':steps', ':released', ':paused'}
local function emit(id, by)
  local n = redis.call('INCR', p .. 'seq')
  if by then
    redis.call('XADD', p .. 'changes', 'MAXLEN', '~', ${CHANGES_MAXLEN}, '*', 'id', id, 'n', n, 'by', by)
  else
    redis.call('XADD', p .. 'changes', 'MAXLEN', '~', ${CHANGES_MAXLEN}, '*', 'id', id, 'n', n)
  end
  return n
end
-- The highest version the name has, kept or current (0: none). A recipe an older isogear stored
-- has no version: it is 1.
local function newest(base)
  local n = 0
  local holder = redis.call('HGET', p .. 'names', base)
  if holder then n = tonumber(redis.call('HGET', meta(holder), 'version')) or 1 end
  local top = redis.call('ZREVRANGE', history(base), 0, 0, 'WITHSCORES')
  if top[2] and tonumber(top[2]) > n then n = tonumber(top[2]) end
  return n
end
-- Drops the kept versions older than the newest maxVersions (the current one counts).
local function trim(base, maxVersions)
  local floor = newest(base) - maxVersions
  if floor < 1 then return end
  local old = redis.call('ZRANGEBYSCORE', history(base), '-inf', floor)
  for _, version in ipairs(old) do
    local k = kept(base, version)
    redis.call('DEL', k, k .. ':steps', k .. ':released', k .. ':paused')
  end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', history(base), '-inf', floor) end
end
-- Takes a recipe out of the live set. A named one is kept in its name's history, as it stood:
-- its keys are renamed, not copied (a recipe's steps may be megabytes). The caller trims.
-- by: the recipe that replaced this one (an upgrade), so followers drop it when that one is in
local function drop(id, by)
  local m = meta(id)
  local owner = redis.call('HMGET', m, 'tenant', 'name', 'version')
  if owner[2] and owner[2] ~= '' then
    local base = owner[1] .. '\\n' .. owner[2]
    if redis.call('HGET', p .. 'names', base) == id then redis.call('HDEL', p .. 'names', base) end
    local version = tonumber(owner[3]) or 1
    local k = kept(base, version)
    -- (versions only grow, so nothing is there; unless a Redis lost data and numbering restarted)
    redis.call('DEL', k, k .. ':steps', k .. ':released', k .. ':paused')
    redis.call('HSET', m, 'interpreterId', id, 'version', version)
    -- an empty list or set is no key, and RENAME of a missing key fails
    for _, part in ipairs(PARTS) do
      if redis.call('EXISTS', m .. part) == 1 then redis.call('RENAME', m .. part, k .. part) end
    end
    redis.call('ZADD', history(base), version, version)
  else
    redis.call('DEL', m, m .. ':steps', m .. ':released', m .. ':paused')
  end
  redis.call('ZREM', p .. 'index', id)
  emit(id, by)
end
`;

export const SCRIPTS = {
  /**
   * ARGV: p, id, tenant, name, replace ('1'/'0'), mode, memoryMb, registrationPrefix,
   * createdAtMs, maxVersions, rolledBackFrom (''), sourceSha256 and sourceBytes ('' for none),
   * step count, the steps' JSON, released count, the released ids, then the paused ids.
   * Returns {'ok', replaced id or '', version or ''}, {'taken', holder} or {'exists'}.
   */
  isogearCreate: `${PRELUDE}
local id, tenant, name = ARGV[2], ARGV[3], ARGV[4]
local base = tenant .. '\\n' .. name
local m = meta(id)
if redis.call('EXISTS', m) == 1 then return {'exists'} end
local replaced, version = '', ''
if name ~= '' then
  local holder = redis.call('HGET', p .. 'names', base)
  if holder then
    if ARGV[5] ~= '1' then return {'taken', holder} end
    drop(holder, id)
    replaced = holder
  end
  version = newest(base) + 1
end
redis.call('HSET', m, 'tenant', tenant, 'name', name, 'mode', ARGV[6], 'memoryMb', ARGV[7],
  'registrationPrefix', ARGV[8], 'createdAtMs', ARGV[9])
if name ~= '' then redis.call('HSET', m, 'version', version) end
if ARGV[11] ~= '' then redis.call('HSET', m, 'rolledBackFrom', ARGV[11]) end
if ARGV[12] ~= '' then redis.call('HSET', m, 'sourceSha256', ARGV[12], 'sourceBytes', ARGV[13]) end
local stepCount = tonumber(ARGV[14])
for i = 15, 14 + stepCount do redis.call('RPUSH', m .. ':steps', ARGV[i]) end
local releasedCount = tonumber(ARGV[15 + stepCount])
for i = 16 + stepCount, 15 + stepCount + releasedCount do redis.call('SADD', m .. ':released', ARGV[i]) end
for i = 16 + stepCount + releasedCount, #ARGV do redis.call('SADD', m .. ':paused', ARGV[i]) end
if name ~= '' then
  redis.call('HSET', p .. 'names', base, id)
  trim(base, tonumber(ARGV[10]))
end
redis.call('ZADD', p .. 'index', emit(id), id)
return {'ok', replaced, version}
`,
  /** ARGV: p, id, step JSON. */
  isogearAppend: `${PRELUDE}
local m = meta(ARGV[2])
if redis.call('EXISTS', m) == 0 then return 0 end
redis.call('RPUSH', m .. ':steps', ARGV[3])
emit(ARGV[2])
return 1
`,
  /** ARGV: p, id, registration ids. */
  isogearRelease: `${PRELUDE}
local m = meta(ARGV[2])
if redis.call('EXISTS', m) == 0 then return 0 end
for i = 3, #ARGV do
  redis.call('SADD', m .. ':released', ARGV[i])
  redis.call('SREM', m .. ':paused', ARGV[i])
end
emit(ARGV[2])
return 1
`,
  /** ARGV: p, id, '1' (pause) or '0' (resume), registration ids. */
  isogearPause: `${PRELUDE}
local m = meta(ARGV[2])
if redis.call('EXISTS', m) == 0 then return 0 end
for i = 4, #ARGV do
  if ARGV[3] == '1' then redis.call('SADD', m .. ':paused', ARGV[i]) else redis.call('SREM', m .. ':paused', ARGV[i]) end
end
emit(ARGV[2])
return 1
`,
  /** ARGV: p, id, maxVersions. */
  isogearRemove: `${PRELUDE}
local m = meta(ARGV[2])
if redis.call('EXISTS', m) == 0 then return 0 end
local owner = redis.call('HMGET', m, 'tenant', 'name')
drop(ARGV[2])
if owner[2] and owner[2] ~= '' then trim(owner[1] .. '\\n' .. owner[2], tonumber(ARGV[3])) end
return 1
`,
  /**
   * ARGV: p, tenant, name. The name's versions, oldest first (the kept ones, then the current
   * one): each {'1' when current else '0', interpreter id, its hash as field/value pairs, and
   * its first step's JSON when the hash has no sourceSha256 (else false)}.
   */
  isogearVersions: `${PRELUDE}
local base = ARGV[2] .. '\\n' .. ARGV[3]
local out = {}
local function add(current, id, k)
  local first = false
  if redis.call('HEXISTS', k, 'sourceSha256') == 0 then first = redis.call('LINDEX', k .. ':steps', 0) end
  out[#out + 1] = {current, id, redis.call('HGETALL', k), first}
end
for _, version in ipairs(redis.call('ZRANGE', history(base), 0, -1)) do
  local k = kept(base, version)
  add('0', redis.call('HGET', k, 'interpreterId') or '', k)
end
local holder = redis.call('HGET', p .. 'names', base)
if holder then add('1', holder, meta(holder)) end
return out
`,
  /**
   * ARGV: p, tenant, name, version. The recipe of that version, current or kept: {interpreter
   * id, its hash as field/value pairs, steps, released, paused}; false when there is none.
   */
  isogearLoadVersion: `${PRELUDE}
local base = ARGV[2] .. '\\n' .. ARGV[3]
local function read(id, k)
  return {id, redis.call('HGETALL', k), redis.call('LRANGE', k .. ':steps', 0, -1),
    redis.call('SMEMBERS', k .. ':released'), redis.call('SMEMBERS', k .. ':paused')}
end
local holder = redis.call('HGET', p .. 'names', base)
if holder and (tonumber(redis.call('HGET', meta(holder), 'version')) or 1) == tonumber(ARGV[4]) then
  return read(holder, meta(holder))
end
if not redis.call('ZSCORE', history(base), ARGV[4]) then return false end
local k = kept(base, ARGV[4])
return read(redis.call('HGET', k, 'interpreterId') or '', k)
`,
} as const;
export type ScriptName = keyof typeof SCRIPTS;
