"""Request heads on raw sockets (CONTRACT.md "Request heads"): at most 100 header fields,
lines of 8 KiB (their CRLF included) and 64 KiB in all, for plain HTTP and WebSocket
upgrades alike; past any of them 431 and closed at once; a head that never ends closed
after `handshake_timeout_seconds`; hundreds of such sockets give their descriptors back.

These also hold `transports/uvicorn_http.py` and `uvicorn_ws.py` to the uvicorn internals
they use: an upgrade past websockets' own bounds used to be left open without an answer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect

from tests.support.process import Process, serving
from tests.support.server import RunningServer, running_server, simulated_settings
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.app import uvicorn_config
from tokenwire.transports.request_head import MAX_FIELDS, MAX_HEAD_BYTES, MAX_LINE_BYTES
from tokenwire.transports.uvicorn_http import HeadTimeoutProtocol

HEAD_TIMEOUT = 1.0
OVER = {"fields": MAX_FIELDS + 1, "line": MAX_LINE_BYTES + 1, "size": MAX_HEAD_BYTES + 1}
AT = {"fields": MAX_FIELDS, "line": MAX_LINE_BYTES, "size": MAX_HEAD_BYTES}


def plain_head(extra: list[bytes]) -> bytes:
    return (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + b"".join(field + b"\r\n" for field in extra)
        + b"\r\n"
    )


def upgrade_head(extra: list[bytes]) -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws/ai-stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + b"".join(field + b"\r\n" for field in extra) + b"\r\n"
    )


Build = Callable[[list[bytes]], bytes]
KINDS: dict[str, Build] = {"plain": plain_head, "upgrade": upgrade_head}
EXPECTED = {"plain": b"HTTP/1.1 200 ", "upgrade": b"HTTP/1.1 101 "}


def padding(line_bytes: int, name: bytes = b"X-Pad") -> bytes:
    """A header field whose line, its CRLF included, is `line_bytes` long."""
    return name + b": " + b"p" * (line_bytes - len(name) - len(b": \r\n"))


def head_with(build: Build, bound: str, amount: int) -> bytes:
    """A head built by `build` holding `amount` of `bound`: fields in all, bytes in its
    longest line, or bytes in all."""
    if bound == "fields":
        fields_of_its_own = build([]).count(b"\r\n") - 2
        return build([b"X-%d: v" % i for i in range(amount - fields_of_its_own)])
    if bound == "line":
        return build([padding(amount)])
    fields = [padding(8000, b"X-Pad-%d" % i) for i in range(8)]
    return build([*fields, padding(amount - len(build(fields)))])


@contextlib.asynccontextmanager
async def server_with_head_deadline() -> AsyncIterator[RunningServer]:
    settings = simulated_settings(limits={"handshake_timeout_seconds": HEAD_TIMEOUT})
    async with running_server(settings) as server:
        yield server


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def answer_to(port: int, head: bytes) -> bytes:
    """Send `head` whole; what the server answers until it closes, or its answer's head
    if it keeps the connection (a WebSocket's 101)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(AT_ONCE):
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 101 "):
                answer += await reader.read()  # to the close: the test hangs if none comes
        return answer
    finally:
        writer.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bound", AT)
async def test_a_head_at_its_bounds_is_served(kind: str, bound: str) -> None:
    head = head_with(KINDS[kind], bound, AT[bound])
    async with server_with_head_deadline() as server:
        answer = await answer_to(port_of(server.url), head)
    assert answer.startswith(EXPECTED[kind])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bound", OVER)
async def test_a_head_past_a_bound_is_431_and_closed(kind: str, bound: str) -> None:
    head = head_with(KINDS[kind], bound, OVER[bound])
    async with server_with_head_deadline() as server:
        answer = await answer_to(port_of(server.url), head)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith(b"\r\n\r\nRequest header fields too large")


async def test_a_head_of_100_kb_in_one_write_is_431() -> None:
    fields = [padding(8000, b"X-Pad-%d" % i) for i in range(13)]
    async with server_with_head_deadline() as server:
        answer = await answer_to(port_of(server.url), plain_head(fields))
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_the_431_reaches_a_client_that_goes_on_sending() -> None:
    # Refused at its 8 KiB line, the head goes on for 256 KiB: closing with those bytes
    # unread would reset the connection, and the client would see the reset, not the 431.
    head = plain_head([b"X-Pad: " + b"p" * 256 * 1024])
    async with server_with_head_deadline() as server:
        answer = await answer_to(port_of(server.url), head)
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_pipelined_head_past_a_bound_is_431_after_the_first_is_served() -> None:
    served = plain_head([]).replace(b"Connection: close\r\n", b"")
    async with server_with_head_deadline() as server:
        answer = await answer_to(
            port_of(server.url), served + head_with(plain_head, "fields", OVER["fields"])
        )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 431 " in answer


async def test_an_upgrade_line_that_only_the_websockets_parser_refuses_is_answered() -> None:
    # Within the bound as sent; uvicorn hands websockets the line rebuilt with a space
    # after the colon, one byte past websockets' own bound, which it used to drop silently.
    line = padding(MAX_LINE_BYTES).replace(b"X-Pad: ", b"X-Pad:p", 1)
    async with server_with_head_deadline() as server:
        answer = await answer_to(port_of(server.url), upgrade_head([line]))
    assert answer.startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_head_that_never_ends_is_closed_after_the_handshake_timeout(kind: str) -> None:
    unfinished = KINDS[kind]([])[: -len(b"\r\n")]
    async with server_with_head_deadline() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server.url))
        writer.write(unfinished)
        async with asyncio.timeout(HEAD_TIMEOUT + AT_ONCE):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()


