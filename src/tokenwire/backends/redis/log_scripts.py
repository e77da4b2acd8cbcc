"""The Lua scripts that change a request's log in Redis, each atomic.

A request's log is two keys with one hash tag: `meta` (a hash) and `events` (a
stream whose entry ids are `0-<seq>`, so that reading after a seq is direct).
Meta fields: `epoch` (a random token per copy of the log: a new one whenever the
owner had to write the log anew), `origin`, `conversation_id` (JSON), `created_at`,
`owner` (node id), `status` ("" while running, else the `stream_end` status),
`first_seq` and `last_seq` (what `events` holds), `batch` (how many of the
owner's batches Redis holds: fewer than the owner wrote means Redis lost
writes), `annotations` (JSON), `ends_at` (when retention ends), `ended_by` (a
node that wrote the end for a dead owner), `discarded` ("1": forgotten, a
tombstone until it expires).

Scripts touch one request's keys only (one hash tag: one Cluster slot), except that
INTERRUPT reads the owner's lease; a user's index of requests (a sorted set, member
the request id, score its start) is kept by plain commands sent alongside.

Every script answers a short status word, so that the caller tells "done" from
"Redis no longer holds what you think" without a second round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha1

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

# KEYS: meta, events, and the request's owner record (optional). ARGV: epoch, origin,
#       conversation_id, created_at, owner, now, running_ttl_ms, owner_ttl_ms (with KEYS[3]).
# A key is taken while its meta lives, unless it was discarded or its retention ended.
# The owner record (`RedisCluster`'s) is written with the log when the cluster leaves
# it to the log store: one round trip per request start instead of two.
CREATE = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'ends_at', 'discarded')
if m[1] then
  local over = m[2] and m[2] ~= '' and tonumber(m[2]) <= tonumber(ARGV[6])
  if m[3] ~= '1' and not over then return 'taken' end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'origin', ARGV[2], 'conversation_id', ARGV[3],
  'created_at', ARGV[4], 'owner', ARGV[5], 'status', '', 'first_seq', '1', 'last_seq', '0',
  'batch', '0', 'annotations', '{}')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[8]) end
return 'ok'
"""

# KEYS: meta, events.
# ARGV: epoch, batch (how many Redis should hold), first_seq ("" unchanged: nothing to
#       trim), annotations ("" unchanged),
#       status ("" unless this batch holds the stream_end), ends_at, keep_ms (how long
#       the keys outlive the end: the retention, and never less than followers elsewhere
#       need to read the end), count, then count times: seq, type, ts, data.
# Refuses (changing nothing) when Redis's copy is not the one the owner built on.
MIRROR = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'batch', 'ended_by', 'discarded')
if m[4] == '1' then return 'discarded' end
if m[1] ~= ARGV[1] then return 'epoch' end
if m[3] and m[3] ~= '' then return 'ended' end
if tonumber(m[2]) ~= tonumber(ARGV[2]) then return 'lost' end
local count = tonumber(ARGV[8])
local fields = {'batch', tostring(tonumber(ARGV[2]) + 1)}
for i = 0, count - 1 do
  local at = 9 + i * 4
  redis.call('XADD', KEYS[2], '0-' .. ARGV[at], 'seq', ARGV[at], 'type', ARGV[at + 1],
    'ts', ARGV[at + 2], 'data', ARGV[at + 3])
end
if count > 0 then
  table.insert(fields, 'last_seq')
  table.insert(fields, ARGV[9 + (count - 1) * 4])
end
if ARGV[3] ~= '' then
  table.insert(fields, 'first_seq')
  table.insert(fields, ARGV[3])
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. ARGV[3])
end
if ARGV[4] ~= '' then
  table.insert(fields, 'annotations')
  table.insert(fields, ARGV[4])
end
if ARGV[5] ~= '' then
  table.insert(fields, 'status')
  table.insert(fields, ARGV[5])
  table.insert(fields, 'ends_at')
  table.insert(fields, ARGV[6])
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[5] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
return 'ok'
"""

# KEYS: meta, events.
# ARGV: epoch (new), origin, conversation_id, created_at, owner, status, ends_at, ttl_ms,
#       first_seq, last_seq, annotations, count, then count times: seq, type, ts, data.
# The owner's whole log under a new epoch, after Redis lost (some of) it; never over
# an end another node wrote for it, nor over a discard.
REWRITE = """
local m = redis.call('HMGET', KEYS[1], 'ended_by', 'discarded')
if m[2] == '1' then return 'discarded' end
if m[1] and m[1] ~= '' then return 'ended' end
redis.call('DEL', KEYS[1], KEYS[2])
local count = tonumber(ARGV[12])
for i = 0, count - 1 do
  local at = 13 + i * 4
  redis.call('XADD', KEYS[2], '0-' .. ARGV[at], 'seq', ARGV[at], 'type', ARGV[at + 1],
    'ts', ARGV[at + 2], 'data', ARGV[at + 3])
