"""What the HTTP dialects share: running a request through the core and following it.

A dialect builds a `RequestSpec`, starts it, and reads the request's records
from a `Feed` (a log subscriber) to translate into its own wire format. These
calls offer no way back (CONTRACT.md): a client that goes away, streaming or
not, before or after the first token, cancels its request at once, and what
was streamed until then is counted. Only a background response of the
Responses dialect outlives its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any

import structlog
from pydantic import Field
from starlette.requests import Request

from tokenwire.core.deadlines import Deadlines, check_deadline
from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.gateway import Gateway
from tokenwire.core.provider import MEDIA_TYPES
from tokenwire.core.spec import RequestKey, RequestSpec, Routing
from tokenwire.protocol.errors import (
    BackendUnavailable,
    InvalidRequest,
    RequestCancelled,
    ShuttingDown,
    TokenwireError,
    UnknownModel,
    UnknownRequest,
    error_for,
    excerpt,
)
from tokenwire.protocol.events import TEXT_EVENTS, EventType

logger = structlog.get_logger("tokenwire.v1")

CLIENT_LEFT = "client went away"
USAGE_ESTIMATED = "tokenwire-usage-estimated"
"""The header of a whole answer whose usage tokenwire estimated (the provider sent none)."""
AUTO = "auto"
"""The `model` that lets the router choose."""
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "with stream: true"}
}
Text = Annotated[str, Field(max_length=10_000_000)]
# An image's URL and media type as the OpenAPI document states them, for clients and
# fuzzers; core/images.py makes the real checks, and says what is wrong in words.
ImageUrl = Annotated[
    str,
    Field(
        min_length=1,
        json_schema_extra={"pattern": "^([Dd][Aa][Tt][Aa]:|[Hh][Tt][Tt][Pp][Ss]://[^/?#]+)"},
    ),
]
ImageMediaType = Annotated[str, Field(json_schema_extra={"enum": list(MEDIA_TYPES)})]


class Feed:
    """A request's records, in order, for one HTTP response (a log subscriber).

    `until_answer` reads ahead: what it read comes back first when the feed is iterated.

    Bounded: records past `max_pending` not yet taken mean the client does not
    read; the feed then ends (`overflowed`) and the caller treats it as gone."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self._records: deque[Record] = deque()
        self._ready = asyncio.Event()
        self._max_pending = max_pending
        self.ended = False
        self.overflowed = False
        self.failure: TokenwireError | None = None
        """Why the log could no longer be followed (`lost`); the feed ends as if unread."""
        self._peeked: list[Record] = []
        self._ends_seen = False

    def deliver(self, record: Record) -> None:
        if self.overflowed:
            return
        self._records.append(record)
        if len(self._records) > self._max_pending:
            self.overflowed = True
            self._records.clear()
        self._ready.set()

    def lost(self, error: TokenwireError) -> None:
        self.failure = error
        self.overflowed = True
        self._records.clear()
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[Record]:
        return self._iterate()

    async def until_answer(self) -> dict[str, Any] | None:
        """Read ahead to the answer's first text or tool call, or its end: the end's data
        if the request ended before any, else None. Lets a dialect answer an HTTP error
        status for a request that failed before anything was streamed, as the real APIs do."""
        async for record in self._live():
            self._peeked.append(record)
            if record.event_type in TEXT_EVENTS or record.event_type is EventType.TOOL_CALL_START:
                return None
            if record.event_type is EventType.STREAM_END:
                return record.data
        return None

    def peeked_error(self) -> dict[str, Any] | None:
        """The error event among the records read ahead, if there is one."""
        for record in self._peeked:
            if record.event_type is EventType.ERROR:
                return record.data
        return None

    async def _iterate(self) -> AsyncIterator[Record]:
        peeked, self._peeked = self._peeked, []
        for record in peeked:
            yield record
            if record.event_type is EventType.STREAM_END:
                self.ended = True
                return
        async for record in self._live():
            yield record
        if self._ends_seen:
            self.ended = True

    async def _live(self) -> AsyncIterator[Record]:
        while True:
            while not self._records:
                if self.overflowed:
                    return
                self._ready.clear()
                await self._ready.wait()
            record = self._records.popleft()
            yield record
            if record.event_type is EventType.STREAM_END:
                self._ends_seen = True
                return


