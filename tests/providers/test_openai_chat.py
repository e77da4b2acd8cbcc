"""The OpenAI provider against a fake Chat Completions upstream on a loopback socket,
alone and behind the real tokenwire server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
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
from tests.support.server import RunningServer, of_type, running_server, ws_client
from tokenwire.core.provider import (
    Message,
    ProviderEvent,
    ProviderRequest,
    Usage,
    estimate_tokens,
)
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
)
from tokenwire.providers.openai_chat import OpenAIProvider, upstream_error
from tokenwire.providers.registry import build_provider
from tokenwire.providers.upstream import END_MARKER_MISSING
from tokenwire.settings import ConfigError, ProviderSettings, load_settings

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
        ({"best_of": 2}, "best_of"),
        ({"logit_bias": {"50256": 101}}, "logit_bias"),
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


# -- the end of an answer: finish_reason, then usage if the server sends it ----------

ANSWER = ["The capital", " of France", " is Paris."]


async def test_a_usage_chunk_is_reported_exactly_and_not_as_an_estimate(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(frames=chat_frames(ANSWER, 13, 5))

    *deltas, usage = await ask(provider)

    assert deltas == ANSWER
    assert usage == Usage(prompt_tokens=13, completion_tokens=5, estimated=False)


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
async def test_a_finished_answer_without_a_usage_chunk_completes_with_an_estimate(
    provider: OpenAIProvider, upstream: ScriptedUpstream, finish_reason: str
) -> None:
    # As llama-cpp-python's server streams: finish_reason, then [DONE], never usage,
    # though the request asks for it.
    frames = chat_frames(ANSWER, 13, 5, include_usage=False, finish_reason=finish_reason)
    upstream.reply = Reply(frames=frames)

    *deltas, usage = await ask(provider)

    assert (await upstream.exchange()).json()["stream_options"] == {"include_usage": True}
    assert deltas == ANSWER
    assert usage == Usage(
        prompt_tokens=estimate_tokens("hello"),
        completion_tokens=len(ANSWER),  # fewer deltas than a quarter of the characters
        estimated=True,
        finish_reason=finish_reason,  # type: ignore[arg-type]
    )


async def test_an_estimate_never_exceeds_max_tokens_when_the_answer_reached_it(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # As llama.cpp's server streams 24 tokens of long words: a token a delta, no usage.
    words = [" capital"] * 24
    frames = chat_frames(words, 13, 24, include_usage=False, finish_reason="length")
    upstream.reply = Reply(frames=frames)

    *_, usage = await ask(provider, max_tokens=24)

    assert estimate_tokens("".join(words)) == 48  # what a character count would say
    assert usage == Usage(estimate_tokens("hello"), 24, estimated=True, finish_reason="length")


async def test_an_estimate_never_exceeds_a_quarter_of_the_characters_of_tiny_deltas(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # A server (or a proxy) that streams a character a delta: deltas are not tokens.
    upstream.reply = Reply(frames=chat_frames(list("Paris is big"), 13, 3, include_usage=False))

    *_, usage = await ask(provider, max_tokens=100)

    assert usage.completion_tokens == estimate_tokens("Paris is big") == 3


async def test_a_body_that_ends_after_finish_reason_but_before_usage_completes_with_an_estimate(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # Role chunk, one delta, the finish_reason chunk; then the body ends, usage unsent.
    upstream.reply = openai_answer(["a"], 3, 1, cut_after=3, then="end")

    events = await ask(provider)

    assert events == ["a", Usage(estimate_tokens("hello"), estimate_tokens("a"), estimated=True)]


@pytest.mark.parametrize(
    ("then", "says"),
    [("drop", "upstream connection failed"), ("end", f"{END_MARKER_MISSING} (no finish_reason)")],
)
async def test_an_answer_cut_before_its_finish_reason_is_still_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream, then: Literal["drop", "end"], says: str
) -> None:
    # No usage chunk either: the estimate is only for answers that finished.
    frames = chat_frames(ANSWER, 13, 5, include_usage=False)
    upstream.reply = Reply(frames=frames, cut_after=len(ANSWER), then=then)

    error = await failure(provider)

    assert type(error) is ProviderError
    assert says in error.message


# -- behind the gateway -----------------------------------------------------------


async def test_over_the_websocket_a_finished_answer_without_usage_completes_as_estimated(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    upstream.reply = Reply(frames=chat_frames(ANSWER, 13, 5, include_usage=False))

    async with gateway(upstream) as server, ws_client(server) as client:
        frames = await client.ask("hello", stream_config={"granularity": "token"})

    assert [f["data"]["token"] for f in of_type(frames, "token")] == ANSWER
    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["usage"]["estimated"] is True
    assert end["usage"]["completion_tokens"] == len(ANSWER)
    assert end["usage"]["prompt_tokens"] > 0


async def test_over_the_websocket_an_answer_dropped_before_finish_reason_is_a_provider_error(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    frames = chat_frames(ANSWER, 13, 5, include_usage=False)
    upstream.reply = Reply(frames=frames, cut_after=len(ANSWER), then="drop")

    async with gateway(upstream) as server, ws_client(server) as client:
        frames_out = await client.ask("hello")

    [error] = of_type(frames_out, "error")
    assert error["data"]["error_type"] == "provider_error"
    end = frames_out[-1]["data"]
    assert (end["status"], end["error_type"]) == ("error", "provider_error")


@contextlib.asynccontextmanager
async def gateway(upstream: ScriptedUpstream) -> AsyncIterator[RunningServer]:
    provider = {
        "name": "oa",
        "kind": "openai",
        "model": "m",
        "base_url": upstream.url + "/v1",
        "api_key_env": KEY_ENV,
    }
    async with running_server(load_settings(None, {"providers": [provider]})) as server:
        yield server


def sdk_timeout_caused_by(cause: Exception) -> openai.APITimeoutError:
    """What the SDK raises over its aiohttp transport: aiohttp's exception, mapped to an
    httpx2 one, under the SDK's own (as `raise ... from` chains them)."""
    mapped = httpx2.ReadTimeout(str(cause))
    mapped.__cause__ = cause
    error = openai.APITimeoutError(
        request=httpx2.Request("POST", "http://upstream.invalid/v1/chat/completions")
    )
    error.__cause__ = mapped
    return error


def test_a_read_timeout_over_aiohttp_is_a_request_timeout() -> None:
    error = upstream_error(sdk_timeout_caused_by(aiohttp.SocketTimeoutError("read")), KEY)

    assert isinstance(error, RequestTimeout)


def test_a_hang_up_the_sdk_calls_a_timeout_is_a_connection_failure() -> None:
    # The SDK's aiohttp transport maps every ClientConnectionError to ConnectTimeout.
    error = upstream_error(sdk_timeout_caused_by(aiohttp.ServerDisconnectedError()), KEY)

    assert type(error) is ProviderError
    assert "upstream connection failed: Server disconnected" in error.message
