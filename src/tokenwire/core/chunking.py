"""Coalescing provider deltas into chunks (pure logic; the caller owns the clock and timer).

Promises: the first text goes out the moment it arrives; after that, text is
held until it reaches `max_chars` or has waited `flush_interval` seconds,
whichever comes first. Nothing is reordered or lost.
"""

from __future__ import annotations


class Coalescer:
    def __init__(self, max_chars: int, flush_interval: float) -> None:
        self._max_chars = max_chars
        self._flush_interval = flush_interval
        self._parts: list[str] = []
        self._size = 0
        self._sent_first = False
        self.due_at: float | None = None
        """When the held text must go out; None while nothing is held."""

    def push(self, delta: str, now: float) -> str | None:
        """Add a delta; return a chunk to send now, or None if it is held."""
        if not delta:
            return None
        if not self._sent_first:
            self._sent_first = True
            return delta
        self._parts.append(delta)
        self._size += len(delta)
        if self.due_at is None:
            self.due_at = now + self._flush_interval
        if self._size >= self._max_chars or now >= self.due_at:
            return self.take()
        return None

    def take(self) -> str | None:
        """Everything held, as one chunk; None if nothing is."""
        if not self._parts:
            return None
        chunk = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        self.due_at = None
        return chunk
