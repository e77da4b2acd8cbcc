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

Tools (`messages_tools.py`): `tools` and `tool_choice` are taken; assistant turns may
hold `tool_use` blocks and user turns `tool_result` blocks, which must answer exactly
the calls of the turn before. An answer's calls stream as Anthropic streams them: a
text block is closed before each `tool_use` block (block indexes count every block),
`content_block_start` carries the call's id and name with `input: {}`, its arguments
arrive as `input_json_delta` deltas, and `stop_reason` is `tool_use`.

`count_tokens` counts exactly or not at all: the provider a request would go to
counts it (the `anthropic` kind asks the API's own endpoint, the `local` kind its
tokenizer over the prompt it would evaluate); any other answers a 400 that says so.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.images import image_from_base64, image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part, Role, TextPart, estimate_tokens
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.core.structured import from_anthropic
from tokenwire.core.tools import NamedTool, ToolResultPart
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
from tokenwire.transports.v1.fields import Fields, Label, refusing
from tokenwire.transports.v1.messages_tools import (
    Body,
    CacheControl,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
    call_part,
    check_answers,
    result_part,
    split_results,
    tool_choice,
    tool_specs,
    tool_use_blocks,
)
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

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
_Body = Body


# What Anthropic refuses in its own words (`_check_content`), documented in the schema
# but checked by hand: a final assistant turn may be empty, and the words are Anthropic's.
BlockText = Annotated[Text, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]
TurnText = Annotated[Text, Field(json_schema_extra={"minLength": 1})]


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


ContentBlock = Annotated[
    TextBlockParam | ImageBlockParam | ToolUseBlockParam | ToolResultBlockParam,
    Field(discriminator="type"),
]


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
    tools: Annotated[list[ToolParam], Field(max_length=1000)] | None = None
    tool_choice: ToolChoiceParam | None = None
    # What tokenwire does not offer (yet): refused, saying why.
    container: Annotated[None, refusing("code execution containers are not offered")] = None


class CountTokensRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=10_000)]
    system: Text | TextBlocks | None = None
    tools: Annotated[list[ToolParam], Field(max_length=1000)] | None = None


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
    content: list[TextBlock | ToolUseBlock]
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
        generation=Generation(tools=tool_specs(body.tools)),
    )
    _, tokens = await gateway.count_tokens(spec)
    return TokenCount(input_tokens=tokens)


