"""The connection limits of `[limits]` on real sockets: connections per user and in all
(the WebSocket handshake and SSE responses refused with 429), the preferences' size,
the request-head deadline against silent and slowloris clients, the idle timeout
(`[streams] session_idle_seconds`), and server pings that drop a dead peer.

These also hold `transports/uvicorn_http.py` to the uvicorn internals it uses: if
uvicorn changes them, the head deadline stops closing connections and tests here fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.auth import ENVIRON, api_key_settings
from tests.support.providers import WatchedProvider
from tests.support.raw_ws import RawWebSocket
from tests.support.server import (
    RunningServer,
    WsClient,
    gateway_with,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.core.provider import ProviderRequest
from tokenwire.security.limits import Connections
from tokenwire.settings import Settings

QUICK = {"tokens": 3, "delay_ms": 0}
SLOW = {"tokens": 100_000, "delay_ms": 50}


def settings_with(**tables: Any) -> Settings:
    providers = [{"name": "simulated", "kind": "simulated", "options": QUICK}]
    return simulated_settings(providers=providers, **tables)


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def counted(server: RunningServer) -> Connections:
    """The server's count of open WebSockets and SSE responses."""
    connections: Connections = server.server.config.app.state.access.connections
    return connections


async def refused_handshake(server: RunningServer, user: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.ws_url}?user_id={user}"):
            pass
    return refused.value


def assert_too_many_connections(status: int, headers: Any, body: bytes) -> None:
    assert status == 429
    assert headers["retry-after"].isdigit()
    assert int(headers["retry-after"]) >= 1
    assert json.loads(body)["error"]["type"] == "too_many_connections"


async def sse_post(http: httpx.AsyncClient, user: str, **config: Any) -> httpx.Response:
    body = {"prompt": "hi", "config": config}
    return await http.post("/api/streams", params={"user_id": user}, json=body)


# -- max_connections_per_user and max_connections -----------------------------------------


async def test_past_max_connections_per_user_the_websocket_handshake_is_429() -> None:
    settings = settings_with(limits={"max_connections_per_user": 2})
    async with (
        running_server(settings) as server,
        ws_client(server, "?user_id=ada"),
        ws_client(server, "?user_id=ada"),
    ):
        refused = await refused_handshake(server, "ada")
        response = refused.response
        assert_too_many_connections(response.status_code, response.headers, response.body)
        assert len(server.gateway.sessions) == 2
        # Another user's connections are counted apart.
        async with ws_client(server, "?user_id=bob") as bob:
            assert bob.hello["data"]["status"] == "connected"


async def test_past_max_connections_per_user_sse_streams_are_429() -> None:
    settings = settings_with(limits={"max_connections_per_user": 2})
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        finished = await sse_post(http, "ada")
        request_id = finished.headers["tokenwire-request-id"]
        async with ws_client(server, "?user_id=ada"), ws_client(server, "?user_id=ada"):
            started = await sse_post(http, "ada")
            assert_too_many_connections(started.status_code, started.headers, started.content)
            attached = await http.get(
                f"/api/streams/{request_id}/events", params={"user_id": "ada"}
            )
            assert_too_many_connections(attached.status_code, attached.headers, attached.content)
            # The refused POST started nothing.
            assert server.gateway.stats.total_streams == 1
            assert (await sse_post(http, "bob")).status_code == 200


async def test_past_max_connections_every_user_is_refused() -> None:
    settings = settings_with(limits={"max_connections": 2})
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        ws_client(server, "?user_id=ada"),
        ws_client(server, "?user_id=bob"),
    ):
        refused = (await refused_handshake(server, "carol")).response
        assert_too_many_connections(refused.status_code, refused.headers, refused.body)
        started = await sse_post(http, "carol")
        assert_too_many_connections(started.status_code, started.headers, started.content)


async def test_closing_a_websocket_frees_its_slot() -> None:
    settings = settings_with(limits={"max_connections_per_user": 1})
    async with running_server(settings) as server:
        async with ws_client(server, "?user_id=ada"):
            await refused_handshake(server, "ada")
        await eventually(lambda: counted(server).total == 0)
        async with ws_client(server, "?user_id=ada") as again:
            assert again.hello["data"]["status"] == "connected"