@contextlib.asynccontextmanager
async def server_that_never_accepts() -> AsyncIterator[int]:
    """tokenwire's uvicorn wiring around an app whose WebSocket route never accepts nor
    refuses; its port."""
    settings = simulated_settings(limits={"handshake_timeout_seconds": HEAD_TIMEOUT})
    done = asyncio.Event()
    app = FastAPI()

    @app.websocket("/ws/ai-stream")
    async def never_accepts(websocket: WebSocket) -> None:
        await done.wait()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn_config(settings, app, "127.0.0.1", 0))
        server.capture_signals = contextlib.nullcontext  # type: ignore[assignment,method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually(lambda: server.started or task.done())
        try:
            yield int(sock.getsockname()[1])
        finally:
            done.set()
            server.should_exit = True
            await asyncio.wait_for(task, 20)


async def test_an_upgrade_whose_handshake_is_not_complete_by_the_deadline_is_closed() -> None:
    async with server_that_never_accepts() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_head([]))
        async with asyncio.timeout(HEAD_TIMEOUT + AT_ONCE):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()


# -- hundreds at once, against a server process whose descriptors can be counted ------------


def descriptors(process: Process) -> int:
    return len(os.listdir(Path("/proc") / str(process.proc.pid) / "fd"))


@contextlib.asynccontextmanager
async def served_process() -> AsyncIterator[tuple[Process, int]]:
    """A `tokenwire serve` process with its descriptor count once it has served each
    kind of request once (whatever it opens lazily is open by then)."""
    env = {"TOKENWIRE_LIMITS__HANDSHAKE_TIMEOUT_SECONDS": str(HEAD_TIMEOUT)}
    async with serving("--provider", "simulated", env=env) as process:
        await served_normally(process.url)
        yield process, descriptors(process)


async def served_normally(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=AT_ONCE) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with connect(url.replace("http", "ws", 1) + "/ws/ai-stream") as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), AT_ONCE))
        assert hello["data"]["status"] == "connected"


HOSTILE = 300


async def test_hundreds_of_heads_past_their_bounds_give_their_descriptors_back() -> None:
    head = head_with(upgrade_head, "fields", OVER["fields"])
    async with served_process() as (process, baseline):
        port = port_of(process.url)
        sockets = [await asyncio.open_connection("127.0.0.1", port) for _ in range(HOSTILE)]
        for _, writer in sockets:
            writer.write(head)
        async with asyncio.timeout(AT_ONCE * 4):
            answers = await asyncio.gather(*(reader.read() for reader, _ in sockets))
        # The clients still hold their sockets: the server closed its ends.
        assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers)
        await eventually(lambda: descriptors(process) <= baseline)
        await served_normally(process.url)
        for _, writer in sockets:
            writer.close()


async def test_hundreds_of_heads_that_never_end_are_closed_and_others_served_meanwhile() -> None:
    unfinished = upgrade_head([])[: -len(b"\r\n")]
    async with served_process() as (process, baseline):
        port = port_of(process.url)
        sockets = [await asyncio.open_connection("127.0.0.1", port) for _ in range(HOSTILE)]
        for _, writer in sockets:
            writer.write(unfinished)
        await eventually(lambda: descriptors(process) >= baseline + HOSTILE)
        await served_normally(process.url)

        async def closed(reader: asyncio.StreamReader) -> bytes:
            with contextlib.suppress(ConnectionResetError):
                return await reader.read()
            return b""

        async with asyncio.timeout(HEAD_TIMEOUT + AT_ONCE * 4):
            answers = await asyncio.gather(*(closed(reader) for reader, _ in sockets))
        assert answers == [b""] * HOSTILE
        await eventually(lambda: descriptors(process) <= baseline)
        for _, writer in sockets:
            writer.close()


async def test_a_completed_websocket_handshake_lets_the_http_protocol_go() -> None:
    # Its head's deadline (a timer holding it) is over once the handshake is complete.
    async with running_server() as server, connect(server.ws_url) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), AT_ONCE))
        assert hello["data"]["status"] == "connected"
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, HeadTimeoutProtocol)]
