"""Cancels and followers across nodes through Redis: two gateways in one process,
each a node with its own `RedisCluster`, on one private key prefix."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.gateway_nodes import Node, cluster_nodes
from tests.support.redis_server import RedisServer
from tests.support.server import RunningServer, WsClient, dropping_client, ws_client
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import BackendUnavailable, UnknownRequest

# Runs for a minute unless cancelled: long past anything a test waits for.
LONG = {"options": {"tokens": 3000, "delay_ms": 20}}
ADA = "?user_id=ada"


def request(request_id: str) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "tell me a long story",
        "request_id": request_id,
        "config": LONG,
        "stream_config": {"granularity": "token"},
    }


def key(request_id: str) -> RequestKey:
    return RequestKey("ada", request_id)


async def until(client: WsClient, event_type: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next frame of `event_type` (the ones before it are dropped)."""
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.recv(timeout)
            if frame.get("event_type") == event_type:
                return frame


@contextlib.asynccontextmanager
async def raw_client(server: RunningServer, query: str = ADA) -> AsyncIterator[WsClient]:
    """A client the test may drop without a close frame (`client.ws.transport.abort()`)."""
    async with dropping_client(server.ws_url + query) as client:
        yield client


async def started_on(node: Node, client: WsClient, request_id: str) -> None:
    await client.send(request(request_id))
    await until(client, "token")
    assert node.gateway.is_running(key(request_id))


async def resumed_on(client: WsClient, request_id: str) -> None:
    await client.send({"type": "resume", "request_id": request_id, "last_seq": 0})
    await until(client, "token")


async def ended(node: Node, request_id: str) -> dict[str, Any]:
    """The stream_end of a request of ada's that ran on `node`, once it is there."""
    log = await node.gateway.logs.get(key(request_id))
    assert log is not None
    await eventually(lambda: log.finished, AT_ONCE)
    return next(log.records(log.last_seq - 1)).data


# -- cancel on any node ------------------------------------------------------------


async def test_a_cancel_on_another_node_stops_the_provider_on_the_owner(
    shared_redis: RedisServer,
) -> None:
    async with cluster_nodes(shared_redis) as (a, b), ws_client(a.server, ADA) as client:
        await started_on(a, client, "r1")
        asked = time.monotonic()
        await b.gateway.cancel_anywhere(key("r1"), "cancelled from b")
        await asyncio.wait_for(a.provider.closed.wait(), AT_ONCE)
        latency = a.provider.closed_at[-1] - asked
        end = await until(client, "stream_end")
    assert end["data"]["status"] == "cancelled"
    assert end["data"]["reason"] == "cancelled from b"
    # Loose: one pub/sub message and a provider's close take milliseconds.
    assert latency < 1.0, f"cancel took {latency:.3f} s from b's publish to a's provider"


async def test_cancel_request_and_delete_on_another_node_cancel_there(
    shared_redis: RedisServer,
) -> None:
    async with (
        cluster_nodes(shared_redis) as (a, b),
        ws_client(a.server, ADA) as owner,
        ws_client(b.server, ADA) as elsewhere,
        httpx.AsyncClient(base_url=b.server.url) as http,
    ):
        await started_on(a, owner, "ws")
        await elsewhere.send({"type": "cancel_request", "request_id": "ws"})
        assert (await until(owner, "stream_end"))["data"]["status"] == "cancelled"
        await started_on(a, owner, "sse")
        deleted = await http.delete("/api/streams/sse", params={"user_id": "ada"})
        assert deleted.status_code == 200, deleted.text
        assert (await until(owner, "stream_end"))["data"]["status"] == "cancelled"


async def test_another_user_s_id_or_an_unknown_one_is_unknown_on_every_node(
    shared_redis: RedisServer,
) -> None:
    async with (
        cluster_nodes(shared_redis) as (a, b),
        ws_client(a.server, ADA) as owner,
        ws_client(b.server, "?user_id=mallory") as mallory,
        httpx.AsyncClient(base_url=b.server.url) as http,
    ):
        await started_on(a, owner, "r1")
        for request_id in ("r1", "nobody-runs-this"):
            await mallory.send({"type": "cancel_request", "request_id": request_id})
            error = await until(mallory, "error")
            assert error["data"]["error_type"] == "unknown_request"
            deleted = await http.delete(f"/api/streams/{request_id}", params={"user_id": "mallory"})
            assert deleted.status_code == 404
        unknown = await http.delete("/api/streams/nobody-runs-this", params={"user_id": "ada"})
        assert unknown.status_code == 404
        assert a.gateway.is_running(key("r1"))
        assert not a.gateway.is_cancelled(key("r1"))


