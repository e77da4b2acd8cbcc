"""Any OpenAI-compatible Chat Completions endpoint, through the official `openai` SDK.

Request options (`config.options`, or the Chat Completions and Responses fields
of the same names), all optional and sent on unchanged: `top_p` (0-1), `stop` (a
string or up to 4 strings), `seed` (integer), `presence_penalty` and
`frequency_penalty` (-2 to 2), `logit_bias` (token id to -100..100), `logprobs`,
`top_logprobs` (0-20), `reasoning_effort`, `verbosity`, and the hints
`service_tier`, `user`, `safety_identifier` and `prompt_cache_key`. The
provider's `options` table may set defaults for these and for `temperature` and
`max_tokens`; request values win. Log probabilities that come back are not
relayed: tokenwire's events carry text.

The SDK ends a stream silently when the connection drops before `data: [DONE]`
and hides `[DONE]` itself, so completeness is judged from what arrived: a choice
with a `finish_reason` is the end marker, and a stream without one is cut short.
This provider always asks for the usage chunk and reports it exactly when it comes;
some compatible servers (llama-cpp-python's, for one) never send it, so an answer
that finished without one ends with a local estimate, `Usage(estimated=True)`.
SDK retries are off: a failed stream is the core's to handle, not to repeat here.

Tool calls: the request's tools go as function tools (`strict` where set), with
`tool_choice` and `parallel_tool_calls`, those two only when there are tools
(OpenAI refuses them otherwise). History renders an assistant turn's calls as `tool_calls`
(content null when the turn has no text) and each result as its own `role: "tool"`
message; Chat Completions has no error flag, so a result with `is_error` is sent
as `Error: ` followed by its content. Streamed `delta.tool_calls` fragments are
keyed by the upstream's `index` (servers repeat ids and names on every fragment,
send a name late, `arguments: null`, or start at index 1: the core's assembler
takes all of that); a fragment whose id differs from the one its index already
had starts a new call (servers that put parallel calls all at index 0). Every
call ends (`ToolCallEnd`) at the choice's `finish_reason`, except `length`: a call
cut by the token budget is not final, and the answer ends as `length`. An answer
that called tools ends as `tool_calls`, whatever finish reason the server names
for it (some send `stop`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Annotated, Any, Literal

import aiohttp
import openai
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
    ChatCompletionMessageToolCallParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
)
from openai.types.chat.chat_completion_content_part_image_param import ImageURL
from openai.types.shared_params import (
    FunctionDefinition,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
)
from openai.types.shared_params.response_format_json_schema import JSONSchema
from pydantic import BaseModel, ConfigDict, Field

from tokenwire.core.provider import (
    FinishReason,
    ImagePart,
    Message,
    Part,
    ProviderEvent,
    ProviderRequest,
    TextPart,
    Usage,
    estimate_tokens,
    estimated_completion_tokens,
)
from tokenwire.core.tools import (
    NamedTool,
    ResponseFormat,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import (
    ProviderError,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.providers.images import data_url
from tokenwire.providers.options import configured_options, merged_options, request_options
from tokenwire.providers.upstream import END_MARKER_MISSING, scrub, status_error
from tokenwire.settings import ProviderSettings

DEFAULT_BASE_URL = "https://api.openai.com/v1"

Penalty = Annotated[float, Field(ge=-2, le=2)]
Label = Annotated[str, Field(min_length=1, max_length=512)]


class RequestOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | Annotated[list[str], Field(min_length=1, max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: Label | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    user: Label | None = None
    safety_identifier: Label | None = None
    prompt_cache_key: Label | None = None


# Sent as they are: the fields of `RequestOptions` that Chat Completions names alike.
_PASSED = (
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
    "service_tier",
    "user",
    "safety_identifier",
    "prompt_cache_key",
)


class ProviderOptions(RequestOptions):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None


class OpenAIProvider:
    kind = "openai"

    def __init__(self, settings: ProviderSettings) -> None:
        if not settings.model:
            raise ValueError("model: required for an openai provider (the model name to ask for)")
        self._defaults = configured_options(ProviderOptions, settings.options)
        self._settings = settings
        self._model = settings.model
        # base_url is always given, so that OPENAI_BASE_URL cannot redirect the key.
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url or DEFAULT_BASE_URL,
            api_key=settings.api_key() or "unused",
            max_retries=0,
            # The SDK's aiohttp transport: about a quarter less CPU per streamed token than
            # its default (httpx's pool polls every idle connection at each request), and
            # every idle connection kept alive (httpx kept 100: more streams would churn).
            http_client=openai.DefaultAioHttpClient(),
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

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = merged_options(self._defaults, RequestOptions, request, self)
        answer = _Answer()
        try:
            # The SDK's own request, errors and SSE decoding, but each chunk as the plain
            # JSON object it is: `chat.completions.create` builds a typed model per chunk
            # and walks the parameters' types per request, which cost this path more CPU
            # than all the rest of the gateway (docs/benchmarks.md).
            stream = await self._client.post(
                "/chat/completions",
                body=_body(request, options, self._model),
                options={"security": {"bearer_auth": True}},
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            # Leaving this block by any path (end, error, aclose, cancel) closes the response.
            async with stream as chunks:
                async for chunk in chunks:
                    for event in answer.read(chunk):
                        yield event
        except (openai.APIError, json.JSONDecodeError) as exc:
            raise upstream_error(exc, self._settings.api_key()) from None
        yield answer.usage(request.prompt_text, request.max_tokens or options.max_tokens)

    async def aclose(self) -> None:
        await self._client.close()


class _Answer:
    """What has arrived of one streamed answer, and whether it is whole.

    Chunks are read as the JSON objects they are, leniently, as the SDK's models read
    them: a field that is absent, null or of another type counts as not sent."""

    def __init__(self) -> None:
        self.finished = False
        self.finish_reason: FinishReason = "stop"
        self.reported: tuple[int, int] | None = None  # the upstream's (prompt, completion)
        self.text: list[str] = []
        self.calls = _Calls()

    def read(self, chunk: object) -> list[ProviderEvent]:
        """The events one chunk brings: text, call fragments, and at the finish the ends."""
        if not isinstance(chunk, dict):
            raise ProviderError("upstream sent an event that is not a JSON object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.reported = (_count(usage, "prompt_tokens"), _count(usage, "completion_tokens"))
        events: list[ProviderEvent] = []
        for choice in _objects(chunk.get("choices")):
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self.text.append(content)
                    events.append(content)
                events += [self.calls.fragment(call) for call in _objects(delta.get("tool_calls"))]
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and not self.finished:
                events += self._finish(reason)
        return events

    def _finish(self, reason: str) -> list[ProviderEvent]:
        self.finished = True
        if reason == "length":
            # Arguments cut by the token budget are not final: no call ends.
            self.finish_reason = "length"
            return []
        if self.calls.keys:
            self.finish_reason = "tool_calls"
        return [ToolCallEnd(key) for key in self.calls.keys]

    def usage(self, prompt_text: str, max_tokens: int | None) -> Usage:
        """The upstream's usage, else an estimate; `ProviderError` if the answer is cut short."""
        if not self.finished:
            raise ProviderError(f"{END_MARKER_MISSING} (no finish_reason): the answer is cut short")
        if self.reported is None:
            # Finished, but the server sends no usage chunk (it need not honour
            # stream_options): count locally, and say so.
            answer = "".join(self.text)
            return Usage(
                prompt_tokens=estimate_tokens(prompt_text),
                completion_tokens=estimated_completion_tokens(len(self.text), max_tokens, answer),
                estimated=True,
                finish_reason=self.finish_reason,
            )
        prompt_tokens, completion_tokens = self.reported
        return Usage(prompt_tokens, completion_tokens, finish_reason=self.finish_reason)


