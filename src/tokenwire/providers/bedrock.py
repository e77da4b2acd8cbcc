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

botocore's own retries are off: a retry would hide a failure behind seconds of
silence, and the gateway decides what to do about failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from tokenwire.core.structured import schema_of
from tokenwire.core.tools import ResponseFormat
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
    UnsupportedFeature,
)
from tokenwire.providers.images import FetchPolicy, ImageFetcher
from tokenwire.providers.options import configured_options, request_options
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
        if request.response_format is not None and request.tools:
            raise UnsupportedFeature(
                f"provider '{self.name}' (kind bedrock) gives structured output through a "
                "forced tool, which cannot go with the request's own tools"
            )

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
        stopped = False
        finish: FinishReason = "stop"
        usage: Usage | None = None
        produced: list[str] = []
        try:
            with _upstream_errors(self._options.read_timeout):
                async for event in events:
                    if "contentBlockDelta" in event:
                        text = _answer_text(event["contentBlockDelta"].get("delta", {}), request)
                        if text:
                            produced.append(text)
                            yield text
                    elif "messageStop" in event:
                        stopped = True
                        if event["messageStop"].get("stopReason") == "max_tokens":
                            finish = "length"
                        # The forced tool's use is the answer's end, not a call (stop).
                    elif "metadata" in event:
                        usage = _usage(event["metadata"])
        finally:
            # Closing the HTTP response drops the connection, which is what stops
            # Bedrock generating (and billing) on cancel, timeout or error.
            events.close()
        if not stopped:
            raise ProviderError(END_MARKER_MISSING)
        if usage is None:
            usage = Usage(
                prompt_tokens=estimate_tokens(request.prompt_text),
                completion_tokens=estimated_completion_tokens(
                    len(produced),
                    request.max_tokens or self._options.max_tokens,
                    "".join(produced),
                ),
                estimated=True,
            )
        yield dataclasses.replace(usage, finish_reason=finish)

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
        if request.response_format is not None:
            arguments["toolConfig"] = _forced_tool(request.response_format)
        return arguments


FORMAT_TOOL = "answer"
"""The tool that structured output is forced through: its input is the answer."""


def _forced_tool(fmt: ResponseFormat) -> dict[str, Any]:
    """Structured output as Converse can force it: one tool whose input schema is the
    answer's, chosen by `toolChoice`; the model's input to it is the JSON answer."""
    spec = {
        "name": FORMAT_TOOL,
        "description": "Give the answer as this tool's input.",
        "inputSchema": {"json": dict(schema_of(fmt))},
    }
    return {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": FORMAT_TOOL}}}


def _answer_text(delta: Mapping[str, Any], request: ProviderRequest) -> str | None:
    """A delta's text: its text, or, for structured output, the forced tool's input
    fragments, re-emitted as the text they are."""
    if request.response_format is not None and "toolUse" in delta:
        fragment = delta["toolUse"].get("input")
        return fragment if isinstance(fragment, str) else None
    text = delta.get("text")
    return text if isinstance(text, str) else None


def _conversation(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Converse wants alternating turns: consecutive turns of one role become one turn."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        blocks = [_block(part) for part in message.content_parts()]
        blocks = [block for block in blocks if block.get("text") != ""]
        if message.role == "system" or not blocks:
            continue
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    return turns


def _block(part: Part) -> dict[str, Any]:
    """A text or image content block; an image's bytes were fetched before (`stream`)."""
    if isinstance(part, TextPart):
        return {"text": part.text}
    assert isinstance(part, ImagePart), "tool parts are not rendered here yet"
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
