"""AWS Bedrock through the ConverseStream API, on an async AWS client (aiobotocore).

`model` is the Bedrock modelId (or inference-profile id/ARN) and is required.
`base_url` overrides the endpoint (a VPC endpoint, a test server). Credentials
come from the standard AWS chain only: environment variables, the shared
config and credentials files (profile), SSO, container and instance roles.
tokenwire never reads or stores AWS keys itself, so `api_key_env` is not used
for bedrock.

Provider options (`[[providers]] options`): `region` (default "us-east-1"),
`profile` (a named AWS profile), defaults for `max_tokens`, `temperature`,
`top_p`, and `connect_timeout` / `read_timeout` in seconds (5 and 60).
Request options (`config.options`, or the dialects' fields of the same names):
`top_p`, `stop_sequences`, and `top_k`, which Converse has no field for: it goes in
`additionalModelRequestFields`, where Anthropic's models on Bedrock read it (a model
that takes no `top_k` refuses the request). Any other option is refused.

Converse takes images only as bytes: an image given by https URL is fetched by
tokenwire first (`providers/images.py`, within the `[limits]` image bounds).

Tools go in `toolConfig` (`toolSpec` with `inputSchema.json`, and `toolChoice`:
`auto`, `any`, `tool`). Converse has no choice of "none": such a request offers no
tools, unless its history holds calls, which Bedrock refuses without a `toolConfig`;
then the called tools are offered (with any-object schemas), as they are for a request
of no tools whose history holds calls. Nor has it a switch for parallel calls.
History: an assistant turn's calls are `toolUse` blocks after its text, a tool turn
is a user turn of `toolResult` blocks (`status: error` for an error). A streamed
`toolUse` block is one call keyed by its block index, ended at `contentBlockStop`;
`malformed_tool_use` (a stop reason, or an exception) is an error.

botocore's own retries are off: a retry would hide a failure behind seconds of
silence, and the gateway decides what to do about failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Annotated, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.eventstream import ParserError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    EventStreamError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
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
    estimate_tokens,
    estimated_completion_tokens,
)
from tokenwire.core.tools import (
    NamedTool,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.providers.images import FetchPolicy, ImageFetcher
from tokenwire.providers.options import configured_options, request_options
from tokenwire.providers.tool_blocks import CallBlocks
from tokenwire.providers.upstream import END_MARKER_MISSING, retry_after
from tokenwire.settings import ProviderSettings

_THROTTLED = {"throttlingexception", "toomanyrequestsexception", "servicequotaexceededexception"}
_AUTH = {
    "accessdeniedexception",
    "unrecognizedclientexception",
    "invalidsignatureexception",
    "incompletesignature",
    "missingauthenticationtoken",
    "expiredtokenexception",
}
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


class BedrockSettingsOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    region: Annotated[str, Field(min_length=1)] = "us-east-1"
    profile: Annotated[str, Field(min_length=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    read_timeout: Annotated[float, Field(gt=0)] = 60.0


class BedrockRequestOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    top_k: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class BedrockProvider:
    kind = "bedrock"

    def __init__(self, settings: ProviderSettings, fetcher: ImageFetcher | None = None) -> None:
        if not settings.model:
            raise ValueError("model: required for bedrock (the Bedrock modelId)")
        self._fetcher = fetcher or ImageFetcher(FetchPolicy())
        self._name = settings.name
        self._model = settings.model
        self._endpoint_url = settings.base_url
        self._options = configured_options(BedrockSettingsOptions, settings.options)
        # Streams beyond the HTTP pool size would queue inside botocore, unseen.
        self._pool_size = settings.max_concurrency or 256
        # Built and warmed here, at start-up: botocore's handlers and JSON models
        # take tens of milliseconds of CPU, which would stall every running stream.
        try:
            self._session = AioSession(profile=self._options.profile)
            self._session.warm_up_loader_caches("bedrock-runtime")
        except BotoCoreError as exc:  # a named profile that does not exist
            raise ValueError(f"AWS configuration: {exc}") from None
        self._client: Any = None
        self._client_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    def readiness(self) -> str | None:
        return None  # ready once built: clients connect on first use

    def validate(self, request: ProviderRequest) -> None:
        request_options(BedrockRequestOptions, request, self)

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        if request.has_images:
            messages = await self._fetcher.with_bytes(request.messages)
            request = dataclasses.replace(request, messages=messages)
        arguments = self._converse_arguments(request)
        client = await self._ensure_client()
        with _upstream_errors(self._options.read_timeout):
            response = await client.converse_stream(**arguments)
        events = response["stream"]
        answer = _Answer()
        try:
            with _upstream_errors(self._options.read_timeout):
                async for event in events:
                    for news in answer.read(event):
                        yield news
        finally:
            # Closing the HTTP response drops the connection, which is what stops
            # Bedrock generating (and billing) on cancel, timeout or error.
            events.close()
        yield answer.usage(request, self._options.max_tokens)

    async def aclose(self) -> None:
        async with self._client_lock:
            self._client = None
            await self._client_stack.aclose()

    async def _ensure_client(self) -> Any:
        # Created in the running loop on first use: aiohttp binds to its loop.
        async with self._client_lock:
            if self._client is None:
                options = self._options
                config = AioConfig(
                    region_name=options.region,
                    connect_timeout=options.connect_timeout,
                    read_timeout=options.read_timeout,
                    retries={"mode": "standard", "total_max_attempts": 1},
                    max_pool_connections=self._pool_size,
                    user_agent_extra="tokenwire",
                )
                self._client = await self._client_stack.enter_async_context(
                    self._session.create_client(
                        "bedrock-runtime",
                        region_name=options.region,
                        endpoint_url=self._endpoint_url,
                        config=config,
                    )
                )
            return self._client

    def _converse_arguments(self, request: ProviderRequest) -> dict[str, Any]:
        options = request_options(BedrockRequestOptions, request, self)
        arguments: dict[str, Any] = {
            "modelId": request.model or self._model,
            "messages": _conversation(request.messages),
        }
        system = [{"text": m.content} for m in request.messages if m.role == "system" and m.content]
        if system:
            arguments["system"] = system
        inference: dict[str, Any] = {}
        max_tokens = request.max_tokens or self._options.max_tokens
        if max_tokens is not None:
            inference["maxTokens"] = max_tokens
        temperature = (
            request.temperature if request.temperature is not None else self._options.temperature
        )
        if temperature is not None:
            inference["temperature"] = temperature
        top_p = next(
            (p for p in (request.top_p, options.top_p, self._options.top_p) if p is not None),
            None,
        )
        if top_p is not None:
            inference["topP"] = top_p
        stop = list(request.stop) or options.stop_sequences
        if stop:
            inference["stopSequences"] = stop
        if inference:
            arguments["inferenceConfig"] = inference
        if options.top_k is not None:
            arguments["additionalModelRequestFields"] = {"top_k": options.top_k}
        tool_config = _tool_config(request)
        if tool_config:
            arguments["toolConfig"] = tool_config
        return arguments


class _Answer:
    """What has arrived of one ConverseStream answer, and whether it is whole."""

    def __init__(self) -> None:
        self.stopped = False
        self.finish: FinishReason = "stop"
        self.usage_seen: Usage | None = None
        self.produced: list[str] = []
        self.calls = CallBlocks()

    def read(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        if "contentBlockDelta" in event:
            return self._delta(event["contentBlockDelta"])
        if "contentBlockStart" in event:
            start = event["contentBlockStart"]
            call = start.get("start", {}).get("toolUse")
            if call is not None:
                index = int(start.get("contentBlockIndex", 0))
                return self.calls.start(index, call.get("toolUseId"), call.get("name"))
        elif "contentBlockStop" in event:
            index = int(event["contentBlockStop"].get("contentBlockIndex", 0))
            if index in self.calls:
                return self.calls.stop(index)
        elif "messageStop" in event:
            self._stopping(event["messageStop"].get("stopReason"))
        elif "metadata" in event:
            self.usage_seen = _usage(event["metadata"])
        return []

    def _delta(self, block: Mapping[str, Any]) -> list[ProviderEvent]:
        delta = block.get("delta", {})
        text = delta.get("text")
        if text:
            self.produced.append(text)
            return [str(text)]
        index = int(block.get("contentBlockIndex", 0))
        fragment = delta.get("toolUse", {}).get("input")
        if not isinstance(fragment, str):
            return []
        self.produced.append(fragment)
        return self.calls.fragment(index, fragment)

    def _stopping(self, reason: str | None) -> None:
        self.stopped = True
        if reason == "malformed_tool_use":
            raise ProviderError(
                "bedrock: the model made a malformed tool call (malformed_tool_use)"
            )
        self.calls.check_stop_reason(reason)
        if reason == "max_tokens":
            self.finish = "length"
        elif reason == "tool_use":
            self.finish = "tool_calls"

    def usage(self, request: ProviderRequest, max_tokens: int | None) -> Usage:
        if not self.stopped:
            raise ProviderError(END_MARKER_MISSING)
        self.calls.check_whole()
        usage = self.usage_seen or Usage(
            prompt_tokens=estimate_tokens(request.prompt_text),
            completion_tokens=estimated_completion_tokens(
                len(self.produced), request.max_tokens or max_tokens, "".join(self.produced)
            ),
            estimated=True,
        )
        return dataclasses.replace(usage, finish_reason=self.finish)


def _tool_config(request: ProviderRequest) -> dict[str, Any] | None:
    """The request's tools and choice; or, where it offers none (or forbids calls) and
    its history holds calls, the called tools, since Bedrock refuses tool blocks
    without a toolConfig."""
    choice = request.tool_choice or "auto"
    if request.tools and choice != "none":
        return {"tools": [_tool(t) for t in request.tools], "toolChoice": _tool_choice(choice)}
    called = dict.fromkeys(c.name for m in request.messages for c in m.tool_calls)
    if not called:
        return None
    return {"tools": [_tool(ToolSpec(name)) for name in called]}


def _tool(spec: ToolSpec) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": spec.name, "inputSchema": {"json": dict(spec.parameters)}}
    if spec.description:
        tool["description"] = spec.description
    return {"toolSpec": tool}


def _tool_choice(choice: NamedTool | str) -> dict[str, Any]:
    if isinstance(choice, NamedTool):
        return {"tool": {"name": choice.name}}
    return {"any": {}} if choice == "required" else {"auto": {}}


def _conversation(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Converse wants alternating turns: consecutive turns of one role become one turn
    (a tool turn is a user turn of results)."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        blocks = [_block(part) for part in _ordered(message)]
        blocks = [block for block in blocks if block.get("text") != ""]
        role = "user" if message.role == "tool" else message.role
        if role == "system" or not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _ordered(message: Message) -> list[Part]:
    """The turn's parts, an assistant's calls after its text, as Converse has them."""
    parts = [p for p in message.content_parts() if not isinstance(p, ToolCallPart)]
    if message.content and not any(isinstance(p, TextPart) for p in parts):
        parts.insert(0, TextPart(message.content))  # a turn of calls whose text is `content`
    return [*parts, *message.tool_calls]


def _block(part: Part) -> dict[str, Any]:
    """A content block; an image's bytes were fetched before (`stream`)."""
    if isinstance(part, TextPart):
        return {"text": part.text}
    if isinstance(part, ToolCallPart):
        # Arguments are JSON text that parses to an object (the core checked at the end).
        call = {"toolUseId": part.id, "name": part.name, "input": json.loads(part.arguments)}
        return {"toolUse": call}
    if isinstance(part, ToolResultPart):
        result: dict[str, Any] = {
            "toolUseId": part.tool_call_id,
            "content": [{"text": part.content}] if part.content else [],
        }
        if part.is_error:
            result["status"] = "error"
        return {"toolResult": result}
    assert part.data is not None
    assert part.media_type is not None
    return {
        "image": {"format": part.media_type.removeprefix("image/"), "source": {"bytes": part.data}}
    }