async def test_an_sse_stream_holds_a_slot_until_it_ends() -> None:
    settings = settings_with(
        limits={"max_connections_per_user": 1}, streams={"resume_grace_seconds": 0}
    )
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
    ):
        body = {"prompt": "hi", "config": {"options": SLOW}}
        async with http.stream("POST", "/api/streams", params={"user_id": "ada"}, json=body) as r:
            assert r.status_code == 200
            await refused_handshake(server, "ada")
        await eventually(lambda: counted(server).total == 0)
        async with ws_client(server, "?user_id=ada") as again:
            assert again.hello["data"]["status"] == "connected"
        # A stream that ends by itself gives its slot back too.
        assert (await sse_post(http, "ada")).status_code == 200
        await eventually(lambda: counted(server).total == 0)


async def test_an_sse_request_refused_after_taking_its_slot_gives_it_back() -> None:
    settings = settings_with(limits={"max_connections_per_user": 1, "max_prompt_chars": 10})
    async with (
        running_server(settings) as server,
        httpx.AsyncClient(base_url=server.url, params={"user_id": "ada"}, timeout=10) as http,
    ):
        started = await http.post("/api/streams", json={"prompt": "z" * 11})
        attached = await http.get("/api/streams/never-started/events")
        assert (started.status_code, attached.status_code) == (413, 404)
        assert counted(server).total == 0
        async with ws_client(server, "?user_id=ada") as again:
            assert again.hello["data"]["status"] == "connected"


class DefectiveProvider(WatchedProvider):
    """A provider with a bug: checking a request raises what no error type covers."""

    def validate(self, request: ProviderRequest) -> None:
        raise RuntimeError("a defect")


async def test_an_sse_request_that_fails_on_a_defect_gives_its_slot_back() -> None:
    settings = settings_with(limits={"max_connections_per_user": 1})
    gateway = gateway_with(DefectiveProvider(), settings=settings)
    async with (
        running_server(settings, gateway=gateway) as server,
        httpx.AsyncClient(base_url=server.url, params={"user_id": "ada"}, timeout=10) as http,
    ):
        for _ in range(2):
            assert (await http.post("/api/streams", json={"prompt": "hi"})).status_code == 500
        assert counted(server).total == 0
        async with ws_client(server, "?user_id=ada") as again:
            assert again.hello["data"]["status"] == "connected"


# -- max_preferences_bytes ----------------------------------------------------------------


async def test_preferences_that_would_pass_max_preferences_bytes_are_refused_whole() -> None:
    settings = settings_with(limits={"max_preferences_bytes": 512})
    async with running_server(settings) as server, ws_client(server) as client:
        await client.send({"type": "update_preferences", "preferences": {"note": "a" * 300}})
        kept = (await client.recv())["data"]["preferences"]
        assert kept["note"] == "a" * 300
        # The change alone fits in 512 bytes; merged with what is there, it would not.
        await client.send(
            {"type": "update_preferences", "preferences": {"theme": "b", "more": "c" * 300}}
        )
        error = await client.recv()
        assert error["event_type"] == "error"
        assert error["data"]["error_type"] == "invalid_message"
        (session,) = server.gateway.sessions
        assert session.preferences == kept
        # The connection goes on, and a change that fits is taken.
        await client.send({"type": "update_preferences", "preferences": {"theme": "dark"}})
        assert (await client.recv())["data"]["preferences"] == {**kept, "theme": "dark"}


async def test_max_preferences_bytes_counts_bytes_not_characters() -> None:
    settings = settings_with(limits={"max_preferences_bytes": 512})
    async with running_server(settings) as server, ws_client(server) as client:
        # 300 characters, 1,200 bytes of UTF-8.
        await client.send({"type": "update_preferences", "preferences": {"note": "😀" * 300}})
        error = await client.recv()
        assert error["event_type"] == "error"
        assert error["data"]["error_type"] == "invalid_message"
        (session,) = server.gateway.sessions
        assert "note" not in session.preferences


# -- handshake_timeout_seconds ---------------------------------------------------------------

HEAD_TIMEOUT = 0.5


@contextlib.asynccontextmanager
async def head_deadline() -> AsyncIterator[RunningServer]:
    settings = settings_with(limits={"handshake_timeout_seconds": HEAD_TIMEOUT})
    async with running_server(settings) as server:
        yield server


