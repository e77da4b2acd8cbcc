"""A JWT that expires while its connection is open: the WebSocket is told and closed with
1008 at expiry unless renewed by an `authenticate` message of the same user; an SSE stream
ends with an `error` event; either way the running stream is not lost, and can be
re-attached with a fresh token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.auth import ENVIRON, bearer, hs256, jwt_settings
from tests.support.server import (
    RunningServer,
    WsClient,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tokenwire.core.spec import RequestKey

# Long enough that the stream is still running when the token expires.
LONG = {"options": {"tokens": 900, "delay_ms": 4}}
LIFETIME = 2.0
# How late a busy machine may run the expiry timer. The server's own timestamp on the
# error event says when it acted, however slowly the client then reads.
LATE = 5.0


def acted_at_expiry(error: dict[str, Any], expires_at: float) -> bool:
    """The server sent this error event when the credential expired: not before."""
    return expires_at - 0.1 <= error["timestamp"] < expires_at + LATE


@contextlib.asynccontextmanager
async def jwt_server() -> AsyncIterator[RunningServer]:
    async with running_server(jwt_settings(), environ=ENVIRON) as server:
        yield server


def long_request(request_id: str) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "a long story",
        "request_id": request_id,
        "config": LONG,
    }


async def until_closed(client: WsClient, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every frame until the server closes the connection."""
    frames = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                frames.append(await client.recv(timeout))
    return frames


def last_seq(frames: list[dict[str, Any]], request_id: str) -> int:
    return max(f["seq"] for f in frames if f.get("request_id") == request_id and f.get("seq"))


# -- WebSocket ------------------------------------------------------------------------------


async def test_an_expired_websocket_gets_an_error_then_1008_and_its_stream_resumes_elsewhere() -> (
    None
):
    async with jwt_server() as server:
        expires_at = time.time() + LIFETIME
        token = hs256("ada", lifetime=LIFETIME)
        async with ws_client(server, additional_headers=bearer(token)) as client:
            await client.send(long_request("long"))
            frames = await until_closed(client)
            assert client.ws.close_code == 1008

        # The error is the last frame: nothing the stream sent after it follows it.
        error = frames[-1]
        assert error["event_type"] == "error"
        assert error["data"]["error_type"] == "authentication_failed"
        assert token not in json.dumps(error)
        assert acted_at_expiry(error, expires_at)
        assert server.gateway.is_running(RequestKey("ada", "long"))
        seen = last_seq(frames, "long")

        fresh = hs256("ada")
        async with ws_client(server, additional_headers=bearer(fresh)) as again:
            await again.send({"type": "resume", "request_id": "long", "last_seq": seen})
            after = await again.until_end("long", timeout=30)

    assert [f["seq"] for f in after] == list(range(seen + 1, after[-1]["seq"] + 1))
    assert after[-1]["data"]["status"] == "completed"


async def test_authenticate_with_a_fresh_token_keeps_the_connection_open_past_the_old_expiry() -> (
    None
):
    async with jwt_server() as server:
        old_expiry = time.time() + LIFETIME
        async with ws_client(
            server, additional_headers=bearer(hs256("ada", lifetime=LIFETIME))
        ) as client:
            fresh_expiry = time.time() + 300
            await client.send({"type": "authenticate", "token": hs256("ada", lifetime=300)})
            answer = await client.recv()
            assert answer["event_type"] == "connection_status"
            assert answer["data"]["status"] == "authenticated"
            assert answer["data"]["expires_at"] == pytest.approx(fresh_expiry, abs=1)

            # Nothing comes when the first token expires: no error, no close.
            with pytest.raises(TimeoutError):
                await client.recv(timeout=old_expiry + 1.0 - time.time())
            await client.send({"type": "ping", "timestamp": 7})
            assert (await client.recv())["type"] == "pong"


