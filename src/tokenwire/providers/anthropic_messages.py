"""Anthropic's Messages API, through the official `anthropic` SDK.

System messages become the `system` parameter. `max_tokens`, which Anthropic
requires, comes from the request, else the provider's `options.max_tokens`, else
1024. Request options (`config.options`, or the Messages fields of the same
names), all optional: `top_p` (0-1), `top_k` (a positive integer),
`stop_sequences` (a list of strings), `thinking`, `inference_geo`,
`output_config` (its `effort`), and the
hints `cache_control`, `service_tier`, `speed` and `metadata`, sent on
unchanged; the provider's `options` table may set defaults for these and for
`temperature`. System and message text sent as blocks stays blocks, each with its
`cache_control`. Thinking blocks that come back are not relayed: tokenwire's
events carry the answer's text.

Tools go as `tools` (`input_schema`) and `tool_choice` (`auto`, `any`, `tool`,
`none`; `disable_parallel_tool_use` when parallel calls are off). An assistant turn's
calls are `tool_use` blocks after its text, their ids tokenwire's own call ids; a
tool turn is a user turn of `tool_result` blocks. A streamed `tool_use` block is one
call, keyed by its block index: `input_json_delta` fragments, then its end at
`content_block_stop` (input that is not a JSON object by then is an error, named
`max_tokens` where the answer stopped there).

The body is built here and sent with the SDK's `client.post` (its headers, errors and
SSE decoding), each event read as plain JSON: `messages.create` would build a typed
model per event, and SDK 2.14's has no `temperature`, `top_p` or `top_k` argument
anyway. The SDK ends a stream silently when the
connection drops cleanly before `message_stop`, and lets transport errors met
mid-stream through unwrapped (as `httpx2` exceptions); both are handled here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any, Literal, cast

import anthropic
import httpx2
from anthropic.types import (
    CacheControlEphemeralParam,
    ContentBlockParam,
    MessageParam,
    TextBlockParam,
    ToolChoiceParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
)
from pydantic import BaseModel, ConfigDict, Field

from tokenwire.core.provider import (
    FinishReason,
    Message,
    Part,
    ProviderEvent,
    ProviderRequest,
    TextPart,
    Usage,
)
from tokenwire.core.structured import schema_of
from tokenwire.core.tools import (
    NamedTool,
    ResponseFormat,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderError,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.providers.images import base64_text
from tokenwire.providers.options import configured_options, merged_options, request_options
from tokenwire.providers.tool_blocks import CallBlocks
from tokenwire.providers.upstream import END_MARKER_MISSING, scrub, status_error
from tokenwire.settings import ProviderSettings

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 1024

Temperature = Annotated[float, Field(ge=0, le=1)]


class RequestOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    stop_sequences: Annotated[list[str], Field(min_length=1)] | None = None
    thinking: dict[str, Any] | None = None
    inference_geo: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    output_config: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    speed: Literal["standard", "fast"] | None = None
    metadata: dict[str, Any] | None = None


# Sent as they are, in the body.
_PASSED = (
    "top_k",
    "thinking",
    "inference_geo",
    "output_config",
    "cache_control",
    "service_tier",
    "speed",
    "metadata",
)


class ProviderOptions(RequestOptions):
    temperature: Temperature | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None


class AnthropicProvider:
    kind = "anthropic"

    def __init__(self, settings: ProviderSettings) -> None:
        if not settings.model:
            raise ValueError("model: required for an anthropic provider (the model to ask for)")
        self._defaults = configured_options(ProviderOptions, settings.options)
        self._settings = settings
        self._model = settings.model
        # Every source is given, so that ANTHROPIC_* variables cannot redirect the key,
        # and `open_telemetry={}` pins spans to metadata: never a prompt or an answer.
        self._client = anthropic.AsyncAnthropic(
            base_url=settings.base_url or DEFAULT_BASE_URL,
            api_key=settings.api_key() or "unused",
            max_retries=0,
            open_telemetry={},
            # The SDK's aiohttp transport: less CPU per request and per token than its
            # default (httpx's pool polls every idle connection at each request).
            http_client=anthropic.DefaultAioHttpClient(),
        )

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def model(self) -> str:
        return self._model

    def readiness(self) -> str | None:
        return None  # ready once built: clients connect on first use

    def validate(self, request: ProviderRequest) -> None:
        request_options(RequestOptions, request, self)
        if request.temperature is not None and request.temperature > 1:
            raise InvalidRequest("config.temperature: anthropic takes 0 to 1")
        if all(m.role == "system" for m in request.messages):
            raise InvalidRequest("anthropic needs a user message besides the system prompt")

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = merged_options(self._defaults, RequestOptions, request, self)
        answer = _Answer()
        try:
            # The SDK's own request, errors and SSE decoding, but each event as the plain
            # JSON object it is: `messages.create` builds a typed model per event.
            stream = await self._client.post(
                "/v1/messages",
                body=_body(request, options, self._model),
                cast_to=object,
                stream=True,
                stream_cls=anthropic.AsyncStream[object],
            )
            # Leaving this block by any path (end, error, aclose, cancel) closes the response.
            async with stream as events:
                async for event in events:
                    for news in answer.read(event):
                        yield news
        except (anthropic.APIError, httpx2.HTTPError, json.JSONDecodeError) as exc:
            raise upstream_error(exc, self._settings.api_key()) from None
        yield answer.usage()

    async def count_tokens(self, request: ProviderRequest) -> int:
        """Asked of the Messages API's own count_tokens endpoint: exact for the model."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        try:
            counted = await self._client.messages.count_tokens(
                model=request.model or self._model,
                messages=_messages(request.messages),
                system=system or anthropic.omit,
                tools=_tools(request) or anthropic.omit,
            )
        except (anthropic.APIError, httpx2.HTTPError, json.JSONDecodeError) as exc:
            raise upstream_error(exc, self._settings.api_key()) from None
        return counted.input_tokens

    async def aclose(self) -> None:
        await self._client.close()