end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'origin', ARGV[2], 'conversation_id', ARGV[3],
  'created_at', ARGV[4], 'owner', ARGV[5], 'status', ARGV[6], 'ends_at', ARGV[7],
  'first_seq', ARGV[9], 'last_seq', ARGV[10], 'batch', '1', 'annotations', ARGV[11])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
if count > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[8]) end
return 'ok'
"""

# KEYS: meta, events, the owner's lease.
# ARGV: epoch, ts, error data, stream_end data, ends_at, retention_ms, this node's id.
# The end of a request whose owner died, written once for every node to read: only
# while the owner's lease is gone and nobody has ended the request.
INTERRUPT = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 'alive' end
local m = redis.call('HMGET', KEYS[1], 'epoch', 'status', 'last_seq', 'discarded')
if m[4] == '1' then return 'discarded' end
if m[1] ~= ARGV[1] then return 'epoch' end
if m[2] and m[2] ~= '' then return 'ended' end
local seq = tonumber(m[3]) + 1
redis.call('XADD', KEYS[2], '0-' .. seq, 'seq', tostring(seq), 'type', 'error',
  'ts', ARGV[2], 'data', ARGV[3])
redis.call('XADD', KEYS[2], '0-' .. (seq + 1), 'seq', tostring(seq + 1), 'type', 'stream_end',
  'ts', ARGV[2], 'data', ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'error', 'ended_by', ARGV[7],
  'last_seq', tostring(seq + 1), 'ends_at', ARGV[5])
if tonumber(m[3]) == 0 then redis.call('HSET', KEYS[1], 'first_seq', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 'ok'
"""

# KEYS: meta, events. ARGV: tombstone_ttl_ms.
# Forgets the events at once; the meta stays as a tombstone, so that an owner that
# still holds the log does not write it back.
DISCARD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'none' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'discarded', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 'ok'
"""


@dataclass
class LuaScript:
    """A script run by its SHA (EVALSHA); loaded again when Redis forgot it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha = sha1(self.source.encode()).hexdigest()

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[str | int]) -> None:
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, client: Redis) -> None:
        await client.script_load(self.source)


SCRIPTS = tuple(LuaScript(s) for s in (CREATE, MIRROR, REWRITE, INTERRUPT, DISCARD))
CREATE_SCRIPT, MIRROR_SCRIPT, REWRITE_SCRIPT, INTERRUPT_SCRIPT, DISCARD_SCRIPT = SCRIPTS


async def load_scripts(client: Redis) -> None:
    """Load every script (after a NOSCRIPT answer: Redis restarted or was flushed)."""
    for script in SCRIPTS:
        await script.load(client)


ScriptCall = tuple[LuaScript, Sequence[str], Sequence[str | int]]


async def run_scripts(
    client: Redis, calls: Sequence[ScriptCall], prelude: Sequence[Sequence[str | int]] = ()
) -> list[str]:
    """Run `calls` in one pipelined round trip, in order, after the plain commands of
    `prelude` (whose answers are dropped); the calls' answers as text.

    A call that Redis answered NOSCRIPT did nothing: the scripts are loaded and those
    calls alone are run again. Any other error of a script is a defect and raised."""
    answers: list[object] = [None] * len(calls)
    pending = list(range(len(calls)))
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for command in prelude if attempt == 0 else ():
            pipe.execute_command(*command)
        for index in pending:
            script, keys, args = calls[index]
            script.queue(pipe, keys, args)
        results = await pipe.execute(raise_on_error=False)
        if attempt == 0:
            results = results[len(prelude) :]
        unknown = []
        for index, result in zip(pending, results, strict=True):
            if isinstance(result, NoScriptError) and attempt == 0:
                unknown.append(index)
            elif isinstance(result, Exception):
                raise result
            else:
                answers[index] = result
        if not unknown:
            break
        await load_scripts(client)
        pending = unknown
    return [text(answer) for answer in answers]


def text(value: object) -> str:
    """A Redis reply as text, whether the client decodes replies or not."""
    if isinstance(value, bytes):
        return value.decode()
    return "" if value is None else str(value)