async def closed_after(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` until the server closed the connection."""
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(1024), 5):
            pass
    return time.monotonic() - started


async def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() -> None:
    async with head_deadline() as server:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        waited = await closed_after(reader, started)
        writer.close()
    assert 0.8 * HEAD_TIMEOUT <= waited < 3.0


async def trickle(writer: asyncio.StreamWriter, head: bytes) -> int:
    """Send `head` a byte at a time, as a slowloris client does; the bytes sent before
    the server closed the connection."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.02)  # the slowloris client's pace, not a wait
    return sent


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"p" * 64 + b"\r\n\r\n"
    async with head_deadline() as server:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        sender = asyncio.create_task(trickle(writer, head))
        waited = await closed_after(reader, started)
        sent = await asyncio.wait_for(sender, 5)  # its next byte finds the socket closed
        writer.close()
    assert 0.8 * HEAD_TIMEOUT <= waited < 3.0
    assert sent < len(head)  # cut off before the head was complete


async def test_the_next_request_head_on_a_kept_alive_connection_has_the_same_deadline() -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    # A byte at a time, this head takes some 4 s: the deadline counts from its first byte,
    # not from the connection's opening, nor from nowhere (uvicorn's keep-alive timer
    # stops at that byte).
    slow_head = request[:-2] + b"X-Padding: " + b"p" * 160 + b"\r\n\r\n"
    async with head_deadline() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(request)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer, slow_head))
        waited = await closed_after(reader, started)
        sent = await asyncio.wait_for(sender, 5)
        writer.close()
    assert waited < 3.0
    assert sent < len(slow_head)


async def test_a_kept_alive_connection_is_not_cut_between_requests() -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with head_deadline() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        answers = []
        for _ in range(2):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            answers.append((head.split(b"\r\n")[0], await reader.readexactly(length)))
            # Longer than the head deadline, shorter than uvicorn's keep-alive timeout (5 s).
            await asyncio.sleep(2 * HEAD_TIMEOUT)
        writer.close()
    assert answers == [(b"HTTP/1.1 200 OK", b'{"status":"ok"}')] * 2


async def test_streams_that_outlast_the_handshake_timeout_are_not_cut() -> None:
    async with (
        head_deadline() as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        ws_client(server) as client,
    ):
        body = {"prompt": "hi", "config": {"options": {"tokens": 15, "delay_ms": 100}}}
        started = time.monotonic()
        response = await http.post("/api/streams", json=body)
        assert time.monotonic() - started > 2 * HEAD_TIMEOUT
        assert response.status_code == 200
        assert '"status":"completed"' in response.text.split("event: stream_end")[1]
        # The WebSocket opened before the SSE stream is still there.
        await client.send({"type": "ping", "timestamp": "still"})
        assert (await client.recv())["timestamp"] == "still"


async def test_a_request_body_that_stalls_is_cut_off_after_the_deadline() -> None:
    head = (
        b"POST /api/streams HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    async with head_deadline() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(head + b'{"prompt": "hi"')
        started = time.monotonic()
        waited = await closed_after(reader, started)
        writer.close()
    assert 0.8 * HEAD_TIMEOUT <= waited < 3.0


async def test_the_body_of_a_refused_request_cannot_hold_the_connection() -> None:
    # Answered 401 at once, uvicorn would go on taking the body, a byte at a time, forever.
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    settings = api_key_settings(limits={"handshake_timeout_seconds": HEAD_TIMEOUT})
    async with running_server(settings, environ=ENVIRON) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(head)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 401")
        started = time.monotonic()
        sender = asyncio.create_task(trickle(writer, b"x" * 1000))
        waited = await closed_after(reader, started)
        sent = await asyncio.wait_for(sender, 5)
        writer.close()
    assert waited < 3.0
    assert sent < 1000


async def test_a_request_head_past_its_size_bound_is_431_and_closed() -> None:
    # Just past the bound and never finished: the server reads all of it before closing,
    # so that the close is not a reset that would swallow the answer.
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"p" * 70_000
    async with head_deadline() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(head)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_body_far_larger_than_the_head_bound_is_served() -> None:
    prompt = "p" * 150_000
    async with head_deadline() as server, httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "simulated", "messages": [{"role": "user", "content": prompt}]},
        )
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


# -- the idle timeout ([streams] session_idle_seconds) ------------------------------------------

IDLE = 1.0


@contextlib.asynccontextmanager
async def idling() -> AsyncIterator[RunningServer]:
    # Server pings every 0.2 s, which the client answers: they keep the peer, not the session.
    settings = settings_with(
        streams={"session_idle_seconds": IDLE, "session_sweep_seconds": 0.1},
        limits={"ping_interval_seconds": 0.2, "ping_timeout_seconds": 1.0},
    )
    async with running_server(settings) as server:
        yield server


async def close_of(client: WsClient, timeout: float = 5.0) -> tuple[int | None, str | None]:
    """Read up to the server's close: its code and reason."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await client.recv(timeout)
    return client.ws.close_code, client.ws.close_reason


async def test_a_websocket_with_no_message_and_no_stream_is_closed_after_the_idle_timeout() -> None:
    async with idling() as server, ws_client(server) as client:
        started = time.monotonic()
        code, reason = await close_of(client)
        waited = time.monotonic() - started
        await eventually(lambda: len(server.gateway.sessions) == 0)
    assert (code, reason) == (1000, "idle timeout")
    assert 0.8 * IDLE <= waited < IDLE + 2.0


async def test_a_websocket_is_not_closed_for_idleness_while_a_stream_runs() -> None:
    async with idling() as server, ws_client(server) as client:
        options = {"tokens": 25, "delay_ms": 100}  # 2.5 s without a word from the client
        await client.send({"type": "ai_request", "prompt": "hi", "config": {"options": options}})
        frames = await client.until_end(timeout=10)
        assert frames[-1]["data"]["status"] == "completed"
        # Idle once the stream ended.
        assert await close_of(client) == (1000, "idle timeout")


async def test_client_pings_keep_a_websocket_from_idling_out() -> None:
    async with idling() as server, ws_client(server) as client:
        started = time.monotonic()
        while time.monotonic() - started < 2.5 * IDLE:
            await client.send({"type": "ping", "timestamp": 0})
            assert (await client.recv())["type"] == "pong"
            await asyncio.sleep(IDLE / 4)  # the client's own rhythm
        assert client.ws.close_code is None
        assert len(server.gateway.sessions) == 1


# -- server pings: ping_interval_seconds + ping_timeout_seconds --------------------------------

PING_INTERVAL, PING_TIMEOUT = 0.5, 0.5
DEAD_WITHIN = PING_INTERVAL + PING_TIMEOUT


@contextlib.asynccontextmanager
async def pinging() -> AsyncIterator[RunningServer]:
    limits = {"ping_interval_seconds": PING_INTERVAL, "ping_timeout_seconds": PING_TIMEOUT}
    # A send buffer too big to overflow here: only the pings can find a dead peer.
    limits["max_send_buffer_bytes"] = 256 * 1024 * 1024
    settings = settings_with(limits=limits, streams={"resume_grace_seconds": 0})
    async with running_server(settings) as server:
        yield server


async def active_sessions(server: RunningServer) -> int:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(server.url + "/api/streaming/stats")).json()
    count: int = stats["sessions"]["active_sessions"]
    return count


async def test_a_peer_that_reads_but_never_answers_pings_is_dropped() -> None:
    async with pinging() as server:
        started = time.monotonic()
        peer = await RawWebSocket.connect(port_of(server))
        frames = []
        async with asyncio.timeout(DEAD_WITHIN + 3):
            while (frame := await peer.recv()).opcode != 0x8:
                frames.append(frame.opcode)
        waited = time.monotonic() - started
        assert await peer.reader.read() == b""  # and the socket is closed
        await eventually(lambda: len(server.gateway.sessions) == 0, 2)
        assert await active_sessions(server) == 0
        peer.abort()
    assert frames[0] == 0x1  # connection_status
    assert 0x9 in frames  # a ping, never answered
    assert frame.close_code == 1011
    assert DEAD_WITHIN * 0.8 <= waited < DEAD_WITHIN + 2.0


async def test_a_peer_that_never_reads_is_dropped_and_its_session_closed() -> None:
    async with pinging() as server:
        started = time.monotonic()
        peer = await RawWebSocket.connect(port_of(server), receive_buffer=4096)
        # A stream flat out, so that the socket is full when the peer goes quiet.
        flood = {"tokens": 1_000_000, "delay_ms": 0}
        request = {"type": "ai_request", "prompt": "hi", "config": {"options": flood}}
        await peer.send_text(json.dumps(request).encode())
        await eventually(lambda: server.gateway.running == 1)
        await eventually(lambda: len(server.gateway.sessions) == 0, DEAD_WITHIN + 3)
        waited = time.monotonic() - started
        # Its stream followed the disconnect rules (no grace here: cancelled), and its
        # socket is released.
        await eventually(lambda: server.gateway.running == 0, 2)
        await eventually(lambda: len(server.server.server_state.connections) == 0, 2)
        assert await active_sessions(server) == 0
        peer.abort()
    assert DEAD_WITHIN * 0.8 <= waited < DEAD_WITHIN + 2.0


async def test_a_peer_that_answers_pings_stays_connected() -> None:
    async with pinging() as server, ws_client(server) as client:
        await asyncio.sleep(3 * DEAD_WITHIN)  # several pings go and are answered
        await client.send({"type": "ping", "timestamp": "alive"})
        assert (await client.recv())["timestamp"] == "alive"
        assert len(server.gateway.sessions) == 1