class _Answer:
    """What has arrived of one streamed message, and whether it is whole."""

    def __init__(self) -> None:
        self.stopped = False
        self.input_tokens: int | None = None
        self.output_tokens = 0
        self.finish_reason: FinishReason = "stop"
        self.stop_sequence: str | None = None
        self.calls = CallBlocks()

    def read(self, event: object) -> list[ProviderEvent]:
        """The events one SSE event brings. Read as the JSON object it is, leniently, as
        the SDK's models read it: a field absent or of another type counts as not sent."""
        if not isinstance(event, dict):
            raise ProviderError("upstream sent an event that is not a JSON object")
        kind = event.get("type")
        index = event.get("index")
        if kind == "content_block_delta":
            delta = _object(event.get("delta"))
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                return [text] if isinstance(text, str) and text else []
            if delta.get("type") == "input_json_delta" and isinstance(index, int):
                return self.calls.fragment(index, _text(delta.get("partial_json")) or "")
        elif kind == "content_block_start":
            block = _object(event.get("content_block"))
            if block.get("type") == "tool_use" and isinstance(index, int):
                return self.calls.start(index, _text(block.get("id")), _text(block.get("name")))
        elif kind == "content_block_stop" and isinstance(index, int) and index in self.calls:
            return self.calls.stop(index)
        elif kind == "message_start":
            usage = _object(_object(event.get("message")).get("usage"))
            self.input_tokens = _count(usage, "input_tokens")
            self.output_tokens = _count(usage, "output_tokens") or 0
        elif kind == "message_delta":
            delta = _object(event.get("delta"))
            self._stopping(_text(delta.get("stop_reason")), _text(delta.get("stop_sequence")))
            # Counts in message_delta are cumulative: the latest one is the total.
            usage = _object(event.get("usage"))
            self.output_tokens = _count(usage, "output_tokens") or 0
            input_tokens = _count(usage, "input_tokens")
            if input_tokens is not None:
                self.input_tokens = input_tokens
        elif kind == "message_stop":
            self.stopped = True
        return []

    def _stopping(self, reason: str | None, stop_sequence: str | None) -> None:
        self.calls.check_stop_reason(reason)
        if reason == "max_tokens":
            self.finish_reason = "length"
        elif reason == "tool_use":
            self.finish_reason = "tool_calls"
        self.stop_sequence = stop_sequence

    def usage(self) -> Usage:
        if not self.stopped or self.input_tokens is None:
            raise ProviderError(f"{END_MARKER_MISSING} (no message_stop): the answer is cut short")
        self.calls.check_whole()
        return Usage(
            self.input_tokens,
            self.output_tokens,
            finish_reason=self.finish_reason,
            stop_sequence=self.stop_sequence,
        )


