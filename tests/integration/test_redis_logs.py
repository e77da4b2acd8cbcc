"""Event logs shared through Redis: a request started on node A is read, resumed and
listed on node B exactly as on A, ends for B's followers when A dies, and is never
served with a gap or a repeat when Redis loses what it held.

Two `RedisLogStore`s with distinct node ids on one private key prefix are two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer, private_prefix
from tests.support.waiting import eventually
from tokenwire.backends.redis import RedisBackend
from tokenwire.backends.redis.logs import RedisLogStore
from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.hydration import compacted
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import (
    BackendUnavailable,
    InvalidRequest,
    NotRecovered,
    TokenwireError,
)
from tokenwire.protocol.events import EventType

pytestmark = pytest.mark.timeout(60)

KEY = RequestKey("alice", "req-1")
MIB = 1024 * 1024


class Recorder:
    """A subscriber that keeps what it was given."""

    def __init__(self) -> None:
        self.records: list[tuple[int, EventType, str]] = []
        self.errors: list[TokenwireError] = []
        self.done = asyncio.Event()

    def deliver(self, record: Record) -> None:
        self.records.append((record.seq, record.event_type, record.data_json))
        if record.event_type is EventType.STREAM_END:
            self.done.set()

    def lost(self, error: TokenwireError) -> None:
        self.errors.append(error)
        self.done.set()

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.records]


def held(log: EventLog, after_seq: int = 0) -> list[tuple[int, EventType, str]]:
    return [(r.seq, r.event_type, r.data_json) for r in log.records(after_seq)]


def start(log: EventLog) -> None:
    log.append(EventType.STREAM_START, {"request_id": log.request_id})


def tokens(log: EventLog, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        log.append(EventType.TOKEN, {"token": f"w{i} ", "index": i})


def end(log: EventLog, status: str = "completed") -> None:
    log.append(EventType.STREAM_END, {"request_id": log.request_id, "status": status})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def node(
    server: RedisServer,
    prefix: str,
    *,
    lease_seconds: float = 3.0,
    retention_seconds: float = 300.0,
    max_log_bytes: int = 8 * MIB,
    clock: Callable[[], float] | None = None,
    guard: Callable[[], None] | None = None,
    mirror_interval_seconds: float = 0.1,
) -> AsyncIterator[RedisLogStore]:
    """One node's log store, as a gateway would have it (redis-py retries off)."""
    client = Redis.from_url(
        server.url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=None, retry_on_error=[]
    )
    backend = RedisBackend(client, prefix=prefix, lease_seconds=lease_seconds)
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    store = RedisLogStore(
        backend,
        retention_seconds=retention_seconds,
        max_log_bytes=max_log_bytes,
        max_retained_bytes=64 * MIB,
        reconnect_max_seconds=0.5,
        mirror_interval_seconds=mirror_interval_seconds,
        guard=guard,
        **extra,
    )
    await store.start()
    try:
        yield store
    finally:
        await store.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def two_nodes(
    server: RedisServer, **options: Any
) -> AsyncIterator[tuple[RedisLogStore, RedisLogStore]]:
    prefix = private_prefix()
    async with node(server, prefix, **options) as a, node(server, prefix, **options) as b:
        yield a, b


async def mirrored(store: RedisLogStore, key: RequestKey, last_seq: int) -> EventLog:
    """The log as `store` (another node) reads it, once Redis holds it up to `last_seq`."""
    found: list[EventLog] = []

    async def read() -> bool:
        log = await store.get(key)
        if log is not None and log.last_seq >= last_seq:
            found.append(log)
            return True
        return False

    deadline = asyncio.get_running_loop().time() + 10
    while not await read():
        assert asyncio.get_running_loop().time() < deadline, "never mirrored"
        await asyncio.sleep(0.01)
    return found[0]


async def test_a_replica_replays_exactly_then_goes_live(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, "session-1", "conv-1")
        start(log)
        tokens(log, 10)
        replica = await mirrored(b, KEY, 11)
        follower = Recorder()
        replica.subscribe(follower, after_seq=4)

        tokens(log, 20, first=10)
        end(log)
        await a.finished(log)
        await asyncio.wait_for(follower.done.wait(), 10)

        assert follower.errors == []
        assert follower.records == held(log, 4)
        assert replica.status == "completed"
        assert replica.conversation_id == "conv-1"
        assert replica.origin == "session-1"
        assert replica.created_at == log.created_at


