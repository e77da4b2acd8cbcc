"""Server-Sent Events: the same event protocol over plain HTTP, and re-attaching by id.

`POST /api/streams` starts a request (the body is an `ai_request` without its
`type`) and answers with its events as they come; `GET /api/streams/{id}/events`
re-attaches after `Last-Event-ID` (or `?last_event_id=`, for the browser's
EventSource) and ends with the request's `stream_end`, or answers 204 when the
client has that already (which stops an EventSource from reconnecting);
`DELETE /api/streams/{id}` cancels; `GET /api/streams` lists the caller's
requests. Each protocol event is one SSE event: `id:` its seq, `event:` its
type, `data:` its JSON envelope. A comment line keeps a quiet stream open
every `heartbeat` seconds. A client that goes away leaves the request running
for the resume grace, like a lost WebSocket.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.gateway import Gateway
from tokenwire.core.spec import RequestKey
from tokenwire.core.telemetry import Telemetry
from tokenwire.protocol.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MessageTooLarge,
    PastTheEnd,
    TokenwireError,
    error_payload,
)
from tokenwire.protocol.events import EventType, encode_event
from tokenwire.protocol.messages import (
    AiRequest,
    decode_json,
    parse_message_object,
    valid_request_id,
)
from tokenwire.security.access import AccessPolicy
from tokenwire.security.audit import audit
from tokenwire.security.middleware import identity_of
from tokenwire.transports.content_type import require_json
from tokenwire.transports.frames import sse_event
from tokenwire.transports.http import error_response
from tokenwire.transports.identity import client_of, user_of, with_client
from tokenwire.transports.outbox import Outbox
from tokenwire.transports.requests import spec_from_ai_request
from tokenwire.transports.streaming import EventStreamResponse

logger = structlog.get_logger("tokenwire.sse")

# What a client's EventSource waits before reconnecting, in milliseconds.
RETRY_MS = 3000
TRANSPORT = "sse"


@dataclass(frozen=True, slots=True)
class SseSettings:
    heartbeat_seconds: float = 15.0
    max_body_bytes: int = 1024 * 1024
    max_buffer_bytes: int = 8 * 1024 * 1024
    # A send the client has not taken within this long means it does not read.
    close_timeout: float = 30.0


class _Follower:
    """A request's events queued for one SSE response (a log subscriber)."""

    def __init__(self, gateway: Gateway, max_bytes: int) -> None:
        self.id = f"sse-{uuid.uuid4()}"
        self.outbox = Outbox(max_bytes)
        self._gateway = gateway
        self.log: EventLog | None = None
        self._overflow_told = False

    def deliver(self, record: Record) -> None:
        self.outbox.put(record.encoded(sse_event))
        if record.event_type is EventType.STREAM_END:
            self.outbox.close()
        elif self.outbox.overflowed and not self._overflow_told:
            self._overflow_told = True
            self._gateway.telemetry.send_buffer_overflowed(TRANSPORT)
            # Not read: let go of the request (it waits for the grace), outside the fan-out.
            asyncio.get_running_loop().call_soon(self.leave, True)

    def lost(self, error: TokenwireError) -> None:
        request_id = self.log.request_id if self.log is not None else error.request_id
        self.outbox.put(_error_event(error, request_id))
        self.outbox.close()

    @property
    def telemetry(self) -> Telemetry:
        return self._gateway.telemetry

    def leave(self, lost: bool) -> None:
        log = self.log
        if log is None:
            return
        self.log = None
        log.unsubscribe(self)
        self._gateway.remove_follower(log.key, self.id, "client went away", lost)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _settings(request: Request) -> SseSettings:
    settings: SseSettings = request.app.state.sse
    return settings


async def start_stream(request: Request) -> Response:
    gateway, settings = _gateway(request), _settings(request)
    try:
        message = await _ai_request(request, settings.max_body_bytes)
        spec = with_client(spec_from_ai_request(message, user_of(request), origin=None), request)
        hold = await _hold(request)
    except TokenwireError as exc:
        return error_response(exc)
    try:
        follower = _Follower(gateway, settings.max_buffer_bytes)
        log = await gateway.start(spec)
    except BaseException as exc:
        # Whatever ended it (a defect too), the slot must not be held for good.
        hold.release()
        if isinstance(exc, TokenwireError):
            return error_response(exc)
        raise
    gateway.add_follower(log.key, follower.id)
    follower.log = log
    log.subscribe(follower)
    return _event_stream(follower, log, settings, hold)


async def attach_stream(request: Request) -> Response:
    gateway, settings = _gateway(request), _settings(request)
    try:
        key = _key(request)
        after = _last_event_id(request)
        compact = _compact(request)
        hold = await _hold(request)
    except TokenwireError as exc:
        return error_response(exc)
    try:
        follower = _Follower(gateway, settings.max_buffer_bytes)
        log = await gateway.resume(key, follower, after, compact=compact, follower=follower.id)
    except BaseException as exc:
        hold.release()
        if isinstance(exc, PastTheEnd):
            return Response(status_code=204)
        if isinstance(exc, TokenwireError):
            return error_response(exc)
        raise
    if log.finished and after >= log.last_seq:
        # Nothing left to send: an event stream would be heartbeats for good, and an
        # EventSource left open would reconnect to it every few seconds.
        hold.release()
        return Response(status_code=204)
    follower.log = log
    return _event_stream(follower, log, settings, hold)