async def test_a_cancel_that_no_live_owner_hears_is_refused_and_a_dead_owner_s_is_unknown(
    shared_redis: RedisServer,
) -> None:
    async with cluster_nodes(shared_redis) as (_, b):
        backend = b.cluster.backend
        # A node that records itself as the owner, holds its lease, and is not listening
        # (as while it subscribes again after losing Redis).
        await b.redis.set(backend.request_key(key("r1"), "owner"), "deaf")
        await b.redis.set(backend.node_key("deaf", "lease"), "deaf", px=60_000)
        with pytest.raises(BackendUnavailable):
            await b.gateway.cancel_anywhere(key("r1"))
        await b.redis.delete(backend.node_key("deaf", "lease"))  # and now it died
        with pytest.raises(UnknownRequest):
            await b.gateway.cancel_anywhere(key("r1"))


# -- followers on every node count for the resume grace -------------------------------


async def test_a_request_followed_only_on_another_node_goes_on_when_its_owner_s_client_goes(
    shared_redis: RedisServer,
) -> None:
    async with cluster_nodes(shared_redis) as (a, b), ws_client(b.server, ADA) as follower:
        async with ws_client(a.server, ADA) as owner:
            await started_on(a, owner, "r1")
            await resumed_on(follower, "r1")
        # The owner's client closed on purpose (1000): only b's follower counts now.
        assert await a.cluster.answer() is True
        assert a.gateway.is_running(key("r1"))
        assert not a.gateway.is_cancelled(key("r1"))
        await until(follower, "token")  # and it still streams there
        await a.gateway.cancel_anywhere(key("r1"))


async def test_the_last_follower_leaving_another_node_cancels_the_request(
    shared_redis: RedisServer,
) -> None:
    # A long lease: a checks again only every 10 s, so what cancels is b's message.
    async with cluster_nodes(shared_redis, lease=30.0) as (a, b):
        async with ws_client(b.server, ADA) as follower:
            async with ws_client(a.server, ADA) as owner:
                await started_on(a, owner, "r1")
                await resumed_on(follower, "r1")
            assert await a.cluster.answer() is True
        # b's follower closed on purpose: b tells a, which finds nobody anywhere.
        assert await a.cluster.answer(timeout=AT_ONCE) is False
        await asyncio.wait_for(a.provider.closed.wait(), AT_ONCE)
        assert (await ended(a, "r1"))["status"] == "cancelled"


async def test_a_follower_lost_on_another_node_keeps_the_request_for_its_grace_only(
    shared_redis: RedisServer,
) -> None:
    grace = 2.0
    async with cluster_nodes(shared_redis, grace=grace) as (a, b):
        async with raw_client(b.server) as follower:
            async with ws_client(a.server, ADA) as owner:
                await started_on(a, owner, "r1")
                await resumed_on(follower, "r1")
            assert await a.cluster.answer() is True
            dropped = time.monotonic()
            follower.ws.transport.abort()  # no close frame: b keeps it for its grace
        async with asyncio.timeout(grace + AT_ONCE):
            while await a.cluster.answer():
                pass  # a checks again while b's follower is in its grace
        await asyncio.wait_for(a.provider.closed.wait(), AT_ONCE)
        assert a.provider.closed_at[-1] - dropped >= grace
        assert (await ended(a, "r1"))["status"] == "cancelled"


async def test_a_follower_back_on_another_node_within_its_grace_keeps_the_request(
    shared_redis: RedisServer,
) -> None:
    grace = 2.0
    async with cluster_nodes(shared_redis, grace=grace) as (a, b):
        async with raw_client(b.server) as follower:
            async with ws_client(a.server, ADA) as owner:
                await started_on(a, owner, "r1")
                await resumed_on(follower, "r1")
            follower.ws.transport.abort()
        # Unread frames pile up in this client while the test waits: it is dropped, not
        # closed (a close would wait behind them), once the request is cancelled.
        async with raw_client(b.server) as back:
            await resumed_on(back, "r1")
            passed = time.monotonic() + grace + 1.0
            while time.monotonic() < passed:  # a checks every third of a lease
                assert await a.cluster.answer() is True
            assert not a.gateway.is_cancelled(key("r1"))
            await a.gateway.cancel_anywhere(key("r1"))