def _turns(
    system: str | list[TextBlockParam] | None, messages: list[MessageParam]
) -> tuple[Message, ...]:
    """The conversation; a user turn's tool results become a tool turn before it."""
    turns: list[Message] = []
    where: list[str] = []
    for i, message in enumerate(messages):
        name = f"messages[{i}].content"
        made = _turn(message, name)
        turns += made
        where += [name] * len(made)
    check_answers(tuple(turns), where)
    return ((_message("system", system),) if system else ()) + tuple(turns)


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
    tools = tool_specs(body.tools)
    choice, parallel = tool_choice(body.tool_choice)
    if isinstance(choice, NamedTool) and choice.name not in {t.name for t in tools}:
        raise InvalidRequest(f"tool_choice.name: no tool named {choice.name!r} in tools")
    if choice == "required" and not tools:
        raise InvalidRequest("tool_choice: 'any' needs tools to choose from")
    return RequestSpec(
        user_id=user,
        messages=_turns(body.system, body.messages),
        request_id=f"msg_{uuid.uuid4().hex}",
        generation=Generation(
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_sequences or ()),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
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


def _turn(message: MessageParam, where: str) -> list[Message]:
    """The client's turn as the core's: a user turn's tool results come first, as a
    tool turn of their own."""
    if isinstance(message.content, str):
        return [Message(role=message.role, content=message.content)]
    parts = [_part(message.role, block, f"{where}[{i}]") for i, block in enumerate(message.content)]
    turns = split_results(message.role, parts)
    rest = tuple(p for p in parts if not isinstance(p, ToolResultPart))
    return [*turns, turn_of_parts(message.role, rest, where)] if rest else turns


def _part(role: str, block: ContentBlock, where: str) -> Part:
    if isinstance(block, TextBlockParam):
        return _text_part(block)
    if isinstance(block, ToolUseBlockParam | ToolResultBlockParam):
        wanted = "assistant" if isinstance(block, ToolUseBlockParam) else "user"
        if role != wanted:
            raise InvalidRequest(f"{where}: {block.type} blocks go in {wanted} messages only")
        return call_part(block) if isinstance(block, ToolUseBlockParam) else result_part(block)
    if isinstance(block.source, Base64Source):
        source = block.source
        return image_from_base64(source.media_type, source.data, f"{where}.source")
    return image_from_url(block.source.url, f"{where}.source.url")


def _stop_reason(end: dict[str, Any]) -> StopReason:
    if end.get("finish_reason") == "length":
        return "max_tokens"
    if end.get("finish_reason") == "tool_calls":
        return "tool_use"
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
    calls = tool_use_blocks(end.get("tool_calls"))
    content: list[TextBlock | ToolUseBlock] = [TextBlock(text=text)] if text or not calls else []
    return AnthropicMessage(
        id=message_id,
        model=str(end.get("provider_used", "")),
        content=[*content, *calls],
        stop_reason=_stop_reason(end),
        stop_sequence=_stop_sequence(end),
        usage=_usage(end),
    ).model_dump()


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {encode_json({'type': name, **data})}\n\n"


async def _events(
    gateway: Gateway, log: EventLog, feed: Feed, input_tokens: int
) -> AsyncIterator[str]:
    blocks = _Blocks()
    model = ""
    error: dict[str, Any] | None = None
    try:
        async for record in feed:
            kind = record.event_type
            if kind is EventType.METADATA:
                # Named once the answer starts: a fallback before it changes the provider.
                model = str(record.data.get("recommended_provider", model))
                continue
            if kind is EventType.ERROR:
                error = record.data
                continue
            opening = kind in _ANSWER_EVENTS or (
                kind is EventType.STREAM_END and record.data.get("status") == "completed"
            )
            if opening and not blocks.started:
                blocks.started = True
                yield _event("message_start", {"message": _opening(log, model, input_tokens)})
            for line in blocks.lines(kind, record.data, error):
                yield line
    finally:
        if not feed.ended:
            await cancel_quietly(gateway, log.key)


_ANSWER_EVENTS = {*TEXT_EVENTS, EventType.TOOL_CALL_START}


class _Blocks:
    """The answer's content blocks as Anthropic streams them: text in a text block,
    closed before each tool_use block; indexes count every block."""

    def __init__(self) -> None:
        self.started = False
        self.count = 0
        self.text_open: int | None = None
        self.calls: dict[int, int] = {}  # the answer's call index -> its block index

    def lines(
        self, kind: EventType, data: dict[str, Any], error: dict[str, Any] | None
    ) -> list[str]:
        if kind in TEXT_EVENTS:
            lines = [] if self.text_open is not None else self._open({"type": "text", "text": ""})
            self.text_open = self.count - 1
            delta = {"type": "text_delta", "text": data.get("token", data.get("chunk", ""))}
            return [
                *lines,
                _event("content_block_delta", {"index": self.text_open, "delta": delta}),
            ]
        if kind is EventType.TOOL_CALL_START:
            block = {"type": "tool_use", "id": data["id"], "name": data["name"], "input": {}}
            lines = self._close_text() + self._open(block)
            self.calls[int(data["index"])] = self.count - 1
            return lines
        if kind is EventType.TOOL_CALL_DELTA:
            delta = {"type": "input_json_delta", "partial_json": data["arguments"]}
            index = self.calls[int(data["index"])]
            return [_event("content_block_delta", {"index": index, "delta": delta})]
        if kind is EventType.TOOL_CALL_END:
            return [_event("content_block_stop", {"index": self.calls[int(data["index"])]})]
        if kind is EventType.STREAM_END:
            return self._end(data, error)
        return []

    def _open(self, block: dict[str, Any]) -> list[str]:
        lines = [_event("content_block_start", {"index": self.count, "content_block": block})]
        if self.count == 0:
            lines.append(_event("ping", {}))  # where Anthropic sends its first ping
        self.count += 1
        return lines

    def _close_text(self) -> list[str]:
        if self.text_open is None:
            return []
        index, self.text_open = self.text_open, None
        return [_event("content_block_stop", {"index": index})]

    def _end(self, end: dict[str, Any], error: dict[str, Any] | None) -> list[str]:
        if end.get("status") != "completed":
            failure = failure_of(end, error)
            return [f"event: error\ndata: {encode_json(anthropic_error_body(failure))}\n\n"]
        # An answer of nothing still has its (empty) text block.
        lines: list[str] = []
        if self.count == 0:
            lines, self.text_open = self._open({"type": "text", "text": ""}), 0
        return [*lines, *self._close_text(), *_ending(end)]


def _opening(log: EventLog, model: str, input_tokens: int) -> dict[str, Any]:
    return {
        "id": log.key.request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }


def _ending(end: dict[str, Any]) -> list[str]:
    usage = _usage(end)
    return [
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
