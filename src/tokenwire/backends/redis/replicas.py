"""The follower's side: copies of logs other nodes run, kept live from Redis.

One task reads every followed stream with one blocking `XREAD` on a connection
of its own (a node following a thousand requests makes one round trip per
wake-up, not a thousand); a node-local wake stream in the same `XREAD` makes it
re-issue the read at once when the set of streams changes. A second task checks,
every `lease_seconds / 2`, that each followed log is still the one Redis holds
(same epoch) and that its owner's lease lives; for an owner that died it writes
the request's end (`error` stream_interrupted, `stream_end` error) into Redis
itself, once for every node, through a script that does so only while the
owner's lease is gone and nobody has ended the request.

A replica never shows a hole or a repeat: an event that is not the next one, a
changed epoch or a vanished log fails it (`not_recovered`); a Redis that stays
unreachable fails it too (`backend_unavailable`). Its clients may then resume,
which builds a fresh replica from what Redis holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import ConnectionPool, Redis
from redis.typing import KeyT, StreamIdT

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.log_records import entry_of
from tokenwire.backends.redis.log_scripts import INTERRUPT_SCRIPT, ScriptCall, run_scripts, text
from tokenwire.backends.redis.mirror import FIRST_RETRY_SECONDS, FOLLOWER_GRACE_SECONDS
from tokenwire.backends.redis.write_queue import unavailable_errors
from tokenwire.core.eventlog import EventLog
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import (
    BackendUnavailable,
    NotRecovered,
    StreamInterrupted,
    TokenwireError,
    error_payload,
)
from tokenwire.protocol.events import StreamStatus

logger = structlog.get_logger("tokenwire.redis.replicas")

READ_COUNT = 1000
"""Events taken per stream and read: a long backlog comes in several reads."""
IDLE_SECONDS = 30.0
"""A replica nobody subscribes to is let go after this long (its next lookup reads
Redis again)."""


@dataclass(eq=False)
class Followed:
    """A running request of another node's, followed here."""

    log: EventLog
    epoch: str
    owner: str
    meta_key: str
    events_key: str
    lease_key: str
    unused_since: float | None = None


