"""Anthropic Messages (`POST /v1/messages`, `POST /v1/messages/count_tokens`).

The wire format is Anthropic's: a `message` object, or with `stream: true`
Server-Sent Events that each carry an `event:` line (the SDK drops frames
without one): `message_start`, `content_block_start`, `ping`, one
`content_block_delta` per text event, `content_block_stop`, `message_delta`
(the stop reason and the usage), `message_stop`. An error after the stream
started is one `event: error` with Anthropic's error body (the SDK raises on
it), and the stream ends there. `model` names a provider, or is `auto` for the
router's pick. Every official request field is taken, ignored (named in
`tokenwire-ignored-fields`) or refused with why: see `fields.py`. Text blocks stay
blocks, with their `cache_control`, for the providers that take blocks; image blocks
(base64 or URL) reach the providers that see.

`count_tokens` counts exactly or not at all: the provider a request would go to
counts it (the `anthropic` kind asks the API's own endpoint, the `local` kind its
tokenizer over the prompt it would evaluate); any other answers a 400 that says so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.images import image_from_base64, image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part, Role, TextPart, estimate_tokens
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.core.structured import from_anthropic
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.events import TEXT_EVENTS, EventType, encode_json
from tokenwire.protocol.formats import AnthropicJsonSchema
from tokenwire.protocol.messages import Granularity, StopSequences
from tokenwire.transports.identity import user_of, with_client
from tokenwire.transports.streaming import EventStreamResponse, close_timeout_of
from tokenwire.transports.v1.errors import (
    AnthropicErrorBody,
    anthropic_error,
    anthropic_error_body,
    documented,
)
from tokenwire.transports.v1.fields import TOOLS_LATER, Fields, Label, refusing
from tokenwire.transports.v1.route import AnthropicRoute
from tokenwire.transports.v1.running import (
    SSE_HEADERS,
    STREAM_RESPONSE,
    Feed,
    ImageMediaType,
    ImageUrl,
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


# What Anthropic refuses in its own words (`_check_content`), documented in the schema
# but checked by hand: a final assistant turn may be empty, and the words are Anthropic's.
BlockText = Annotated[Text, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]
TurnText = Annotated[Text, Field(json_schema_extra={"minLength": 1})]


class CacheControl(_Body):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockParam(_Body):
    type: Literal["text"]
    text: BlockText
    cache_control: CacheControl | None = None
    citations: Annotated[None, refusing("citations are not offered", [])] = None


TextBlocks = Annotated[
    list[TextBlockParam], Field(max_length=1000, json_schema_extra={"minItems": 1})
]


class Base64Source(_Body):
    type: Literal["base64"]
    media_type: ImageMediaType
    data: Annotated[str, Field(min_length=1)]


class URLSource(_Body):
    type: Literal["url"]
    url: ImageUrl


class ImageBlockParam(_Body):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


ContentBlock = Annotated[TextBlockParam | ImageBlockParam, Field(discriminator="type")]


class MessageParam(_Body):
    role: Literal["user", "assistant"]
    content: (
        TurnText
        | Annotated[list[ContentBlock], Field(max_length=1000, json_schema_extra={"minItems": 1})]
    )


class MessageMetadata(_Body):
    user_id: Annotated[str, Field(max_length=256)] | None = None


class Thinking(_Body):
    type: Literal["enabled", "adaptive", "disabled", "between_tools"]
    budget_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    display: Label | None = None


class OutputConfig(_Body):
    effort: Label | None = None
    format: AnthropicJsonSchema | None = None


class MessagesRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)]
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=10_000)]
    system: Text | TextBlocks | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop_sequences: StopSequences | None = None
    stream: bool = False
    # Provider options: honoured by the chosen provider, or refused naming it.
    top_k: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    thinking: Thinking | None = None
    inference_geo: Label | None = None
    output_config: OutputConfig | None = None
    # Hints: passed on where the provider takes them (anthropic), else dropped.
    metadata: MessageMetadata | None = None
    cache_control: CacheControl | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    speed: Literal["standard", "fast"] | None = None
    # Meaning nothing here: accepted, and named in the tokenwire-ignored-fields header.
    diagnostics: dict[str, Any] | None = None
    user_profile_id: Label | None = None
    workspace_id: Label | None = None
    # What tokenwire does not offer (yet): refused, saying why.
    tools: Annotated[None, refusing(TOOLS_LATER, [])] = None
    tool_choice: Annotated[None, refusing(TOOLS_LATER, {"type": "none"}, {"type": "auto"})] = None
    container: Annotated[None, refusing("code execution containers are not offered")] = None


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
    _check_content(body)
    fields = _fields(body)
    spec = with_client(
        _spec(gateway, body, fields, user_of(request), deadlines_of(request)), request
    )
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
            headers={**SSE_HEADERS, **fields.headers},
            close_timeout=close_timeout_of(request),
        )
    async with cancelled_on_hangup(request, gateway, log.key):
        text, end, error = await whole(feed)
    if end.get("status") != "completed":
        return anthropic_error(failure_of(end, error))
    headers = {**usage_headers(end.get("usage")), **fields.headers}
    return JSONResponse(_message_object(log.key.request_id, end, text), headers=headers)


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
    turns = [_message("system", system)] if system else []
    turns += [_turn(m, f"messages[{i}].content") for i, m in enumerate(messages)]
    return tuple(turns)


def _check_content(body: MessagesRequest) -> None:
    """Empty text is refused as Anthropic refuses it, in Anthropic's words."""
    if isinstance(body.system, list):
        _check_blocks(body.system, "system")
    last = len(body.messages) - 1
    for index, message in enumerate(body.messages):
        if isinstance(message.content, list):
            _check_blocks(message.content, "messages")
        # Only a final assistant turn (a prefill the answer continues) may be empty.
        if not message.content and not (index == last and message.role == "assistant"):
            raise InvalidRequest(
                "messages: all messages must have non-empty content except for the"
                " optional final assistant message"
            )