async def test_a_dead_node_s_followers_keep_a_request_no_longer_than_its_lease(
    shared_redis: RedisServer,
) -> None:
    async with cluster_nodes(shared_redis) as (a, _), ws_client(a.server, ADA) as owner:
        await started_on(a, owner, "r1")
        backend = a.cluster.backend
        followers = backend.request_key(key("r1"), "followers")
        # A node that died long ago (no lease), one whose lease is about to lapse, and a
        # live one whose follower's grace ended (its own timer would have said so).
        await a.redis.hset(
            followers,
            mapping={"gone:s1": "live", "dying:s2": "live", "late:s3": repr(time.time() - 1)},
        )
        await a.redis.set(backend.node_key("dying", "lease"), "dying", px=1500)
        await a.redis.set(backend.node_key("late", "lease"), "late", px=600_000)
        await owner.ws.close()
        assert await a.cluster.answer() is True  # "dying" still holds its lease
        async with asyncio.timeout(AT_ONCE):  # a lease of 1.5 s, checked every 0.5 s
            while await a.cluster.answer():
                pass
        await asyncio.wait_for(a.provider.closed.wait(), AT_ONCE)
        assert (await ended(a, "r1"))["status"] == "cancelled"
        assert await a.redis.exists(backend.node_key("dying", "lease")) == 0


# -- Redis lost ------------------------------------------------------------------------


async def test_a_cancel_elsewhere_without_redis_is_refused_and_works_once_redis_is_back(
    own_redis: RedisServer,
) -> None:
    async with (
        cluster_nodes(own_redis) as (a, b),
        ws_client(a.server, ADA) as owner,
        ws_client(b.server, ADA) as elsewhere,
        httpx.AsyncClient(base_url=b.server.url) as http,
    ):
        await started_on(a, owner, "r1")
        own_redis.kill()
        with pytest.raises(BackendUnavailable):
            await b.gateway.cancel_anywhere(key("r1"))
        await elsewhere.send({"type": "cancel_request", "request_id": "r1"})
        assert (await until(elsewhere, "error"))["data"]["error_type"] == "backend_unavailable"
        deleted = await http.delete("/api/streams/r1", params={"user_id": "ada"})
        assert deleted.status_code == 503
        await until(owner, "token")  # a's stream goes on for its client meanwhile
        own_redis.start()  # empty: it kept nothing
        probe = Redis.from_url(own_redis.url)
        try:
            owner_key = a.cluster.backend.request_key(key("r1"), "owner")
            channel = a.cluster.control.channel

            async def subscribed_and_owned() -> bool:
                [(_, listeners)] = await probe.pubsub_numsub(channel)
                owned = await probe.exists(owner_key) == 1
                return bool(listeners) and owned and b.availability.up

            deadline = time.monotonic() + 15
            while not await subscribed_and_owned():
                assert time.monotonic() < deadline, "a never came back to Redis"
                await asyncio.sleep(0.05)
        finally:
            await probe.aclose()
        await elsewhere.send({"type": "cancel_request", "request_id": "r1"})
        assert (await until(owner, "stream_end"))["data"]["status"] == "cancelled"


# -- stats -----------------------------------------------------------------------------


async def test_stats_and_sessions_show_every_node(shared_redis: RedisServer) -> None:
    async with (
        cluster_nodes(shared_redis) as (a, b),
        raw_client(a.server) as owner,  # dropped at the end: see the grace test above
        ws_client(b.server, "?user_id=bob"),
        httpx.AsyncClient(base_url=b.server.url) as http,
    ):
        await started_on(a, owner, "r1")

        async def reported() -> dict[str, Any]:
            body: dict[str, Any] = (await http.get("/api/streaming/stats")).json()["cluster"]
            return body

        deadline = time.monotonic() + AT_ONCE
        while (await reported())["nodes"].get("n0", {}).get("streams_running") != 1:
            assert time.monotonic() < deadline, await reported()
            await asyncio.sleep(0.05)
        cluster = await reported()
        assert cluster["node_id"] == "n1"
        assert cluster["nodes_alive"] == 2
        assert cluster["nodes"]["n1"] == {"streams_running": 0, "sessions": 1}
        sessions = (await http.get("/api/streaming/sessions")).json()
        users = {s["user_id"]: s["node_id"] for s in sessions["active_session_details"].values()}
        assert users == {"ada": "n0", "bob": "n1"}
        assert sessions["active_sessions"] == 2
        await a.gateway.cancel_anywhere(key("r1"))


async def test_a_node_that_stops_leaves_the_stats_at_once(shared_redis: RedisServer) -> None:
    async with cluster_nodes(shared_redis) as (a, b):

        async def names() -> list[str]:
            nodes, reachable = await a.gateway.nodes()
            assert reachable
            return [node.node_id for node in nodes]

        deadline = time.monotonic() + AT_ONCE
        while await names() != ["n0", "n1"]:
            assert time.monotonic() < deadline, await names()
            await asyncio.sleep(0.05)
        await b.cluster.close()  # as its gateway's shutdown does; its lease still holds
        assert await names() == ["n0"]