class ReplicaReader:
    def __init__(
        self,
        backend: RedisBackend,
        retention_seconds: float,
        reconnect_max_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._retention = retention_seconds
        self._reconnect_max = reconnect_max_seconds
        self._clock = clock
        self.followed: dict[RequestKey, Followed] = {}
        self._by_stream: dict[str, Followed] = {}
        self._changed = asyncio.Event()
        self._reading = False
        self._check_epochs = False
        self._wake_key = backend.node_key(backend.node_id, "wake")
        self._wake_id = "0-0"
        self._reader: Redis | None = None

    # -- what the store asks ----------------------------------------------------

    async def follow(self, followed: Followed) -> Followed:
        """Keep `followed` live; the one already followed for its request, if any."""
        already = self.followed.get(followed.log.key)
        if already is not None:
            return already
        self.followed[followed.log.key] = followed
        self._by_stream[followed.events_key] = followed
        self._changed.set()
        if self._reading:
            await self._poke()
        return followed

    def drop(self, key: RequestKey, error: TokenwireError | None = None) -> None:
        """Stop following `key`; with `error`, its subscribers are told and let go."""
        followed = self.followed.pop(key, None)
        if followed is None:
            return
        self._by_stream.pop(followed.events_key, None)
        if error is not None and not followed.log.finished:
            error.request_id = key.request_id
            followed.log.fail(error)

    def check_epochs(self) -> None:
        """Redis may have changed: check every followed log before reading on."""
        self._check_epochs = True
        self._changed.set()

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
            self._reader = None

    # -- reading ----------------------------------------------------------------

    async def read(self) -> None:
        """Follow until cancelled; never raises for a Redis lost."""
        delay = FIRST_RETRY_SECONDS
        failures = 0
        while True:
            while not self.followed:
                self._changed.clear()
                await self._changed.wait()
            try:
                if self._check_epochs:
                    self._check_epochs = False
                    await self._verify_epochs()
                reply = await self._read_once()
            except unavailable_errors:
                failures += 1
                self._check_epochs = True
                if failures > 1:
                    self._fail_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max)
                continue
            except Exception:
                logger.exception("reading followed logs failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max)
                continue
            failures = 0
            delay = FIRST_RETRY_SECONDS
            self._ingest(reply)

    async def _read_once(self) -> Any:
        streams: dict[KeyT, StreamIdT] = {self._wake_key: self._wake_id}
        for followed in self.followed.values():
            streams[followed.events_key] = f"0-{followed.log.last_seq}"
        block = self._block_millis()
        self._reading = True
        try:
            return await self._connection().xread(streams, count=READ_COUNT, block=block)
        finally:
            self._reading = False

    def _block_millis(self) -> int:
        return max(50, int(self._backend.lease_seconds * 1000 / 2))

    def _connection(self) -> Redis:
        """The reader's own connection: its reads block longer than other commands may."""
        if self._reader is None:
            pool = self._backend.client.connection_pool
            options = dict(pool.connection_kwargs)
            timeout = options.get("socket_timeout") or 5.0
            options["socket_timeout"] = timeout + self._block_millis() / 1000
            own = ConnectionPool(connection_class=pool.connection_class, **options)
            self._reader = Redis(connection_pool=own)
        return self._reader

    async def _poke(self) -> None:
        """Make the blocked `XREAD` return, so that it is issued again with every stream."""
        pipe = self._backend.client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
        pipe.pexpire(self._wake_key, int(FOLLOWER_GRACE_SECONDS * 1000))
        await pipe.execute()

    def _ingest(self, reply: Any) -> None:
        streams = reply.items() if isinstance(reply, Mapping) else (reply or [])
        for name, entries in streams:
            if isinstance(entries, list) and entries and isinstance(entries[0], list):
                entries = entries[0]  # RESP3 nests the entries once more
            stream = text(name)
            if stream == self._wake_key:
                if entries:
                    self._wake_id = text(entries[-1][0])
                continue
            followed = self._by_stream.get(stream)
            if followed is None:
                continue
            try:
                self._ingest_into(followed, entries)
            except Exception:
                # An entry this node cannot read (another version wrote it?): this log
                # cannot go on here, and must not stop the others.
                logger.exception("a followed log's event is unreadable")
                self.drop(followed.log.key, _lost_copy(followed.log.key))

    def _ingest_into(self, followed: Followed, entries: list[Any]) -> None:
        log = followed.log
        for entry_id, fields in entries:
            seq, event_type, timestamp, data_json = entry_of(entry_id, fields)
            if seq <= log.last_seq:
                continue
            if seq != log.last_seq + 1:
                self.drop(log.key, NotRecovered(f"events after seq {log.last_seq} were lost"))
                return
            log.ingest(seq, event_type, timestamp, data_json)
            if log.finished:
                self.drop(log.key)
                return

    def _fail_all(self) -> None:
        """Redis stays unreachable: no follower is left waiting for what may never come."""
        for key in list(self.followed):
            self.drop(key, BackendUnavailable("redis is unreachable from this node"))

    async def _verify_epochs(self) -> None:
        followed = list(self.followed.values())
        pipe = self._backend.client.pipeline(transaction=False)
        for each in followed:
            pipe.hmget(each.meta_key, ["epoch", "discarded"])
        for each, (epoch, discarded) in zip(followed, await pipe.execute(), strict=True):
            if text(epoch) != each.epoch or text(discarded) == "1":
                self.drop(each.log.key, _lost_copy(each.log.key))

    # -- owners' leases ---------------------------------------------------------

    async def watch_owners(self) -> None:
        """Every `lease_seconds / 2`: let unused replicas go, fail those Redis no longer
        holds, and end those whose owner died. Until cancelled; never raises."""
        while True:
            await asyncio.sleep(self._backend.lease_seconds / 2)
            try:
                await self.check_owners()
            except unavailable_errors:
                self._check_epochs = True
            except Exception:
                logger.exception("checking owners of followed logs failed")

    async def check_owners(self) -> None:
        self._let_unused_go()
        followed = list(self.followed.values())
        if not followed:
            return
        pipe = self._backend.client.pipeline(transaction=False)
        for each in followed:
            pipe.hmget(each.meta_key, ["epoch", "status", "discarded"])
            pipe.exists(each.lease_key)
        replies = await pipe.execute()
        dead = []
        for i, each in enumerate(followed):
            epoch, status, discarded = replies[2 * i]
            if text(epoch) != each.epoch or text(discarded) == "1":
                self.drop(each.log.key, _lost_copy(each.log.key))
            elif not text(status) and not replies[2 * i + 1]:
                dead.append(each)
        if not dead:
            return
        answers = await run_scripts(self._backend.client, [self._interrupt(d) for d in dead])
        for each, answer in zip(dead, answers, strict=True):
            if answer == "ok":
                logger.warning("owner died; request ended", request_id=each.log.request_id)
            elif answer in ("epoch", "discarded"):
                self.drop(each.log.key, _lost_copy(each.log.key))

    def _let_unused_go(self) -> None:
        now = time.monotonic()
        for each in list(self.followed.values()):
            if each.log.subscriber_count:
                each.unused_since = None
            elif each.unused_since is None:
                each.unused_since = now
            elif now - each.unused_since > IDLE_SECONDS:
                self.drop(each.log.key)

    def _interrupt(self, followed: Followed) -> ScriptCall:
        request_id = followed.log.request_id
        error = StreamInterrupted(f"the node running request {request_id} stopped")
        end = {
            "request_id": request_id,
            "status": StreamStatus.ERROR.value,
            "error_type": StreamInterrupted.error_type,
        }
        now = self._clock()
        keep = max(self._retention, FOLLOWER_GRACE_SECONDS)
        args: list[str | int] = [
            followed.epoch,
            repr(now),
            orjson.dumps(error_payload(error, request_id)).decode(),
            orjson.dumps(end).decode(),
            repr(now + self._retention),
            int(keep * 1000),
            self._backend.node_id,
        ]
        return INTERRUPT_SCRIPT, [followed.meta_key, followed.events_key, followed.lease_key], args


def _lost_copy(key: RequestKey) -> NotRecovered:
    return NotRecovered(f"redis no longer holds the events of request {key.request_id}")
