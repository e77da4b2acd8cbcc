"""One load generator for streamed answers over HTTP (SSE) and the WebSocket.

The same client measures a gateway and the fake upstream called directly, so that the
difference is what the gateway adds. A run opens its connections first (as a client's
pool would have them), then starts each stream at its planned moment and records, per
stream, the time from sending the request to the first text event (TTFT) and between
consecutive text events (gaps), from the moment their bytes arrive.

HTTP is HTTP/1.1 with keep-alive written on an `asyncio.Protocol`: a chunked body is
split into SSE events and each event is classified by its first bytes (`Dialect`), so
that the client costs little per token; only errors are parsed. The WebSocket side is
ws_load.py's RawClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import ws_load

clock = time.perf_counter


def _content_text(event: bytes) -> bool:
    """A Chat Completions chunk whose delta carries text (not the role's empty content)."""
    at = event.find(b'"content":')
    if at < 0:
        return False
    rest = event[at + 10 : at + 13].lstrip()
    return rest[:1] == b'"' and rest[1:2] != b'"'


def _event_named(name: bytes) -> Callable[[bytes], bool]:
    line = b"event: " + name + b"\n"

    def named(event: bytes) -> bool:
        return event.startswith(line) or b"\n" + line in event

    return named


@dataclass(frozen=True)
class Dialect:
    """How one HTTP streaming API is asked, and how its text and failures look."""

    name: str
    path: str
    body: Callable[[str, int], dict[str, Any]]
    is_text: Callable[[bytes], bool]
    is_error: Callable[[bytes], bool]


CHAT = Dialect(
    "chat",
    "/v1/chat/completions",
    lambda model, tokens: {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say something."}],
    },
    _content_text,
    lambda event: event.startswith(b'data: {"error"'),
)
RESPONSES = Dialect(
    "responses",
    "/v1/responses",
    lambda model, tokens: {"model": model, "stream": True, "input": "Say something."},
    _event_named(b"response.output_text.delta"),
    lambda event: _event_named(b"response.failed")(event) or _event_named(b"error")(event),
)
MESSAGES = Dialect(
    "messages",
    "/v1/messages",
    lambda model, tokens: {
        "model": model,
        "stream": True,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Say something."}],
    },
    _event_named(b"content_block_delta"),
    _event_named(b"error"),
)
# tokenwire's own SSE transport (docs/protocol.md): `POST /api/streams`, one event per
# protocol event, the response ending after `stream_end`.
TOKENWIRE_SSE = Dialect(
    "sse",
    "/api/streams",
    lambda provider, tokens: {
        "prompt": "Say something.",
        "config": {"provider": provider},
        "stream_config": {"granularity": "token"},
    },
    _event_named(b"token"),
    _event_named(b"error"),
)


@dataclass
class Tally:
    """What the streams of one run add up to."""

    expected_tokens: int
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    completed: int = 0
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message[:300])


