"""A connection's queue of frames to send, bounded in bytes.

Request logs put frames here without waiting; the connection's writer takes
them out as fast as the client reads. A client that stops reading makes the
queue grow, and past `max_bytes` (UTF-8 bytes, as they go on the wire) the
outbox overflows: it drops what it holds and the connection is ended, so one
lagging client cannot take the server's memory. One consumer takes (the
connection's writer, an event stream's body).
"""

from __future__ import annotations

import asyncio


def utf8_size(text: str) -> int:
    # `isascii` is a flag lookup in CPython: the encode runs only for non-ASCII frames.
    return len(text) if text.isascii() else len(text.encode())


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # A list, not a deque: taken whole (`take_all`), and an empty deque's first block
        # would cost every idle connection half a kilobyte.
        self._frames: list[str] = []
        self._bytes = 0
        # The one consumer's wait, made only while it waits: an Event (and its deque of
        # waiters) would cost every idle connection close to a kilobyte.
        self._waiter: asyncio.Future[None] | None = None
        self.overflowed = False
        self.closed = False

    def put(self, frame: str) -> None:
        # Once closed, the connection has said its last word (an error saying why, say):
        # frames a stream delivers while the backlog drains must not follow it.
        if self.overflowed or self.closed:
            return
        self._frames.append(frame)
        # Inlined `utf8_size`: this is the per-token path.
        self._bytes += len(frame) if frame.isascii() else len(frame.encode())
        if self._bytes > self._max_bytes:
            self.overflowed = True
            self._frames.clear()
            self._bytes = 0
        if self._waiter is not None:
            self._wake()

    async def take_all(self) -> list[str] | None:
        """Every queued frame, in order, waiting for one; None once overflowed, or closed
        and drained."""
        if not self._frames and not await self._ready():
            return None
        frames, self._frames = self._frames, []
        self._bytes = 0
        return frames

    async def _ready(self) -> bool:
        """Wait for a frame: True once one is queued, False once none will come."""
        while not self._frames:
            if self.overflowed or self.closed:
                return False
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return True

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def discard(self) -> None:
        """Drop every queued frame (the connection is closing without them)."""
        self._frames.clear()
        self._bytes = 0

    def close(self) -> None:
        """No more frames: later ones are dropped, and `take_all` returns None once the queue
        is drained."""
        self.closed = True
        self._wake()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes
