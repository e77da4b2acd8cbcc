"""uvicorn's HTTP protocol with a deadline for each request's head.

uvicorn closes a keep-alive connection that stays silent between requests, but
a connection that never sends a complete request head (no bytes at all, or a
byte every few seconds, the "slowloris" attack) holds its socket and file
descriptor for as long as its client likes. Here each request head, the
WebSocket handshake's included, must arrive within `head_timeout` seconds of
the connection opening or of its first byte (between requests, uvicorn's
keep-alive timeout closes a silent connection); otherwise the connection is
closed. The body is not covered: its size is bounded by the
endpoints, and a request that is running counts against its user's limits.

It uses uvicorn internals (`transport`, `loop`, `on_message_begin`,
`on_headers_complete`, `connection_lost`); `tests/integration/test_connection_limits.py`
fails if they change.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = structlog.get_logger("tokenwire.http")


class HeadTimeoutProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            logger.debug("closing a connection whose request head did not arrive in time")
            self.transport.abort()


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for uvicorn's `http` setting, with this deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": seconds})