class HttpStreams(asyncio.Protocol):
    """One keep-alive connection that sends `count` streaming requests, one after the other."""

    def __init__(self, request: bytes, dialect: Dialect, tally: Tally, count: int) -> None:
        self._request = request
        self._dialect = dialect
        self._tally = tally
        self._left = count
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._events = bytearray()
        self._reset()
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def _reset(self) -> None:
        self._head_done = False
        self._status = 0
        self._chunk_left = -1  # -1: a size line is next
        self._length: int | None = None
        self._sent_at = 0.0
        self._last = 0.0
        self._ntext = 0
        self._failed = False
        self._events.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.done.done():
            self._tally.error(f"connection lost with {self._left} requests to go: {exc}")
            self.done.set_result(None)

    def start(self) -> None:
        if self._left <= 0:
            self.done.set_result(None)
            return
        self._left -= 1
        self._reset()
        self._sent_at = clock()
        if self._transport is not None:
            self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = clock()
        self._buf += data
        if not self._head_done and not self._read_head():
            return
        if self._length is not None:
            self._plain_body()
        else:
            self._chunked_body(now)

    def _read_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        self._status = int(lines[0].split(" ")[1])
        self._length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self._length = int(value)
        self._head_done = True
        return True

    def _plain_body(self) -> None:
        """A response that is not a stream: an error, read whole and counted."""
        assert self._length is not None
        if len(self._buf) < self._length:
            return
        body = bytes(self._buf[: self._length])
        del self._buf[: self._length]
        self._tally.error(f"HTTP {self._status}: {body[:200]!r}")
        self._finish()

    def _chunked_body(self, now: float) -> None:
        buf = self._buf
        while True:
            if self._chunk_left < 0:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(bytes(buf[:line_end]).split(b";")[0], 16)
                if size == 0:
                    if len(buf) < line_end + 4:
                        break
                    del buf[: line_end + 4]
                    self._split_events(now)
                    self._end_of_stream()
                    return
                del buf[: line_end + 2]
                self._chunk_left = size
            take = min(self._chunk_left, len(buf))
            if take:
                self._events += buf[:take]
                del buf[:take]
                self._chunk_left -= take
            if self._chunk_left > 0:
                break
            if len(buf) < 2:
                self._chunk_left = 0  # the chunk's CRLF is still to come
                break
            del buf[:2]
            self._chunk_left = -1
        self._split_events(now)

    def _split_events(self, now: float) -> None:
        events = self._events
        start = 0
        dialect = self._dialect
        while (end := events.find(b"\n\n", start)) >= 0:
            event = bytes(events[start:end])
            start = end + 2
            if dialect.is_text(event):
                if self._ntext == 0:
                    self._tally.ttfts.append(now - self._sent_at)
                else:
                    self._tally.gaps.append(now - self._last)
                self._ntext += 1
                self._last = now
            elif dialect.is_error(event):
                self._failed = True
                self._tally.error(f"error event: {event[:200]!r}")
        if start:
            del events[:start]

    def _end_of_stream(self) -> None:
        tally = self._tally
        if self._status != 200:
            tally.error(f"HTTP {self._status}")
        elif self._ntext != tally.expected_tokens and not self._failed:
            tally.error(f"{self._ntext} text events, expected {tally.expected_tokens}")
        elif not self._failed:
            tally.completed += 1
            tally.tokens += self._ntext
        self._finish()

    def _finish(self) -> None:
        self._head_done = False
        if self._left > 0:
            self.start()
        elif not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Plan:
    """`streams` connections, the i-th starting at i/streams of `spread_s`, each sending
    `each` requests one after the other."""

    streams: int
    each: int = 1
    spread_s: float = 0.0


@dataclass
class Outcome:
    """One run's figures: milliseconds, and each process's CPU seconds during the streaming."""

    ttft_ms: dict[str, float]
    gap_ms: dict[str, float]
    completed: int
    tokens: int
    errors: int
    error_samples: list[str]
    seconds: float
    cpu_s: dict[str, float]
    client_cpu_s: float

    def cpu_ms_per_1k_tokens(self, name: str) -> float | None:
        if name not in self.cpu_s or not self.tokens:
            return None
        return self.cpu_s[name] / self.tokens * 1e6


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants (a proxy may fork workers)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += ws_load.cpu_seconds(current)
        pending += ws_load.proc_children(current)
    return total


class Connector:
    """Opens connections at most `limit` at a time (a burst of 1,000 SYNs overflows the
    listen backlog of some servers, which a client's pool would not do either)."""

    def __init__(self, limit: int = 64) -> None:
        self._gate = asyncio.Semaphore(limit)

    async def open(self, make: Callable[[], Any], host: str, port: int, tally: Tally) -> Any:
        async with self._gate:
            try:
                loop = asyncio.get_running_loop()
                _, protocol = await asyncio.wait_for(loop.create_connection(make, host, port), 30)
                return protocol
            except (OSError, TimeoutError) as exc:
                tally.error(f"connect failed: {exc!r}")
                return None


