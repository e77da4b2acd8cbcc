"""A fake OpenAI Chat Completions upstream on a loopback socket, and the HTTP it stands on.

HTTP/1.1 is written by hand on an `asyncio.Protocol`, so that what the client sees
(status lines, chunked SSE bodies, a dropped or silent socket) is exactly what goes
over the wire, and so that the fake can record the moment the client closes its
connection: that is how tests prove that a cancel reaches the upstream.

`ScriptedUpstream` and `Reply` know nothing about OpenAI; the Anthropic fake uses them
too (they would sit in a neutral module, had this helper been allowed to add one).
Each test scripts the reply (`upstream.reply = ...`), a `Reply` or a function of the
request; every exchange is recorded in `upstream.exchanges`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal

# -- the HTTP side, shared by the fakes ---------------------------------------


@dataclass
class Reply:
    """What the fake answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # A plain body (errors); ignored when there are frames or status is 200.
    body: bytes = b""
    # SSE frames, one HTTP chunk each.
    frames: list[bytes] = field(default_factory=list)
    frame_delay: float = 0.0
    # Send only this many frames, then: finish the HTTP body properly ("end"),
    # close the socket mid-body ("drop"), or fall silent and wait ("stall").
    cut_after: int | None = None
    then: Literal["end", "drop", "stall"] = "end"
    # Close the connection as soon as the request arrives, answering nothing.
    hang_up: bool = False


@dataclass
class Exchange:
    """One request the fake received, and what became of its connection."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    frames_sent: int = 0
    response_finished: bool = False
    client_closed_at: float | None = None
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)


ReplyScript = Reply | Callable[[Exchange], Reply]


class ScriptedUpstream:
    """An HTTP/1.1 server on 127.0.0.1 that answers what the test scripted."""

    def __init__(self, reply: ReplyScript | None = None) -> None:
        self.reply: ReplyScript = reply or Reply()
        self.exchanges: list[Exchange] = []
        self.url = ""
        self._arrived = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def __aenter__(self) -> ScriptedUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for connection in list(self._connections):
            connection.shut()
        await self._server.wait_closed()

    async def exchange(self, index: int = 0, timeout: float = 5.0) -> Exchange:
        """The `index`-th request, once it has arrived."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.exchanges) > index)
        return self.exchanges[index]

    async def _record(self, exchange: Exchange) -> Reply:
        async with self._arrived:
            self.exchanges.append(exchange)
            self._arrived.notify_all()
        return self.reply(exchange) if callable(self.reply) else self.reply


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: ScriptedUpstream) -> None:
        self._upstream = upstream
        self._buffer = bytearray()
        self._changed = asyncio.Event()
        self._lost = asyncio.Event()
        self._closed_by_us = False
        self._current: Exchange | None = None
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None

    # -- asyncio callbacks: they only record and wake the serving task

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._upstream._connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._changed.set()

    def eof_received(self) -> bool | None:
        self._on_close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_close()
        self._upstream._connections.discard(self)

    def _on_close(self) -> None:
        if self._lost.is_set():
            return
        self._lost.set()
        self._changed.set()
        exchange = self._current
        if exchange is not None and not self._closed_by_us:
            exchange.client_closed_at = time.monotonic()
            exchange.client_closed.set()

    def shut(self) -> None:
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.abort()
        if self._task is not None:
            self._task.cancel()

    # -- serving

    async def _serve(self) -> None:
        while (exchange := await self._read_request()) is not None:
            self._current = exchange
            reply = await self._upstream._record(exchange)
            if not await self._respond(reply, exchange):
                return

    async def _read_request(self) -> Exchange | None:
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if not await self._more():
                return None
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        method, path, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            if not await self._more():
                return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return Exchange(method, path, headers, body)

    async def _more(self) -> bool:
        if self._lost.is_set():
            return False
        self._changed.clear()
        await self._changed.wait()
        return True

    async def _respond(self, reply: Reply, exchange: Exchange) -> bool:
        """Answer; True if the connection stays open for the next request."""
        if reply.hang_up:
            self._close()
            return False
        if reply.status != 200 or not reply.frames:
            self._write_head(reply.status, {"content-length": str(len(reply.body))}, reply)
            self._write(reply.body)
            exchange.response_finished = True
            return True
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "transfer-encoding": "chunked",
            "cache-control": "no-cache",
        }
        self._write_head(200, headers, reply)
        for index, frame in enumerate(reply.frames):
            if index == reply.cut_after:
                return await self._cut(reply, exchange)
            if reply.frame_delay and await self._client_left_within(reply.frame_delay):
                return False
            if self._lost.is_set():
                return False
            self._write(b"%x\r\n%s\r\n" % (len(frame), frame))
            exchange.frames_sent += 1
        self._write(b"0\r\n\r\n")
        exchange.response_finished = True
        return True

    async def _cut(self, reply: Reply, exchange: Exchange) -> bool:
        if reply.then == "end":
            self._write(b"0\r\n\r\n")
            exchange.response_finished = True
            return True
        if reply.then == "drop":
            self._close()
            return False
        await self._lost.wait()
        return False

    async def _client_left_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._lost.wait()
        except TimeoutError:
            return False
        return True

    def _write_head(self, status: int, headers: dict[str, str], reply: Reply) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in {**headers, **reply.headers}.items()]
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._lost.is_set():
            self._transport.write(data)

    def _close(self) -> None:
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.close()


