"""The OpenAI provider against a fake Chat Completions upstream on a loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import openai
import pytest

from tests.fakes.openai_upstream import (
    Reply,
    ScriptedUpstream,
    chat_frames,
    openai_answer,
    openai_error,
)
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.protocol.messages import ChatMessage
from tokenwire.providers.base import ProviderEvent, ProviderRequest, Usage
from tokenwire.providers.openai_chat import OpenAIProvider, upstream_error
from tokenwire.providers.registry import build_provider
from tokenwire.providers.upstream import retry_after
from tokenwire.settings import ConfigError, ProviderSettings

KEY_ENV = "TOKENWIRE_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdefSECRET"
HELLO = (ChatMessage(role="user", content="hello"),)


def settings(url: str, **fields: Any) -> ProviderSettings:
    return ProviderSettings(
        name="oa", kind="openai", model="m", base_url=url + "/v1", api_key_env=KEY_ENV, **fields
    )


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def provider(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OpenAIProvider]:
    monkeypatch.setenv(KEY_ENV, KEY)
    made = OpenAIProvider(settings(upstream.url))
    yield made
    await made.aclose()


async def ask(provider: OpenAIProvider, **fields: Any) -> list[ProviderEvent]:
    return [event async for event in provider.stream(ProviderRequest(HELLO, **fields))]


async def failure(provider: OpenAIProvider, **fields: Any) -> TokenwireError:
    with pytest.raises(TokenwireError) as caught:
        await ask(provider, **fields)
    return caught.value


# -- answers --------------------------------------------------------------------


async def test_text_deltas_and_usage_pass_through_exactly(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["Hel", "lo", ", wörld", " 👋"], 11, 4)

    events = await ask(provider)

    assert events == ["Hel", "lo", ", wörld", " 👋", Usage(prompt_tokens=11, completion_tokens=4)]


async def test_the_request_asks_for_a_stream_with_usage_and_carries_the_conversation(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    messages = (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content="hello"),
        ChatMessage(role="user", content="again"),
    )

    [_ async for _ in provider.stream(ProviderRequest(messages, max_tokens=7, temperature=0.2))]

    exchange = await upstream.exchange()
    assert (exchange.method, exchange.path) == ("POST", "/v1/chat/completions")
    assert exchange.headers["authorization"] == f"Bearer {KEY}"
    assert exchange.json() == {
        "model": "m",
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 7,
        "temperature": 0.2,
    }


async def test_the_request_model_and_options_go_upstream(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    options = {"top_p": 0.5, "stop": ["\n\n"], "seed": 7, "presence_penalty": -1}

    await ask(provider, model="other-model", options=options)

    body = (await upstream.exchange()).json()
    assert body["model"] == "other-model"
    assert {key: body[key] for key in options} == options


async def test_provider_options_are_defaults_that_the_request_overrides(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    defaults = {"temperature": 0.9, "max_tokens": 50, "seed": 1, "top_p": 0.3}
    provider = OpenAIProvider(settings(upstream.url, options=defaults))
    try:
        await ask(provider, temperature=0.0, options={"seed": 2})
    finally:
        await provider.aclose()

    body = (await upstream.exchange()).json()
    assert (body["temperature"], body["max_tokens"], body["seed"], body["top_p"]) == (
        0.0,
        50,
        2,
        0.3,
    )


# -- configuration and validation -----------------------------------------------


def test_a_provider_without_a_model_fails_start_up_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\] \(oa\): model: required"):
        build_provider(ProviderSettings(name="oa", kind="openai"), 0)


def test_unknown_provider_options_fail_start_up() -> None:
    with pytest.raises(ConfigError, match=r"options\.temprature: unknown key"):
        build_provider(
            ProviderSettings(name="oa", kind="openai", model="m", options={"temprature": 1}), 0
        )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"logit_bias": {}}, "logit_bias"),
        ({"top_p": "0.5"}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": True}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
    ],
)
def test_a_bad_request_option_is_an_invalid_request_naming_the_key(
    provider: OpenAIProvider, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest, match=rf"config\.options\.{named}"):
        provider.validate(ProviderRequest(HELLO, options=options))


def test_no_options_and_the_documented_ones_are_valid(provider: OpenAIProvider) -> None:
    provider.validate(ProviderRequest(HELLO))
    provider.validate(ProviderRequest(HELLO, options={"stop": "END", "frequency_penalty": 0.5}))


# -- upstream errors ------------------------------------------------------------


async def test_500_before_the_first_byte_is_a_provider_error_with_the_upstream_message(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(500, "The server had an error", "server_error")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "500" in error.message
    assert "The server had an error" in error.message


async def test_429_is_rate_limited_with_retry_after_from_the_header(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(
        429, "Rate limit reached for requests", "requests", {"retry-after": "7"}
    )

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert "Rate limit reached" in error.message


async def test_429_without_retry_after_is_rate_limited_without_a_delay(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(429, "You exceeded your current quota", "insufficient_quota")

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after is None


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_a_provider_auth_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream, status: int
) -> None:
    upstream.reply = openai_error(status, "Invalid authentication", "invalid_request_error")

    error = await failure(provider)

    assert isinstance(error, ProviderAuthError)
    assert "Invalid authentication" in error.message


async def test_400_is_a_provider_error_carrying_the_upstream_message(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(
        400, "This model's maximum context length is 8192 tokens", "invalid_request_error"
    )

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "(400): This model's maximum context length is 8192 tokens" in error.message


async def test_an_upstream_that_hangs_up_without_answering_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
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
    provider = OpenAIProvider(settings(f"http://127.0.0.1:{port}"))
    try:
        error = await failure(provider)
    finally:
        await provider.aclose()

    assert type(error) is ProviderError
    assert "upstream connection failed" in error.message


async def test_an_error_object_in_the_stream_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    frames = chat_frames(["partial"], 1, 1)[:2]
    frames.append(
        b'data: {"error":{"message":"The model is overloaded","type":"server_error"}}\n\n'
    )
    upstream.reply = Reply(frames=frames)

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "The model is overloaded" in error.message


async def test_an_event_that_is_not_json_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(frames=[*chat_frames(["partial"], 1, 1)[:2], b"data: {not json\n\n"])

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "not JSON" in error.message


def test_an_sdk_timeout_is_a_request_timeout() -> None:
    request = httpx2.Request("POST", "http://upstream.invalid/v1/chat/completions")

    error = upstream_error(openai.APITimeoutError(request=request), KEY)

    assert isinstance(error, RequestTimeout)


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert retry_after({"retry-after": "1.5"}) == 1.5
    assert 28 <= (retry_after({"retry-after": later}) or 0) <= 30
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


# -- truncation -----------------------------------------------------------------


async def test_a_connection_dropped_mid_stream_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["a", "b", "c"], 3, 3, cut_after=3, then="drop")

    error = await failure(provider)

    assert type(error) is ProviderError


async def test_a_body_that_ends_cleanly_before_finish_reason_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # A proxy that ends the HTTP body properly: the SDK sees a normal end of stream.
    upstream.reply = openai_answer(["a", "b", "c"], 3, 3, cut_after=3, then="end")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "without its end marker" in error.message


async def test_a_stream_that_ends_before_its_usage_chunk_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # Role chunk, one delta, the finish_reason chunk; then the body ends.
    upstream.reply = openai_answer(["a"], 3, 1, cut_after=3, then="end")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "usage" in error.message


# -- cancellation ---------------------------------------------------------------


async def test_aclose_of_the_stream_closes_the_upstream_connection_within_100ms(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["tick"] * 1000, 3, 1000, frame_delay=0.01)
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
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["a", "b"], 3, 2, cut_after=2, then="stall")
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
    upstream.reply = openai_answer(["ok"], 1, 1)
    provider = OpenAIProvider(settings(upstream.url))
    await ask(provider)
    exchange = await upstream.exchange()
    assert not exchange.client_closed.is_set()

    await provider.aclose()

    await asyncio.wait_for(exchange.client_closed.wait(), 1.0)


# -- secrets --------------------------------------------------------------------


async def test_the_api_key_never_appears_in_an_error_message(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(
        401,
        f"Incorrect API key provided: {KEY}. Also known as sk-test-****CRET.",
        "invalid_request_error",
    )

    error = await failure(provider)

    assert KEY not in error.message
    assert "CRET" not in error.message
    assert "Incorrect API key provided" in error.message
