"""Per-user limits over two real gateways sharing one Redis (`RedisQuotas` as their
admission, `RedisConnections` as their connection limit), on real sockets: a user who
alternates between the gateways meets the same limits as on one, and with Redis lost
every way in answers `backend_unavailable` (503, or an error event on an open
WebSocket) until it is back, without a restart."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.support.redis_nodes import node_client, until
from tests.support.redis_server import RedisServer, private_prefix
from tests.support.server import RunningServer, WsClient, running_server, ws_client
from tokenwire.app import build_gateway, limit_policy
from tokenwire.backends.redis import RedisBackend
from tokenwire.backends.redis.limits import RedisConnections, RedisQuotas
from tokenwire.settings import Settings, load_settings

QUICK = {"tokens": 3, "delay_ms": 0}


def limited(**limits: Any) -> Settings:
    providers = [{"name": "simulated", "kind": "simulated", "options": QUICK}]
    return load_settings(None, {"providers": providers, "limits": limits})


@contextlib.asynccontextmanager
async def gateway_on(
    redis: RedisServer, prefix: str, settings: Settings
) -> AsyncIterator[RunningServer]:
    """A gateway whose per-user limits live in Redis under `prefix` (a node of its own)."""
    backend = RedisBackend(node_client(redis), prefix=prefix)
    policy = limit_policy(settings)
    quotas, connections = RedisQuotas(backend, policy), RedisConnections(backend, policy)
    gateway = build_gateway(settings)
    gateway.admission = quotas
    try:
        async with running_server(settings, gateway=gateway) as server:
            server.server.config.app.state.access.connections = connections
            yield server
    finally:
        await quotas.aclose()
        await connections.aclose()
        await backend.aclose()


@contextlib.asynccontextmanager
async def two_gateways(
    redis: RedisServer, settings: Settings
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    prefix = private_prefix()
    async with (
        gateway_on(redis, prefix, settings) as a,
        gateway_on(redis, prefix, settings) as b,
    ):
        yield a, b


async def answer(client: WsClient, request_id: str) -> list[dict[str, Any]]:
    """The frames of one request, to its stream_end or its error."""
    await client.send({"type": "ai_request", "prompt": "hi", "request_id": request_id})
    frames = []
    while True:
        frame = await client.recv(10)
        if frame.get("request_id") != request_id:
            continue
        frames.append(frame)
        if frame["event_type"] in ("stream_end", "error"):
            return frames


def refused_as(frames: list[dict[str, Any]]) -> str | None:
    """The error type a request was refused with, or None if it ran."""
    if frames[-1]["event_type"] != "error":
        return None
    assert len(frames) == 1, frames  # refused: its error and nothing else
    error_type: str = frames[0]["data"]["error_type"]
    return error_type


async def test_a_user_alternating_websocket_requests_between_two_gateways_is_limited_at_n(
    shared_redis: RedisServer,
) -> None:
    settings = limited(requests_per_minute_per_user=3)
    async with (
        two_gateways(shared_redis, settings) as (a, b),
        ws_client(a, "?user_id=ada") as on_a,
        ws_client(b, "?user_id=ada") as on_b,
    ):
        clients = [on_a, on_b, on_a, on_b, on_a]
        refusals = [refused_as(await answer(c, f"r{i}")) for i, c in enumerate(clients)]
        assert refusals == [None, None, None, "rate_limited", "rate_limited"]


async def test_a_user_s_connections_are_counted_over_both_gateways(
    shared_redis: RedisServer,
) -> None:
    settings = limited(max_connections_per_user=2)
    async with (
        two_gateways(shared_redis, settings) as (a, b),
        ws_client(a, "?user_id=ada"),
        ws_client(b, "?user_id=ada"),
        httpx.AsyncClient(base_url=a.url, params={"user_id": "ada"}) as http,
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_client(b, "?user_id=ada"):
                pass
        assert refused.value.response.status_code == 429
        response = await http.post("/v1/chat/completions", json=chat())
        assert (response.status_code, response.json()["error"]["code"]) == (
            429,
            "too_many_connections",
        )


def chat() -> dict[str, Any]:
    return {"model": "simulated", "messages": [{"role": "user", "content": "hi"}]}


async def test_with_redis_lost_every_way_in_answers_backend_unavailable_until_it_is_back(
    own_redis: RedisServer,
) -> None:
    async with (
        gateway_on(own_redis, private_prefix(), limited()) as server,
        ws_client(server, "?user_id=ada") as open_before,
        httpx.AsyncClient(base_url=server.url, params={"user_id": "ada"}) as http,
    ):
        assert refused_as(await answer(open_before, "r0")) is None
        own_redis.kill()
        # A request on a WebSocket opened before: its error event.
        assert refused_as(await answer(open_before, "r1")) == "backend_unavailable"
        # A new WebSocket: its handshake refused.
        with pytest.raises(InvalidStatus) as refused:
            async with ws_client(server, "?user_id=ada"):
                pass
        assert refused.value.response.status_code == 503
        body = json.loads(refused.value.response.body or b"{}")
        assert body["error"]["type"] == "backend_unavailable"
        # SSE and the /v1 dialects: 503 in their own shapes.
        stream = await http.post("/api/streams", json={"prompt": "hi"})
        assert stream.status_code == 503
        assert "backend_unavailable" in stream.text
        completion = await http.post("/v1/chat/completions", json=chat())
        assert (completion.status_code, completion.json()["error"]["code"]) == (
            503,
            "backend_unavailable",
        )
        own_redis.start()
        await until(lambda: answered(open_before))
        async with ws_client(server, "?user_id=ada") as opened_after:
            assert refused_as(await answer(opened_after, "r-after")) is None


ASKED = iter(range(1_000_000))


async def answered(client: WsClient) -> bool:
    return refused_as(await answer(client, f"again-{next(ASKED)}")) is None
