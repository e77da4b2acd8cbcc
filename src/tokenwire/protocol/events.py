"""Server events and their encoding as JSON text frames (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson


class EventType(StrEnum):
    STREAM_START = "stream_start"
    TOKEN = "token"
    CHUNK = "chunk"
    PROGRESS = "progress"
    METADATA = "metadata"
    TYPING_INDICATOR = "typing_indicator"
    ERROR = "error"
    STREAM_END = "stream_end"
    CONNECTION_STATUS = "connection_status"
    # An answer's tool calls (CONTRACT.md "Tool calls and structured output").
    TOOL_CALL_START = "tool_call_start"
    TOOL_CALL_DELTA = "tool_call_delta"
    TOOL_CALL_END = "tool_call_end"


TEXT_EVENTS = frozenset({EventType.TOKEN, EventType.CHUNK})
TOOL_CALL_EVENTS = frozenset(
    {EventType.TOOL_CALL_START, EventType.TOOL_CALL_DELTA, EventType.TOOL_CALL_END}
)


class StreamStatus(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ERROR = "error"


_encode_stdlib = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def encode_json(value: Any) -> str:
    """Compact JSON text. orjson is an order of magnitude faster on the per-token path;
    the standard library takes what orjson refuses (integers past 64 bits a client sent)."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _encode_stdlib(value)


def encode_event(
    event_type: EventType,
    data: dict[str, Any],
    timestamp: float,
    session_id: str | None,
    request_id: str | None = None,
    seq: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """One event as a text frame: the envelope every server event shares."""
    return encode_json(
        {
            "event_type": event_type.value,
            "data": data,
            "timestamp": timestamp,
            "request_id": request_id,
            "session_id": session_id,
            "metadata": metadata or {},
            "seq": seq,
        }
    )


def envelope_ids(request_id: str, session_id: str | None) -> str:
    """The part of a request's envelope that is the same for all its events, encoded once
    (transports build a request event's frame around it from the already encoded data;
    a test holds that frame byte-identical to `encode_event`'s)."""
    return f'"request_id":{encode_json(request_id)},"session_id":{encode_json(session_id)}'


@dataclass(frozen=True, slots=True)
class Event:
    """One server event. `seq` counts a request's events from 1; None outside requests."""

    event_type: EventType
    data: dict[str, Any]
    timestamp: float
    session_id: str | None
    request_id: str | None = None
    seq: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_frame(self) -> str:
        return encode_event(
            self.event_type,
            self.data,
            self.timestamp,
            self.session_id,
            self.request_id,
            self.seq,
            self.metadata,
        )


def pong_frame(echo: Any, server_time: float) -> str:
    """The answer to a `ping`: not an event, so it has no envelope."""
    return encode_json({"type": "pong", "timestamp": echo, "server_time": server_time})


def decode_frame(frame: str) -> dict[str, Any]:
    """Inverse of `Event.to_frame`, for clients and tests."""
    decoded: dict[str, Any] = json.loads(frame)
    return decoded
