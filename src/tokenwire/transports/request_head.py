"""The bounds on a request head, counted on the raw bytes before any parser sees them.

A head (a WebSocket upgrade's included) holds at most `MAX_FIELDS` header fields, lines
of at most `MAX_LINE_BYTES` (the line ending included) and `MAX_HEAD_BYTES` in all. The
parsers underneath disagree about these: httptools sets no bound at all, and the
websockets parser that uvicorn hands an upgrade to fails quietly past its own, leaving
the socket open. Counting here, on the bytes as they arrive, makes one rule hold whatever
either parser would think of the head.

`HeadScanner` does no I/O: it is fed bytes and says where the head ends, or that it is
too large, as h11 and websockets' protocol cores do.
"""

from __future__ import annotations

# Ample for a JWT at its largest (8 KiB) and the headers browsers and SDKs send; the same
# figures as nginx's and websockets' defaults, so a head that passes here passes there.
MAX_FIELDS = 100
MAX_LINE_BYTES = 8 * 1024
MAX_HEAD_BYTES = 64 * 1024


class HeadTooLarge(Exception):
    """A request head past one of its bounds; `bound` names which, for the logs."""

    def __init__(self, bound: str) -> None:
        super().__init__(bound)
        self.bound = bound


class HeadScanner:
    """Follows one request head at a time through the bytes of a connection."""

    def __init__(
        self,
        max_fields: int = MAX_FIELDS,
        max_line_bytes: int = MAX_LINE_BYTES,
        max_head_bytes: int = MAX_HEAD_BYTES,
    ) -> None:
        self._max_fields = max_fields
        self._max_line = max_line_bytes
        self._max_head = max_head_bytes
        self.reset()

    def reset(self) -> None:
        """Start on a new head."""
        self._head = 0  # bytes of this head so far
        self._line = 0  # bytes of the unfinished line so far
        self._lines = 0  # finished lines that are not blank: the request line, then fields
        self._after_cr = False  # the unfinished line's last byte is a CR

    def feed(self, data: bytes, start: int = 0) -> int | None:
        """Take the next bytes, `data[start:]`; return the offset in `data` just past the
        head's blank line if the head ends there (and start on the next one), or None if
        it goes on.

        Raises `HeadTooLarge` as soon as the bytes seen pass a bound, without waiting for
        the line or the head to end.
        """
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._unfinished(data, start)
                return None
            end = newline + 1
            if self._finish_line(data, start, end):
                self.reset()
                return end
            start = end

    def _unfinished(self, data: bytes, start: int) -> None:
        taken = len(data) - start
        if taken:
            self._line += taken
            self._head += taken
            self._after_cr = data[-1] == 0x0D
        self._check()

    def _finish_line(self, data: bytes, start: int, end: int) -> bool:
        """Count the line that ends at `end`; True if it is the blank line ending the head."""
        taken = end - start
        length = self._line + taken
        self._head += taken
        blank = length == 1 or (
            length == 2 and (data[start] == 0x0D if taken == 2 else self._after_cr)
        )
        self._line = 0
        self._after_cr = False
        if length > self._max_line:
            raise HeadTooLarge("line")
        if not blank:
            self._lines += 1
        self._check()
        # Blank lines before the request line are ignored, as RFC 9112 allows.
        return blank and self._lines > 0

    def _check(self) -> None:
        if self._line > self._max_line:
            raise HeadTooLarge("line")
        if self._lines - 1 > self._max_fields:
            raise HeadTooLarge("fields")
        if self._head > self._max_head:
            raise HeadTooLarge("size")
