"""The Anthropic provider against a fake Messages upstream on a loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from tests.fakes.anthropic_upstream import (
    anthropic_answer,
)
from tests.fakes.openai_upstream import ScriptedUpstream
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest
from tokenwire.protocol.errors import (
    InvalidRequest,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.providers.anthropic_messages import AnthropicProvider, upstream_error
from tokenwire.settings import ProviderSettings

KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-api03-0123456789abcdefSECRET"
HELLO = (Message(role="user", content="hello"),)


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
    provider: AnthropicProvider, messages: tuple[Message, ...] = HELLO, **fields: Any
) -> list[ProviderEvent]:
    return [event async for event in provider.stream(ProviderRequest(messages, **fields))]


async def failure(provider: AnthropicProvider, **fields: Any) -> TokenwireError:
    with pytest.raises(TokenwireError) as caught:
        await ask(provider, **fields)
    return caught.value


# -- answers --------------------------------------------------------------------


async def test_system_messages_go_to_the_system_parameter(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    messages = (
        Message(role="system", content="be brief"),
        Message(role="system", content="be kind"),
        Message(role="user", content="hi"),
        Message(role="assistant", content="hello"),
        Message(role="user", content="again"),
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


# -- configuration and validation -----------------------------------------------


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
        provider.validate(ProviderRequest((Message(role="system", content="rules"),)))


# -- upstream errors ------------------------------------------------------------


def test_a_read_timeout_met_mid_stream_is_a_request_timeout() -> None:
    # Met mid-stream, a read timeout comes through the SDK unwrapped.
    raised = httpx2.ReadTimeout("", request=httpx2.Request("POST", "http://upstream.invalid/"))

    assert isinstance(upstream_error(raised, KEY), RequestTimeout)