# -- the OpenAI wire format ---------------------------------------------------

_CREATED = 1_767_225_600


def _chunk(model: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
    body = {
        "id": "chatcmpl-fake0001",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def chat_frames(
    deltas: Sequence[str],
    prompt_tokens: int,
    completion_tokens: int,
    *,
    model: str = "m",
    include_usage: bool = True,
    finish_reason: str = "stop",
) -> list[bytes]:
    """A whole streamed answer, as OpenAI sends it, ending with `data: [DONE]`."""
    frames = [_chunk(model, [_choice({"role": "assistant", "content": "", "refusal": None})], None)]
    frames += [_chunk(model, [_choice({"content": text})], None) for text in deltas]
    frames.append(_chunk(model, [_choice({}, finish_reason)], None))
    if include_usage:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        frames.append(_chunk(model, [], usage))
    frames.append(b"data: [DONE]\n\n")
    return frames


def openai_answer(
    deltas: Sequence[str], prompt_tokens: int, completion_tokens: int, **reply: Any
) -> Callable[[Exchange], Reply]:
    """A reply script: the answer, with the usage chunk only if the request asked for it."""

    def script(exchange: Exchange) -> Reply:
        request = exchange.json()
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        frames = chat_frames(
            deltas,
            prompt_tokens,
            completion_tokens,
            model=request.get("model", "m"),
            include_usage=include_usage,
        )
        return Reply(frames=frames, **reply)

    return script


def openai_error(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> Reply:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return Reply(
        status=status,
        headers={"content-type": "application/json", **(headers or {})},
        body=json.dumps(body).encode(),
    )


# -- tool calls, as OpenAI streams them, and as other servers do --------------


def call_fragment(
    index: int,
    *,
    id: str | None = None,
    name: str | None = None,
    arguments: str | None = "",
    bare: bool = False,
) -> dict[str, Any]:
    """One entry of a chunk's `delta.tool_calls`. OpenAI sends `id`, `type` and `name`
    in a call's first fragment only; other servers repeat them (`id=`, `name=` on every
    fragment), send the name late, or `arguments: null` (`arguments=None`). `bare`
    leaves `function` out altogether (a fragment that only names the call's id)."""
    call: dict[str, Any] = {"index": index}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    if not bare:
        function: dict[str, Any] = {"arguments": arguments}
        if name is not None:
            function["name"] = name
        call["function"] = function
    return call


def calls(*fragments: dict[str, Any]) -> dict[str, Any]:
    """A delta that carries these call fragments (several in one chunk: interleaved)."""
    return {"tool_calls": list(fragments)}


def delta_frames(
    deltas: Sequence[dict[str, Any]],
    *,
    finish_reason: str | None = "tool_calls",
    usage: tuple[int, int] | None = (9, 5),
    model: str = "m",
    done: bool = True,
) -> list[bytes]:
    """A streamed answer made of these deltas (`{"content": ...}`, `calls(...)`), as
    OpenAI frames them: the role first (content null: OpenAI's first chunk of a tool
    answer), each delta, the finish, the usage chunk, `[DONE]`. Without a
    `finish_reason` the stream is cut after the deltas (no finish, usage or [DONE])."""
    frames = [
        _chunk(model, [_choice({"role": "assistant", "content": None, "refusal": None})], None)
    ]
    frames += [_chunk(model, [_choice(delta)], None) for delta in deltas]
    if finish_reason is None:
        return frames
    frames.append(_chunk(model, [_choice({}, finish_reason)], None))
    if usage is not None:
        prompt, completion = usage
        counts = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        frames.append(_chunk(model, [], counts))
    if done:
        frames.append(b"data: [DONE]\n\n")
    return frames


def error_frame(message: str, error_type: str = "server_error") -> bytes:
    """An error event in the middle of a stream, as OpenAI sends one."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
