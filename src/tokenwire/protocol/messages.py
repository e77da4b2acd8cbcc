"""Client messages: parsing a text frame into a typed message or a typed error (no I/O)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tokenwire.protocol.errors import (
    InvalidJSON,
    InvalidMessage,
    InvalidRequest,
    TokenwireError,
    UnknownMessageType,
)


class RoutingStrategy(StrEnum):
    INTELLIGENT = "intelligent"
    PERFORMANCE_BASED = "performance_based"
    COST_OPTIMIZED = "cost_optimized"
    RELIABILITY_BASED = "reliability_based"


class Granularity(StrEnum):
    CHUNK = "chunk"
    TOKEN = "token"


class _Strict(BaseModel):
    # Strict: "5" is not a number and true is not 1; unknown keys are typos, not
    # extensions. Enum fields opt out of strictness so that JSON strings name them.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


NonEmpty = Annotated[str, Field(min_length=1)]
RequestId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class RequestConfig(_Strict):
    # None: the server's `[routing] strategy`.
    routing_strategy: Annotated[RoutingStrategy, Field(strict=False)] | None = None
    speed_priority: bool = True
    reliability_priority: bool = False
    cost_limit: Annotated[float, Field(ge=0)] | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    provider: NonEmpty | None = None
    model: NonEmpty | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class StreamConfig(_Strict):
    granularity: Annotated[Granularity, Field(strict=False)] = Granularity.CHUNK
    # 0 turns progress events off.
    progress_every: Annotated[int, Field(ge=0)] | None = None


class AiRequest(_Strict):
    type: Literal["ai_request"]
    prompt: NonEmpty | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    conversation_id: RequestId | None = None
    request_id: RequestId | None = None
    config: RequestConfig = Field(default_factory=RequestConfig)
    stream_config: StreamConfig = Field(default_factory=StreamConfig)

    @model_validator(mode="after")
    def _needs_something_to_answer(self) -> AiRequest:
        if self.prompt is None and self.messages is None:
            raise ValueError("a non-empty 'prompt' (or 'messages') is required")
        return self


class CancelRequest(_Strict):
    type: Literal["cancel_request"]
    request_id: RequestId


class UpdatePreferences(_Strict):
    type: Literal["update_preferences"]
    preferences: dict[str, Any]


class Ping(_Strict):
    type: Literal["ping"]
    timestamp: Any = None


ClientMessage = AiRequest | CancelRequest | UpdatePreferences | Ping

_MESSAGE_TYPES: dict[str, type[ClientMessage]] = {
    "ai_request": AiRequest,
    "cancel_request": CancelRequest,
    "update_preferences": UpdatePreferences,
    "ping": Ping,
}

# Content errors in these are the request's fault; in the others the message is malformed.
_REQUEST_MESSAGES = frozenset({"ai_request", "cancel_request"})


def parse_client_message(frame: str | bytes) -> ClientMessage:
    """Parse one frame, or raise the `TokenwireError` the client should see."""
    if isinstance(frame, bytes):
        raise InvalidMessage("binary frames are not accepted: send JSON text frames")
    try:
        obj = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"frame is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError:
        raise InvalidJSON("frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("a message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("a message needs a string field 'type'")
    model = _MESSAGE_TYPES.get(kind)
    if model is None:
        known = ", ".join(sorted(_MESSAGE_TYPES))
        raise UnknownMessageType(f"unknown message type {kind!r}; expected one of: {known}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        error: TokenwireError
        if kind in _REQUEST_MESSAGES:
            error = InvalidRequest(describe_validation_error(exc))
        else:
            error = InvalidMessage(describe_validation_error(exc))
        rid = obj.get("request_id")
        error.request_id = rid if isinstance(rid, str) else None
        raise error from None


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One part per problem, naming the field (under `prefix`); never echoes the input."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
