"""A connection's queue of frames to send, bounded in bytes.

Request logs put frames here without waiting; the connection's writer takes
them out as fast as the client reads. A client that stops reading makes the
queue grow, and past `max_bytes` (UTF-8 bytes, as they go on the wire) the
outbox overflows: it drops what it holds and the connection is ended, so one
lagging client cannot take the server's memory.
"""

from __future__ import annotations

import asyncio
from collections import deque


def utf8_size(text: str) -> int:
    # `isascii` is a flag lookup in CPython: the encode runs only for non-ASCII frames.
    return len(text) if text.isascii() else len(text.encode())


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
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
        self._ready.set()

    async def take(self) -> str | None:
        """The next frame, waiting for one; None once overflowed, or closed and drained."""
        while not self._frames:
            if self.overflowed or self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame) if frame.isascii() else len(frame.encode())
        return frame

    async def take_all(self) -> list[str] | None:
        """Every queued frame, in order, waiting for one; None as `take` returns None."""
        while not self._frames:
            if self.overflowed or self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames

    def discard(self) -> None:
        """Drop every queued frame (the connection is closing without them)."""
        self._frames.clear()
        self._bytes = 0

    def close(self) -> None:
        """No more frames: later ones are dropped, and `take` returns None once the queue
        is drained."""
        self.closed = True
        self._ready.set()

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes
