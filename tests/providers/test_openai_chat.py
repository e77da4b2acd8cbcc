"""The OpenAI provider against a fake Chat Completions upstream on a loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.openai_upstream import (
    ScriptedUpstream,
    openai_answer,
    openai_error,
)
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderError,
    RateLimited,
    TokenwireError,
)
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.providers.registry import build_provider
from tokenwire.settings import ConfigError, ProviderSettings

KEY_ENV = "TOKENWIRE_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdefSECRET"
HELLO = (Message(role="user", content="hello"),)


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


async def test_the_request_asks_for_a_stream_with_usage_and_carries_the_conversation(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    messages = (
        Message(role="system", content="be brief"),
        Message(role="user", content="hi"),
        Message(role="assistant", content="hello"),
        Message(role="user", content="again"),
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


# -- configuration and validation -----------------------------------------------


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


async def test_429_without_retry_after_is_rate_limited_without_a_delay(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_error(429, "You exceeded your current quota", "insufficient_quota")

    error = await failure(provider)

    assert isinstance(error, RateLimited)
    assert error.retry_after is None


# -- truncation -----------------------------------------------------------------


async def test_a_stream_that_ends_before_its_usage_chunk_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # Role chunk, one delta, the finish_reason chunk; then the body ends.
    upstream.reply = openai_answer(["a"], 3, 1, cut_after=3, then="end")

    error = await failure(provider)

    assert type(error) is ProviderError
    assert "usage" in error.message