class _Calls:
    """The calls of one answer, by the key their fragments go under."""

    def __init__(self) -> None:
        self.keys: list[str | int] = []
        self._current: dict[int, str | int] = {}  # upstream index -> key of its latest call
        self._ids: dict[str | int, str] = {}  # key -> the upstream id it came with

    def fragment(self, call: dict[str, Any]) -> ToolCallDelta:
        index = call.get("index")
        upstream_id = call.get("id")
        upstream_id = upstream_id if isinstance(upstream_id, str) else None
        key = self._key(index if isinstance(index, int) else 0, upstream_id)
        function = call.get("function")
        if not isinstance(function, dict):
            return ToolCallDelta(key=key, upstream_id=upstream_id, name=None, arguments="")
        name = function.get("name")
        arguments = function.get("arguments")
        return ToolCallDelta(
            key=key,
            upstream_id=upstream_id,
            name=name if isinstance(name, str) else None,
            arguments=arguments if isinstance(arguments, str) else "",
        )

    def _key(self, index: int, upstream_id: str | None) -> str | int:
        key = self._current.get(index)
        if key is None:
            key = index
        elif upstream_id and self._ids.get(key, upstream_id) != upstream_id:
            # Another id at an index already in use: a new call, not more of the last.
            key = f"{index}:{upstream_id}"
        else:
            return key
        self._current[index] = key
        self.keys.append(key)
        if upstream_id:
            self._ids[key] = upstream_id
        return key


