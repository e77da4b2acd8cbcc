"""OpenAI Chat Completions (`POST /v1/chat/completions`).

The wire format is OpenAI's: a `chat.completion` object, or with `stream: true`
`chat.completion.chunk` events with one id, the role in the first delta, a
`finish_reason` of `stop`, `length` or `tool_calls`, the usage chunk when
`stream_options.include_usage` asks for it, and `data: [DONE]`. Usage that
tokenwire estimated says so (`usage.estimated`, and the `tokenwire-usage-estimated`
header on a whole answer). An error after the stream started is one
`data: {"error": ...}` event (the SDK raises on it), without `[DONE]`. `model`
names a provider, or is `auto` for the router's pick. Every official request
field is taken, ignored (named in `tokenwire-ignored-fields`) or refused with
why: see `fields.py`.

Tool calls: `tools`, `tool_choice` and `parallel_tool_calls` go to the core; the
dialect is stateless, so the history comes whole with each request: an assistant
message's `tool_calls` must be answered, each exactly once, by the `role: "tool"`
messages right after it. Calls stream as `delta.tool_calls` entries with the
answer's dense index, `id`, `type` and `name` in a call's first fragment only,
`arguments` fragments after; a whole answer has them in `message.tool_calls`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.images import image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part
from tokenwire.core.provider import TextPart as CoreTextPart
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.core.structured import from_openai
from tokenwire.core.tools import (
    NamedTool,
    ToolCallPart,
    ToolChoice,
    ToolMode,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import InvalidRequest
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
from tokenwire.transports.v1.fields import (
    LEGACY_FUNCTIONS,
    OPENAI_HINTS,
    Fields,
    FunctionParameters,
    Label,
    refusing,
)
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


ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
CallId = Annotated[str, Field(min_length=1, max_length=128)]
Arguments = Annotated[str, Field(max_length=1_000_000)]


class FunctionDefinition(_Body):
    name: ToolName
    description: Annotated[str, Field(max_length=100_000)] | None = None
    parameters: FunctionParameters | None = None
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Body):
    name: ToolName


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(_Body):
    name: ToolName
    arguments: Arguments


class ToolCall(_Body):
    id: CallId
    type: Literal["function"]
    function: FunctionCall


class ChatMessageIn(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # Null (or absent) only in an assistant message that calls tools.
    content: Text | Annotated[list[ContentPart], Field(max_length=1000)] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=128)] | None = None
    tool_call_id: CallId | None = None


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
    prediction: dict[str, Any] | None = None
    prompt_cache_retention: Label | None = None
    prompt_cache_options: dict[str, Any] | None = None
    # Taken where they ask for text, what every answer is; refused where they ask for more.
    modalities: Annotated[None, refusing(NO_AUDIO, ["text"])] = None
    response_format: OpenAIFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # What tokenwire does not offer (yet): refused, saying why.
    functions: Annotated[None, refusing(LEGACY_FUNCTIONS, [])] = None
    function_call: Annotated[None, refusing(LEGACY_FUNCTIONS, "none", "auto")] = None
    audio: Annotated[None, refusing(NO_AUDIO)] = None
    web_search_options: Annotated[None, refusing("web search is not offered")] = None
    moderation: Annotated[None, refusing("moderation is not offered")] = None

    @model_validator(mode="after")
    def _choice_among_tools(self) -> ChatCompletionRequest:
        """A choice the tools cannot meet is refused here, as the Responses and Messages
        dialects refuse it, rather than left for a provider to fail on."""
        names = [tool.function.name for tool in self.tools or ()]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tools[{i}].function.name: another tool has this name")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError("tool_choice.function.name: no tool of this name in tools")
        if choice == "required" and not names:
            raise ValueError('tool_choice: "required" needs tools')
        return self


class CalledFunction(BaseModel):
    name: str
    arguments: str


class CalledTool(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[CalledTool] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
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
    for key in OPENAI_HINTS:
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
        messages=_conversation(body.messages),
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        generation=Generation(
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=stop,
            response_format=from_openai(body.response_format, "response_format"),
            tools=tuple(_tool(t) for t in body.tools or ()),
            tool_choice=_tool_choice(body.tool_choice),
            parallel_tool_calls=body.parallel_tool_calls,
            options=fields.options,
            hints=fields.hints,
            option_names=fields.names,
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _tool(tool: Tool) -> ToolSpec:
    function = tool.function
    return ToolSpec(
        name=function.name,
        description=function.description or "",
        parameters=function.parameters if function.parameters is not None else {"type": "object"},
        strict=function.strict,
    )


def _tool_choice(choice: ToolMode | NamedToolChoice | None) -> ToolChoice | None:
    return NamedTool(choice.function.name) if isinstance(choice, NamedToolChoice) else choice


def _conversation(messages: list[ChatMessageIn]) -> tuple[Message, ...]:
    """The request's messages as turns: the `tool` messages after an assistant's calls
    become one tool turn, which must answer each of those calls exactly once."""
    turns: list[Message] = []
    pending: dict[str, str] = {}  # call id -> where it was made, until answered
    results: list[ToolResultPart] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role == "tool":
            results.append(_result(message, pending, where))
            continue
        if results:
            turns.append(Message.of_parts("tool", tuple(results)))
            results = []
        _no_call_unanswered(pending, where)
        turn = _message(message, where)
        pending = {call.id: f"{where}.tool_calls" for call in turn.tool_calls}
        turns.append(turn)
    if results:
        turns.append(Message.of_parts("tool", tuple(results)))
    _no_call_unanswered(pending, "messages")
    return tuple(turns)


def _result(message: ChatMessageIn, pending: dict[str, str], where: str) -> ToolResultPart:
    if message.tool_calls is not None:
        raise InvalidRequest(f"{where}.tool_calls: only an assistant message calls tools")
    if message.tool_call_id is None:
        raise InvalidRequest(f"{where}.tool_call_id: required in a tool message")
    if pending.pop(message.tool_call_id, None) is None:
        raise InvalidRequest(
            f"{where}.tool_call_id: answers no call of the assistant message before it "
            "(or one already answered)"
        )
    content = message.content
    if isinstance(content, str):
        return ToolResultPart(message.tool_call_id, content)
    if content is None or not all(isinstance(part, TextPart) for part in content):
        raise InvalidRequest(f"{where}.content: a tool message's content is text")
    text = "".join(part.text for part in content if isinstance(part, TextPart))
    return ToolResultPart(message.tool_call_id, text)


def _no_call_unanswered(pending: dict[str, str], where: str) -> None:
    if pending:
        made = next(iter(pending.values()))
        raise InvalidRequest(
            f"{made}: call '{next(iter(pending))}' has no tool message answering it "
            f"(before {where})"
        )


def _message(message: ChatMessageIn, where: str) -> Message:
    role = "system" if message.role == "developer" else message.role
    assert role != "tool"  # tool messages are results, taken by _conversation
    if message.tool_call_id is not None:
        raise InvalidRequest(f"{where}.tool_call_id: only a tool message has one")
    calls = _calls(message, where)
    if message.content is None:
        if not calls:
            raise InvalidRequest(f"{where}.content: required unless the message calls tools")
        return Message.of_parts(role, calls)
    if isinstance(message.content, str):
        text = (CoreTextPart(message.content),) if message.content else ()
        return Message.of_parts(role, (*text, *calls)) if calls else Message(role, message.content)
    parts: list[Part] = []
    for i, part in enumerate(message.content):
        if isinstance(part, TextPart):
            parts.append(CoreTextPart(part.text))
        else:
            url = part.image_url
            parts.append(image_from_url(url.url, f"{where}.content[{i}].image_url.url", url.detail))
    return turn_of_parts(role, (*parts, *calls), f"{where}.content")


def _calls(message: ChatMessageIn, where: str) -> tuple[ToolCallPart, ...]:
    if message.tool_calls is None:
        return ()
    if message.role != "assistant":
        raise InvalidRequest(f"{where}.tool_calls: only an assistant message calls tools")
    seen: set[str] = set()
    calls = []
    for j, call in enumerate(message.tool_calls):
        at = f"{where}.tool_calls[{j}]"
        if call.id in seen:
            raise InvalidRequest(f"{at}.id: the same id twice in one message")
        seen.add(call.id)
        if not _is_object(call.function.arguments):
            raise InvalidRequest(f"{at}.function.arguments: not a JSON object")
        calls.append(ToolCallPart(call.id, call.function.name, call.function.arguments))
    return tuple(calls)


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _completion(log: EventLog, end: dict[str, Any], text: str) -> dict[str, Any]:
    usage = end.get("usage") or {}
    called = [
        CalledTool(id=c["id"], function=CalledFunction(name=c["name"], arguments=c["arguments"]))
        for c in end.get("tool_calls") or ()
    ]
    return ChatCompletion(
        id=log.key.request_id,
        created=int(log.created_at),
        model=str(end.get("provider_used", "")),
        choices=[
            Choice(
                # As OpenAI answers: content null for a turn of calls only.
                message=AssistantMessage(
                    content=text if text or not called else None, tool_calls=called or None
                ),
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
            elif kind in _CALL_EVENTS:
                yield _chunk(log, model, {"tool_calls": [_call_fragment(kind, record.data)]})
            elif kind is EventType.ERROR:
                error = record.data
            elif kind is EventType.STREAM_END:
                async for line in _ending(log, model, record.data, error, include_usage):
                    yield line
    finally:
        if not feed.ended:
            await cancel_quietly(gateway, log.key)


# A call's end adds nothing on this wire: its arguments were all streamed.
_CALL_EVENTS = frozenset({EventType.TOOL_CALL_START, EventType.TOOL_CALL_DELTA})


def _call_fragment(kind: EventType, data: dict[str, Any]) -> dict[str, Any]:
    """A `delta.tool_calls` entry: id, type and name in the call's first fragment only,
    as OpenAI sends them (clients that concatenate names would otherwise repeat them)."""
    if kind is EventType.TOOL_CALL_START:
        function = {"name": data["name"], "arguments": ""}
        return {"index": data["index"], "id": data["id"], "type": "function", "function": function}
    return {"index": data["index"], "function": {"arguments": data["arguments"]}}


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