def routing_for(gateway: Gateway, model: str) -> Routing:
    """A dialect's `model`: a provider's name, or `auto`; anything else is a 404."""
    if model == AUTO:
        return Routing()
    if model not in gateway.slots:
        raise UnknownModel(f"The model `{model[:64]}` does not exist; GET /v1/models lists them")
    return Routing(provider=model)


def usage_headers(usage: object) -> dict[str, str]:
    """`tokenwire-usage-estimated: true` for usage that tokenwire estimated; else none."""
    estimated = isinstance(usage, Mapping) and usage.get("estimated") is True
    return {USAGE_ESTIMATED: "true"} if estimated else {}


def failure_of(end: dict[str, Any], error: dict[str, Any] | None) -> TokenwireError:
    """Why a request ended without its answer: its error event's error, or its cancel."""
    if error is not None:
        return error_from(error)
    if end.get("reason") == "shutdown":
        return ShuttingDown("the server is shutting down")
    return RequestCancelled(f"the request was cancelled ({end.get('reason') or 'no reason'})")


DEADLINE_HEADERS = {
    "tokenwire-timeout": "request",
    "tokenwire-first-token-timeout": "first_token",
    "tokenwire-silence-timeout": "silence",
}
"""The request headers that set a call's deadlines (core/deadlines.py), in seconds."""
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def deadlines_of(request: Request) -> Deadlines:
    """The deadlines a call asks for in its headers, each above 0 and at most the
    server's maximum; a bad value is `invalid_request` naming the header."""
    maximum = gateway_of(request).config.tuning.max_timeout
    asked: dict[str, float] = {}
    for header, deadline in DEADLINE_HEADERS.items():
        raw = request.headers.get(header)
        if raw is None:
            continue
        text = raw.strip()
        if not _SECONDS.fullmatch(text) or float(text) <= 0:
            raise InvalidRequest(
                f"{header}: expected a number of seconds above 0 (such as 120 or 0.5), "
                f"got {excerpt(raw)}"
            )
        check_deadline(header, float(text), maximum)
        asked[deadline] = float(text)
    return Deadlines(**asked)


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def start(gateway: Gateway, spec: RequestSpec) -> tuple[EventLog, Feed]:
    """Start a request and follow it from its first event."""
    log = await gateway.start(spec)
    feed = Feed()
    log.subscribe(feed)
    return log, feed


async def cancel_quietly(gateway: Gateway, key: RequestKey, reason: str = CLIENT_LEFT) -> None:
    """Cancel a request whose client went, wherever it runs; one that no longer runs, or
    that Redis cannot reach now (logged), is left as it is: nobody waits for an answer."""
    try:
        await gateway.cancel_anywhere(key, reason)
    except UnknownRequest:
        pass
    except BackendUnavailable:
        logger.warning("could not cancel after the client went", request_id=key.request_id)


@contextlib.asynccontextmanager
async def cancelled_on_hangup(
    request: Request, gateway: Gateway, key: RequestKey
) -> AsyncIterator[None]:
    """While the caller waits for a whole answer, cancel the request if its client goes.

    The body has been read: the next thing the server receives is the disconnect."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        await cancel_quietly(gateway, key)

    watcher = asyncio.create_task(watch(), name=f"hang-up watch {key.request_id}")
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def whole(feed: Feed) -> tuple[str, dict[str, object], dict[str, object] | None]:
    """Wait for a request to end: (its text, its stream_end data, its error data or None)."""
    parts: list[str] = []
    error: dict[str, object] | None = None
    end: dict[str, object] = {}
    async for record in feed:
        if record.event_type is EventType.CHUNK:
            parts.append(record.data["chunk"])
        elif record.event_type is EventType.TOKEN:
            parts.append(record.data["token"])
        elif record.event_type is EventType.ERROR:
            error = record.data
        elif record.event_type is EventType.STREAM_END:
            end = record.data
    return "".join(parts), end, error


def error_from(data: dict[str, object]) -> TokenwireError:
    """The error an `error` event describes, as an exception of its wire type."""
    retry_after = data.get("retry_after")
    return error_for(
        str(data.get("error_type", "internal_error")),
        str(data.get("error", "")),
        float(retry_after) if isinstance(retry_after, int | float) else None,
    )