async def test_a_finished_request_replays_on_either_node_from_redis(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 5)
        end(log)
        await a.finished(log)
        await eventually(lambda: not a.owned(KEY))

        for store in (a, b):
            again = await store.get(KEY)
            assert again is not None
            assert again is not log
            assert again.finished
            assert again.status == "completed"
            assert held(again) == held(log)


async def test_a_node_that_closes_leaves_redis_all_it_wrote(shared_redis: RedisServer) -> None:
    prefix = private_prefix()
    async with node(shared_redis, prefix) as b:
        async with node(shared_redis, prefix) as a:
            log = await a.create(KEY, None)
            start(log)
            tokens(log, 50)
            end(log)
            await a.finished(log)
        # `a` closed at once: what it had not written yet was written before it stopped.
        again = await b.get(KEY)
        assert again is not None
        assert held(again) == held(log)


async def test_compact_hydration_on_a_replica_is_the_owners(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 12)
        log.append(EventType.PROGRESS, {"stage": "one"})
        tokens(log, 3, first=12)
        replica = await mirrored(b, KEY, log.last_seq)

        def shown(records: list[Record]) -> list[tuple[int, EventType, str]]:
            return [(r.seq, r.event_type, r.data_json) for r in records]

        assert shown(compacted(replica, 3)) == shown(compacted(log, 3))
        assert any(r.event_type is EventType.CHUNK for r in compacted(replica, 3))


async def test_while_events_keep_coming_the_owner_writes_them_a_round_per_interval(
    shared_redis: RedisServer,
) -> None:
    """A quiet log's event is written at once; events that come while a write is in
    flight wait for the interval and go in one script; closing writes them at once."""
    prefix = private_prefix()
    async with Redis.from_url(shared_redis.url) as other:
        meta = RedisBackend(other, prefix=prefix).request_key(KEY, "meta")

        async def in_redis() -> tuple[int, int]:
            last_seq, batch = await other.hmget(meta, ["last_seq", "batch"])
            return int(last_seq), int(batch)

        async with node(shared_redis, prefix, mirror_interval_seconds=30.0) as a:
            log = await a.create(KEY, None)
            start(log)
            tokens(log, 1)
            await asyncio.sleep(0)  # the mirror takes both and is writing them...
            tokens(log, 2, first=1)  # ...when these come: flat out
            deadline = asyncio.get_running_loop().time() + 10
            while await in_redis() != (2, 1):
                assert asyncio.get_running_loop().time() < deadline, await in_redis()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            assert await in_redis() == (2, 1)  # held back for the interval
        # Closing does not wait out the interval: the rest goes at once, in one batch.
        assert await in_redis() == (4, 2)


async def test_a_resume_that_needs_a_trimmed_event_is_not_recovered_on_a_replica(
    shared_redis: RedisServer,
) -> None:
    prefix = private_prefix()
    async with (
        node(shared_redis, prefix, max_log_bytes=4096) as a,
        node(shared_redis, prefix, max_log_bytes=4096) as b,
    ):
        log = await a.create(KEY, None)
        start(log)
        for batch in range(10):  # Redis takes them in several batches, then trims
            tokens(log, 20, first=batch * 20)
            replica = await mirrored(b, KEY, log.last_seq)
        assert log.first_held_seq > 1
        async with Redis.from_url(shared_redis.url) as other:
            events = RedisBackend(other, prefix=prefix).request_key(KEY, "events")
            assert await other.xlen(events) == log.last_seq - log.first_held_seq + 1

        assert replica.first_held_seq == log.first_held_seq
        with pytest.raises(NotRecovered):
            replica.check_held(0)
        assert held(replica, log.first_held_seq - 1) == held(log, log.first_held_seq - 1)


async def test_an_events_key_redis_lost_is_not_recovered_on_a_replica(
    shared_redis: RedisServer,
) -> None:
    prefix = private_prefix()
    async with node(shared_redis, prefix) as a, node(shared_redis, prefix) as b:
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 5)
        end(log)
        await a.finished(log)
        await eventually(lambda: not a.owned(KEY))
        async with Redis.from_url(shared_redis.url) as other:
            await other.delete(RedisBackend(other, prefix=prefix).request_key(KEY, "events"))

        with pytest.raises(NotRecovered):
            await b.get(KEY)


