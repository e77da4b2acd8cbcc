"""Event logs shared by every node through Redis (`LogStore` over Redis).

A request's log lives on the node that runs it (its owner), which appends to it
synchronously as on one node; `LogMirror` copies it to Redis in order and in
batches. Any other node that is asked for the request builds a replica from
Redis (`ReplicaReader` keeps it live), so that transports read it exactly as a
local log: same seqs, same records, same annotations. Redis's copy is bounded
like the log (`max_log_bytes`, the oldest trimmed) and kept `retention_seconds`
after the end, which lookups check (`ends_at`), not only Redis's expiry.

While Redis is unreachable, logs running here keep serving this node's clients;
what needs Redis (starting a request, reading another node's) is refused with
`backend_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.log_records import (
    LogMeta,
    entry_of,
    meta_of,
    optional_json,
    replica_of,
    summary_of,
)
from tokenwire.backends.redis.log_scripts import CREATE_SCRIPT, DISCARD_SCRIPT, run_scripts, text
from tokenwire.backends.redis.mirror import (
    FOLLOWER_GRACE_SECONDS,
    MIRROR_INTERVAL_SECONDS,
    RUNNING_KEEP_SECONDS,
    LogMirror,
    index_entry,
    lease_renewal,
    new_epoch,
)
from tokenwire.backends.redis.node_lease import NodeLease
from tokenwire.backends.redis.replicas import Followed, ReplicaReader
from tokenwire.backends.redis.tasks import stop_tasks
from tokenwire.backends.redis.write_queue import unavailable_errors
from tokenwire.core.eventlog import EventLog
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import BackendUnavailable, InvalidRequest, NotRecovered

logger = structlog.get_logger("tokenwire.redis.logs")

CLOSE_FLUSH_SECONDS = 5.0
"""How long `close` waits for Redis to take what this node still has to write."""
LISTED_FIELDS = (
    *("epoch", "owner", "origin", "conversation_id", "created_at", "status"),
    *("first_seq", "last_seq", "ends_at", "discarded"),
)


class RedisLogStore:
    def __init__(
        self,
        backend: RedisBackend,
        retention_seconds: float,
        max_log_bytes: int,
        max_retained_bytes: int,
        clock: Callable[[], float] = time.time,
        *,
        reconnect_max_seconds: float = 5.0,
        mirror_interval_seconds: float = MIRROR_INTERVAL_SECONDS,
        guard: Callable[[], None] | None = None,
        owner_record_seconds: float | None = None,
    ) -> None:
        """`guard`, if given, is called before each operation that needs Redis and raises
        `BackendUnavailable` to refuse it at once (the node knows Redis is down).
        `owner_record_seconds`, if given, has `create` write the request's owner record
        (`RedisCluster`'s, kept this long) in the same script, for a cluster built with
        `owner_recorded_by_logs`."""
        self._owner_record_ms = (
            None if owner_record_seconds is None else max(1, int(owner_record_seconds * 1000))
        )
        self._backend = backend
        self._guard = guard or _no_guard
        self._retention = retention_seconds
        self._max_log_bytes = max_log_bytes
        self._clock = clock
        # Its marker is found missing when Redis lost what it held (or this node was
        # cut off for longer than its lease): then every log is checked, and rewritten
        # if need be.
        self._lease = NodeLease(backend, "logs", restore=self._redis_changed)
        self._mirror = LogMirror(
            backend,
            retention_seconds,
            max_retained_bytes,
            reconnect_max_seconds,
            clock,
            mirror_interval_seconds,
        )
        self._replicas = ReplicaReader(backend, retention_seconds, reconnect_max_seconds, clock)
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Take the lease and begin mirroring, following and watching owners."""
        with contextlib.suppress(*unavailable_errors):
            await self._lease.held()  # and renewed from now on, Redis reachable or not
        self._tasks = [
            asyncio.create_task(self._mirror.run(), name="redis log mirror"),
            asyncio.create_task(self._replicas.read(), name="redis log reader"),
            asyncio.create_task(self._replicas.watch_owners(), name="redis owner watch"),
        ]

    async def close(self) -> None:
        """Write what Redis does not hold yet (for a few seconds at most), then stop every
        task. The lease is left to lapse (other parts of the node may still need it)."""
        if self._tasks and not await self._mirror.flush(CLOSE_FLUSH_SECONDS):
            logger.warning("closing with logs redis does not hold", logs=len(self._mirror.logs))
        await self.halt()
        for key in list(self._replicas.followed):
            self._replicas.drop(key)
        self._mirror.logs.clear()

    async def halt(self) -> None:
        """Stop every task at once, writing nothing more and leaving the lease to lapse:
        what a node that dies leaves behind (other nodes end its requests)."""
        await stop_tasks(self._tasks)
        self._tasks = []
        await self._lease.aclose()
        await self._replicas.close()

    # -- LogStore ---------------------------------------------------------------

    def owned(self, key: RequestKey) -> bool:
        """Whether this node runs `key` (or ran it, and Redis does not hold its end yet)."""
        return key in self._mirror.logs

    async def create(
        self, key: RequestKey, origin: str | None, conversation_id: str | None = None
    ) -> EventLog:
        if self._local(key) is not None:
            raise InvalidRequest(f"request_id {key.request_id!r} is already in use")
        self._guard()
        epoch = new_epoch()
        created_at = self._clock()
        args: list[str | int] = [
            epoch,
            optional_json(origin),
            optional_json(conversation_id),
            repr(created_at),
            self._backend.node_id,
            repr(created_at),
            int(RUNNING_KEEP_SECONDS * 1000),
        ]
        keys = self._keys(key)
        if self._owner_record_ms is not None:
            keys.append(self._backend.request_key(key, "owner"))
            args.append(self._owner_record_ms)
        call = (CREATE_SCRIPT, keys, args)
        # The lease renewed with it: followers elsewhere never find a new request ownerless.
        listed = index_entry(self._backend, key, created_at, self._retention)
        prelude = [lease_renewal(self._backend), *listed]
        try:
            [answer] = await run_scripts(self._backend.client, [call], prelude=prelude)
        except unavailable_errors:
            raise BackendUnavailable("redis is unreachable: no request can start") from None
        if answer != "ok":
            raise InvalidRequest(f"request_id {key.request_id!r} is already in use")
        log = EventLog(
            key,
            origin,
            self._max_log_bytes,
            clock=self._clock,
            conversation_id=conversation_id,
            sink=self._mirror,
            created_at=created_at,
        )
        self._mirror.add(log, epoch)
        return log

    async def get(self, key: RequestKey) -> EventLog | None:
        local = self._local(key)
        if local is not None:
            return local
        self._guard()
        try:
            return await self._from_redis(key)
        except unavailable_errors:
            raise BackendUnavailable("redis is unreachable: the request cannot be read") from None
        except NotRecovered as exc:
            exc.request_id = key.request_id
            raise

    async def finished(self, log: EventLog) -> None:
        self._mirror.finished(log)

    async def discard(self, key: RequestKey) -> None:
        self._mirror.forget(key)
        self._replicas.drop(key)
        self._guard()
        keep = max(self._retention, FOLLOWER_GRACE_SECONDS)
        args: list[str | int] = [int(keep * 1000)]
        call = (DISCARD_SCRIPT, self._keys(key), args)
        unlisted = ("ZREM", self._backend.user_key(key.user_id, "requests"), key.request_id)
        try:
            await run_scripts(self._backend.client, [call], prelude=[unlisted])
        except unavailable_errors:
            raise BackendUnavailable(
                "redis is unreachable: the request cannot be dropped"
            ) from None

    async def of_user(self, user_id: str) -> list[EventLog]:
        self._guard()
        try:
            return await self._listed(user_id)
        except unavailable_errors:
            raise BackendUnavailable("redis is unreachable: requests cannot be listed") from None

    # -- internals --------------------------------------------------------------

    def _keys(self, key: RequestKey) -> list[str]:
        return [self._backend.request_key(key, "meta"), self._backend.request_key(key, "events")]

    def _local(self, key: RequestKey) -> EventLog | None:
        """The log if this node runs it (or holds its end that Redis lacks), in retention."""
        mirrored = self._mirror.logs.get(key)
        if mirrored is None:
            return None
        ends_at = self._mirror.ends_at(mirrored)
        if ends_at is not None and self._clock() >= ends_at:
            self._mirror.forget(key)
            return None
        return mirrored.log

    async def _from_redis(self, key: RequestKey) -> EventLog | None:
        client = self._backend.client
        meta_key, events_key = self._keys(key)
        now = self._clock()
        followed = self._replicas.followed.get(key)
        if followed is not None:
            meta = meta_of(await client.hgetall(meta_key))
            if meta is None or meta.epoch != followed.epoch:
                self._replicas.drop(key, NotRecovered("redis no longer holds this copy of the log"))
            elif meta.gone(now):
                self._replicas.drop(key)
                return None
            else:
                followed.log.annotations = dict(meta.annotations)
                return followed.log
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(meta_key)
        pipe.xrange(events_key)
        meta_reply, entries = await pipe.execute()
        meta = meta_of(meta_reply)
        if meta is None or meta.gone(now):
            return None
        log = replica_of(key, meta, [entry_of(i, f) for i, f in entries], self._max_log_bytes)
        if log.finished:
            return log
        return await self._follow(log, meta)

    async def _follow(self, log: EventLog, meta: LogMeta) -> EventLog:
        backend = self._backend
        followed = Followed(
            log,
            meta.epoch,
            meta.owner,
            backend.request_key(log.key, "meta"),
            backend.request_key(log.key, "events"),
            backend.node_key(meta.owner, "lease"),
        )
        return (await self._replicas.follow(followed)).log

    async def _listed(self, user_id: str) -> list[EventLog]:
        client = self._backend.client
        index = self._backend.user_key(user_id, "requests")
        request_ids = [text(r) for r in await client.zrevrange(index, 0, -1)]
        keys = [RequestKey(user_id, r) for r in request_ids]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self._backend.request_key(key, "meta"), list(LISTED_FIELDS))
        replies = await pipe.execute()
        now = self._clock()
        listed: list[EventLog] = []
        missing = []
        for key, values in zip(keys, replies, strict=True):
            local = self._local(key)
            meta = meta_of(dict(zip(LISTED_FIELDS, values, strict=True)))
            if local is not None:
                listed.append(local)
            elif meta is None:
                missing.append(key.request_id)
            elif not meta.gone(now):
                followed = self._replicas.followed.get(key)
                listed.append(followed.log if followed is not None else summary_of(key, meta))
        if missing:
            await client.zrem(index, *missing)
        return sorted(listed, key=lambda log: log.created_at, reverse=True)

    def _redis_changed(self) -> None:
        self._mirror.check_all()
        self._replicas.check_epochs()


def _no_guard() -> None:
    return None
