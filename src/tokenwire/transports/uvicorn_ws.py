"""The one place tokenwire reaches into uvicorn: closing a WebSocket that does not read.

ASGI gives an application no way to close a connection whose client has
stopped reading. uvicorn's `send` (close included) first waits for the socket
to drain, which never happens; and after a close it calls `transport.close()`,
which also waits for the buffer to drain, so the socket, its descriptor and
the buffered bytes stay for as long as the client lives.

`TokenwireWebSocketProtocol` is uvicorn's own sans-I/O WebSocket protocol
with one addition: a `TransportControl` in the scope's extensions (under
`EXTENSION`) that writes a close frame behind whatever the transport already
holds, without waiting, and aborts the connection when the client has not
completed the closing handshake within a timeout. The same extension writes a
batch of text frames in one `transport.write` (`send_texts`, the per-token path:
no ASGI message, no await, one system call for all that a connection has queued).
It uses uvicorn internals (`conn`, `transport`, `queue`, `close_sent`, `close_timer`,
`read_paused`, `writable`, `disconnected`, `handshake_complete`, `frames`,
`curr_msg_data_type`, `handle_parser_exception`), and also replaces
uvicorn's traceback at error level for invalid UTF-8 with a warning;
`tests/integration/test_slow_clients.py` fails if they change. A keepalive ping
left unanswered aborts the connection instead of waiting for a drain that never
comes (`tests/integration/test_connection_limits.py`). It also counts a
refused handshake as complete (`handshake_complete`), which uvicorn does not, logging
an error for each; `tests/integration/test_auth_transports.py` fails if that changes.
A head that the websockets parser refuses (uvicorn hands it a head rebuilt from
httptools' parse, which `request_head.py` has already bounded) is answered and
closed rather than left open without an answer, as uvicorn leaves it
(`conn.handshake_exc`; `tests/integration/test_request_heads.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

EXTENSION = "tokenwire.transport"
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 27\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Invalid WebSocket handshake"
)

logger = structlog.get_logger("tokenwire.websocket")


class TransportControl:
    def __init__(self, protocol: TokenwireWebSocketProtocol) -> None:
        self._protocol = protocol

    def close(self, code: int, reason: str, timeout: float) -> bool:
        """Queue a close frame now, behind what the transport holds; abort after `timeout`.

        Returns False if the connection is already closing. A client that reads again
        in time gets every byte already written, then the close frame, and completes
        the handshake; one that does not is cut off, releasing its socket and buffer.
        """
        p = self._protocol
        if p.close_sent or p.transport is None or p.transport.is_closing():
            return False
        p.conn.send_close(code, reason)
        p.transport.write(b"".join(p.conn.data_to_send()))
        p.close_sent = True
        p.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        p.read_until_closed(timeout)
        return True

    def send_texts(self, frames: Sequence[str]) -> bool:
        """Write `frames` as text frames, in order, in one `transport.write`, if the
        connection takes them now: open, and not paused for a full buffer (where uvicorn's
        `send` would wait). Returns False, having sent nothing, if it does not (the caller
        sends them through ASGI, which waits or fails as uvicorn decides).
        """
        p = self._protocol
        conn = p.conn
        if (
            p.close_sent
            or p.disconnected
            or not p.handshake_complete
            or not p.writable.is_set()
            or conn.state is not State.OPEN
            or p.transport.is_closing()
        ):
            return False
        if conn.extensions:
            # permessage-deflate: websockets compresses (its context spans frames) and frames.
            for frame in frames:
                conn.send_text(frame.encode())
            p.transport.write(b"".join(conn.data_to_send()))
        else:
            p.transport.write(b"".join([text_frame(frame) for frame in frames]))
        return True

    @property
    def buffered_bytes(self) -> int:
        """Bytes written to the transport that the client has not taken yet."""
        transport = self._protocol.transport
        return 0 if transport is None else transport.get_write_buffer_size()


def text_frame(text: str) -> bytes:
    """One unfragmented server text frame (RFC 6455 5.2: FIN, opcode 1, no mask), what
    websockets' `send_text` makes without extensions, for a fraction of its cost."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 65536:
        head = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + size.to_bytes(8, "big")
    return head + payload


# How long a connection closed for a client's error reads and drops what the client still
# sends, waiting for it to close, before it is aborted.
LINGER_SECONDS = 5.0


class TokenwireWebSocketProtocol(WebSocketsSansIOProtocol):
    _lingering = False
    on_handshake: Callable[[], None] | None = None
    """Called once, when the handshake is complete: the HTTP protocol that handed the
    connection over disarms its deadline, whose timer would otherwise hold it (parser,
    buffers: some 7 KB) for the rest of `handshake_timeout_seconds`."""

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after our close frame and EOF: read only so as not to reset
        super().data_received(data)
        if (
            self.conn.handshake_exc is not None
            and not self.handshake_initiated
            and not self.transport.is_closing()
        ):
            self._answer_unparsed_head()

    def _answer_unparsed_head(self) -> None:
        # uvicorn acts only on a request that websockets parsed; the answer websockets
        # prepared for one it refused (431, 414), or the end of output it queued for one it
        # could not read at all, would otherwise never be sent, nor the socket closed.
        answer = b"".join(self.conn.data_to_send())
        logger.debug("refusing a WebSocket handshake that its parser refused")
        self.close_sent = self.handshake_complete = True
        self.transport.write(answer or _BAD_REQUEST)
        self.transport.close()

    def send_receive_event_to_app(self) -> None:
        # uvicorn closes with 1007 on invalid UTF-8 too, but logs a traceback at error
        # level for what is only a client's mistake; check first and say it briefly.
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if not data.isascii():
                try:
                    data.decode()
                except UnicodeDecodeError:
                    self.frames = []
                    logger.warning("closing a connection that sent invalid UTF-8 text")
                    self.conn.send_close(1007, "invalid UTF-8 in a text frame")
                    self.handle_parser_exception()
                    return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        # uvicorn closes the socket right behind the close frame. A client still sending
        # then has bytes unread on our side, so the kernel answers with a reset, and a
        # reset can reach the client before it has read the close frame: it sees the
        # connection reset, not why. Close as a lingering close does instead: the close
        # frame, then EOF, then read and drop until the client closes (or the linger ends).
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}
        )
        self.stop_keepalive()
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.read_until_closed(LINGER_SECONDS)

    def read_until_closed(self, timeout: float) -> None:
        """After our close frame: read on (the client's closing frame completes the
        handshake) until the client closes, and abort if it has not within `timeout`."""
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(timeout, self.transport.abort)

    async def send(self, message: Any) -> None:
        await super().send(message)
        # A refused handshake (a `websocket.http.response`) is a finished handshake too;
        # uvicorn would log an error for each one (Kludex/uvicorn#3138).
        if message["type"] == "websocket.http.response.body" and self.close_sent:
            self.handshake_complete = True
        if self.handshake_complete and self.on_handshake is not None:
            done, self.on_handshake = self.on_handshake, None
            done()

    def keepalive_timeout(self) -> None:
        # uvicorn writes a close frame and calls `transport.close()`, which waits for the
        # buffer to drain: a peer that neither answers pings nor reads would keep its
        # socket, its buffer and its session for as long as it lives. It is dead: cut it.
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing:
            self.transport.abort()

    async def run_asgi(self) -> None:
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {}) or {}
        extensions[EXTENSION] = TransportControl(self)
        self.scope["extensions"] = extensions
        await super().run_asgi()
