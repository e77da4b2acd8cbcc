"""OpenAI Chat Completions (`POST /v1/chat/completions`).

The wire format is OpenAI's: a `chat.completion` object, or with `stream: true`
`chat.completion.chunk` events with one id, the role in the first delta, a
`finish_reason` of `stop` or `length`, the usage chunk when
`stream_options.include_usage` asks for it, and `data: [DONE]`. Usage that
tokenwire estimated says so (`usage.estimated`, and the `tokenwire-usage-estimated`
header on a whole answer). An error after the stream started is one
`data: {"error": ...}` event (the SDK raises on it), without `[DONE]`. `model`
names a provider, or is `auto` for the router's pick. Every official request
field is taken, ignored (named in `tokenwire-ignored-fields`) or refused with
why: see `fields.py`.
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
from tokenwire.core.images import image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part
from tokenwire.core.provider import TextPart as CoreTextPart
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.core.structured import from_openai
from tokenwire.protocol.events import TEXT_EVENTS, EventType, encode_json
from tokenwire.protocol.formats import OpenAIFormat
from tokenwire.protocol.messages import Granularity, StopSequence, StopSequences
from tokenwire.transports.identity import user_of, with_client
from tokenwire.transports.streaming import EventStreamResponse, close_timeout_of
from tokenwire.transports.v1.errors import (
    OpenAIErrorBody,
    documented,
    openai_error,
    openai_error_body,
)
from tokenwire.transports.v1.fields import TOOLS_LATER, Fields, Label, refusing
from tokenwire.transports.v1.route import OpenAIRoute
from tokenwire.transports.v1.running import (
    SSE_HEADERS,
    STREAM_RESPONSE,
    Feed,
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
    route_class=OpenAIRoute,
    tags=["OpenAI"],
    responses=documented(OpenAIErrorBody),
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ImageURL(_Body):
    url: ImageUrl
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[ContentPart], Field(max_length=1000)]
    name: Annotated[str, Field(max_length=256)] | None = None


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # no obfuscation padding is sent either way


Penalty = Annotated[float, Field(ge=-2, le=2)]
NO_AUDIO = "audio output is not offered: answers are text"


class ChatCompletionRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=10_000)]
    max_tokens: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: StopSequence | StopSequences | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    # Provider options: honoured by the chosen provider, or refused naming it.
    seed: int | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: Label | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # Hints: passed on where the provider takes them (openai), else dropped.
    user: Annotated[str, Field(max_length=256)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    safety_identifier: Label | None = None
    prompt_cache_key: Label | None = None
    # Meaning nothing here: accepted, and named in the tokenwire-ignored-fields header.
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_retention: Label | None = None
    prompt_cache_options: dict[str, Any] | None = None
    # Taken where they ask for text, what every answer is; refused where they ask for more.
    modalities: Annotated[None, refusing(NO_AUDIO, ["text"])] = None
    response_format: OpenAIFormat | None = None
    # What tokenwire does not offer (yet): refused, saying why.
    tools: Annotated[None, refusing(TOOLS_LATER, [])] = None
    tool_choice: Annotated[None, refusing(TOOLS_LATER, "none", "auto")] = None
    functions: Annotated[None, refusing(TOOLS_LATER, [])] = None
    function_call: Annotated[None, refusing(TOOLS_LATER, "none", "auto")] = None
    audio: Annotated[None, refusing(NO_AUDIO)] = None
    web_search_options: Annotated[None, refusing("web search is not offered")] = None
    moderation: Annotated[None, refusing("moderation is not offered")] = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = Field(
        default=False,
        description="tokenwire's own count (the provider sent none), never above the real one",
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: None = None


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=STREAM_RESPONSE,
)
async def create_chat_completion(request: Request, body: ChatCompletionRequest) -> Response:
    gateway = gateway_of(request)
    fields = _fields(body)
    spec = with_client(
        _spec(gateway, body, fields, user_of(request), deadlines_of(request)), request
    )
    log, feed = await start(gateway, spec)
    if body.stream:
        # A request that fails before any text answers an HTTP error, as OpenAI does.
        async with cancelled_on_hangup(request, gateway, log.key):
            early_end = await feed.until_answer()
        if early_end is not None and early_end.get("status") != "completed":
            return openai_error(failure_of(early_end, feed.peeked_error()))
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStreamResponse(
            _chunks(gateway, log, feed, include_usage),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **fields.headers},
            close_timeout=close_timeout_of(request),
        )
    async with cancelled_on_hangup(request, gateway, log.key):
        text, end, error = await whole(feed)
    if end.get("status") != "completed":
        return openai_error(failure_of(end, error))
    headers = {**usage_headers(end.get("usage")), **fields.headers}
    return JSONResponse(_completion(log, end, text), headers=headers)


def _fields(body: ChatCompletionRequest) -> Fields:
    """The body's fields beyond the plain call: options, hints, and what is ignored."""
    fields = Fields()
    for key in _OPTIONS:
        fields.option(key, getattr(body, key))
    if body.logprobs is False:  # the default, asking for nothing
        fields.options.pop("logprobs", None)
    for key in ("user", "service_tier", "safety_identifier", "prompt_cache_key"):
        fields.hint(key, getattr(body, key))
    for key in _IGNORED:
        fields.ignore(key, getattr(body, key))
    return fields


