"""uvicorn's HTTP protocol with bounds on each request head, deadlines for each request's
head and body, and a deadline for a WebSocket handshake.

Every request head (a WebSocket upgrade's included) is held to the bounds of
`request_head.py` on its raw bytes, before httptools parses it and before
uvicorn hands an upgrade to the websockets parser: past any of them it is
answered 431 and the connection closed at once. httptools sets no bound of its
own (it gathers a long line by copying it whole at every read), and the
websockets parser, past its own bounds, used to leave the socket open without
an answer.

uvicorn closes a keep-alive connection that stays silent between requests, but
a connection that never sends a complete request head (no bytes at all, or a
byte every few seconds, the "slowloris" attack) holds its socket and file
descriptor for as long as its client likes. Here each request head must arrive
within `head_timeout` seconds of the connection opening or of its first byte
(between requests, uvicorn's keep-alive timeout closes a silent connection);
otherwise the connection is closed. An upgrade's WebSocket handshake must be
complete (accepted or refused by the app) by the same deadline. The body then
has as long again: a body that stalls holds no socket for long either, even one
the app never reads (a request refused with 401 or 413 is answered at once, and
uvicorn would go on taking its body without any deadline).

Each request's scope carries its connection's `abort` (extension `ABORT`).

It uses uvicorn internals (`transport`, `loop`, `data_received`,
`on_message_begin`, `on_headers_complete`, `on_message_complete`,
`connection_lost`, and the WebSocket protocol's `handshake_complete`);
`tests/integration/test_connection_limits.py` and
`tests/integration/test_request_heads.py` fail if they change.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tokenwire.transports.request_head import HeadScanner, HeadTooLarge
from tokenwire.transports.uvicorn_ws import TokenwireWebSocketProtocol

logger = structlog.get_logger("tokenwire.http")

# The scope extension under which a request finds its connection's `abort`: a response
# stuck behind a client that does not read cannot otherwise let go of the socket.
ABORT = "tokenwire.abort"
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 31\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request header fields too large"
)
# How long a refused connection's further bytes are dropped before it is closed.
LINGER_SECONDS = 0.5


class HeadTimeoutProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._scanner = HeadScanner()
        # The next bytes belong to a request head: from the start, and from the end of
        # each request until httptools has the whole of the next head.
        self._in_head = True
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # The parser gets a head only up to its end, so that the bytes after it (the next
        # of pipelined heads) are counted too. A head that follows a request's body in the
        # same read is counted from the next read: httptools alone knows where a body ends.
        if self._refused:
            return
        start = 0
        while self._in_head:
            try:
                end = self._scanner.feed(data, start)
            except HeadTooLarge as too_large:
                self._refuse(too_large.bound)
                return
            if end is None:
                break
            super().data_received(data[start:end])
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # answered and closed, or handed over to the WebSocket protocol
            start = end
        if start < len(data):
            super().data_received(data[start:] if start else data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        upgrading = self.parser.should_upgrade() and self._should_upgrade()
        if not upgrading:
            # An upgrade keeps the head's deadline until its handshake is complete.
            self._disarm()
            extensions = cast(dict[str, object], self.scope.setdefault("extensions", {}))
            extensions[ABORT] = self.transport.abort
        super().on_headers_complete()
        if not upgrading:
            self._body_timer = self.loop.call_later(self.head_timeout, self._timed_out, "body")

    def on_message_complete(self) -> None:
        self._in_head = True
        self._disarm_body()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if isinstance(protocol, TokenwireWebSocketProtocol):
            # The deadline is met once the handshake is: this protocol can go then.
            protocol.on_handshake = self._disarm

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
        if self.transport.is_closing():
            return
        protocol = self.transport.get_protocol()
        if isinstance(protocol, WebSocketsSansIOProtocol):
            if protocol.handshake_complete:
                return
            part = "websocket handshake"
        logger.debug("closing a connection whose request did not arrive in time", part=part)
        self.transport.abort()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refused and self.cycle.response_complete:
            self._answer_head_too_large()

    def _refuse(self, bound: str) -> None:
        """Answer a head past `bound` with 431 and end the connection, whatever the head
        would have become; after the response in progress, if any (pipelining)."""
        self._disarm()
        if self.transport.is_closing():
            return
        logger.debug("refusing a request head past its bounds", bound=bound)
        self._refused = True
        if self.cycle is None or self.cycle.response_complete:
            self._answer_head_too_large()

    def _answer_head_too_large(self) -> None:
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.transport.write(HEAD_TOO_LARGE)
        # The answer and the end of output (FIN) go out at once. Closing the socket with
        # the rest of the head still arriving would make the kernel reset the
        # connection, and a client whose reset comes before it reads loses the 431; so
        # what comes next is dropped unread for a moment, as Go's server does, unless the
        # client closes first (`eof_received` closes the transport).
        self.transport.write_eof()
        self._head_timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)


def head_timeout_protocol(seconds: float) -> type[HeadTimeoutProtocol]:
    """The protocol class for uvicorn's `http` setting, with this deadline."""
    return type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout": seconds})