def _object(value: object) -> dict[str, Any]:
    """A JSON object field, or an empty one where it is absent or something else."""
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if isinstance(value, int) else None


def _messages(messages: tuple[Message, ...]) -> list[MessageParam]:
    """The turns after the system prompt; a tool turn is a user turn of results, and
    joins the user turn after it (the results first, as the API wants them)."""
    turns: list[MessageParam] = []
    for message in messages:
        if message.role == "system":
            continue
        turn = _message(message)
        previous = turns[-1] if turns else None
        if previous is not None and previous["role"] == "user" and _answers_tools(previous):
            previous["content"] = [*_as_blocks(previous["content"]), *_as_blocks(turn["content"])]
            continue
        turns.append(turn)
    return turns


def _answers_tools(turn: MessageParam) -> bool:
    content = turn["content"]
    return not isinstance(content, str) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    )


def _as_blocks(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _message(message: Message) -> MessageParam:
    content: str | list[ContentBlockParam] = _blocks(message) if message.parts else message.content
    if message.role == "assistant":
        return {"role": "assistant", "content": content}
    return {"role": "user", "content": content}


def _system(messages: tuple[Message, ...]) -> str | list[TextBlockParam]:
    """The system turns as one string, or as blocks where any was sent as blocks."""
    system = [m for m in messages if m.role == "system"]
    if any(m.parts for m in system):
        return [
            _text_block(p) for m in system for p in m.content_parts() if isinstance(p, TextPart)
        ]
    return "\n\n".join(m.content for m in system)


def _blocks(message: Message) -> list[ContentBlockParam]:
    """The turn's blocks; an assistant's calls follow its text, as the API has them."""
    parts = [p for p in message.content_parts() if not isinstance(p, ToolCallPart)]
    if message.content and not any(isinstance(p, TextPart) for p in parts):
        parts.insert(0, TextPart(message.content))  # a turn of calls whose text is `content`
    blocks = [_block(p) for p in parts if not (isinstance(p, TextPart) and not p.text)]
    return blocks + [_tool_use(call) for call in message.tool_calls]


def _text_block(part: TextPart) -> TextBlockParam:
    block: TextBlockParam = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = cast(CacheControlEphemeralParam, dict(part.cache_control))
    return block


def _block(part: Part) -> ContentBlockParam:
    """A part as a Messages content block (an image by base64 or URL)."""
    if isinstance(part, TextPart):
        return _text_block(part)
    if isinstance(part, ToolCallPart):
        return _tool_use(part)
    if isinstance(part, ToolResultPart):
        return _tool_result(part)
    if part.data is None:
        assert part.url is not None
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    assert part.media_type is not None
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": part.media_type, "data": base64_text(part)},
    }


def _tool_use(call: ToolCallPart) -> ToolUseBlockParam:
    # Arguments are JSON text that parses to an object (the core checked at the call's end).
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": json.loads(call.arguments),
    }


def _tool_result(result: ToolResultPart) -> ToolResultBlockParam:
    block: ToolResultBlockParam = {
        "type": "tool_result",
        "tool_use_id": result.tool_call_id,
        "content": result.content,
    }
    if result.is_error:
        block["is_error"] = True
    return block


