"""The Anthropic provider against a fake Messages upstream on a loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.fakes.anthropic_upstream import (
    anthropic_answer,
    anthropic_error,
    message_frames,
    overloaded_mid_stream,
)
from tests.fakes.openai_upstream import Reply, ScriptedUpstream
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.protocol.messages import ChatMessage
from tokenwire.providers.anthropic_messages import AnthropicProvider, upstream_error
from tokenwire.providers.base import ProviderEvent, ProviderRequest, Usage
from tokenwire.providers.registry import build_provider
from tokenwire.settings import ConfigError, ProviderSettings

KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-api03-0123456789abcdefSECRET"
HELLO = (ChatMessage(role="user", content="hello"),)


def settings(url: str, **fields: Any) -> ProviderSettings:
    return ProviderSettings(
        name="an", kind="anthropic", model="m", base_url=url, api_key_env=KEY_ENV, **fields
    )


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def provider(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AnthropicProvider]:
    monkeypatch.setenv(KEY_ENV, KEY)
    made = AnthropicProvider(settings(upstream.url))
    yield made
    await made.aclose()


async def ask(
    provider: AnthropicProvider, messages: tuple[ChatMessage, ...] = HELLO, **fields: Any
) -> list[ProviderEvent]:
    return [event async for event in provider.stream(ProviderRequest(messages, **fields))]


async def failure(provider: AnthropicProvider, **fields: Any) -> TokenwireError:
    with pytest.raises(TokenwireError) as caught:
        await ask(provider, **fields)
    return caught.value


# -- answers --------------------------------------------------------------------


async def test_text_deltas_and_usage_pass_through_exactly(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    # message_start reports output_tokens 1; message_delta's cumulative 4 is the total.
    upstream.reply = anthropic_answer(["Hel", "lo", ", wörld", " 👋"], 11, 4)

    events = await ask(provider)

    assert events == ["Hel", "lo", ", wörld", " 👋", Usage(prompt_tokens=11, completion_tokens=4)]


async def test_system_messages_go_to_the_system_parameter(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    messages = (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="system", content="be kind"),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="again"),
    )

    await ask(provider, messages)

    exchange = await upstream.exchange()
    assert (exchange.method, exchange.path) == ("POST", "/v1/messages")
    body = exchange.json()
    assert body["system"] == "be brief\n\nbe kind"
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]
    assert body["stream"] is True
    assert "temperature" not in body


async def test_max_tokens_defaults_to_1024_and_the_key_is_sent(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)

    await ask(provider)

    exchange = await upstream.exchange()
    assert exchange.json()["max_tokens"] == 1024
    assert "system" not in exchange.json()
    # SDK 2.14 sends an API key as a bearer token, not as x-api-key.
    assert exchange.headers["authorization"] == f"Bearer {KEY}"


async def test_temperature_model_and_options_go_in_the_body(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    options = {"top_p": 0.9, "top_k": 40, "stop_sequences": ["END"]}

    await ask(provider, model="other-model", max_tokens=64, temperature=0.25, options=options)

    body = (await upstream.exchange()).json()
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("other-model", 64, 0.25)
    assert {key: body[key] for key in options} == options


async def test_provider_options_are_defaults_that_the_request_overrides(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    defaults = {"temperature": 0.7, "max_tokens": 300, "top_k": 5}
    provider = AnthropicProvider(settings(upstream.url, options=defaults))
    try:
        await ask(provider, options={"top_k": 9})
    finally:
        await provider.aclose()

    body = (await upstream.exchange()).json()
    assert (body["temperature"], body["max_tokens"], body["top_k"]) == (0.7, 300, 9)


# -- configuration and validation -----------------------------------------------


def test_a_provider_without_a_model_fails_start_up_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\] \(an\): model: required"):
        build_provider(ProviderSettings(name="an", kind="anthropic"), 0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"presence_penalty": 1}, "presence_penalty"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": "high"}, "top_p"),
        ({"stop_sequences": "END"}, "stop_sequences"),
    ],
)
def test_a_bad_request_option_is_an_invalid_request_naming_the_key(
    provider: AnthropicProvider, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest, match=rf"config\.options\.{named}"):
        provider.validate(ProviderRequest(HELLO, options=options))


def test_a_temperature_above_1_is_an_invalid_request(provider: AnthropicProvider) -> None:
    with pytest.raises(InvalidRequest, match=r"config\.temperature"):
        provider.validate(ProviderRequest(HELLO, temperature=1.5))


def test_a_conversation_of_system_messages_only_is_an_invalid_request(
    provider: AnthropicProvider,
) -> None:
    with pytest.raises(InvalidRequest, match="user message"):
        provider.validate(ProviderRequest((ChatMessage(role="system", content="rules"),)))


# -- upstream errors ------------------------------------------------------------


async def test_500_before_the_first_byte_is_a_provider_error_with_the_upstream_message(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_error(500, "Internal server error", "api_error")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "(500): Internal server error" in error.message


async def test_429_is_rate_limited_with_retry_after_from_the_header(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_error(
        429,
        "Number of request tokens has exceeded your rate limit",
        "rate_limit_error",
        {"retry-after": "20"},
    )

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 20.0
    assert "exceeded your rate limit" in error.message


@pytest.mark.parametrize(
    ("status", "error_type"), [(401, "authentication_error"), (403, "permission_error")]
)
async def test_refused_credentials_are_a_provider_auth_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream, status: int, error_type: str
) -> None:
    upstream.reply = anthropic_error(status, "invalid x-api-key", error_type)

    error = await failure(provider)

    assert isinstance(error, ProviderAuthError)
    assert "invalid x-api-key" in error.message


async def test_400_is_a_provider_error_carrying_the_upstream_message(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_error(400, "prompt is too long", "invalid_request_error")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "(400): prompt is too long" in error.message


async def test_an_overloaded_error_event_mid_stream_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = overloaded_mid_stream(["partial"])

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "overloaded_error" in error.message


async def test_an_upstream_that_hangs_up_without_answering_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(hang_up=True)

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "connection" in error.message


async def test_an_unreachable_upstream_is_a_provider_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(KEY_ENV, KEY)
    provider = AnthropicProvider(settings(f"http://127.0.0.1:{port}"))
    try:
        error = await failure(provider)
    finally:
        await provider.aclose()

    assert type(error) is ProviderError
    assert "upstream connection failed" in error.message


async def test_an_event_that_is_not_json_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(
        frames=[
            *message_frames(["partial"], 1, 1)[:4],
            b"event: content_block_delta\ndata: {not json\n\n",
        ]
    )

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "not JSON" in error.message


@pytest.mark.parametrize(
    "raised",
    [
        anthropic.APITimeoutError(request=httpx2.Request("POST", "http://upstream.invalid/")),
        # Met mid-stream, a read timeout comes through the SDK unwrapped.
        httpx2.ReadTimeout("", request=httpx2.Request("POST", "http://upstream.invalid/")),
    ],
)
def test_an_sdk_timeout_is_a_request_timeout(raised: Exception) -> None:
    assert isinstance(upstream_error(raised, KEY), RequestTimeout)


# -- truncation -----------------------------------------------------------------


async def test_a_connection_dropped_mid_stream_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["a", "b", "c"], 3, 3, cut_after=4, then="drop")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "upstream connection failed" in error.message


@pytest.mark.parametrize("cut_after", [4, len(message_frames(["a", "b", "c"], 3, 3)) - 1])
async def test_a_body_that_ends_cleanly_before_message_stop_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream, cut_after: int
) -> None:
    # A proxy that ends the HTTP body properly: the SDK sees a normal end of stream,
    # mid-answer or even right after message_delta.
    upstream.reply = anthropic_answer(["a", "b", "c"], 3, 3, cut_after=cut_after, then="end")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "without its end marker" in error.message


# -- cancellation ---------------------------------------------------------------


async def test_aclose_of_the_stream_closes_the_upstream_connection_within_100ms(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["tick"] * 1000, 3, 1000, frame_delay=0.01)
    stream = provider.stream(ProviderRequest(HELLO))
    assert await anext(stream) == "tick"

    closing = time.monotonic()
    await stream.aclose()

    exchange = await upstream.exchange()
    await asyncio.wait_for(exchange.client_closed.wait(), 1.0)
    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - closing < 0.1
    sent = exchange.frames_sent
    await asyncio.sleep(0.05)
    assert exchange.frames_sent == sent < 1000


async def test_cancelling_a_consumer_waiting_on_a_silent_upstream_closes_it_within_100ms(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["a", "b"], 3, 2, cut_after=5, then="stall")
    first = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(provider.stream(ProviderRequest(HELLO))) as events:
            async for _ in events:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 1.0)
    await asyncio.sleep(0.02)

    cancelling = time.monotonic()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    exchange = await upstream.exchange()
    await asyncio.wait_for(exchange.client_closed.wait(), 1.0)
    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - cancelling < 0.1


async def test_aclose_of_the_provider_closes_its_pooled_connections(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    provider = AnthropicProvider(settings(upstream.url))
    await ask(provider)
    exchange = await upstream.exchange()
    assert not exchange.client_closed.is_set()

    await provider.aclose()

    await asyncio.wait_for(exchange.client_closed.wait(), 1.0)


# -- secrets --------------------------------------------------------------------


async def test_the_api_key_never_appears_in_an_error_message(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_error(
        401, f"invalid x-api-key {KEY} (sk-ant-****CRET)", "authentication_error"
    )

    error = await failure(provider)

    assert KEY not in error.message
    assert "CRET" not in error.message
    assert "invalid x-api-key" in error.message
