"""The WebSocket transport: `/ws/ai-stream`, a thin adapter onto the gateway.

A connection runs two loops: one reads client messages and answers at once
(requests run in the gateway, never in this loop), the other writes frames
from an outbox that request logs fill. The logs never wait for a socket.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from starlette.websockets import WebSocket

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.gateway import Gateway
from tokenwire.core.sessions import Session, SessionState
from tokenwire.protocol.errors import MessageTooLarge, TokenwireError, close_code, error_payload
from tokenwire.protocol.events import Event, EventType, pong_frame
from tokenwire.protocol.messages import (
    AiRequest,
    CancelRequest,
    ClientMessage,
    Ping,
    UpdatePreferences,
    parse_client_message,
)
from tokenwire.transports.outbox import Outbox

logger = structlog.get_logger("tokenwire.websocket")


class Connection:
    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        limits = gateway.settings.limits
        self._ws = websocket
        self._gateway = gateway
        self._outbox = Outbox(limits.max_send_buffer_bytes)
        self._closing: tuple[int, str] | None = None
        self._subscriptions: list[EventLog] = []
        self._max_message_bytes = limits.max_message_bytes
        self.session: Session | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close_sent = asyncio.Event()

    async def serve(self) -> None:
        query = self._ws.query_params
        user_id = query.get("user_id") or "anonymous"
        preferences = {
            "model_preference": query.get("model_preference"),
            "language": query.get("language") or "en",
        }
        await self._ws.accept()
        session = self._gateway.open_session(user_id, preferences, closer=self.close)
        self.session = session
        self._push_event(
            EventType.CONNECTION_STATUS,
            {"status": "connected", "session_id": session.session_id},
        )
        session.state = SessionState.CONNECTED
        writer = asyncio.create_task(self._write_loop(), name=f"writer {session.session_id}")
        self._writer = writer
        reader = asyncio.create_task(self._read_loop(), name=f"reader {session.session_id}")
        try:
            await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            session.state = SessionState.DISCONNECTING
            for log in self._subscriptions:
                log.unsubscribe(self)
            reason = "send buffer overflow" if self._outbox.overflowed else "client disconnected"
            self._gateway.close_session(session, reason=reason)
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    # -- the log subscriber side ----------------------------------------------

    def deliver(self, record: Record) -> None:
        self._push_frame(record.frame)

    async def close(self, code: int, reason: str) -> None:
        """Send what is queued, then the close frame; returns once that is sent."""
        if self._closing is None:
            self._closing = (code, reason)
            self._outbox.close()
        await self._close_sent.wait()

    # -- loops ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if self._closing is not None:
                continue
            text = message.get("text")
            frame = text if text is not None else message.get("bytes") or b""
            if _exceeds(frame, self._max_message_bytes):
                error = MessageTooLarge(f"message exceeds {self._max_message_bytes} bytes")
                self._closing = (close_code(error), error.message)
                self._outbox.close()
                continue
            self._on_frame(frame)

    async def _write_loop(self) -> None:
        send = self._ws.send
        take = self._outbox.take
        while (frame := await take()) is not None:
            await send({"type": "websocket.send", "text": frame})
        if self._outbox.overflowed:
            return
        code, reason = self._closing or (1000, "")
        await send({"type": "websocket.close", "code": code, "reason": reason})
        self._close_sent.set()
        # The reader sees the client's answering close and ends the connection.
        await asyncio.Event().wait()

    # -- messages -------------------------------------------------------------

    def _on_frame(self, frame: str | bytes) -> None:
        session = self.session
        assert session is not None
        session.touch()
        try:
            message = parse_client_message(frame)
            self._dispatch(session, message)
        except TokenwireError as exc:
            self._push_error(exc)

    def _dispatch(self, session: Session, message: ClientMessage) -> None:
        if isinstance(message, AiRequest):
            log = self._gateway.start(session, message)
            # Only logs still running need unsubscribing later; finished ones may go.
            self._subscriptions = [s for s in self._subscriptions if not s.finished]
            log.subscribe(self)
            self._subscriptions.append(log)
        elif isinstance(message, CancelRequest):
            self._gateway.cancel(message.request_id, session.user_id)
        elif isinstance(message, UpdatePreferences):
            merged = session.update_preferences(message.preferences)
            self._push_event(
                EventType.CONNECTION_STATUS,
                {"status": "preferences_updated", "preferences": merged},
            )
        elif isinstance(message, Ping):
            self._push_frame(pong_frame(message.timestamp, time.time()))

    def _push_error(self, error: TokenwireError) -> None:
        self._push_event(
            EventType.ERROR, error_payload(error, error.request_id), request_id=error.request_id
        )

    def _push_event(
        self, event_type: EventType, data: dict[str, object], request_id: str | None = None
    ) -> None:
        session_id = self.session.session_id if self.session else None
        event = Event(event_type, dict(data), time.time(), session_id, request_id)
        self._push_frame(event.to_frame())

    def _push_frame(self, frame: str) -> None:
        outbox = self._outbox
        if outbox.overflowed:
            return
        outbox.put(frame)
        if outbox.overflowed and self._writer is not None:
            # The writer is stuck in a send the client does not read: stop it, which
            # ends the connection and cancels its streams.
            logger.warning(
                "client too slow: send buffer overflow",
                session_id=self.session.session_id if self.session else None,
            )
            self._writer.cancel()


def _exceeds(frame: str | bytes, limit: int) -> bool:
    if len(frame) > limit:
        return True
    # A character is at most four bytes in UTF-8: encode only when it could matter.
    if isinstance(frame, bytes) or len(frame) * 4 <= limit:
        return False
    return len(frame.encode()) > limit


async def ai_stream_endpoint(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    if gateway.closing:
        await websocket.close(code=1001, reason="server shutting down")
        return
    await Connection(websocket, gateway).serve()