def _check_blocks(blocks: list[TextBlockParam] | list[ContentBlock], where: str) -> None:
    for block in blocks:
        if not isinstance(block, TextBlockParam):
            continue
        if not block.text:
            raise InvalidRequest(f"{where}: text content blocks must be non-empty")
        if not block.text.strip():
            raise InvalidRequest(f"{where}: text content blocks must contain non-whitespace text")


def _fields(body: MessagesRequest) -> Fields:
    """The body's fields beyond the plain call: options, hints, and what is ignored."""
    output = body.output_config or OutputConfig()
    fields = Fields()
    fields.option("top_k", body.top_k)
    # Disabled thinking is what every answer has without it: it asks for nothing.
    thinking = body.thinking
    if thinking is not None and thinking.type != "disabled":
        fields.option("thinking", thinking.model_dump(exclude_none=True))
    fields.option("inference_geo", body.inference_geo)
    if output.effort is not None:
        fields.option("output_config", {"effort": output.effort}, "output_config.effort")
    for key in ("metadata", "cache_control"):
        value = getattr(body, key)
        fields.hint(key, None if value is None else value.model_dump(exclude_none=True))
    fields.hint("service_tier", body.service_tier)
    fields.hint("speed", body.speed)
    for key in ("diagnostics", "user_profile_id", "workspace_id"):
        fields.ignore(key, getattr(body, key))
    return fields


def _spec(
    gateway: Gateway,
    body: MessagesRequest,
    fields: Fields,
    user: str,
    deadlines: Deadlines,
) -> RequestSpec:
    return RequestSpec(
        user_id=user,
        messages=_turns(body.system, body.messages),
        request_id=f"msg_{uuid.uuid4().hex}",
        generation=Generation(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_sequences or ()),
            response_format=from_anthropic(
                body.output_config.format if body.output_config else None, "output_config.format"
            ),
            options=fields.options,
            hints=fields.hints,
            option_names=fields.names,
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _message(role: Role, content: str | list[TextBlockParam]) -> Message:
    """A turn; blocks stay blocks (with their cache_control) for providers that take them."""
    if isinstance(content, str):
        return Message(role=role, content=content)
    parts = tuple(_text_part(block) for block in content)
    return Message(role=role, content="".join(part.text for part in parts), parts=parts)


def _text_part(block: TextBlockParam) -> TextPart:
    cache = block.cache_control
    return TextPart(block.text, None if cache is None else cache.model_dump(exclude_none=True))


def _turn(message: MessageParam, where: str) -> Message:
    if isinstance(message.content, str):
        return Message(role=message.role, content=message.content)
    parts: list[Part] = []
    for i, block in enumerate(message.content):
        if isinstance(block, TextBlockParam):
            parts.append(_text_part(block))
        elif isinstance(block.source, Base64Source):
            source = block.source
            parts.append(image_from_base64(source.media_type, source.data, f"{where}[{i}].source"))
        else:
            parts.append(image_from_url(block.source.url, f"{where}[{i}].source.url"))
    return turn_of_parts(message.role, tuple(parts), where)


def _stop_reason(end: dict[str, Any]) -> StopReason:
    if end.get("finish_reason") == "length":
        return "max_tokens"
    return "stop_sequence" if end.get("stop_sequence") is not None else "end_turn"


def _stop_sequence(end: dict[str, Any]) -> str | None:
    value = end.get("stop_sequence")
    return value if isinstance(value, str) else None


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
        stop_sequence=_stop_sequence(end),
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
                "delta": {
                    "stop_reason": _stop_reason(end),
                    "stop_sequence": _stop_sequence(end),
                },
                "usage": {
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "estimated": usage.estimated,
                },
            },
        ),
        _event("message_stop", {}),
    ]