async def cancel_stream(request: Request) -> Response:
    try:
        key = _key(request)
        await _gateway(request).cancel_anywhere(key)
    except TokenwireError as exc:
        return error_response(exc)
    return JSONResponse({"request_id": key.request_id, "status": "cancelling"})


async def list_streams(request: Request) -> Response:
    requests = await _gateway(request).requests_of(user_of(request))
    return JSONResponse({"requests": requests})


# -- internals ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Hold:
    """What an open event stream holds: a connection slot (`release` gives it back),
    until its credential's expiry at the latest."""

    release: Callable[[], None]
    expires_at: float | None
    user: str
    client: str | None


async def _hold(request: Request) -> _Hold:
    access: AccessPolicy | None = getattr(request.app.state, "access", None)
    identity = identity_of(request.scope)
    user, client = user_of(request), client_of(request)
    release = _nothing
    if access is not None and access.connections is not None:
        release = await access.connections.open(user, client)
    expires_at = identity.expires_at if identity is not None else None
    return _Hold(release, expires_at, user, client)


def _nothing() -> None:
    return None


class _EventStream(EventStreamResponse):
    """Gives back what the stream holds however it ends, even before its first event."""

    def __init__(self, follower: _Follower, hold: _Hold, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._follower = follower
        self._hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        telemetry = self._follower.telemetry
        telemetry.connection_opened(TRANSPORT)
        try:
            await super().__call__(scope, receive, send)
        finally:
            telemetry.connection_closed(TRANSPORT)
            # Ended before its stream_end: the client went away (the request gets the grace).
            self._follower.leave(lost=True)
            self._hold.release()


def _event_stream(
    follower: _Follower, log: EventLog, settings: SseSettings, hold: _Hold
) -> StreamingResponse:
    return _EventStream(
        follower,
        hold,
        _events(follower, log.key.request_id, settings.heartbeat_seconds, hold),
        media_type="text/event-stream",
        headers={
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx: pass each event on at once
            "tokenwire-request-id": log.key.request_id,
        },
        close_timeout=settings.close_timeout,
    )


async def _events(
    follower: _Follower, request_id: str, heartbeat: float, hold: _Hold
) -> AsyncIterator[str]:
    outbox = follower.outbox
    take_all = outbox.take_all
    first = True
    try:
        while True:
            wait = heartbeat
            if hold.expires_at is not None:
                left = hold.expires_at - time.time()
                if left <= 0:
                    audit(
                        "credential expired",
                        reason="event stream ended",
                        user=hold.user,
                        client=hold.client,
                    )
                    yield _expired_event(request_id)
                    return
                wait = min(wait, left)
            if len(outbox):
                # What queued meanwhile goes out as one body part (one write); no timer.
                frames = await take_all()
            else:
                try:
                    async with asyncio.timeout(wait):
                        frames = await take_all()
                except TimeoutError:
                    if hold.expires_at is None or time.time() < hold.expires_at:
                        yield ": heartbeat\n\n"
                    continue
            if frames is None:
                return
            frame = frames[0] if len(frames) == 1 else "".join(frames)
            if first:
                # Inside the first event's block: a block of its own, with no data,
                # reads as an empty event in some client libraries.
                frame = f"retry: {RETRY_MS}\n{frame}"
                first = False
            yield frame
    finally:
        follower.leave(lost=True)


def _expired_event(request_id: str) -> str:
    error = AuthenticationFailed("the credential expired: re-attach with a fresh one")
    return _error_event(error, request_id)


def _error_event(error: TokenwireError, request_id: str | None) -> str:
    """An `error` event outside the request's log (no `id:`, so that `Last-Event-ID`
    still names the last event of the request the client received)."""
    data = encode_event(
        EventType.ERROR, error_payload(error, request_id), time.time(), None, request_id
    )
    return f"event: error\ndata: {data}\n\n"


async def _ai_request(request: Request, limit: int) -> AiRequest:
    require_json(request.headers.get("content-type"))
    body = await _body(request, limit)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Refused as the WebSocket refuses a frame that is not UTF-8, never guessed at.
        raise InvalidRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    value = decode_json(text, what="the body")
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object shaped like an ai_request")
    if "type" in value:
        raise InvalidRequest("the body is an ai_request without its 'type'")
    message = parse_message_object({"type": "ai_request", **value})
    assert isinstance(message, AiRequest)
    return message


async def _body(request: Request, limit: int) -> bytes:
    received = bytearray()
    try:
        async for piece in request.stream():
            received += piece
            if len(received) > limit:
                raise MessageTooLarge(f"the body exceeds {limit} bytes (max_message_bytes)")
    except ClientDisconnect:
        # Gone, or cut off by the body's deadline: the answer reaches nobody.
        raise InvalidRequest("the body did not arrive in full") from None
    return bytes(received)


def _key(request: Request) -> RequestKey:
    request_id = valid_request_id(request.path_params["request_id"])
    if request_id is None:
        raise InvalidRequest("request ids are 1-128 letters, digits or . _ : -")
    return RequestKey(user_of(request), request_id)


def _compact(request: Request) -> bool:
    raw = request.query_params.get("compact")
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise InvalidRequest("compact: expected true or false")


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 16:
        raise InvalidRequest("Last-Event-ID: expected the seq of the last event received")
    return int(raw)
