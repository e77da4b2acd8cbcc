"""A fake model upstream cheap enough not to be the bottleneck of a benchmark.

    python bench/fast_upstream.py --port 8001 --tokens 50 --gap-ms 20

Speaks the streaming wire formats of OpenAI Chat Completions (`POST /v1/chat/completions`:
`chat.completion.chunk` SSE events, the usage chunk when `stream_options.include_usage`
asks for it, `data: [DONE]`) and Anthropic Messages (`POST /v1/messages`: `message_start`
... `message_stop`, each event with its `event:` line, which the anthropic SDK needs), in
shapes the official SDKs parse (the same as tests/fakes/, which bench does not import).
Every answer is `--tokens` deltas `--gap-ms` apart, the first at once (fewer when the
request's `max_tokens` or `max_completion_tokens` is lower).

Raw HTTP/1.1 with keep-alive on an `asyncio.Protocol` (uvloop when installed); every
response is encoded once per model name and kept, so a token costs one timer and one
`write` here: the gateway under test, not this process, should use the CPU. Its own CPU is
still measured by the parts that use it, for reference. Run as its own process (`Upstream`
below starts one and reads the port it chose from its first line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
_CREATED = 1_767_225_600


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def _head(status: str, content_type: str, chunked: bool, length: int = 0) -> bytes:
    framing = "transfer-encoding: chunked" if chunked else f"content-length: {length}"
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n{framing}\r\n"
        "cache-control: no-cache\r\nconnection: keep-alive\r\n\r\n"
    ).encode()


SSE_HEAD = _head("200 OK", "text/event-stream; charset=utf-8", chunked=True)
END_OF_BODY = b"0\r\n\r\n"


@dataclass(frozen=True)
class Answer:
    """One streamed answer, encoded: `first` goes at once (head, opening events, the first
    delta), then each of `deltas` after a gap, then `last` (the closing events)."""

    first: bytes
    deltas: tuple[bytes, ...]
    last: bytes


def token_text(index: int) -> str:
    return f"tok{index} "


def chat_answer(model: str, tokens: int, include_usage: bool) -> Answer:
    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": choices,
            "usage": usage,
        }
        return _chunked(b"data: " + _json(body) + b"\n\n")

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    deltas = [chunk(choice({"content": token_text(i)})) for i in range(tokens)]
    role = chunk(choice({"role": "assistant", "content": ""}))
    last = chunk(choice({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        last += chunk([], usage)
    last += _chunked(b"data: [DONE]\n\n") + END_OF_BODY
    return Answer(SSE_HEAD + role + deltas[0], tuple(deltas[1:]), last)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return _chunked(b"event: " + name.encode() + b"\ndata: " + _json(data) + b"\n\n")


def messages_answer(model: str, tokens: int) -> Answer:
    message: dict[str, Any] = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    opening = (
        _event("message_start", {"type": "message_start", "message": message})
        + _event("content_block_start", block)
        + _event("ping", {"type": "ping"})
    )
    deltas = [
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": token_text(i)},
            },
        )
        for i in range(tokens)
    ]
    closing = (
        _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": tokens},
            },
        )
        + _event("message_stop", {"type": "message_stop"})
        + END_OF_BODY
    )
    return Answer(SSE_HEAD + opening + deltas[0], tuple(deltas[1:]), closing)


def _plain(status: str, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return _head(status, "application/json", chunked=False, length=len(data)) + data


class Answers:
    """Every answer this process gives, encoded on first use and kept."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self._cache: dict[tuple[str, str, bool, int], Answer] = {}

    def _tokens_for(self, request: dict[str, Any]) -> int:
        """`--tokens`, or fewer when the request's token limit is lower, as a model stops."""
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        return min(self.tokens, limit) if isinstance(limit, int) and limit > 0 else self.tokens

    def for_request(self, path: str, body: bytes) -> Answer | bytes:
        """The streamed answer to a request, or a whole response (errors, models)."""
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return _plain(
                "400 Bad Request",
                {"error": {"message": "body is not JSON", "type": "invalid_request_error"}},
            )
        model = str(request.get("model") or "m")
        tokens = self._tokens_for(request)
        if path == CHAT_PATH and request.get("stream"):
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
            key = ("chat", model, usage, tokens)
            if key not in self._cache:
                self._cache[key] = chat_answer(model, tokens, usage)
            return self._cache[key]
        if path == MESSAGES_PATH and request.get("stream"):
            key = ("messages", model, False, tokens)
            if key not in self._cache:
                self._cache[key] = messages_answer(model, tokens)
            return self._cache[key]
        if path.endswith("/models"):
            return _plain(
                "200 OK",
                {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]},
            )
        error = {
            "message": f"the fake upstream streams only: {path}",
            "type": "invalid_request_error",
        }
        return _plain("404 Not Found", {"error": error})


class Connection(asyncio.Protocol):
    """One client connection: requests one after the other (keep-alive), each answered
    by a task that writes its deltas on a schedule."""

    def __init__(self, answers: Answers, gap: float) -> None:
        self._answers = answers
        self._gap = gap
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._busy is not None:
            self._busy.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy is None:
            self._next_request()

    def _next_request(self) -> None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            return
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        path = head[0].split(" ")[1].partition("?")[0]
        answer = self._answers.for_request(path, body)
        if isinstance(answer, bytes):
            self._write(answer)
            self._next_request()
            return
        self._busy = asyncio.get_running_loop().create_task(self._stream(answer))

    async def _stream(self, answer: Answer) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._write(answer.first)
        for index, delta in enumerate(answer.deltas, 1):
            # An absolute schedule, so that late timers do not add up over the answer.
            await asyncio.sleep(start + index * self._gap - loop.time())
            if self._transport is None:
                return
            self._write(delta)
        self._write(answer.last)
        self._busy = None
        self._next_request()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)


async def serve(host: str, port: int, tokens: int, gap_ms: float) -> None:
    answers = Answers(tokens)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(answers, gap_ms / 1000), host, port, backlog=4096
    )
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


class Upstream:
    """The fake upstream in a process of its own, for a benchmark part."""

    def __init__(self, tokens: int = 50, gap_ms: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                "--port",
                "0",
                "--tokens",
                str(tokens),
                "--gap-ms",
                str(gap_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0: a free port (printed first)")
    parser.add_argument("--tokens", type=int, default=50, help="deltas per answer")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between deltas")
    args = parser.parse_args()
    if args.tokens < 1:
        parser.error("--tokens: at least 1")
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port, args.tokens, args.gap_ms))


if __name__ == "__main__":
    main()