async def test_a_replica_that_finds_a_hole_fails_not_recovered(shared_redis: RedisServer) -> None:
    prefix = private_prefix()
    async with node(shared_redis, prefix) as a, node(shared_redis, prefix) as b:
        log = await a.create(KEY, None)
        start(log)
        replica = await mirrored(b, KEY, 1)
        follower = Recorder()
        replica.subscribe(follower)
        # What a failover that lost seq 2 would leave: seq 3 without it.
        async with Redis.from_url(shared_redis.url) as other:
            events = RedisBackend(other, prefix=prefix).request_key(KEY, "events")
            fields: dict[Any, Any] = {"seq": 3, "type": "token", "ts": 1.0, "data": "{}"}
            await other.xadd(events, fields, id="0-3")

        await asyncio.wait_for(follower.done.wait(), 10)

        assert follower.seqs == [1]
        assert [type(e) for e in follower.errors] == [NotRecovered]


async def test_a_log_past_its_retention_is_unknown_on_the_other_node(
    shared_redis: RedisServer,
) -> None:
    clock = Clock()
    async with two_nodes(shared_redis, retention_seconds=60.0, clock=clock) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        end(log)
        await a.finished(log)
        await eventually(lambda: not a.owned(KEY))
        clock.now += 59
        assert await b.get(KEY) is not None

        clock.now += 2

        assert await b.get(KEY) is None
        assert await a.get(KEY) is None
        assert await b.of_user(KEY.user_id) == []
        # The id is free again, as on one node once its retention is over.
        assert (await b.create(KEY, None)).last_seq == 0


async def test_annotations_are_seen_on_the_other_node(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, None)
        log.annotate("responses", {"background": True, "store": True})
        start(log)
        replica = await mirrored(b, KEY, 1)
        assert replica.annotations == {"responses": {"background": True, "store": True}}

        log.annotate("responses", {"background": True, "store": False})
        tokens(log, 1)
        await eventually(lambda: replica.last_seq == 2)
        again = await b.get(KEY)

        assert again is replica
        assert again.annotations["responses"]["store"] is False


