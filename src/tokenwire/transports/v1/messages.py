"""Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`).

The wire format is Anthropic's: a `message` object, or with `stream: true`
Server-Sent Events that each carry an `event:` line (the SDK drops frames
without one): `message_start`, `content_block_start`, `ping`, one
`content_block_delta` per text event, `content_block_stop`, `message_delta`
(the stop reason and the usage), `message_stop`. An error after the stream
started is one `event: error` with Anthropic's error body (the SDK raises on
it), and the stream ends there. `model` names a provider, or is `auto` for the
router's pick. `top_k` is refused: no provider here takes it.

`count_tokens` counts exactly or not at all: the provider a request would go to
counts it (the `anthropic` kind asks the API's own endpoint, the `local` kind its
tokenizer over the prompt it would evaluate); any other answers a 400 that says so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.images import image_from_base64, image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part, TextPart, estimate_tokens
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.protocol.events import TEXT_EVENTS, EventType, encode_json
from tokenwire.protocol.messages import Granularity, StopSequences
from tokenwire.transports.identity import user_of, with_client
from tokenwire.transports.streaming import EventStreamResponse, close_timeout_of
from tokenwire.transports.v1.errors import (
    AnthropicErrorBody,
    anthropic_error,
    anthropic_error_body,
    documented,
)
from tokenwire.transports.v1.route import AnthropicRoute
from tokenwire.transports.v1.running import (
    SSE_HEADERS,
    STREAM_RESPONSE,
    Feed,
    Text,
    cancel_quietly,
    cancelled_on_hangup,
    deadlines_of,
    failure_of,
    gateway_of,
    routing_for,
    start,
    usage_headers,
    whole,
)

router = APIRouter(
    route_class=AnthropicRoute,
    tags=["Anthropic"],
    responses=documented(AnthropicErrorBody),
)

StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextBlockParam(_Body):
    type: Literal["text"]
    text: Text


TextBlocks = Annotated[list[TextBlockParam], Field(max_length=1000)]


class Base64Source(_Body):
    type: Literal["base64"]
    media_type: str
    data: Annotated[str, Field(min_length=1)]


class URLSource(_Body):
    type: Literal["url"]
    url: Annotated[str, Field(min_length=1)]


class ImageBlockParam(_Body):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


ContentBlock = Annotated[TextBlockParam | ImageBlockParam, Field(discriminator="type")]


class MessageParam(_Body):
    role: Literal["user", "assistant"]
    content: Text | Annotated[list[ContentBlock], Field(max_length=1000)]


class MessageMetadata(_Body):
    user_id: Annotated[str, Field(max_length=256)] | None = None


class MessagesRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)]
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=10_000)]
    system: Text | TextBlocks | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop_sequences: StopSequences | None = None
    stream: bool = False
    metadata: MessageMetadata | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_top_k(cls, data: Any) -> Any:
        if isinstance(data, dict) and "top_k" in data:
            raise ValueError("top_k is not supported here; use temperature or top_p")
        return data


class CountTokensRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=10_000)]
    system: Text | TextBlocks | None = None


class TokenCount(BaseModel):
    input_tokens: int


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    estimated: bool = Field(
        default=False,
        description="tokenwire's own count (the provider sent none), never above the real one",
    )


class AnthropicMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


@router.post(
    "/v1/messages",
    response_model=AnthropicMessage,
    responses=STREAM_RESPONSE,
)
async def create_message(request: Request, body: MessagesRequest) -> Response:
    gateway = gateway_of(request)
    spec = with_client(_spec(gateway, body, user_of(request), deadlines_of(request)), request)
    log, feed = await start(gateway, spec)
    if body.stream:
        # A request that fails before any text answers an HTTP error, as Anthropic does.
        async with cancelled_on_hangup(request, gateway, log.key):
            early_end = await feed.until_answer()
        if early_end is not None and early_end.get("status") != "completed":
            return anthropic_error(failure_of(early_end, feed.peeked_error()))
        input_tokens = estimate_tokens("\n".join(m.content for m in spec.messages))
        return EventStreamResponse(
            _events(gateway, log, feed, input_tokens),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
            close_timeout=close_timeout_of(request),
        )
    async with cancelled_on_hangup(request, gateway, log.key):
        text, end, error = await whole(feed)
    if end.get("status") != "completed":
        return anthropic_error(failure_of(end, error))
    return JSONResponse(
        _message_object(log.key.request_id, end, text), headers=usage_headers(end.get("usage"))
    )


@router.post("/v1/messages/count_tokens", response_model=TokenCount)
async def count_message_tokens(request: Request, body: CountTokensRequest) -> TokenCount:
    gateway = gateway_of(request)
    spec = RequestSpec(
        user_id=user_of(request),
        messages=_turns(body.system, body.messages),
        routing=routing_for(gateway, body.model),
    )
    _, tokens = await gateway.count_tokens(spec)
    return TokenCount(input_tokens=tokens)


def _turns(
    system: str | list[TextBlockParam] | None, messages: list[MessageParam]
) -> tuple[Message, ...]:
    text = _text(system) if system is not None else ""
    turns = [Message(role="system", content=text)] if text else []
    turns += [_turn(m, f"messages.{i}.content") for i, m in enumerate(messages)]
    return tuple(turns)


def _spec(gateway: Gateway, body: MessagesRequest, user: str, deadlines: Deadlines) -> RequestSpec:
    return RequestSpec(
        user_id=user,
        messages=_turns(body.system, body.messages),
        request_id=f"msg_{uuid.uuid4().hex}",
        generation=Generation(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_sequences or ()),
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _text(content: str | list[TextBlockParam]) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)


def _turn(message: MessageParam, where: str) -> Message:
    if isinstance(message.content, str):
        return Message(role=message.role, content=message.content)
    parts: list[Part] = []
    for i, block in enumerate(message.content):
        if isinstance(block, TextBlockParam):
            parts.append(TextPart(block.text))
        elif isinstance(block.source, Base64Source):
            source = block.source
            parts.append(image_from_base64(source.media_type, source.data, f"{where}.{i}.source"))
        else:
            parts.append(image_from_url(block.source.url, f"{where}.{i}.source.url"))
    return turn_of_parts(message.role, tuple(parts), where)


def _stop_reason(end: dict[str, Any]) -> StopReason:
    # The core tells an answer cut at its budget ("length") from any other end ("stop"),
    # not whether a stop sequence was what ended it.
    return "max_tokens" if end.get("finish_reason") == "length" else "end_turn"


def _usage(end: dict[str, Any]) -> MessageUsage:
    usage = end.get("usage") or {}
    return MessageUsage(
        input_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
        estimated=usage.get("estimated", False),
    )


def _message_object(message_id: str, end: dict[str, Any], text: str) -> dict[str, Any]:
    return AnthropicMessage(
        id=message_id,
        model=str(end.get("provider_used", "")),
        content=[TextBlock(text=text)],
        stop_reason=_stop_reason(end),
        usage=_usage(end),
    ).model_dump()


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {encode_json({'type': name, **data})}\n\n"


async def _events(
    gateway: Gateway, log: EventLog, feed: Feed, input_tokens: int
) -> AsyncIterator[str]:
    started = False
    model = ""
    error: dict[str, Any] | None = None
    try:
        async for record in feed:
            kind = record.event_type
            if kind is EventType.METADATA:
                # Named once the answer starts: a fallback before it changes the provider.
                model = str(record.data.get("recommended_provider", model))
            elif kind in TEXT_EVENTS:
                if not started:
                    started = True
                    for line in _opening(log, model, input_tokens):
                        yield line
                text = record.data.get("token", record.data.get("chunk", ""))
                delta = {"type": "text_delta", "text": text}
                yield _event("content_block_delta", {"index": 0, "delta": delta})
            elif kind is EventType.ERROR:
                error = record.data
            elif kind is EventType.STREAM_END:
                if not started and record.data.get("status") == "completed":
                    started = True
                    for line in _opening(log, model, input_tokens):
                        yield line
                for line in _ending(record.data, error):
                    yield line
    finally:
        if not feed.ended:
            cancel_quietly(gateway, log.key)


def _opening(log: EventLog, model: str, input_tokens: int) -> list[str]:
    message: dict[str, Any] = {
        "id": log.key.request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }
    return [
        _event("message_start", {"message": message}),
        _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _event("ping", {}),
    ]


def _ending(end: dict[str, Any], error: dict[str, Any] | None) -> list[str]:
    if end.get("status") != "completed":
        failure = failure_of(end, error)
        return [f"event: error\ndata: {encode_json(anthropic_error_body(failure))}\n\n"]
    usage = _usage(end)
    return [
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta",
            {
                "delta": {"stop_reason": _stop_reason(end), "stop_sequence": None},
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "estimated": usage.estimated,
                },
            },
        ),
        _event("message_stop", {}),
    ]
