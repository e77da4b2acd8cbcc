"""The Lua scripts that keep per-user limits in Redis, each one atomic.

They read the time from Redis (`TIME`), never from a node, so that nodes whose
clocks disagree still share one bucket. A bucket is a hash {level, updated}
with `TokenBucket`'s semantics (capacity N, refilled N per 60 s; a missing key
is a full bucket, so it expires once it would be full again). A user's spend is
a hash {day, usd} for one UTC day, expiring when that day ends. Every key a
script touches is one user's (one hash tag) and named in KEYS, as Redis Cluster
requires; so the day is read inside the script, and is a field, not a key name.

Stream slots and connections are hashes of id -> "attempt node": the attempt (a
fresh random id per admission) owns the entry, and only it removes it; entries of
the nodes named as dead (the caller found their lease gone) are dropped first.
An attempt whose answer was lost (a timeout) is voided: put in the user's void
set, so that it takes nothing if Redis runs it late, and its entry removed if it
ran already; either order ends with no entry.

A refusal is returned as {reason, detail...}: the seconds to wait as a string
(Lua numbers would be truncated to integers on the way back), or the node ids
that hold a full set of entries, for the caller to check their leases.
"""

from __future__ import annotations

_COMMON = """
local DAY = 86400

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function bucket_level(key, capacity, now)
  local stored = redis.call('HMGET', key, 'level', 'updated')
  local level, updated = tonumber(stored[1]), tonumber(stored[2])
  if level == nil or updated == nil then
    return capacity
  end
  -- A Redis clock stepped back refills nothing, rather than owing the step.
  local elapsed = math.max(0, now - updated)
  return math.min(capacity, level + elapsed * capacity / 60)
end

local function save_bucket(key, capacity, level, now)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'updated', string.format('%.17g', now))
  -- Gone once full again: a missing bucket is a full one.
  local until_full = (capacity - level) / (capacity / 60)
  redis.call('PEXPIRE', key, math.ceil(until_full * 1000) + 1000)
end

local function wait_for_one(capacity, level)
  return string.format('%.6f', math.max(0, (1 - level) / (capacity / 60)))
end

local function node_of(entry)
  return string.match(entry, '^%S+ (.*)$') or entry
end

local function attempt_of(entry)
  return string.match(entry, '^(%S+) ')
end

local function drop_dead(slots, first_dead_arg)
  if #ARGV < first_dead_arg then
    return
  end
  local dead = {}
  for i = first_dead_arg, #ARGV do
    dead[ARGV[i]] = true
  end
  local entries = redis.call('HGETALL', slots)
  for i = 1, #entries, 2 do
    if dead[node_of(entries[i + 1])] then
      redis.call('HDEL', slots, entries[i])
    end
  end
end

local function full_refusal(slots)
  local seen, refusal = {}, {'full'}
  for _, entry in ipairs(redis.call('HVALS', slots)) do
    local node = node_of(entry)
    if not seen[node] then
      seen[node] = true
      table.insert(refusal, node)
    end
  end
  return refusal
end

local function take_entry(slots, id, attempt, node, ttl_ms)
  redis.call('HSET', slots, id, attempt .. ' ' .. node)
  redis.call('PEXPIRE', slots, ttl_ms)
end

local function drop_entry(slots, id, attempt)
  local entry = redis.call('HGET', slots, id)
  if entry and attempt_of(entry) == attempt then
    redis.call('HDEL', slots, id)
  end
end
"""

ADMIT = (
    _COMMON
    + """
-- KEYS: streams, requests bucket, tokens bucket, spend, void
-- ARGV: node, slot, attempt, max streams, requests/min, tokens/min, budget usd/day,
--       entries ttl ms, dead nodes...
local streams, requests, tokens, spend, void = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local node, slot, attempt = ARGV[1], ARGV[2], ARGV[3]
local max_streams, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local budget, ttl_ms = tonumber(ARGV[7]), ARGV[8]
local now = now_seconds()

if redis.call('SISMEMBER', void, attempt) == 1 then
  return {'void'}
end
drop_dead(streams, 9)
if redis.call('HLEN', streams) >= max_streams then
  return full_refusal(streams)
end
if budget > 0 then
  local day = math.floor(now / DAY)
  local stored = redis.call('HMGET', spend, 'day', 'usd')
  if tonumber(stored[1]) == day and tonumber(stored[2]) >= budget then
    return {'budget', string.format('%.6f', DAY - now % DAY)}
  end
end
if tpm > 0 then
  local level = bucket_level(tokens, tpm, now)
  if level <= 0 then
    return {'tokens', wait_for_one(tpm, level)}
  end
end
if rpm > 0 then
  local level = bucket_level(requests, rpm, now)
  if level < 1 then
    return {'requests', wait_for_one(rpm, level)}
  end
  save_bucket(requests, rpm, level - 1, now)
end
take_entry(streams, slot, attempt, node, ttl_ms)
return {'ok'}
"""
)

RELEASE = (
    _COMMON
    + """
-- KEYS: streams, requests bucket, tokens bucket, spend
-- ARGV: slot, attempt, 'give_back' or 'charge', requests/min, tokens/min,
--       tokens used (or ''), budget usd/day, cost usd
local streams, requests, tokens, spend = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rpm, tpm, budget = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local used, cost = tonumber(ARGV[6]), tonumber(ARGV[8])
local now = now_seconds()

drop_entry(streams, ARGV[1], ARGV[2])
if ARGV[3] == 'give_back' then
  -- Refused before a generation started: rate limits count what costs.
  if rpm > 0 then
    save_bucket(requests, rpm, math.min(rpm, bucket_level(requests, rpm, now) + 1), now)
  end
  return 0
end
if tpm > 0 and used ~= nil then
  -- What was used is owed, even past empty.
  save_bucket(tokens, tpm, bucket_level(tokens, tpm, now) - used, now)
end
if budget > 0 and cost > 0 then
  local day = math.floor(now / DAY)
  if tonumber(redis.call('HGET', spend, 'day')) ~= day then
    redis.call('HSET', spend, 'day', day, 'usd', 0)
  end
  redis.call('HINCRBYFLOAT', spend, 'usd', ARGV[8])
  redis.call('PEXPIREAT', spend, (day + 1) * DAY * 1000)
end
return 0
"""
)

CONNECT = (
    _COMMON
    + """
-- KEYS: connections, void
-- ARGV: node, connection id (its own attempt), max connections per user, entries ttl ms,
--       dead nodes...
local connections, void, connection = KEYS[1], KEYS[2], ARGV[2]
if redis.call('SISMEMBER', void, connection) == 1 then
  return {'void'}
end
drop_dead(connections, 5)
if redis.call('HLEN', connections) >= tonumber(ARGV[3]) then
  return full_refusal(connections)
end
take_entry(connections, connection, connection, ARGV[1], ARGV[4])
return {'ok'}
"""
)

DROP = (
    _COMMON
    + """
-- KEYS: slots or connections
-- ARGV: id, attempt
drop_entry(KEYS[1], ARGV[1], ARGV[2])
return 0
"""
)

VOID = (
    _COMMON
    + """
-- KEYS: slots or connections, void
-- ARGV: id, attempt, void ttl ms
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
drop_entry(KEYS[1], ARGV[1], ARGV[2])
return 0
"""
)