async def _measure(
    starters: list[Callable[[], None]],
    finished: list[asyncio.Future[None]],
    plan: Plan,
    tally: Tally,
    pids: dict[str, int],
    timeout: float,
) -> Outcome:
    loop = asyncio.get_running_loop()
    cpu0 = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    own0 = time.process_time()
    began = clock()
    base = loop.time() + 0.01
    for index, start in enumerate(starters):
        loop.call_at(base + plan.spread_s * index / max(1, len(starters)), start)
    if finished:
        _, pending = await asyncio.wait(finished, timeout=timeout)
        if pending:
            tally.error(f"{len(pending)} connections unfinished after {timeout:.0f} s")
    seconds = clock() - began
    cpu = {name: tree_cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    return Outcome(
        ttft_ms=ws_load.percentiles(tally.ttfts),
        gap_ms=ws_load.percentiles(tally.gaps),
        completed=tally.completed,
        tokens=tally.tokens,
        errors=tally.errors,
        error_samples=tally.error_samples,
        seconds=round(seconds, 3),
        cpu_s={name: round(value, 4) for name, value in cpu.items()},
        client_cpu_s=round(time.process_time() - own0, 3),
    )


async def run_http(
    url: str,
    dialect: Dialect,
    model: str,
    plan: Plan,
    tokens: int,
    pids: dict[str, int],
    headers: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> Outcome:
    """`plan` against `url` in `dialect`; `pids` are the processes whose CPU is counted."""
    host, _, port_text = url.removeprefix("http://").partition(":")
    port = int(port_text.split("/")[0])
    body = json.dumps(dialect.body(model, tokens), separators=(",", ":")).encode()
    request = http_request(host, port, dialect.path, body, headers or {})
    tally = Tally(tokens)
    connector = Connector()
    opened = await asyncio.gather(
        *(
            connector.open(
                lambda: HttpStreams(request, dialect, tally, plan.each), host, port, tally
            )
            for _ in range(plan.streams)
        )
    )
    clients = [c for c in opened if c is not None]
    try:
        return await _measure(
            [c.start for c in clients], [c.done for c in clients], plan, tally, pids, timeout
        )
    finally:
        for client in clients:
            client.close()


async def run_websocket(
    url: str, provider: str, plan: Plan, tokens: int, pids: dict[str, int], timeout: float = 300.0
) -> Outcome:
    """`plan` on tokenwire's WebSocket (ai_requests to `provider`), by ws_load's client,
    offering permessage-deflate as browsers do."""
    host, _, port_text = url.removeprefix("http://").partition(":")
    port = int(port_text)
    request = json.dumps(
        {
            "type": "ai_request",
            "prompt": "Say something.",
            "config": {"provider": provider},
            "stream_config": {"granularity": "token"},
        },
        separators=(",", ":"),
    ).encode()
    stats = ws_load.Stats("token", tokens)
    stats.pending = plan.streams
    tally = Tally(tokens)
    connector = asyncio.Semaphore(64)

    async def connect() -> ws_load.RawClient | None:
        async with connector:
            stream = ws_load.Stream(stats, plan.each)
            try:
                return await asyncio.wait_for(
                    ws_load.open_raw(host, port, ws_load.WS_PATH, True, stream, request), 30
                )
            except (OSError, TimeoutError, ConnectionError) as exc:
                stats.error(f"connect failed: {exc!r}")
                return None

    clients = [c for c in await asyncio.gather(*(connect() for _ in range(plan.streams))) if c]
    stats.pending = len(clients)
    all_done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stats.all_done = all_done
    try:
        outcome = await _measure(
            [c.send_request for c in clients],
            [all_done] if clients else [],
            plan,
            tally,
            pids,
            timeout,
        )
    finally:
        await asyncio.gather(*(c.close(5) for c in clients))
    outcome.ttft_ms = ws_load.percentiles(stats.ttfts)
    outcome.gap_ms = ws_load.percentiles(stats.gaps)
    outcome.completed = stats.completed
    outcome.tokens = stats.tokens_delivered
    outcome.errors = stats.errors + tally.errors
    outcome.error_samples = stats.error_samples + tally.error_samples
    return outcome


def raise_fd_limit(streams: int) -> None:
    ws_load.raise_fd_limit(streams)


def uvloop_runner() -> Callable[..., Any]:
    try:
        import uvloop

        return cast(Callable[..., Any], uvloop.run)
    except ImportError:
        return asyncio.run


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