def _objects(value: object) -> list[dict[str, Any]]:
    """The JSON objects in a list field (none if it is absent or not a list)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) else 0


def _message(message: Message) -> ChatCompletionMessageParam:
    if message.role == "system":
        return {"role": "system", "content": message.content}
    if message.role == "assistant":
        return _assistant(message)
    if message.parts:
        return {"role": "user", "content": [_part(p) for p in message.parts if _is_content(p)]}
    return {"role": "user", "content": message.content}


def _messages(messages: tuple[Message, ...]) -> list[ChatCompletionMessageParam]:
    """The conversation as Chat Completions takes it: a tool turn becomes one `tool`
    message per result."""
    rendered: list[ChatCompletionMessageParam] = []
    for message in messages:
        if message.role == "tool":
            rendered += [_tool_result(r) for r in message.tool_results]
        else:
            rendered.append(_message(message))
    return rendered


def _assistant(message: Message) -> ChatCompletionMessageParam:
    calls = message.tool_calls
    if not calls:
        return {"role": "assistant", "content": message.content}
    return {
        "role": "assistant",
        "content": message.content or None,
        "tool_calls": [_call(c) for c in calls],
    }


def _call(call: ToolCallPart) -> ChatCompletionMessageToolCallParam:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def _tool_result(result: ToolResultPart) -> ChatCompletionMessageParam:
    content = f"Error: {result.content}" if result.is_error else result.content
    return {"role": "tool", "tool_call_id": result.tool_call_id, "content": content}


def _tool(spec: ToolSpec) -> ChatCompletionToolParam:
    function: FunctionDefinition = {"name": spec.name, "parameters": dict(spec.parameters)}
    if spec.description:
        function["description"] = spec.description
    if spec.strict is not None:
        function["strict"] = spec.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice | None) -> ChatCompletionToolChoiceOptionParam | None:
    if isinstance(choice, NamedTool):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _is_content(part: Part) -> bool:
    return isinstance(part, (TextPart, ImagePart))


def _part(part: Part) -> ChatCompletionContentPartParam:
    """A text or image part as Chat Completions takes it (an image by URL or data URL)."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    assert isinstance(part, ImagePart), "only text and images are a user turn's content"
    image: ImageURL = {"url": data_url(part)}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _response_format(
    fmt: ResponseFormat | None,
) -> ResponseFormatJSONSchema | ResponseFormatJSONObject | None:
    """Structured output in OpenAI's own terms: sent as asked."""
    if fmt is None or fmt.type == "json_object":
        return None if fmt is None else {"type": "json_object"}
    schema: JSONSchema = {"name": fmt.name or "answer", "schema": dict(fmt.schema or {})}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def _body(request: ProviderRequest, options: ProviderOptions, model: str) -> dict[str, Any]:
    """The request body, as `chat.completions.create` would send it: the parameters in
    its order, those not given left out (never sent as null), the options last."""
    temperature = options.temperature if request.temperature is None else request.temperature
    top_p = options.top_p if request.top_p is None else request.top_p
    tools = request.tools
    given: dict[str, Any] = {
        "model": request.model or model,
        "stream": True,
        "messages": _messages(request.messages),
        "max_tokens": request.max_tokens or options.max_tokens,
        # OpenAI refuses these two without tools.
        "parallel_tool_calls": request.parallel_tool_calls if tools else None,
        "response_format": _response_format(request.response_format),
        "stop": list(request.stop) if request.stop else options.stop,
        "stream_options": {"include_usage": True},
        "temperature": temperature,
        "tool_choice": _tool_choice(request.tool_choice) if tools else None,
        "tools": [_tool(t) for t in tools] or None,
        "top_p": top_p,
    }
    body = {key: value for key, value in given.items() if value is not None}
    body.update(options.model_dump(include=set(_PASSED), exclude_none=True))
    return body


def upstream_error(
    exc: openai.APIError | json.JSONDecodeError, api_key: str | None
) -> TokenwireError:
    """The gateway's error for what the SDK raised; the message never carries the key."""
    if isinstance(exc, json.JSONDecodeError):
        return ProviderError("upstream sent an event that is not JSON")
    if isinstance(exc, openai.APITimeoutError) and _timed_out(exc):
        return RequestTimeout("upstream did not answer in time")
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        cause = scrub(str(exc.__cause__ or exc), api_key)
        return ProviderError(f"upstream connection failed: {cause}")
    message = scrub(_upstream_message(exc), api_key)
    if not isinstance(exc, openai.APIStatusError):
        return ProviderError(f"upstream error: {message}")
    return status_error(exc.status_code, message, exc.response.headers)


def _timed_out(exc: openai.APITimeoutError) -> bool:
    """Whether the SDK's timeout was one. Over aiohttp the SDK calls a refused connection
    or a hang-up a timeout too (its transport maps aiohttp's `ClientConnectionError` to
    `ConnectTimeout`): aiohttp's own exception, down the chain of causes, tells them apart.
    tests/providers/test_hosted_providers.py fails if that mapping changes."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, TimeoutError):
            return True
        if isinstance(cause, aiohttp.ClientError):
            return False
        cause = cause.__cause__
    return True


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])
    return exc.message
