"""Per-user limits over several nodes (backends/redis/limits.py) against a real Redis:
two `RedisQuotas` / `RedisConnections` with their own node ids on one key prefix are
two nodes, and a user who spreads requests or connections over them bypasses no limit
(CONTRACT.md, "Several nodes"). A dead node's slots come back once its lease lapses;
Redis lost refuses with `backend_unavailable` and, once back, admits again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from tests.support.redis_nodes import node_client, until
from tests.support.redis_server import RedisServer, private_prefix
from tests.support.waiting import eventually
from tokenwire.backends.redis import RedisBackend, redis_errors
from tokenwire.backends.redis.limit_scripts import ADMIT, VOID
from tokenwire.backends.redis.limits import RedisConnections, RedisQuotas
from tokenwire.core.provider import Message, Usage
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import (
    BackendUnavailable,
    BudgetExceeded,
    RequestRateLimited,
    TooManyConnections,
    TooManyStreams,
)
from tokenwire.protocol.events import StreamStatus
from tokenwire.security.limits import LimitPolicy

REQUEST_IDS = itertools.count()


@dataclass
class Node:
    backend: RedisBackend
    quotas: RedisQuotas
    connections: RedisConnections

    async def admit(self, user: str = "ada") -> RequestSpec:
        return await self.quotas.admit(spec(user))

    async def settled(self) -> None:
        await self.quotas.settled()
        await self.connections.settled()

    async def aclose(self) -> None:
        await self.quotas.aclose()
        await self.connections.aclose()
        await self.backend.aclose()


def node(server: RedisServer, prefix: str, policy: LimitPolicy, lease: float = 3.0) -> Node:
    backend = RedisBackend(node_client(server), prefix=prefix, lease_seconds=lease)
    return Node(backend, RedisQuotas(backend, policy), RedisConnections(backend, policy))


@contextlib.asynccontextmanager
async def two_nodes(
    server: RedisServer, policy: LimitPolicy, lease: float = 3.0
) -> AsyncIterator[tuple[Node, Node]]:
    prefix = private_prefix()
    a, b = node(server, prefix, policy, lease), node(server, prefix, policy, lease)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def spec(user: str = "ada") -> RequestSpec:
    return RequestSpec(
        user_id=user,
        messages=(Message(role="user", content="hi"),),
        request_id=f"r{next(REQUEST_IDS)}",
    )


def ended(usage: Usage | None = None, cost_usd: float = 0.0) -> StreamOutcome:
    return StreamOutcome(
        provider="simulated",
        status=StreamStatus.COMPLETED,
        duration=0.1,
        ttft=0.01,
        chunks=1,
        text_bytes=1,
        usage=usage,
        cost_usd=cost_usd,
    )


async def admits(n: Node, user: str = "ada") -> bool:
    """Whether `user` may start a request on `n` now; one admitted ends at once, unmetered."""
    try:
        request = await n.admit(user)
    except (TooManyStreams, RequestRateLimited, BudgetExceeded, BackendUnavailable):
        return False
    n.quotas.release(request, ended())
    return True


# -- requests, tokens and spend --------------------------------------------------------------


async def test_requests_per_minute_alternating_nodes_holds_exactly_at_n(
    shared_redis: RedisServer,
) -> None:
    # A bucket of 3 a minute refills one in 20 s: far longer than this test takes.
    async with two_nodes(shared_redis, LimitPolicy(requests_per_minute_per_user=3)) as (a, b):
        assert [await admits(n) for n in (a, b, a)] == [True, True, True]
        with pytest.raises(RequestRateLimited) as refused:
            await b.admit()
        assert 0 < (refused.value.retry_after or 0) <= 20
        assert not await admits(a)
        assert await admits(b, "bob")


async def test_a_request_that_never_started_gives_its_request_back_on_every_node(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis, LimitPolicy(requests_per_minute_per_user=1)) as (a, b):
        a.quotas.release(await a.admit(), None)
        await a.settled()
        assert await admits(b)


async def test_tokens_charged_on_one_node_refuse_on_the_other(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis, LimitPolicy(tokens_per_minute_per_user=100)) as (a, b):
        request = await a.admit()
        a.quotas.release(request, ended(Usage(prompt_tokens=70, completion_tokens=40)))
        await a.settled()
        with pytest.raises(RequestRateLimited) as refused:
            await b.admit()
        # 10 tokens owed, then one more: 11 at 100 a minute.
        assert refused.value.retry_after == pytest.approx(6.6, abs=0.5)


async def test_a_budget_spent_on_one_node_refuses_on_the_other(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis, LimitPolicy(budget_usd_per_user_per_day=1.0)) as (a, b):
        a.quotas.release(await a.admit(), ended(cost_usd=0.6))
        await a.settled()
        assert await admits(b)  # 0.6 of 1.0 spent
        b.quotas.release(await b.admit(), ended(cost_usd=0.4))
        await b.settled()
        with pytest.raises(BudgetExceeded) as refused:
            await a.admit()
        assert 0 < (refused.value.retry_after or 0) <= 86_400
        assert await admits(a, "bob")


# -- stream slots --------------------------------------------------------------------------


async def test_max_streams_per_user_counts_the_streams_of_every_node(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis, LimitPolicy(max_streams_per_user=2)) as (a, b):
        await a.admit()
        await b.admit()
        with pytest.raises(TooManyStreams):
            await a.admit()
        with pytest.raises(TooManyStreams):
            await b.admit()
        await b.admit("bob")


async def test_a_cancel_on_one_node_frees_the_slot_for_the_other(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis, LimitPolicy(max_streams_per_user=1)) as (a, b):
        running = await a.admit()
        assert not await admits(b)
        a.quotas.cancelled(running)
        await a.settled()
        second = await b.admit()
        # The end that follows the cancel frees nothing more: the slot is b's now.
        a.quotas.release(running, ended())
        await a.settled()
        assert not await admits(a)
        b.quotas.release(second, ended())
        await b.settled()
        assert await admits(a)


# -- connections -----------------------------------------------------------------------------


async def test_connections_per_user_count_the_connections_of_every_node(
    shared_redis: RedisServer,
) -> None:
    async with two_nodes(shared_redis, LimitPolicy(max_connections_per_user=2)) as (a, b):
        close_on_a = await a.connections.open("ada", None)
        await b.connections.open("ada", None)
        with pytest.raises(TooManyConnections):
            await a.connections.open("ada", None)
        with pytest.raises(TooManyConnections):
            await b.connections.open("ada", None)
        close_on_a()
        close_on_a()
        await a.settled()
        await b.connections.open("ada", None)
        with pytest.raises(TooManyConnections):
            await a.connections.open("ada", None)
        assert (a.connections.total, b.connections.total) == (0, 2)


async def test_max_connections_stays_each_node_s_own(shared_redis: RedisServer) -> None:
    async with two_nodes(shared_redis, LimitPolicy(max_connections=1)) as (a, b):
        await a.connections.open("ada", None)
        with pytest.raises(TooManyConnections):
            await a.connections.open("bob", None)
        await b.connections.open("bob", None)


# -- a dead node ---------------------------------------------------------------------------


async def test_a_live_node_keeps_its_slots_and_connections_past_its_lease(
    shared_redis: RedisServer,
) -> None:
    policy = LimitPolicy(max_streams_per_user=1, max_connections_per_user=1)
    async with two_nodes(shared_redis, policy, lease=1.5) as (a, b):
        await a.admit()
        await a.connections.open("ada", None)
        # Time passing is what is tested: more than two leases, each renewed by a in time.
        await asyncio.sleep(3.5)
        assert not await admits(b)
        with pytest.raises(TooManyConnections):
            await b.connections.open("ada", None)


async def test_a_dead_node_s_slots_and_connections_are_reclaimed_once_its_lease_lapses(
    shared_redis: RedisServer,
) -> None:
    policy = LimitPolicy(max_streams_per_user=1, max_connections_per_user=1)
    async with two_nodes(shared_redis, policy, lease=2.0) as (a, b):
        await a.admit()
        await a.connections.open("ada", None)
        assert not await admits(b)
        # a dies: nothing of it renews its lease any more, nothing of it is released.
        await a.quotas.aclose()
        await a.connections.aclose()
        await until(lambda: admits(b))
        await until(lambda: connects(b))


async def connects(n: Node, user: str = "ada") -> bool:
    try:
        await n.connections.open(user, None)
    except (TooManyConnections, BackendUnavailable):
        return False
    return True


# -- Redis lost ------------------------------------------------------------------------------


async def test_redis_lost_refuses_with_backend_unavailable_and_admits_again_once_back(
    own_redis: RedisServer,
) -> None:
    policy = LimitPolicy(max_streams_per_user=2, tokens_per_minute_per_user=100)
    async with two_nodes(own_redis, policy) as (a, b):
        running = await a.admit()
        close = await a.connections.open("ada", None)
        own_redis.kill()
        with pytest.raises(BackendUnavailable):
            await a.connections.open("ada", None)  # a's lease is fresh: the script fails
        with pytest.raises(BackendUnavailable):
            await b.admit()  # b has no lease yet: renewing it fails
        # What cannot await is kept, tried again, and written once Redis is back.
        with structlog.testing.capture_logs() as logs:
            a.quotas.release(running, ended(Usage(prompt_tokens=70, completion_tokens=40)))
            close()
            await eventually(lambda: {"writes": "limit:streams"} in retried(logs))
        own_redis.start()
        await until(lambda: connects(b))
        await a.settled()
        with pytest.raises(RequestRateLimited):
            await b.admit()
        await b.admit("bob")


async def test_a_redis_full_under_noeviction_refuses_with_backend_unavailable(
    own_redis: RedisServer,
) -> None:
    async with two_nodes(own_redis, LimitPolicy(requests_per_minute_per_user=10)) as (a, _):
        running = await a.admit()
        admin = node_client(own_redis)
        try:
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", "1")
            with pytest.raises(BackendUnavailable):
                await a.admit()
            a.quotas.release(running, None)
            await admin.config_set("maxmemory", "0")
        finally:
            await admin.aclose()
        await a.settled()
        assert await admits(a)


def retried(logs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"writes": e["writes"]} for e in logs if e["event"] == "redis writes retrying"]


async def test_while_redis_stalls_releases_wait_and_an_answer_lost_takes_nothing(
    own_redis: RedisServer,
) -> None:
    policy = LimitPolicy(max_streams_per_user=1, max_connections_per_user=1)
    async with two_nodes(own_redis, policy, lease=10.0) as (a, b):
        running = await a.admit()
        close = await a.connections.open("ada", None)
        assert await admits(b, "bob")
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            # Sent, then given up on: Redis runs it once it wakes, and it must take nothing.
            with pytest.raises(BackendUnavailable):
                await b.admit("cy")
            a.quotas.release(running, ended())
            close()
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        await a.settled()
        await b.settled()
        assert await admits(b)
        assert await connects(b)
        # cy's one slot is free: the lost admission holds none of it.
        await b.admit("cy")


async def test_an_admission_voided_before_redis_runs_it_takes_nothing(
    shared_redis: RedisServer,
) -> None:
    # The other order of a lost answer: the void reaches Redis before the late admission.
    backend = RedisBackend(node_client(shared_redis), prefix=private_prefix())
    try:
        slots = backend.user_key("ada", "limit:streams")
        void = backend.user_key("ada", "limit:void")
        requests = backend.user_key("ada", "limit:requests")
        keys = [slots, requests, backend.user_key("ada", "limit:tokens")]
        keys += [backend.user_key("ada", "limit:spend"), void]
        await backend.client.register_script(VOID)(keys=[slots, void], args=["r1", "a1", 60_000])
        late = backend.client.register_script(ADMIT)
        args: list[str | int] = [backend.node_id, "r1", "a1", 1, 10, 0, "0.0", 60_000]
        assert await late(keys=keys, args=args) == [b"void"]
        assert await backend.client.exists(slots, requests) == 0
    finally:
        await backend.aclose()


async def test_a_node_s_running_streams_count_again_after_redis_restarts_empty(
    own_redis: RedisServer,
) -> None:
    policy = LimitPolicy(max_streams_per_user=1, max_connections_per_user=1)
    async with two_nodes(own_redis, policy, lease=2.0) as (a, b):
        await a.admit()
        await a.connections.open("ada", None)
        own_redis.restart()
        probe = node_client(own_redis)
        try:
            slots = a.backend.user_key("ada", "limit:streams")
            connections = a.backend.user_key("ada", "limit:connections")
            await until(lambda: written_again(probe, slots, connections))
        finally:
            await probe.aclose()
        assert not await admits(b)
        with pytest.raises(TooManyConnections):
            await b.connections.open("ada", None)


async def written_again(probe: Redis, *keys: str) -> bool:
    try:
        return all([await probe.hlen(key) == 1 for key in keys])
    except redis_errors:
        return False
