"""Typed server events: what a client reads off the wire (no I/O).

The server builds its events as plain dicts on the per-token path (`events.py`,
`core/orchestrator.py`) and never through these models; they are the contract's
reading side, for clients (`tokenwire.client`) and for the JSON Schemas in
docs/schemas. Unknown fields are ignored, so that a client keeps working when a
server adds one; validated with `STRICT_FIELDS` as context, any field a model
does not declare is refused, which is how the tests hold these models to exactly
what the server sends.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    model_validator,
)

STRICT_FIELDS = {"strict_fields": True}
"""Validation context under which a field no model declares is an error."""


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_undeclared_fields(cls, value: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("strict_fields") and isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"fields not in the model: {', '.join(unknown)}")
        return value


# -- data of each event ------------------------------------------------------


class Connected(WireModel):
    status: Literal["connected"]
    session_id: str


class PreferencesUpdated(WireModel):
    status: Literal["preferences_updated"]
    preferences: dict[str, Any]


class RequestSummary(WireModel):
    """One of the user's running or kept requests (`list_requests`)."""

    request_id: str
    status: str
    """`running`, or the status of its `stream_end`."""
    started: float
    conversation_id: str | None


class RequestList(WireModel):
    status: Literal["request_list"]
    requests: list[RequestSummary]


class Authenticated(WireModel):
    status: Literal["authenticated"]
    expires_at: float | None


ConnectionStatusData = Annotated[
    Connected | PreferencesUpdated | RequestList | Authenticated, Field(discriminator="status")
]


class StreamStartData(WireModel):
    request_id: str
    prompt_length: int
    estimated_duration: float


class TypingIndicatorData(WireModel):
    is_typing: bool


class Candidate(WireModel):
    provider: str
    score: float
    reason: str


class RoutingDecision(WireModel):
    """The first `metadata` of a request: which provider, and why."""

    task_type: str
    task_reason: str
    recommended_provider: str
    routing_strategy: str
    model: str
    candidates: list[Candidate]


class Fallback(WireModel):
    """A later `metadata`: a provider failed before any text, and the next took over."""

    fallback_from: str
    fallback_reason: str
    recommended_provider: str
    routing_strategy: str
    task_type: str
    model: str


class ChunkData(WireModel):
    chunk: str
    chunk_number: int
    accumulated_length: int | None
    """None only in a compacted chunk of token events."""
    compacted: int | None = None
    """How many text events a compact resume's chunk stands for; absent otherwise."""


class TokenData(WireModel):
    token: str
    index: int


class ProgressData(WireModel):
    progress: float
    chunks_sent: int


class ToolCallStartData(WireModel):
    index: int
    id: str
    name: str


class ToolCallDeltaData(WireModel):
    index: int
    arguments: str


class ToolCallEndData(WireModel):
    index: int
    id: str
    name: str
    arguments: str


class ErrorData(WireModel):
    error: str
    error_type: str
    request_id: str | None
    retry_after: float | None = None
    """For `rate_limited`, `provider_unavailable`, `provider_busy`, `too_many_connections`
    and `budget_exceeded`, when known."""
    deadline: Literal["request", "first_token", "silence"] | None = None
    """For `timeout`: which deadline passed."""


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool


class ToolCall(WireModel):
    id: str
    name: str
    arguments: str


class Structured(WireModel):
    valid: bool
    error: str | None = None


class StreamEndData(WireModel):
    """The end of a request. The figures are absent only where the request ended
    without its own closing: its node died (`stream_interrupted`) or the closing
    itself failed (`internal_error`)."""

    request_id: str
    status: Literal["completed", "cancelled", "error"]
    total_chunks: int | None = None
    total_length: int | None = None
    duration: float | None = None
    provider_used: str | None = None
    model: str | None = None
    cache_hit: bool | None = None
    ttft: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    tool_calls: list[ToolCall] | None = None
    structured: Structured | None = None
    stop_sequence: str | None = None
    reason: str | None = None
    """Why a cancelled request was cancelled (`client`, `shutdown`, ...)."""
    error_type: str | None = None


# -- the envelope ----------------------------------------------------------


class Envelope(WireModel):
    """What every server event carries besides its `data`."""

    timestamp: float
    request_id: str | None
    session_id: str | None
    metadata: dict[str, Any]
    seq: int | None
    """Counts a request's events from 1; None for events of no request."""


class ConnectionStatus(Envelope):
    event_type: Literal["connection_status"]
    data: ConnectionStatusData


class StreamStart(Envelope):
    event_type: Literal["stream_start"]
    data: StreamStartData


class TypingIndicator(Envelope):
    event_type: Literal["typing_indicator"]
    data: TypingIndicatorData


class Metadata(Envelope):
    event_type: Literal["metadata"]
    data: RoutingDecision | Fallback


class Chunk(Envelope):
    event_type: Literal["chunk"]
    data: ChunkData

    @property
    def text(self) -> str:
        return self.data.chunk


class Token(Envelope):
    event_type: Literal["token"]
    data: TokenData

    @property
    def text(self) -> str:
        return self.data.token


class Progress(Envelope):
    event_type: Literal["progress"]
    data: ProgressData


class ToolCallStart(Envelope):
    event_type: Literal["tool_call_start"]
    data: ToolCallStartData


class ToolCallDelta(Envelope):
    event_type: Literal["tool_call_delta"]
    data: ToolCallDeltaData


class ToolCallEnd(Envelope):
    event_type: Literal["tool_call_end"]
    data: ToolCallEndData


class Error(Envelope):
    event_type: Literal["error"]
    data: ErrorData


class StreamEnd(Envelope):
    event_type: Literal["stream_end"]
    data: StreamEndData


ServerEvent = Annotated[
    ConnectionStatus
    | StreamStart
    | TypingIndicator
    | Metadata
    | Chunk
    | Token
    | Progress
    | ToolCallStart
    | ToolCallDelta
    | ToolCallEnd
    | Error
    | StreamEnd,
    Field(discriminator="event_type"),
]
"""Any server event, told apart by `event_type`."""

TextEvent = Chunk | Token


class Pong(WireModel):
    """The answer to a `ping`: not an event, so it has no envelope."""

    type: Literal["pong"]
    timestamp: float | str | None
    server_time: float


ServerFrame = Annotated[ServerEvent | Pong, Field(union_mode="left_to_right")]
"""Anything the server sends on the WebSocket as a text frame."""

_FRAME: TypeAdapter[ServerEvent | Pong] = TypeAdapter(ServerFrame)


def parse_server_frame(frame: str | bytes, *, strict_fields: bool = False) -> ServerEvent | Pong:
    """One text frame as a typed event (or a pong); pydantic's `ValidationError` if it is
    not one. With `strict_fields`, a field that no model declares is refused too."""
    return _FRAME.validate_python(
        orjson.loads(frame), context=STRICT_FIELDS if strict_fields else None
    )
