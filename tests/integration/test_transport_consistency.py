"""Transports agree: bodies refused alike, strict query flags, limits named in close reasons,
readiness during shutdown, and /v1 streams counted as connections."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from tests.support.providers import WatchedProvider
from tests.support.server import (
    gateway_with,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually

JSON = {"content-type": "application/json"}


async def test_a_body_that_is_not_utf8_is_400_and_one_not_json_is_415() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        url = server.url + "/api/streams"
        latin1 = '{"prompt": "caf\xe9"}'.encode("latin-1")
        not_utf8 = await http.post(url, content=latin1, headers=JSON)
        as_text = await http.post(
            url, content=b'{"prompt": "hi"}', headers={"content-type": "text/plain"}
        )
    assert not_utf8.status_code == 400
    assert not_utf8.json()["error"]["type"] == "invalid_request"
    assert "UTF-8" in not_utf8.json()["error"]["message"]
    assert as_text.status_code == 415
    assert server.gateway.stats.total_streams == 0


@pytest.mark.parametrize("value", ["1", "yes", "True", ""])
async def test_sse_compact_takes_true_or_false_only(value: str) -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.ask("hi", request_id="c1", config={"options": {"tokens": 3, "delay_ms": 0}})
        async with httpx.AsyncClient() as http:
            url = f"{server.url}/api/streams/c1/events"
            refused = await http.get(url, params={"compact": value})
            taken = [await http.get(url, params={"compact": ok}) for ok in ("true", "false")]
    assert refused.status_code == 400
    assert "compact" in refused.json()["error"]["message"]
    assert [r.status_code for r in taken] == [200, 200]


async def test_close_1009_names_the_configured_max_message_bytes() -> None:
    settings = simulated_settings(limits={"max_message_bytes": 4096})
    async with running_server(settings) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "x" * 4096})
        await eventually(lambda: client.ws.close_code is not None, 5)
    assert client.ws.close_code == 1009
    assert client.ws.close_reason == "message exceeds 4096 bytes (max_message_bytes)"


async def test_readyz_is_503_from_the_moment_shutdown_starts() -> None:
    settings = simulated_settings(server={"shutdown_grace_seconds": 5})
    async with (
        running_server(settings) as server,
        ws_client(server) as client,
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(server.url + "/readyz")).status_code == 200
        await client.send(
            {"type": "ai_request", "prompt": "x", "config": {"options": {"tokens": 3000}}}
        )
        await client.recv()  # the stream runs
        # What a SIGTERM does (GracefulServer.handle_exit), without signalling the test process.
        server.server.handle_exit(signal.SIGTERM, None)
        during = await http.get(server.url + "/readyz")
    assert during.status_code == 503
    assert during.json()["status"] == "shutting_down"


def v1_stream(model: str = "watched") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def test_v1_streams_count_against_the_user_s_connections() -> None:
    provider = WatchedProvider(tokens=5000, delay_ms=5)
    settings = simulated_settings(limits={"max_connections_per_user": 1})
    gateway = gateway_with(provider, settings=settings)
    async with running_server(settings, gateway=gateway) as server, httpx.AsyncClient() as http:
        url = server.url + "/v1/chat/completions"
        async with http.stream("POST", url, json=v1_stream()) as held:
            assert held.status_code == 200
            await anext(held.aiter_lines())
            refused = await http.post(url, json=v1_stream())
        # The held stream went (its client left): its slot comes back.
        await eventually(lambda: server.gateway.running == 0)
        async with http.stream("POST", url, json=v1_stream()) as again:
            again_status = again.status_code
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_connections"  # in OpenAI's shape
    assert again_status == 200


async def test_a_v1_stream_refused_for_connections_does_not_run_on() -> None:
    provider = WatchedProvider(tokens=5000, delay_ms=5)
    settings = simulated_settings(limits={"max_connections_per_user": 1})
    gateway = gateway_with(provider, settings=settings)
    async with (
        running_server(settings, gateway=gateway) as server,
        ws_client(server) as client,  # holds the user's one connection
        httpx.AsyncClient() as http,
    ):
        refused = await http.post(server.url + "/v1/chat/completions", json=v1_stream())
        await eventually(lambda: server.gateway.running == 0)
        assert client.hello["data"]["status"] == "connected"
    assert refused.status_code == 429
