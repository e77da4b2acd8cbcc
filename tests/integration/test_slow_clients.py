"""Clients that stop reading, and clients that send what is not text.

These also hold `transports/uvicorn_ws.py` to the uvicorn internals it uses: if
uvicorn changes them, the closes below stop happening and these tests fail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.providers import WatchedProvider
from tests.support.raw_ws import RawWebSocket, client_frame
from tests.support.server import RunningServer, gateway_with, running_server, simulated_settings
from tests.support.stores import SlowHistory
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.app import build_gateway

FLOOD = {
    "type": "ai_request",
    "prompt": "x",
    "stream_config": {"granularity": "token"},
    "config": {"timeout": 60, "options": {"tokens": 1_000_000, "delay_ms": 0}},
}


async def drain(ws: ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


def port_of(server: RunningServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def connections(server: RunningServer) -> int:
    return len(server.server.server_state.connections)


async def test_a_client_that_never_reads_is_sent_1013_and_cut_off_after_the_close_timeout() -> None:
    provider = WatchedProvider()
    settings = simulated_settings(
        limits={"max_send_buffer_bytes": 64 * 1024, "close_timeout_seconds": 3.0},
        streams={"resume_grace_seconds": 0},  # the grace has tests of its own
    )
    async with running_server(settings, gateway=gateway_with(provider, settings=settings)) as s:
        client = await RawWebSocket.connect(port_of(s), receive_buffer=4096)
        s.shrink_send_buffer(client.writer.get_extra_info("sockname"))
        await client.send_text(json.dumps(FLOOD).encode())
        # The overflow ends the session and the stream at once...
        await eventually(lambda: len(s.gateway.sessions) == 0, 20)
        assert s.gateway.running == 0
        assert provider.closed.is_set()
        assert provider.deltas_sent < 1_000_000
        # ...while the connection waits the close timeout for the client, then goes.
        assert connections(s) == 1
        await eventually(lambda: connections(s) == 0, 3.0 + AT_ONCE)
        client.abort()


async def test_a_client_that_reads_again_in_time_sees_the_1013_close() -> None:
    settings = simulated_settings(
        limits={"max_send_buffer_bytes": 64 * 1024, "close_timeout_seconds": 30.0}
    )
    async with running_server(settings) as s:
        client = await RawWebSocket.connect(port_of(s), receive_buffer=4096)
        s.shrink_send_buffer(client.writer.get_extra_info("sockname"))
        await client.send_text(json.dumps(FLOOD).encode())
        await eventually(lambda: len(s.gateway.sessions) == 0, 20)
        before_close, close = await client.recv_until_close(timeout=20)
        assert close.close_code == 1013
        assert before_close > 0  # what the transport already held still came first
        await client.send_close(1013)
        # The handshake completed: the server lets go long before the 30 s timeout.
        await eventually(lambda: connections(s) == 0, 3)


async def test_the_websockets_client_library_sees_1013_when_it_reads_again() -> None:
    settings = simulated_settings(limits={"max_send_buffer_bytes": 64 * 1024})
    async with running_server(settings) as s:
        ws = await connect(s.ws_url, max_queue=1, max_size=2**24)
        s.shrink_send_buffer(ws.transport.get_extra_info("sockname"))
        await ws.recv()
        await ws.send(json.dumps(FLOOD))
        await eventually(lambda: len(s.gateway.sessions) == 0, 20)
        with pytest.raises(ConnectionClosed):
            await drain(ws)
        assert ws.close_code == 1013


async def test_invalid_utf8_closes_1007_without_an_error_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server() as s:
        client = await RawWebSocket.connect(port_of(s))
        await client.recv()  # connection_status
        with caplog.at_level(logging.WARNING):
            await client.send_text(b'{"type": "ping", "timestamp": "\xff\xfe"}')
            _, close = await client.recv_until_close()
        assert close.close_code == 1007
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        await eventually(lambda: len(s.gateway.sessions) == 0, 3)


async def test_a_client_still_sending_behind_its_invalid_frame_reads_the_close_frame() -> None:
    # Closed at once with the client's bytes unread, the socket would be reset and the
    # close frame lost on the way: the client would see a reset, not why.
    async with running_server() as s:
        for _ in range(3):
            client = await RawWebSocket.connect(port_of(s))
            await client.recv()  # connection_status
            bad = client_frame(0x1, b"\xff\xfe")
            client.writer.write(bad + client_frame(0x1, b"x" * 60_000) * 20)
            await eventually(lambda: len(s.gateway.sessions) == 0, 10)  # it has closed
            _, close = await client.recv_until_close()
            assert close.close_code == 1007
            client.abort()


async def test_the_resume_grace_of_a_client_too_slow_counts_from_its_1013() -> None:
    provider = WatchedProvider()
    settings = simulated_settings(
        # Gone after the grace from the 1013, not after the grace from the end of a close
        # timeout (33 s).
        limits={"max_send_buffer_bytes": 64 * 1024, "close_timeout_seconds": 30.0},
        streams={"resume_grace_seconds": 3.0},
    )
    async with running_server(settings, gateway=gateway_with(provider, settings=settings)) as s:
        client = await RawWebSocket.connect(port_of(s), receive_buffer=4096)
        s.shrink_send_buffer(client.writer.get_extra_info("sockname"))
        await client.send_text(json.dumps(FLOOD).encode())
        await eventually(lambda: len(s.gateway.sessions) == 0, 20)
        assert s.gateway.running == 1  # still streaming into its log, for a resume
        await eventually(lambda: s.gateway.running == 0, 3.0 + AT_ONCE)
        client.abort()


async def test_a_server_close_completes_while_the_client_s_next_message_waits_unread() -> None:
    # The connection's reader is held in a request's set-up, so the client's next message
    # waits and uvicorn stops reading the socket: the close (here for idleness) must read
    # again to take the client's closing frame, or the socket stays for the close timeout.
    settings = simulated_settings(
        streams={"session_idle_seconds": 0.5, "session_sweep_seconds": 0.1},
        limits={"close_timeout_seconds": 30.0},
    )
    store = SlowHistory()
    gateway = build_gateway(settings)
    gateway.conversations = store
    async with running_server(settings, gateway=gateway) as s:
        client = await RawWebSocket.connect(port_of(s))
        await client.recv()  # connection_status
        held = {"type": "ai_request", "prompt": "hi", "conversation_id": "held"}
        await client.send_text(json.dumps(held).encode())
        await asyncio.wait_for(store.reading.wait(), 5)
        await client.send_text(json.dumps({"type": "ping", "timestamp": 1}).encode())
        _, close = await client.recv_until_close()
        assert close.close_code == 1000
        await client.send_close(1000)
        await eventually(lambda: connections(s) == 0, 3)
        store.release.set()
        client.abort()


async def never_reading(
    server: RunningServer, path: str, body: dict[str, object]
) -> asyncio.StreamWriter:
    """POST `body` to `path` from a socket that reads the answer's head and then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(server)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    text = json.dumps(body)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(text)}\r\n\r\n{text}".encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
    writer.transport.pause_reading()
    server.shrink_send_buffer(sock.getsockname())
    return writer


