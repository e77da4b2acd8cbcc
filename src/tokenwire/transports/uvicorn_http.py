"""uvicorn's HTTP protocol with deadlines for each request's head and body, and a bound
on the head's size.

uvicorn closes a keep-alive connection that stays silent between requests, but
a connection that never sends a complete request head (no bytes at all, or a
byte every few seconds, the "slowloris" attack) holds its socket and file
descriptor for as long as its client likes. Here each request head, the
WebSocket handshake's included, must arrive within `head_timeout` seconds of
the connection opening or of its first byte (between requests, uvicorn's
keep-alive timeout closes a silent connection); otherwise the connection is
closed. The body then has as long again: a body that stalls holds no socket
for long either, even one the app never reads (a request refused with 401 or
413 is answered at once, and uvicorn would go on taking its body without any
deadline).

httptools sets no bound on a head's size, and gathers a long header line by
copying it whole at every read; a head past `MAX_HEAD_BYTES` is answered 431
and the connection closed, so that a client cannot make the server buffer and
copy megabytes.

Each request's scope carries its connection's `abort` (extension `ABORT`).

It uses uvicorn internals (`transport`, `loop`, `data_received`,
`on_message_begin`, `on_headers_complete`, `on_message_complete`,
`connection_lost`); `tests/integration/test_connection_limits.py` fails if they
change.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = structlog.get_logger("tokenwire.http")

# The scope extension under which a request finds its connection's `abort`: a response
# stuck behind a client that does not read cannot otherwise let go of the socket.
ABORT = "tokenwire.abort"
# Ample for a JWT at its largest (8 KiB) and the headers browsers and SDKs send.
MAX_HEAD_BYTES = 64 * 1024
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request header fields too large"
)


class HeadTimeoutProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._heads = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        reading_head = self._head_timer is not None
        heads = self._heads
        super().data_received(data)
        # Only a read that began and ended inside one head counts: one that finished a
        # head or a body may hold other bytes.
        if reading_head and self._head_timer is not None and self._heads == heads:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
                self._disarm()
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._heads += 1
        self._head_bytes = 0
        upgrading = self.parser.should_upgrade() and self._should_upgrade()
        if not upgrading:
            extensions = cast(dict[str, object], self.scope.setdefault("extensions", {}))
            extensions[ABORT] = self.transport.abort
        super().on_headers_complete()
        if not upgrading:
            self._body_timer = self.loop.call_later(self.head_timeout, self._timed_out, "body")

    def on_message_complete(self) -> None:
        self._disarm_body()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._timed_out, "head")

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _timed_out(self, part: str) -> None:
        self._head_timer = self._body_timer = None
        if not self.transport.is_closing():
            logger.debug("closing a connection whose request did not arrive in time", part=part)
            self.transport.abort()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for uvicorn's `http` setting, with this deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": seconds})