async def test_a_request_id_is_taken_on_every_node(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        await a.create(KEY, None)

        with pytest.raises(InvalidRequest):
            await b.create(KEY, None)
        with pytest.raises(InvalidRequest):
            await a.create(KEY, None)
        assert await b.get(RequestKey("bob", KEY.request_id)) is None
        assert await b.get(RequestKey(KEY.user_id, "another")) is None


async def test_of_user_lists_the_requests_of_every_node_newest_first(
    shared_redis: RedisServer,
) -> None:
    clock = Clock()
    async with two_nodes(shared_redis, clock=clock) as (a, b):
        first = await a.create(RequestKey("alice", "one"), None, "conv")
        start(first)
        end(first)
        await a.finished(first)
        clock.now += 1
        await b.create(RequestKey("alice", "two"), None)
        clock.now += 1
        await a.create(RequestKey("bob", "three"), None)
        await eventually(lambda: not a.owned(first.key))

        for store in (a, b):
            listed = await store.of_user("alice")
            assert [(g.request_id, g.status, g.conversation_id) for g in listed] == [
                ("two", None, None),
                ("one", "completed", "conv"),
            ]
            assert [g.request_id for g in await store.of_user("bob")] == ["three"]


async def test_discard_forgets_a_request_on_every_node(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        end(log)
        await a.finished(log)
        await eventually(lambda: not a.owned(KEY))

        await b.discard(KEY)

        assert await a.get(KEY) is None
        assert await b.get(KEY) is None
        assert await a.of_user(KEY.user_id) == []


async def test_a_discard_is_not_written_back_by_the_owner(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        await mirrored(b, KEY, 1)
        await b.discard(KEY)
        end(log)
        await a.finished(log)

        await eventually(lambda: not a.owned(KEY))
        assert await b.get(KEY) is None


async def test_followers_of_a_dead_owner_get_stream_interrupted_within_10_s_and_so_does_a_resume(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis) as (a, b):  # the default lease, 3 s
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 5)
        replica = await mirrored(b, KEY, 6)
        follower = Recorder()
        replica.subscribe(follower)

        await a.halt()  # killed: no end written, the lease left to lapse
        await asyncio.wait_for(follower.done.wait(), 10)  # the bound promised

        assert follower.errors == []
        assert follower.seqs == list(range(1, 9))
        (_, error_type, error), (_, end_type, end_data) = follower.records[-2:]
        assert error_type is EventType.ERROR
        assert '"stream_interrupted"' in error
        assert end_type is EventType.STREAM_END
        assert '"status":"error"' in end_data
        fresh = await b.get(KEY)
        assert fresh is not None
        assert fresh.finished
        assert fresh.status == "error"
        assert held(fresh, 6) == follower.records[-2:]


async def test_a_living_owner_is_never_ended_by_its_followers(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis) as (a, b):  # the default lease, 3 s
        log = await a.create(KEY, None)
        start(log)
        replica = await mirrored(b, KEY, 1)
        follower = Recorder()
        replica.subscribe(follower)
        for round_ in range(8):  # time passing: several of B's owner checks (every 1.5 s)
            tokens(log, 1, first=round_)
            await eventually(lambda: replica.last_seq == log.last_seq)
            await asyncio.sleep(0.5)

        end(log)
        await asyncio.wait_for(follower.done.wait(), 10)
        assert follower.records == held(log)


async def test_a_replica_fails_typed_when_redis_restarts_and_a_fresh_resume_is_exact(
    own_redis: RedisServer,
) -> None:
    async with two_nodes(own_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 5)
        replica = await mirrored(b, KEY, 6)
        follower = Recorder()
        replica.subscribe(follower)

        own_redis.restart()  # nothing kept on disk: every key is gone
        tokens(log, 5, first=5)
        await asyncio.wait_for(follower.done.wait(), 10)

        assert follower.seqs == list(range(1, len(follower.seqs) + 1))
        assert [type(e) for e in follower.errors] in ([NotRecovered], [BackendUnavailable])
        # The owner still holds every event: it writes them anew, and a resume is exact.
        seen = follower.seqs[-1]
        resumed = Recorder()
        (await eventually_readable(b)).subscribe(resumed, after_seq=seen)
        tokens(log, 2, first=10)
        end(log)
        await asyncio.wait_for(resumed.done.wait(), 10)
        assert follower.records + resumed.records == held(log)


async def eventually_readable(store: RedisLogStore) -> EventLog:
    """The log once Redis serves it again (the owner writes it anew)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        with contextlib.suppress(BackendUnavailable):
            log = await store.get(KEY)
            if log is not None:
                return log
        assert asyncio.get_running_loop().time() < deadline, "never served again"
        await asyncio.sleep(0.02)


async def test_the_owner_keeps_delivering_while_redis_is_down(own_redis: RedisServer) -> None:
    async with two_nodes(own_redis) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        local = Recorder()
        log.subscribe(local)
        await mirrored(b, KEY, 1)

        own_redis.kill()
        tokens(log, 5)

        assert local.seqs == [1, 2, 3, 4, 5, 6]
        with pytest.raises(BackendUnavailable):
            await b.get(KEY)
        with pytest.raises(BackendUnavailable):
            await a.create(RequestKey("alice", "new"), None)
        with pytest.raises(BackendUnavailable):
            await b.of_user(KEY.user_id)
        assert await a.get(KEY) is log

        own_redis.start()
        end(log)
        await a.finished(log)
        await eventually(lambda: not a.owned(KEY))
        assert held(await eventually_readable(b)) == held(log)


async def test_an_idle_owner_writes_its_running_logs_anew_after_redis_restarts(
    own_redis: RedisServer,
) -> None:
    async with two_nodes(own_redis, lease_seconds=1.0) as (a, b):
        log = await a.create(KEY, None)
        start(log)
        tokens(log, 3)
        await mirrored(b, KEY, 4)

        own_redis.restart()  # and nothing appended since: only the lease notices

        again = await eventually_readable(b)
        assert held(again) == held(log)


async def test_the_nodes_guard_refuses_at_once_what_needs_redis(shared_redis: RedisServer) -> None:
    down = False

    def guard() -> None:
        if down:
            raise BackendUnavailable("redis is down, as the node's monitor saw")

    prefix = private_prefix()
    async with node(shared_redis, prefix, guard=guard) as a:
        log = await a.create(KEY, None)
        down = True

        with pytest.raises(BackendUnavailable):
            await a.create(RequestKey("alice", "new"), None)
        with pytest.raises(BackendUnavailable):
            await a.get(RequestKey("alice", "elsewhere"))
        with pytest.raises(BackendUnavailable):
            await a.of_user("alice")
        assert await a.get(KEY) is log  # its own running log needs no Redis