async def test_an_sse_client_that_never_reads_is_cut_off_and_gives_its_slot_back() -> None:
    # Its request is let go at once (its events overflow the buffer); its response, stuck
    # behind a socket nobody reads, must not hold the socket and the user's slot for good.
    settings = simulated_settings(
        limits={"max_send_buffer_bytes": 64 * 1024, "close_timeout_seconds": 0.5},
        streams={"resume_grace_seconds": 0},
    )
    # Chunks, not tokens: the response keeps up until the socket is full, then waits on it.
    body = {"prompt": "x", "config": FLOOD["config"]}
    async with running_server(settings) as server:
        slots = server.server.config.app.state.access.connections
        writer = await never_reading(server, "/api/streams", body)
        await eventually(lambda: slots.total == 1)
        await eventually(lambda: slots.total == 0 and connections(server) == 0)
        writer.close()


HI = [{"role": "user", "content": "hi"}]
V1_STREAMS = {
    "chat completions": ("/v1/chat/completions", {"model": "simulated", "messages": HI}),
    "messages": ("/v1/messages", {"model": "simulated", "max_tokens": 10**6, "messages": HI}),
    "responses": ("/v1/responses", {"model": "simulated", "input": "hi"}),
}


@pytest.mark.parametrize("dialect", V1_STREAMS)
async def test_a_v1_stream_whose_client_never_reads_lets_go_of_its_socket(dialect: str) -> None:
    flood = {"name": "simulated", "kind": "simulated", "options": FLOOD["config"]["options"]}
    settings = simulated_settings(providers=[flood], limits={"close_timeout_seconds": 0.5})
    path, body = V1_STREAMS[dialect]
    async with running_server(settings) as server:
        writer = await never_reading(server, path, {**body, "stream": True})
        await eventually(lambda: connections(server) == 0, timeout=20)
        # A foreground answer nobody can receive is cancelled, not generated to its end.
        await eventually(lambda: server.gateway.running == 0, timeout=5)
        ended = server.gateway.stats.snapshot(server.gateway.sessions)["streams"]["by_status"]
        assert ended == {"completed": 0, "cancelled": 1, "error": 0}
        writer.close()
