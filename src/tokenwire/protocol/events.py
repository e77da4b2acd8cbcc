"""Server events and their encoding as JSON text frames (no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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


TEXT_EVENTS = frozenset({EventType.TOKEN, EventType.CHUNK})


class StreamStatus(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ERROR = "error"


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


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
        return _encode(
            {
                "event_type": self.event_type.value,
                "data": self.data,
                "timestamp": self.timestamp,
                "request_id": self.request_id,
                "session_id": self.session_id,
                "metadata": self.metadata,
                "seq": self.seq,
            }
        )


def pong_frame(echo: Any, server_time: float) -> str:
    """The answer to a `ping`: not an event, so it has no envelope."""
    return _encode({"type": "pong", "timestamp": echo, "server_time": server_time})


def decode_frame(frame: str) -> dict[str, Any]:
    """Inverse of `Event.to_frame`, for clients and tests."""
    decoded: dict[str, Any] = json.loads(frame)
    return decoded
