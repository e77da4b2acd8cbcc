"""The WebSocket transport: `/ws/ai-stream`, a thin adapter onto the gateway.

A connection runs two loops: one reads client messages and answers at once
(requests run in the gateway, never in this loop), the other writes frames
from an outbox that request logs fill. The logs never wait for a socket.

A client that stops reading fills its outbox; past `max_send_buffer_bytes`
the backlog is dropped, a close frame with code 1013 goes out behind what the
socket already holds, and the connection counts as gone from that moment. If
the client does not complete the close within `close_timeout` seconds, the
connection is aborted (see `uvicorn_ws`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.gateway import Gateway
from tokenwire.core.sessions import Session, SessionState
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import (
    AuthenticationFailed,
    InternalError,
    MessageTooLarge,
    SendBufferOverflow,
    TokenwireError,
    TooManyStreams,
    close_code,
    error_payload,
)
from tokenwire.protocol.events import EventType, encode_event, pong_frame
from tokenwire.protocol.messages import (
    AiRequest,
    Authenticate,
    CancelRequest,
    ClientMessage,
    ListRequests,
    Ping,
    Resume,
    UpdatePreferences,
    parse_client_message,
)
from tokenwire.protocol.preferences import initial_preferences
from tokenwire.security.access import AccessPolicy
from tokenwire.security.audit import audit
from tokenwire.security.middleware import SUBPROTOCOL, identity_of
from tokenwire.transports.frames import ws_frame
from tokenwire.transports.identity import client_of, user_of
from tokenwire.transports.outbox import Outbox, utf8_size
from tokenwire.transports.requests import spec_from_ai_request
from tokenwire.transports.uvicorn_ws import EXTENSION, TransportControl

NODE_HEADER = b"tokenwire-node"
# The shortest time between two writes to one connection while its frames keep coming
# (see `_write_loop`); a frame after a quieter spell goes out at once.
WRITE_INTERVAL = 0.005
TRANSPORT = "websocket"

logger = structlog.get_logger("tokenwire.websocket")


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    max_message_bytes: int = 1024 * 1024
    max_send_buffer_bytes: int = 8 * 1024 * 1024
    close_timeout: float = 30.0
    max_streams: int = 16
    max_preferences_bytes: int = 16 * 1024


class Connection:
    # Slots: one of these lives as long as its connection, idle ones included.
    __slots__ = (
        "_access",
        "_asgi_closing",
        "_client",
        "_client_closed_on_purpose",
        "_close_frame_out",
        "_close_waiter",
        "_closing",
        "_control",
        "_disconnect_reason",
        "_gateway",
        "_identity",
        "_last_write",
        "_limits",
        "_logs",
        "_outbox",
        "_timers",
        "_writer",
        "_writes_close_behind",
        "_ws",
        "session",
    )

    def __init__(
        self,
        websocket: WebSocket,
        gateway: Gateway,
        limits: WebSocketLimits,
        access: AccessPolicy | None = None,
    ) -> None:
        self._ws = websocket
        self._gateway = gateway
        self._limits = limits
        self._access = access
        self._identity = identity_of(websocket.scope)
        self._client = client_of(websocket)
        self._timers: dict[str, asyncio.TimerHandle] | None = None  # made at the first timer
        self._outbox = Outbox(limits.max_send_buffer_bytes)
        extensions = websocket.scope.get("extensions") or {}
        control = extensions.get(EXTENSION)
        self._control = control if isinstance(control, TransportControl) else None
        self._closing: tuple[int, str] | None = None
        self._close_frame_out = False
        # What `close` waits on, made only when it waits (an Event would cost every idle
        # connection close to a kilobyte).
        self._close_waiter: asyncio.Future[None] | None = None
        self._disconnect_reason = "client disconnected"
        self._client_closed_on_purpose = False
        self._logs: list[EventLog] = []
        self.session: Session | None = None
        # Running while there is something to write, or a stream this connection follows
        # runs (`_write_loop`); an idle connection has none.
        self._writer: asyncio.Task[None] | None = None
        self._last_write = float("-inf")
        self._writes_close_behind = 0
        self._asgi_closing: asyncio.Future[None] | None = None

    async def serve(self) -> None:
        query = self._ws.query_params
        user_id = user_of(self._ws)
        preferences = initial_preferences(query.get("language"), query.get("model_preference"))
        subprotocol = self._ws.scope.get(SUBPROTOCOL)
        cluster = self._gateway.cluster
        # Which node took the connection, for operators (and tests) behind a balancer.
        node = [(NODE_HEADER, cluster.node_id.encode())] if cluster.shared else None
        await self._ws.accept(
            subprotocol=subprotocol if isinstance(subprotocol, str) else None, headers=node
        )
        session = self._gateway.open_session(user_id, preferences, closer=self.close)
        self.session = session
        self._push_event(
            EventType.CONNECTION_STATUS,
            {"status": "connected", "session_id": session.session_id},
        )
        self._watch_expiry()
        session.state = SessionState.CONNECTED
        try:
            # The reading runs here, not in a task of its own: whatever ends the writing
            # (a client too slow, the close, a defect) sends a close frame, and the reader
            # then sees the disconnect.
            await self._read_loop()
        finally:
            for timer in (self._timers or {}).values():
                timer.cancel()
            self._end_session(session)
            writer = self._writer
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            if self._asgi_closing is not None:
                await asyncio.wait([self._asgi_closing], timeout=self._limits.close_timeout)
                self._asgi_closing.cancel()

    # -- the log subscriber side ----------------------------------------------

    def deliver(self, record: Record) -> None:
        self._push_frame(record.encoded(ws_frame))

    def lost(self, error: TokenwireError) -> None:
        self._push_error(error)

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then the close frame; returns once that is sent.

        A client that does not take what is queued within the close timeout (or
        before this call is cancelled) gets the close frame without the backlog.
        """
        self._begin_close(code, reason)
        try:
            if not self._close_frame_out:
                if self._close_waiter is None:
                    self._close_waiter = asyncio.get_running_loop().create_future()
                # Shielded: the waiter is shared by every caller, and a timeout cancels.
                waiting = asyncio.shield(self._close_waiter)
                await asyncio.wait_for(waiting, self._limits.close_timeout)
        except TimeoutError:
            pass
        finally:
            if not self._close_frame_out:
                self._outbox.discard()
                if self._writer is not None:
                    self._writer.cancel()
                self._send_close_now(code, reason)

    # -- loops ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        limit = self._limits.max_message_bytes
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                if self._closing is None and not self._close_frame_out:
                    # The client closed, or the link was lost: only a 1000 is on purpose.
                    self._client_closed_on_purpose = code == 1000
                    self._disconnect_reason = (
                        "client closed the connection"
                        if code == 1000
                        else f"connection lost ({code})"
                    )
                return
            if self._closing is not None:
                continue
            text = message.get("text")
            frame = text if text is not None else message.get("bytes") or b""
            if _exceeds(frame, limit):
                error = MessageTooLarge(f"message exceeds {limit} bytes (max_message_bytes)")
                self._gateway.telemetry.refused(error)
                self._begin_close(close_code(error), error.message)
                continue
            await self._on_frame(frame)

    async def _write_loop(self) -> None:
        try:
            await self._write()
        except (WebSocketDisconnect, OSError):
            pass  # the link is gone: the reader hears of it too
        except Exception:
            # The reader, which only a close ends, would otherwise read on unanswered.
            logger.exception(
                "the WebSocket writer failed",
                session_id=self.session.session_id if self.session else None,
            )
            self._force_close(InternalError("internal error while sending"))

    async def _write(self) -> None:
        outbox = self._outbox
        send = self._ws.send
        control = self._control
        clock = asyncio.get_running_loop().time
        while True:
            if not outbox and not outbox.closed and not self._following():
                # Nothing to write and no stream to wait for: an idle connection holds no
                # task (`_push_frame` starts one again).
                self._writer = None
                return
            frames = await outbox.take_all()
            if frames is None:
                break
            # What queued meanwhile goes out in one write, straight to the transport while
            # the socket takes it; through ASGI (which waits for a full buffer to drain)
            # when it does not, or when the server is not uvicorn.
            if control is None or not control.send_texts(frames):
                for frame in frames:
                    await send({"type": "websocket.send", "text": frame})
            del frames  # not held while waiting: the last batch would stay with an idle writer
            now = clock()
            # Two writes in a row each close behind the last: the frames keep coming (a
            # stream flat out, several at once), and what comes next waits for the next
            # write together: a write costs more than the frames it holds. Only from the
            # third, so that a stream's first text, right behind its opening frames, does
            # not wait. (Close: under twice the interval, which a write after the wait is.)
            close_behind = now - self._last_write < 2 * WRITE_INTERVAL
            self._writes_close_behind = self._writes_close_behind + 1 if close_behind else 0
            self._last_write = now
            if self._writes_close_behind >= 2:
                await asyncio.sleep(WRITE_INTERVAL)
        if self._outbox.overflowed:
            return
        code, reason = self._closing or (1000, "")
        # The reader sees the disconnect and ends the connection.
        self._send_close_now(code, reason)

    def _following(self) -> bool:
        """Whether a stream this connection follows still runs (its frames will come)."""
        return any(not log.finished for log in self._logs)

    def _start_writer(self) -> None:
        if self._writer is None and not self._close_frame_out:
            self._writer = asyncio.create_task(self._write_loop())

    # -- closing --------------------------------------------------------------

    def _begin_close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = (code, reason)
            self._disconnect_reason = reason or f"closed by the server ({code})"
            self._outbox.close()
            self._start_writer()  # it drains the outbox, then sends the close frame

    def _force_close(self, error: TokenwireError) -> None:
        logger.warning(
            "closing connection",
            session_id=self.session.session_id if self.session else None,
            reason=error.message,
        )
        self._closing = self._closing or (close_code(error), error.message)
        self._disconnect_reason = error.message
        self._send_close_now(close_code(error), error.message)

    def _send_close_now(self, code: int, reason: str) -> None:
        if self._close_frame_out:
            return
        self._close_frame_out = True
        if self._close_waiter is not None and not self._close_waiter.done():
            self._close_waiter.set_result(None)
        if self._control is not None:
            self._control.close(code, reason, self._limits.close_timeout)
        else:
            # Not served by uvicorn: the server's own close, which may wait for the client
            # (awaited, within the close timeout, before the connection's handler returns).
            self._asgi_closing = asyncio.ensure_future(self._asgi_close(code, reason))

    async def _asgi_close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send({"type": "websocket.close", "code": code, "reason": reason})

    def _end_session(self, session: Session) -> None:
        session.state = SessionState.DISCONNECTING
        for log in self._logs:
            log.unsubscribe(self)
        self._logs.clear()
        # A close with 1000 cancels at once what nobody else follows; anything else
        # (1001 on a page reload, a lost link, a server-side close) leaves it the grace.
        lost = not self._client_closed_on_purpose
        self._gateway.close_session(session, reason=self._disconnect_reason, lost=lost)

    # -- messages -------------------------------------------------------------

    async def _on_frame(self, frame: str | bytes) -> None:
        session = self.session
        assert session is not None
        session.touch()
        try:
            message = parse_client_message(frame)
            await self._dispatch(session, message)
        except TokenwireError as exc:
            self._push_error(exc)
        except Exception:
            # A defect must cost the client this message, not its connection.
            logger.exception("handling a client message failed", session_id=session.session_id)
            self._push_error(InternalError("internal error while handling the message"))

    async def _dispatch(self, session: Session, message: ClientMessage) -> None:
        if isinstance(message, AiRequest):
            self._check_stream_room(message.request_id)
            spec = spec_from_ai_request(message, session.user_id, session.session_id)
            spec = replace(spec, client=self._client)
            log = await self._gateway.start(spec, follower=session)
            if self._closing is not None:
                return
            # Only logs still running need unsubscribing later; finished ones may go.
            self._logs = [known for known in self._logs if not known.finished]
            log.subscribe(self)
            self._logs.append(log)
        elif isinstance(message, CancelRequest):
            key = RequestKey(session.user_id, message.request_id)
            await self._gateway.cancel_anywhere(key)
        elif isinstance(message, Resume):
            key = RequestKey(session.user_id, message.request_id)
            # A resume of what this connection follows replaces its subscription (the log
            # attaches it anew); one refused (not_recovered) leaves it as it was.
            log = await self._gateway.resume(
                key, self, message.last_seq, compact=message.compact, follower=session
            )
            self._logs = [known for known in self._logs if known.key != key and not known.finished]
            if not log.finished:
                self._logs.append(log)
        elif isinstance(message, ListRequests):
            requests = await self._gateway.requests_of(session.user_id)
            self._push_event(
                EventType.CONNECTION_STATUS, {"status": "request_list", "requests": requests}
            )
        elif isinstance(message, UpdatePreferences):
            merged = session.update_preferences(
                message.preferences, self._limits.max_preferences_bytes
            )
            self._push_event(
                EventType.CONNECTION_STATUS,
                {"status": "preferences_updated", "preferences": merged},
            )
        elif isinstance(message, Ping):
            self._push_frame(pong_frame(message.timestamp, time.time()))
        elif isinstance(message, Authenticate):
            self._renew(message.token)

    # -- limits and the credential's lifetime -----------------------------------

    def _check_stream_room(self, request_id: str | None) -> None:
        self._logs = [known for known in self._logs if not known.finished]
        # A cancelled request still winding down is followed (its stream_end comes) but
        # holds no slot: a client that cancels and asks again is not refused meanwhile.
        cancelled = self._gateway.is_cancelled
        streaming = sum(1 for known in self._logs if not cancelled(known.key))
        if streaming >= self._limits.max_streams:
            error = TooManyStreams(
                f"at most {self._limits.max_streams} streams at once per connection"
            )
            error.request_id = request_id
            audit("limit hit", reason=error.error_type, user=self._user, client=self._client)
            self._gateway.telemetry.refused(error)
            raise error

    def _renew(self, token: str) -> None:
        if self._access is None or self._identity is None:
            raise AuthenticationFailed("authentication is off on this server")
        self._identity = self._access.renew(self._identity, token, self._client)
        self._watch_expiry()
        self._push_event(
            EventType.CONNECTION_STATUS,
            {"status": "authenticated", "expires_at": self._identity.expires_at},
        )

    def _watch_expiry(self) -> None:
        """End the connection when its credential expires (unless renewed before)."""
        expires_at = self._identity.expires_at if self._identity is not None else None
        if expires_at is not None:
            self._set_timer("expiry", max(0.0, expires_at - time.time()), self._expired)

    def _expired(self) -> None:
        error = AuthenticationFailed("the credential expired: reconnect with a fresh one")
        audit(
            "credential expired", reason="connection closed", user=self._user, client=self._client
        )
        self._push_error(error)
        self._begin_close(close_code(error), "credential expired")

    def _set_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        if self._timers is None:
            self._timers = {}
        previous = self._timers.pop(name, None)
        if previous is not None:
            previous.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(delay, callback)

    @property
    def _user(self) -> str | None:
        return self.session.user_id if self.session is not None else None

    def _push_error(self, error: TokenwireError) -> None:
        self._push_event(
            EventType.ERROR, error_payload(error, error.request_id), request_id=error.request_id
        )

    def _push_event(
        self, event_type: EventType, data: dict[str, object], request_id: str | None = None
    ) -> None:
        session_id = self.session.session_id if self.session else None
        self._push_frame(encode_event(event_type, dict(data), time.time(), session_id, request_id))

    def _push_frame(self, frame: str) -> None:
        outbox = self._outbox
        if outbox.overflowed or self._close_frame_out:
            return
        outbox.put(frame)
        if outbox.overflowed:
            # The writer is stuck in a send the client does not read: it stops, the 1013
            # goes out behind what the socket holds, and the reader sees the end.
            if self._writer is not None:
                self._writer.cancel()
            self._gateway.telemetry.send_buffer_overflowed(TRANSPORT)
            self._force_close(SendBufferOverflow("client too slow: send buffer overflow"))
        elif self._writer is None:
            self._start_writer()


def _exceeds(frame: str | bytes, limit: int) -> bool:
    if len(frame) > limit:
        return True
    # A character is at most four bytes in UTF-8: encode only when it could matter.
    if isinstance(frame, bytes) or len(frame) * 4 <= limit:
        return False
    return utf8_size(frame) > limit


async def ai_stream_endpoint(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    limits: WebSocketLimits = websocket.app.state.ws_limits
    access: AccessPolicy | None = getattr(websocket.app.state, "access", None)
    if gateway.closing:
        await websocket.close(code=1001, reason="server shutting down")
        return
    gateway.telemetry.connection_opened(TRANSPORT)
    try:
        await Connection(websocket, gateway, limits, access).serve()
    finally:
        gateway.telemetry.connection_closed(TRANSPORT)