def _tools(request: ProviderRequest) -> list[ToolParam]:
    """The request's tools; without any, the tools its history called (the API refuses
    `tool_use` blocks without tools), which `_tool_choice` then forbids calling."""
    if request.tools:
        return [_tool(spec) for spec in request.tools]
    called = dict.fromkeys(c.name for m in request.messages for c in m.tool_calls)
    return [_tool(ToolSpec(name)) for name in called]


def _tool(spec: ToolSpec) -> ToolParam:
    tool: ToolParam = {"name": spec.name, "input_schema": cast(Any, dict(spec.parameters))}
    if spec.description:
        tool["description"] = spec.description
    return tool


def _tool_choice(request: ProviderRequest) -> ToolChoiceParam | None:
    """Anthropic's words for the choice; None where its default (auto, parallel) is meant."""
    if not request.tools:
        history = any(m.tool_calls for m in request.messages)
        return {"type": "none"} if history else None
    choice = request.tool_choice or "auto"
    if choice == "none":
        return {"type": "none"}
    picked: ToolChoiceParam
    if isinstance(choice, NamedTool):
        picked = {"type": "tool", "name": choice.name}
    elif choice == "required":
        picked = {"type": "any"}
    elif request.parallel_tool_calls is not False:
        return None
    else:
        picked = {"type": "auto"}
    if request.parallel_tool_calls is False:
        picked["disable_parallel_tool_use"] = True
    return picked


def _body(request: ProviderRequest, options: ProviderOptions, model: str) -> dict[str, Any]:
    """The request body `messages.create` would send (the same JSON object; only options
    it also names come later in it): those not given left out, sampling and options last."""
    given: dict[str, Any] = {
        "max_tokens": request.max_tokens or options.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _messages(request.messages),
        "model": request.model or model,
        "stop_sequences": list(request.stop) or options.stop_sequences or None,
        "stream": True,
        "system": _system(request.messages) or None,
        "tool_choice": _tool_choice(request) or None,
        "tools": _tools(request) or None,
    }
    body = {key: value for key, value in given.items() if value is not None}
    body.update(_sampling(request, options) or {})
    return body


def _sampling(request: ProviderRequest, options: ProviderOptions) -> dict[str, Any] | None:
    """Sampling the SDK has no arguments for, and the options sent as they are: the body's."""
    temperature = options.temperature if request.temperature is None else request.temperature
    top_p = options.top_p if request.top_p is None else request.top_p
    body: dict[str, Any] = {"temperature": temperature, "top_p": top_p}
    body.update(options.model_dump(include=set(_PASSED)))
    if request.response_format is not None:
        body["output_config"] = _output_config(options.output_config, request.response_format)
    return {k: v for k, v in body.items() if v is not None} or None


def _output_config(given: dict[str, Any] | None, fmt: ResponseFormat) -> dict[str, Any]:
    """Structured output in Anthropic's own terms (`output_config.format`), beside an
    `effort` the client may have set; `json_object` is a schema of any object."""
    return {**(given or {}), "format": {"type": "json_schema", "schema": dict(schema_of(fmt))}}


def upstream_error(exc: Exception, api_key: str | None) -> TokenwireError:
    """The gateway's error for what the SDK (or httpx2 under it) raised; never the key."""
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return RequestTimeout("upstream did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        exc = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    if isinstance(exc, httpx2.HTTPError | anthropic.APIConnectionError):
        return ProviderError(f"upstream connection failed: {scrub(str(exc), api_key)}")
    if isinstance(exc, json.JSONDecodeError):
        return ProviderError("upstream sent an event that is not JSON")
    if not isinstance(exc, anthropic.APIStatusError):
        return ProviderError(f"upstream error: {scrub(str(exc), api_key)}")
    message = scrub(exc.api_message or exc.message, api_key)
    return status_error(
        exc.status_code,
        message if exc.status_code >= 400 else f"{exc.type}: {message}",
        exc.response.headers,
        rate_limited=exc.type == "rate_limit_error",
        auth_refused=exc.type in ("authentication_error", "permission_error"),
    )
