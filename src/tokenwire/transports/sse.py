"""Server-Sent Events: the same event protocol over plain HTTP, and re-attaching by id.

`POST /api/streams` starts a request (the body is an `ai_request` without its
`type`) and answers with its events as they come; `GET /api/streams/{id}/events`
re-attaches after `Last-Event-ID` (or `?last_event_id=`, for the browser's
EventSource); `DELETE /api/streams/{id}` cancels; `GET /api/streams` lists the
caller's requests. Each protocol event is one SSE event: `id:` its seq, `event:`
its type, `data:` its JSON envelope. A comment line keeps a quiet stream open
every `heartbeat` seconds. A client that goes away leaves the request running
for the resume grace, like a lost WebSocket.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.gateway import Gateway
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import (
    InvalidRequest,
    MessageTooLarge,
    TokenwireError,
    http_status,
)
from tokenwire.protocol.events import EventType
from tokenwire.protocol.messages import (
    AiRequest,
    decode_json,
    parse_message_object,
    valid_request_id,
)
from tokenwire.transports.frames import sse_event
from tokenwire.transports.identity import user_of
from tokenwire.transports.outbox import Outbox
from tokenwire.transports.requests import spec_from_ai_request

logger = structlog.get_logger("tokenwire.sse")

# What a client's EventSource waits before reconnecting, in milliseconds.
RETRY_MS = 3000


@dataclass(frozen=True, slots=True)
class SseSettings:
    heartbeat_seconds: float = 15.0
    max_body_bytes: int = 1024 * 1024
    max_buffer_bytes: int = 8 * 1024 * 1024


class _Follower:
    """A request's events queued for one SSE response (a log subscriber)."""

    def __init__(self, gateway: Gateway, max_bytes: int) -> None:
        self.id = f"sse-{uuid.uuid4()}"
        self.outbox = Outbox(max_bytes)
        self._gateway = gateway
        self.log: EventLog | None = None

    def deliver(self, record: Record) -> None:
        self.outbox.put(record.encoded(sse_event))
        if record.event_type is EventType.STREAM_END:
            self.outbox.close()
        elif self.outbox.overflowed:
            # Not read: let go of the request (it waits for the grace), outside the fan-out.
            asyncio.get_running_loop().call_soon(self.leave, True)

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


def error_response(error: TokenwireError) -> JSONResponse:
    body = {"error": {"type": error.error_type, "message": error.message, **error.details()}}
    if error.request_id is not None:
        body["error"]["request_id"] = error.request_id
    return JSONResponse(body, status_code=http_status(error))


async def start_stream(request: Request) -> Response:
    gateway, settings = _gateway(request), _settings(request)
    try:
        message = await _ai_request(request, settings.max_body_bytes)
        spec = spec_from_ai_request(message, user_of(request), origin=None)
        follower = _Follower(gateway, settings.max_buffer_bytes)
        log = await gateway.start(spec)
    except TokenwireError as exc:
        return error_response(exc)
    gateway.add_follower(log.key, follower.id)
    follower.log = log
    log.subscribe(follower)
    return _event_stream(follower, log, settings)


async def attach_stream(request: Request) -> Response:
    gateway, settings = _gateway(request), _settings(request)
    try:
        key = _key(request)
        after = _last_event_id(request)
        compact = request.query_params.get("compact") in ("1", "true")
        follower = _Follower(gateway, settings.max_buffer_bytes)
        log = await gateway.resume(key, follower, after, compact=compact, follower=follower.id)
    except TokenwireError as exc:
        return error_response(exc)
    follower.log = log
    return _event_stream(follower, log, settings)


async def cancel_stream(request: Request) -> Response:
    try:
        key = _key(request)
        _gateway(request).cancel(key)
    except TokenwireError as exc:
        return error_response(exc)
    return JSONResponse({"request_id": key.request_id, "status": "cancelling"})


async def list_streams(request: Request) -> Response:
    requests = await _gateway(request).requests_of(user_of(request))
    return JSONResponse({"requests": requests})


# -- internals ----------------------------------------------------------------


def _event_stream(follower: _Follower, log: EventLog, settings: SseSettings) -> StreamingResponse:
    return StreamingResponse(
        _events(follower, settings.heartbeat_seconds),
        media_type="text/event-stream",
        headers={
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx: pass each event on at once
            "tokenwire-request-id": log.key.request_id,
        },
    )


async def _events(follower: _Follower, heartbeat: float) -> AsyncIterator[str]:
    take = follower.outbox.take
    first = True
    try:
        while True:
            try:
                frame = await asyncio.wait_for(take(), heartbeat)
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            if frame is None:
                return
            if first:
                # Inside the first event's block: a block of its own, with no data,
                # reads as an empty event in some client libraries.
                frame = f"retry: {RETRY_MS}\n{frame}"
                first = False
            yield frame
    finally:
        # Ended before its stream_end: the client went away (the request gets the grace).
        follower.leave(lost=True)


async def _ai_request(request: Request, limit: int) -> AiRequest:
    body = await _body(request, limit)
    value = decode_json(body.decode("utf-8", "replace"), what="the body")
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object shaped like an ai_request")
    if "type" in value:
        raise InvalidRequest("the body is an ai_request without its 'type'")
    message = parse_message_object({"type": "ai_request", **value})
    assert isinstance(message, AiRequest)
    return message


async def _body(request: Request, limit: int) -> bytes:
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > limit:
            raise MessageTooLarge(f"the body exceeds {limit} bytes")
    return bytes(received)


def _key(request: Request) -> RequestKey:
    request_id = valid_request_id(request.path_params["request_id"])
    if request_id is None:
        raise InvalidRequest("request ids are 1-128 letters, digits or . _ : -")
    return RequestKey(user_of(request), request_id)


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    if not raw.isdigit() or len(raw) > 16:
        raise InvalidRequest("Last-Event-ID: expected the seq of the last event received")
    return int(raw)