def _usage(metadata: Mapping[str, Any]) -> Usage | None:
    usage = metadata.get("usage")
    if not usage:
        return None
    return Usage(
        prompt_tokens=int(usage.get("inputTokens", 0)),
        completion_tokens=int(usage.get("outputTokens", 0)),
    )


@contextlib.contextmanager
def _upstream_errors(read_timeout: float) -> Iterator[None]:
    """Turn what botocore and aiohttp raise into the gateway's errors."""
    try:
        yield
    except TokenwireError:
        raise
    except Exception as exc:
        raise _translate(exc, read_timeout) from exc


def _translate(exc: Exception, read_timeout: float) -> TokenwireError:
    if isinstance(exc, ClientError):
        return _from_client_error(exc)
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return RequestTimeout(f"bedrock sent nothing for {read_timeout:g} s")
    if isinstance(exc, _CREDENTIAL_ERRORS):
        # The class name only: credential errors can quote profile or process output.
        return ProviderAuthError(f"no usable AWS credentials for bedrock ({type(exc).__name__})")
    if isinstance(exc, ParamValidationError):
        return InvalidRequest("bedrock rejected the request parameters")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return ProviderError(END_MARKER_MISSING)
    if isinstance(exc, ParserError):
        return ProviderError(f"bedrock sent a malformed event stream ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError):
        return ProviderError(f"bedrock connection failed: {exc}")
    return ProviderError(f"bedrock failed: {type(exc).__name__}")


def _from_client_error(exc: ClientError) -> TokenwireError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "UnknownError")
    upstream = str(error.get("Message") or "no message")
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    where = "in stream" if isinstance(exc, EventStreamError) else f"HTTP {status}"
    message = f"bedrock {code} ({where}): {upstream}"
    if code.lower() in _THROTTLED or status == 429:
        return RateLimited(message, retry_after(meta.get("HTTPHeaders", {})))
    if code.lower() in _AUTH or status in (401, 403):
        return ProviderAuthError(message)
    return ProviderError(message)
