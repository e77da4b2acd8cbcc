"""One request's events as a client sees them: each once, in order, across reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tokenwire.clients.errors import ClientError, RequestRefused, StreamFailed
from tokenwire.protocol.server_events import (
    Chunk,
    Error,
    ErrorData,
    ServerEvent,
    StreamEnd,
    Token,
)

Opener = Callable[["Stream"], Awaitable[None]]


class Stream:
    """An async iterator over one request's events, ending after its `stream_end`.

    Every event after `last_seq` is yielded once: a reconnect resumes from
    `last_seq`, and anything the server sends again is dropped here. A stream that
    ends with status `error` yields its `error` and `stream_end`, then raises
    `StreamFailed`; one refused before it started raises `RequestRefused`.
    """

    def __init__(
        self,
        request_id: str,
        opening: dict[str, Any],
        opener: Opener,
        canceller: Callable[[str], Awaitable[None]],
        last_seq: int = 0,
    ) -> None:
        self.request_id = request_id
        self.opening = opening
        """The message that starts it: its `ai_request`, or the `resume` of an attach."""
        self.last_seq = last_seq
        self.text = ""
        """The answer's text so far (what the yielded chunks or tokens held)."""
        self.end: StreamEnd | None = None
        self.resuming = False
        self._opener = opener
        self._canceller = canceller
        self._queue: asyncio.Queue[ServerEvent | ClientError] = asyncio.Queue()
        self._opened = False
        self._error: ErrorData | None = None
        self._raise_next: ClientError | None = None
        self._done = False

    @property
    def is_request(self) -> bool:
        return bool(self.opening["type"] == "ai_request")

    @property
    def accepted(self) -> bool:
        """Whether the server has sent any of its events (it exists there)."""
        return self.last_seq > 0

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> ServerEvent:
        if self._raise_next is not None:
            error, self._raise_next = self._raise_next, None
            raise error
        if self._done:
            raise StopAsyncIteration
        if not self._opened:
            self._opened = True
            try:
                await self._opener(self)
            except BaseException:
                self._done = True  # never sent: nothing will come
                raise
        item = await self._queue.get()
        if isinstance(item, ClientError):
            self._done = True
            raise item
        self._take(item)
        return item

    async def cancel(self) -> None:
        """Ask the server to stop this answer; its `stream_end` (cancelled) still comes."""
        await self._canceller(self.request_id)

    # -- what the connection hands over ------------------------------------------

    def receive(self, event: ServerEvent) -> bool:
        """An event of this request from the wire; True once it is the `stream_end`."""
        if event.seq is None:
            if isinstance(event, Error):
                self.fail(RequestRefused(event.data))
                return True
            return False
        if event.seq <= self.last_seq:
            return False  # sent again after a resume: the consumer has it already
        self.last_seq = event.seq
        self.resuming = False
        self._queue.put_nowait(event)
        return isinstance(event, StreamEnd)

    def fail(self, error: ClientError) -> None:
        self._queue.put_nowait(error)

    def _take(self, event: ServerEvent) -> None:
        if isinstance(event, Chunk | Token):
            self.text += event.text
        elif isinstance(event, Error):
            self._error = event.data
        elif isinstance(event, StreamEnd):
            self.end = event
            self._done = True
            if event.data.status == "error":
                self._raise_next = StreamFailed(self._error or _unexplained(event))


def _unexplained(end: StreamEnd) -> ErrorData:
    return ErrorData(
        error="the stream ended with an error",
        error_type=end.data.error_type or "internal_error",
        request_id=end.data.request_id,
    )
