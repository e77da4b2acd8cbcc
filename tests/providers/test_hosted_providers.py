"""The hosted providers (OpenAI, Anthropic) against a fake upstream on a loopback socket.

Every test runs once per provider, through the `flavour` fixture; what differs between
the two is gathered in `ProviderFlavour`. What only one provider has (the request body
shape, system prompts, option names...) stays in test_openai_chat.py and
test_anthropic_messages.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal

import anthropic
import httpx2
import openai
import pytest

from tests.fakes.anthropic_upstream import (
    anthropic_answer,
    anthropic_error,
    message_frames,
    overloaded_mid_stream,
)
from tests.fakes.openai_upstream import (
    Reply,
    ScriptedUpstream,
    chat_frames,
    openai_answer,
    openai_error,
)
from tests.support.waiting import AT_ONCE
from tokenwire.core.provider import Message, Provider, ProviderEvent, ProviderRequest, Usage
from tokenwire.protocol.errors import (
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
    UpstreamRejected,
)
from tokenwire.providers import anthropic_messages, openai_chat
from tokenwire.providers.anthropic_messages import AnthropicProvider
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.providers.registry import build_provider
from tokenwire.providers.upstream import retry_after
from tokenwire.settings import ConfigError, ProviderSettings

HELLO = (Message(role="user", content="hello"),)


def openai_error_mid_stream(deltas: list[str]) -> Reply:
    """Some text, then an error object in the stream, as OpenAI sends when overloaded."""
    frames = chat_frames(deltas, 1, 1)[: 1 + len(deltas)]
    frames.append(
        b'data: {"error":{"message":"The model is overloaded","type":"server_error"}}\n\n'
    )
    return Reply(frames=frames)


@dataclass(frozen=True)
class ProviderFlavour:
    """What differs, in these tests, between one hosted provider and the other."""

    kind: Literal["openai", "anthropic"]
    name: str
    base_url_suffix: str
    provider_class: Callable[[ProviderSettings], Provider]
    upstream_error: Callable[[Any, str | None], TokenwireError]
    sdk_timeout: Callable[[], Exception]
    answer: Callable[..., Any]
    error: Callable[..., Reply]
    frames: Callable[..., list[bytes]]
    key_env: str
    api_key: str
    # Frames up to and including the first text delta, when the answer is ["partial"].
    first_text_frames: int
    not_json_frame: bytes
    # JSON, but not the object every event is (chunks are read as plain JSON).
    not_object_frame: bytes
    error_mid_stream: Callable[[list[str]], Reply]
    error_mid_stream_says: str
    # Where to cut ["a", "b", "c"] mid-answer, and the clean ends before the end marker.
    cut_after: int
    clean_cuts: tuple[int, ...]
    # Where ["a", "b"] falls silent, after the first text delta.
    stall_after: int
    # (message, error type) of a 500, and of a 400.
    server_error: tuple[str, str]
    bad_request_error: tuple[str, str]
    # (message, error type, retry-after header, part of the message the client sees).
    rate_limit_error: tuple[str, str, str, str]
    # The error type of a refused key, by status, and the message.
    auth_error_types: dict[int, str]
    auth_error_message: str
    # An upstream message that quotes the key (formatted with key=api_key), its error
    # type, and what must still reach the client.
    key_leak_message: str
    key_leak_error_type: str
    key_leak_says: str
    # Provider options, the request fields that override some, and what the body holds.
    option_defaults: dict[str, Any]
    option_overrides: dict[str, Any]
    options_sent: dict[str, Any]

    def settings(self, url: str, **fields: Any) -> ProviderSettings:
        return ProviderSettings(
            name=self.name,
            kind=self.kind,
            model="m",
            base_url=url + self.base_url_suffix,
            api_key_env=self.key_env,
            **fields,
        )


OPENAI = ProviderFlavour(
    kind="openai",
    name="oa",
    base_url_suffix="/v1",
    provider_class=OpenAIProvider,
    upstream_error=openai_chat.upstream_error,
    sdk_timeout=lambda: openai.APITimeoutError(
        request=httpx2.Request("POST", "http://upstream.invalid/v1/chat/completions")
    ),
    answer=openai_answer,
    error=openai_error,
    frames=chat_frames,
    key_env="TOKENWIRE_TEST_OPENAI_KEY",
    api_key="sk-test-0123456789abcdefSECRET",
    first_text_frames=2,
    not_json_frame=b"data: {not json\n\n",
    not_object_frame=b"data: [1, 2]\n\n",
    error_mid_stream=openai_error_mid_stream,
    error_mid_stream_says="The model is overloaded",
    cut_after=3,
    clean_cuts=(3,),
    stall_after=2,
    server_error=("The server had an error", "server_error"),
    bad_request_error=(
        "This model's maximum context length is 8192 tokens",
        "invalid_request_error",
    ),
    rate_limit_error=("Rate limit reached for requests", "requests", "7", "Rate limit reached"),
    auth_error_types={401: "invalid_request_error", 403: "invalid_request_error"},
    auth_error_message="Invalid authentication",
    key_leak_message="Incorrect API key provided: {key}. Also known as sk-test-****CRET.",
    key_leak_error_type="invalid_request_error",
    key_leak_says="Incorrect API key provided",
    option_defaults={"temperature": 0.9, "max_tokens": 50, "seed": 1, "top_p": 0.3},
    option_overrides={"temperature": 0.0, "options": {"seed": 2}},
    options_sent={"temperature": 0.0, "max_tokens": 50, "seed": 2, "top_p": 0.3},
)

ANTHROPIC = ProviderFlavour(
    kind="anthropic",
    name="an",
    base_url_suffix="",
    provider_class=AnthropicProvider,
    upstream_error=anthropic_messages.upstream_error,
    sdk_timeout=lambda: anthropic.APITimeoutError(
        request=httpx2.Request("POST", "http://upstream.invalid/")
    ),
    answer=anthropic_answer,
    error=anthropic_error,
    frames=message_frames,
    key_env="TOKENWIRE_TEST_ANTHROPIC_KEY",
    api_key="sk-ant-api03-0123456789abcdefSECRET",
    first_text_frames=4,
    not_json_frame=b"event: content_block_delta\ndata: {not json\n\n",
    not_object_frame=b'event: content_block_delta\ndata: "text"\n\n',
    error_mid_stream=overloaded_mid_stream,
    error_mid_stream_says="overloaded_error",
    cut_after=4,
    # Mid-answer, and even right after message_delta.
    clean_cuts=(4, len(message_frames(["a", "b", "c"], 3, 3)) - 1),
    stall_after=5,
    server_error=("Internal server error", "api_error"),
    bad_request_error=("prompt is too long", "invalid_request_error"),
    rate_limit_error=(
        "Number of request tokens has exceeded your rate limit",
        "rate_limit_error",
        "20",
        "exceeded your rate limit",
    ),
    auth_error_types={401: "authentication_error", 403: "permission_error"},
    auth_error_message="invalid x-api-key",
    key_leak_message="invalid x-api-key {key} (sk-ant-****CRET)",
    key_leak_error_type="authentication_error",
    key_leak_says="invalid x-api-key",
    option_defaults={"temperature": 0.7, "max_tokens": 300, "top_k": 5},
    option_overrides={"options": {"top_k": 9}},
    options_sent={"temperature": 0.7, "max_tokens": 300, "top_k": 9},
)


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def flavour(request: pytest.FixtureRequest) -> ProviderFlavour:
    chosen: ProviderFlavour = request.param
    return chosen


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def provider(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch, flavour: ProviderFlavour
) -> AsyncIterator[Provider]:
    monkeypatch.setenv(flavour.key_env, flavour.api_key)
    made = flavour.provider_class(flavour.settings(upstream.url))
    yield made
    await made.aclose()


async def ask(provider: Provider, **fields: Any) -> list[ProviderEvent]:
    return [event async for event in provider.stream(ProviderRequest(HELLO, **fields))]


async def failure(provider: Provider, **fields: Any) -> TokenwireError:
    with pytest.raises(TokenwireError) as caught:
        await ask(provider, **fields)
    return caught.value


# -- answers --------------------------------------------------------------------


async def test_text_deltas_and_usage_pass_through_exactly(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    # Anthropic: message_start reports output_tokens 1; message_delta's cumulative 4 is
    # the total.
    upstream.reply = flavour.answer(["Hel", "lo", ", wörld", " 👋"], 11, 4)

    events = await ask(provider)

    assert events == ["Hel", "lo", ", wörld", " 👋", Usage(prompt_tokens=11, completion_tokens=4)]


async def test_provider_options_are_defaults_that_the_request_overrides(
    upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.answer(["ok"], 1, 1)
    provider = flavour.provider_class(
        flavour.settings(upstream.url, options=flavour.option_defaults)
    )
    try:
        await ask(provider, **flavour.option_overrides)
    finally:
        await provider.aclose()

    body = (await upstream.exchange()).json()
    assert {key: body[key] for key in flavour.options_sent} == flavour.options_sent


# -- configuration --------------------------------------------------------------


def test_a_provider_without_a_model_fails_start_up_naming_the_key(
    flavour: ProviderFlavour,
) -> None:
    with pytest.raises(ConfigError, match=rf"providers\[0\] \({flavour.name}\): model: required"):
        build_provider(ProviderSettings(name=flavour.name, kind=flavour.kind), 0)


# -- upstream errors ------------------------------------------------------------


async def test_500_before_the_first_byte_is_a_provider_error_with_the_upstream_message(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    message, error_type = flavour.server_error
    upstream.reply = flavour.error(500, message, error_type)

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "500" in error.message
    assert message in error.message
    assert f"(500): {message}" in error.message


async def test_429_is_rate_limited_with_retry_after_from_the_header(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    message, error_type, seconds, says = flavour.rate_limit_error
    upstream.reply = flavour.error(429, message, error_type, {"retry-after": seconds})

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == float(seconds)
    assert says in error.message


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_a_provider_auth_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour, status: int
) -> None:
    upstream.reply = flavour.error(
        status, flavour.auth_error_message, flavour.auth_error_types[status]
    )

    error = await failure(provider)

    assert isinstance(error, ProviderAuthError)
    assert flavour.auth_error_message in error.message


async def test_400_is_a_provider_error_carrying_the_upstream_message(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    message, error_type = flavour.bad_request_error
    upstream.reply = flavour.error(400, message, error_type)

    error = await failure(provider)

    # The request's fault, not the provider's: not retried, not held against its health.
    assert type(error) is UpstreamRejected
    assert error.error_type == "provider_error"
    assert not error.retryable
    assert not error.counts_against_provider
    assert f"(400): {message}" in error.message


async def test_a_5xx_is_retryable_and_held_against_the_provider(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.error(503, "overloaded", "overloaded_error")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert error.retryable
    assert error.counts_against_provider


async def test_an_upstream_that_hangs_up_without_answering_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(hang_up=True)

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "connection" in error.message


async def test_an_unreachable_upstream_is_a_provider_error(
    monkeypatch: pytest.MonkeyPatch, flavour: ProviderFlavour
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(flavour.key_env, flavour.api_key)
    provider = flavour.provider_class(flavour.settings(f"http://127.0.0.1:{port}"))
    try:
        error = await failure(provider)
    finally:
        await provider.aclose()

    assert type(error) is ProviderError
    assert "upstream connection failed" in error.message


async def test_an_error_event_mid_stream_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.error_mid_stream(["partial"])

    error = await failure(provider)

    assert type(error) is ProviderError
    assert flavour.error_mid_stream_says in error.message


async def test_an_event_that_is_not_json_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    frames = flavour.frames(["partial"], 1, 1)[: flavour.first_text_frames]
    upstream.reply = Reply(frames=[*frames, flavour.not_json_frame])

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "not JSON" in error.message


async def test_an_event_that_is_not_a_json_object_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    frames = flavour.frames(["partial"], 1, 1)[: flavour.first_text_frames]
    upstream.reply = Reply(frames=[*frames, flavour.not_object_frame])

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "not a JSON object" in error.message


def test_an_sdk_timeout_is_a_request_timeout(flavour: ProviderFlavour) -> None:
    error = flavour.upstream_error(flavour.sdk_timeout(), flavour.api_key)

    assert isinstance(error, RequestTimeout)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert 28 <= (retry_after({"retry-after": later}) or 0) <= 30
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


# -- truncation -----------------------------------------------------------------


async def test_a_connection_dropped_mid_stream_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b", "c"], 3, 3, cut_after=flavour.cut_after, then="drop")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "upstream connection failed" in error.message


@pytest.mark.parametrize(
    ("flavour", "cut_after"),
    [
        pytest.param(f, cut, id=f"{f.kind}-{cut}")
        for f in (OPENAI, ANTHROPIC)
        for cut in f.clean_cuts
    ],
)
async def test_a_body_that_ends_cleanly_before_the_end_marker_is_a_provider_error(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour, cut_after: int
) -> None:
    # A proxy that ends the HTTP body properly: the SDK sees a normal end of stream,
    # mid-answer or (Anthropic) even right after message_delta.
    upstream.reply = flavour.answer(["a", "b", "c"], 3, 3, cut_after=cut_after, then="end")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "without its end marker" in error.message


# -- cancellation ---------------------------------------------------------------


async def test_aclose_of_the_stream_closes_the_upstream_connection_at_once(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    # An upstream answer of 10 s
    upstream.reply = flavour.answer(["tick"] * 1000, 3, 1000, frame_delay=0.01)
    stream = provider.stream(ProviderRequest(HELLO))
    assert await anext(stream) == "tick"

    await stream.aclose()

    # The connection closed long before the answer's end, and nothing came after
    exchange = await upstream.exchange()
    await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)
    sent = exchange.frames_sent
    await asyncio.sleep(0.05)
    assert exchange.frames_sent == sent < 1000


async def test_cancelling_a_consumer_waiting_on_a_silent_upstream_closes_it_at_once(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b"], 3, 2, cut_after=flavour.stall_after, then="stall")
    first = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(provider.stream(ProviderRequest(HELLO))) as events:
            async for _ in events:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), AT_ONCE)

    # The upstream stalls for ever: only the cancel can close the connection
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    exchange = await upstream.exchange()
    await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)


async def test_aclose_of_the_provider_closes_its_pooled_connections(
    upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.answer(["ok"], 1, 1)
    provider = flavour.provider_class(flavour.settings(upstream.url))
    await ask(provider)
    exchange = await upstream.exchange()
    assert not exchange.client_closed.is_set()

    await provider.aclose()

    await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)


# -- secrets --------------------------------------------------------------------


async def test_the_api_key_never_appears_in_an_error_message(
    provider: Provider, upstream: ScriptedUpstream, flavour: ProviderFlavour
) -> None:
    upstream.reply = flavour.error(
        401, flavour.key_leak_message.format(key=flavour.api_key), flavour.key_leak_error_type
    )

    error = await failure(provider)

    assert flavour.api_key not in error.message
    assert "CRET" not in error.message
    assert flavour.key_leak_says in error.message
