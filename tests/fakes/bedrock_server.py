"""A fake Bedrock runtime on a loopback socket, speaking ConverseStream's real wire format.

HTTP/1.1 by hand on `asyncio.start_server`, so that what the client sees (status
lines, `x-amzn-ErrorType`, chunked event-stream bodies, a dropped or silent socket)
is exactly what goes over the wire, and so that the fake can record the moment
the client closes its connection: that is how tests prove a cancel reaches upstream.

Each test scripts the replies (`FakeBedrock.script`); the last one repeats. As
Bedrock does, the fake refuses (ValidationException) a request whose messages hold
`toolUse` or `toolResult` blocks without a `toolConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import pytest

from tests.fakes import bedrock_eventstream as es

FAKE_ACCESS_KEY_ID = "AKIAFAKEFAKEFAKE0001"
FAKE_SECRET_ACCESS_KEY = "fake/Secret+Key0000000000000000000000000"
_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


@dataclass
class Reply:
    """What the fake answers to one request."""

    status: int = 200
    events: list[bytes] = field(default_factory=list)
    # After the events: finish the body properly, close the socket, or fall silent.
    then: Literal["end", "drop", "stall"] = "end"
    error_type: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    event_delay: float = 0.0
    # Send each event in two chunks, so the client has to reassemble frames.
    split_events: bool = False
    # Never send even the status line.
    silent: bool = False

    @classmethod
    def answer(
        cls, deltas: list[str], input_tokens: int, output_tokens: int, **kwargs: Any
    ) -> Reply:
        return cls(events=es.full_answer(deltas, input_tokens, output_tokens), **kwargs)

    @classmethod
    def error(
        cls, status: int, error_type: str, message: str, headers: dict[str, str] | None = None
    ) -> Reply:
        return cls(status=status, error_type=error_type, message=message, headers=headers or {})


@dataclass
class Connection:
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed_at: float | None = None
    closed_by_client: bool = False

    def mark_closed(self, *, by_client: bool) -> None:
        if not self.closed.is_set():
            self.closed_at = time.monotonic()
            self.closed_by_client = by_client
            self.closed.set()


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    connection: Connection

    @property
    def model_id(self) -> str:
        return unquote(self.path.split("/")[2])


class FakeBedrock:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.connections: list[Connection] = []
        self._replies: list[Reply] = [Reply.answer(["Hello", ", world"], 5, 2)]
        self.request_arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order; the last one repeats."""
        self._replies = list(replies)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def _next_reply(self) -> Reply:
        return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Only `stop()` cancels handlers. Ending quietly matters: Python 3.11's
            # start_server calls task.exception() on a cancelled handler and logs it.
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection()
        self.connections.append(connection)
        try:
            while not connection.closed.is_set():
                request = await _read_request(reader, connection)
                if request is None:
                    connection.mark_closed(by_client=True)
                    break
                self.requests.append(request)
                self.request_arrived.set()
                reply = _refusal(request.body) or self._next_reply()
                await self._reply(reply, reader, writer, connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.mark_closed(by_client=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _reply(
        self,
        reply: Reply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: Connection,
    ) -> None:
        # The client sends nothing while it reads a reply, so any read that
        # returns is its end of file: the moment it closed the connection.
        watcher = asyncio.create_task(_watch_for_close(reader, connection))
        try:
            if reply.silent:
                await connection.closed.wait()
                return
            if reply.status != 200:
                writer.write(_error_response(reply))
                await writer.drain()
                return
            writer.write(_stream_head())
            for event in reply.events:
                if connection.closed.is_set():
                    return
                for part in _parts(event, reply.split_events):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    if reply.split_events:
                        await asyncio.sleep(0.01)
                if reply.event_delay:
                    await asyncio.sleep(reply.event_delay)
            if reply.then == "end":
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            elif reply.then == "drop":
                writer.close()
                connection.mark_closed(by_client=False)
            else:
                await connection.closed.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def use_fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials through the standard chain's first link (the environment), and
    nothing from this machine: no config files, no instance metadata lookups."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@contextlib.asynccontextmanager
async def running_fake_bedrock() -> AsyncIterator[FakeBedrock]:
    fake = FakeBedrock()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def _refusal(body: dict[str, Any]) -> Reply | None:
    """Bedrock's answer to tool blocks in a request that defines no tools."""
    blocks = [block for message in body.get("messages", []) for block in message["content"]]
    if "toolConfig" in body or not any("toolUse" in b or "toolResult" in b for b in blocks):
        return None
    return Reply.error(
        400,
        "ValidationException",
        "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
    )


async def _watch_for_close(reader: asyncio.StreamReader, connection: Connection) -> None:
    try:
        data = await reader.read(1)
    except ConnectionError:
        data = b""
    if not data:
        connection.mark_closed(by_client=True)
    else:
        raise AssertionError("the client sent bytes while reading a reply")


async def _read_request(
    reader: asyncio.StreamReader, connection: Connection
) -> RecordedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    raw_body = await reader.readexactly(int(headers.get("content-length", "0")))
    body = json.loads(raw_body) if raw_body else {}
    return RecordedRequest(method, path, headers, body, connection)


def _stream_head() -> bytes:
    return _head(
        200,
        {
            "Content-Type": "application/vnd.amazon.eventstream",
            "Transfer-Encoding": "chunked",
        },
    )


def _error_response(reply: Reply) -> bytes:
    body = json.dumps({"message": reply.message}).encode()
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "x-amzn-ErrorType": f"{reply.error_type}:{_ERROR_NAMESPACE}",
        **reply.headers,
    }
    return _head(reply.status, headers) + body


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Date: {formatdate(usegmt=True)}",
        "Connection: keep-alive",
        f"x-amzn-RequestId: {uuid.uuid4()}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parts(event: bytes, split: bool) -> list[bytes]:
    if not split:
        return [event]
    middle = len(event) // 2
    return [event[:middle], event[middle:]]