_OPTIONS = (
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
)
_IGNORED = (
    "metadata",
    "store",
    "parallel_tool_calls",
    "prediction",
    "prompt_cache_retention",
    "prompt_cache_options",
)


def _spec(
    gateway: Gateway,
    body: ChatCompletionRequest,
    fields: Fields,
    user: str,
    deadlines: Deadlines,
) -> RequestSpec:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return RequestSpec(
        user_id=user,
        messages=tuple(_message(m, f"messages[{i}].content") for i, m in enumerate(body.messages)),
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        generation=Generation(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=stop,
            response_format=from_openai(body.response_format, "response_format"),
            options=fields.options,
            hints=fields.hints,
            option_names=fields.names,
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _message(message: ChatMessageIn, where: str) -> Message:
    role = "system" if message.role == "developer" else message.role
    if isinstance(message.content, str):
        return Message(role=role, content=message.content)
    parts: list[Part] = []
    for i, part in enumerate(message.content):
        if isinstance(part, TextPart):
            parts.append(CoreTextPart(part.text))
        else:
            url = part.image_url
            parts.append(image_from_url(url.url, f"{where}[{i}].image_url.url", url.detail))
    return turn_of_parts(role, tuple(parts), where)


def _completion(log: EventLog, end: dict[str, Any], text: str) -> dict[str, Any]:
    usage = end.get("usage") or {}
    return ChatCompletion(
        id=log.key.request_id,
        created=int(log.created_at),
        model=str(end.get("provider_used", "")),
        choices=[
            Choice(
                message=AssistantMessage(content=text),
                finish_reason=end.get("finish_reason", "stop"),
            )
        ],
        usage=CompletionUsage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            total_tokens=usage.get("total_tokens", 0),
            estimated=usage.get("estimated", False),
        ),
    ).model_dump()


def _chunk(
    log: EventLog,
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, int | bool] | None = None,
) -> str:
    """One `chat.completion.chunk` event; without a delta, the choice-less usage chunk."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    )
    body: dict[str, Any] = {
        "id": log.key.request_id,
        "object": "chat.completion.chunk",
        "created": int(log.created_at),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return f"data: {encode_json(body)}\n\n"


async def _chunks(
    gateway: Gateway, log: EventLog, feed: Feed, include_usage: bool
) -> AsyncIterator[str]:
    model = ""
    error: dict[str, Any] | None = None
    try:
        async for record in feed:
            kind = record.event_type
            if kind is EventType.METADATA:
                # A fallback's metadata names the provider that now answers.
                first = not model
                model = record.data.get("recommended_provider", model)
                if first:
                    role = {"role": "assistant", "content": "", "refusal": None}
                    yield _chunk(log, model, role)
            elif kind in TEXT_EVENTS:
                text = record.data.get("token", record.data.get("chunk", ""))
                yield _chunk(log, model, {"content": text})
            elif kind is EventType.ERROR:
                error = record.data
            elif kind is EventType.STREAM_END:
                async for line in _ending(log, model, record.data, error, include_usage):
                    yield line
    finally:
        if not feed.ended:
            cancel_quietly(gateway, log.key)


async def _ending(
    log: EventLog,
    model: str,
    end: dict[str, Any],
    error: dict[str, Any] | None,
    include_usage: bool,
) -> AsyncIterator[str]:
    if end.get("status") != "completed":
        yield f"data: {encode_json(openai_error_body(failure_of(end, error)))}\n\n"
        return
    yield _chunk(log, model, {}, end.get("finish_reason", "stop"))
    if include_usage:
        usage = end.get("usage") or {}
        counts: dict[str, int | bool] = {
            k: usage.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        }
        counts["estimated"] = usage.get("estimated", False)
        yield _chunk(log, model, None, usage=counts)
    yield "data: [DONE]\n\n"