@pytest.mark.parametrize("renewal", ["another_user", "garbage", "alg_none"])
async def test_a_refused_authenticate_is_an_error_and_does_not_extend(renewal: str) -> None:
    token = {
        "another_user": hs256("bob", lifetime=300),
        "garbage": "not-a-token-at-all",
        "alg_none": jwt.encode({"sub": "ada", "exp": time.time() + 300}, None, algorithm="none"),
    }[renewal]
    async with jwt_server() as server:
        expires_at = time.time() + LIFETIME
        async with ws_client(
            server, additional_headers=bearer(hs256("ada", lifetime=LIFETIME))
        ) as client:
            await client.send({"type": "authenticate", "token": token})
            refused = await client.recv()
            assert refused["event_type"] == "error"
            assert refused["data"]["error_type"] == "authentication_failed"
            assert token not in json.dumps(refused)

            frames = await until_closed(client)
            assert client.ws.close_code == 1008

    assert [f["event_type"] for f in frames] == ["error"]
    assert frames[0]["data"]["error_type"] == "authentication_failed"
    assert acted_at_expiry(frames[0], expires_at)


async def test_refused_authenticate_messages_count_against_the_address() -> None:
    # Else an open connection would be a way to guess credentials unthrottled.
    settings = jwt_settings(limits={"auth_failures_per_minute_per_address": 2})
    async with running_server(settings, environ=ENVIRON) as server:
        async with ws_client(server, additional_headers=bearer(hs256("ada"))) as client:
            for _ in range(2):
                await client.send({"type": "authenticate", "token": "not-a-token-at-all"})
                assert (await client.recv())["data"]["error_type"] == "authentication_failed"
        with pytest.raises(InvalidStatus) as refused:
            async with ws_client(server, additional_headers=bearer(hs256("ada"))):
                pass
    assert refused.value.response.status_code == 429


async def test_authenticate_with_authentication_off_is_an_error() -> None:
    async with running_server(simulated_settings()) as server, ws_client(server) as client:
        await client.send({"type": "authenticate", "token": hs256("ada")})
        refused = await client.recv()
        await client.send({"type": "ping", "timestamp": 1})
        still_open = await client.recv()

    assert refused["event_type"] == "error"
    assert refused["data"]["error_type"] == "authentication_failed"
    assert still_open["type"] == "pong"


# -- Server-Sent Events ---------------------------------------------------------------------


async def sse_blocks(response: httpx.Response) -> list[dict[str, str]]:
    """The response's SSE blocks as field -> value (comments left out)."""
    blocks, fields = [], {}
    async for line in response.aiter_lines():
        if not line:
            if fields:
                blocks.append(fields)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    if fields:
        blocks.append(fields)
    return blocks


async def test_an_sse_stream_ends_with_an_error_at_expiry_and_reattaches_with_a_fresh_token() -> (
    None
):
    async with jwt_server() as server, httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        expires_at = time.time() + LIFETIME
        token = hs256("ada", lifetime=LIFETIME)
        body = {"prompt": "a long story", "request_id": "long", "config": LONG}
        async with http.stream("POST", "/api/streams", json=body, headers=bearer(token)) as first:
            assert first.status_code == 200
            before = await sse_blocks(first)

        error = before[-1]
        assert error["event"] == "error"
        assert "id" not in error
        assert json.loads(error["data"])["data"]["error_type"] == "authentication_failed"
        assert acted_at_expiry(json.loads(error["data"]), expires_at)
        assert server.gateway.is_running(RequestKey("ada", "long"))
        seen = int([block for block in before if "id" in block][-1]["id"])

        fresh = {**bearer(hs256("ada")), "last-event-id": str(seen)}
        async with http.stream("GET", "/api/streams/long/events", headers=fresh) as again:
            assert again.status_code == 200
            after = await sse_blocks(again)

    assert [int(block["id"]) for block in after] == list(range(seen + 1, seen + 1 + len(after)))
    end = json.loads(after[-1]["data"])
    assert end["event_type"] == "stream_end"
    assert end["data"]["status"] == "completed"
    assert of_type([json.loads(block["data"]) for block in after], "error") == []
