"""The bedrock provider against a fake Bedrock runtime on a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import bedrock_eventstream as es
from tests.fakes.bedrock_server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    FakeBedrock,
    Reply,
    running_fake_bedrock,
)
from tests.support.waiting import AT_ONCE
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.protocol.errors import (
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    RateLimited,
    RequestTimeout,
)
from tokenwire.providers.bedrock import END_MARKER_MISSING, BedrockProvider
from tokenwire.providers.registry import build_provider
from tokenwire.settings import ConfigError, ProviderSettings

MODEL = "anthropic.claude-test"


# Every test here runs with fake AWS keys in the environment (see conftest.py).
pytestmark = pytest.mark.usefixtures("aws_credentials")


@pytest.fixture
async def provider(fake: FakeBedrock) -> AsyncIterator[BedrockProvider]:
    async with _provider(fake.url) as bedrock:
        yield bedrock


@contextlib.asynccontextmanager
async def _provider(base_url: str, **options: Any) -> AsyncIterator[BedrockProvider]:
    bedrock = BedrockProvider(
        ProviderSettings(
            name="br",
            kind="bedrock",
            model=MODEL,
            base_url=base_url,
            options={"region": "us-east-1", **options},
        )
    )
    try:
        yield bedrock
    finally:
        await bedrock.aclose()


def _request(prompt: str = "hello", **fields: Any) -> ProviderRequest:
    return ProviderRequest(messages=(Message(role="user", content=prompt),), **fields)


async def _collect(
    provider: BedrockProvider,
    request: ProviderRequest,
    into: list[ProviderEvent] | None = None,
) -> list[ProviderEvent]:
    """Consume a stream the way the core does; `into` keeps what came before a failure."""
    received = [] if into is None else into
    async with contextlib.aclosing(provider.stream(request)) as events:
        async for event in events:
            received.append(event)
    return received


async def _closed_within(fake: FakeBedrock, started: float, limit: float) -> float:
    connection = fake.requests[-1].connection
    await asyncio.wait_for(connection.closed.wait(), AT_ONCE)
    assert connection.closed_by_client
    assert connection.closed_at is not None
    elapsed = connection.closed_at - started
    assert elapsed < limit
    return elapsed


# -- construction and validation ------------------------------------------------


def test_a_bedrock_provider_without_a_model_fails_start_up_naming_the_provider() -> None:
    with pytest.raises(ConfigError, match=r"providers\[0\] \(br\): model"):
        build_provider(ProviderSettings(name="br", kind="bedrock"), 0)


def test_a_named_aws_profile_that_does_not_exist_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="no-such-profile"):
        BedrockProvider(
            ProviderSettings(
                name="br", kind="bedrock", model=MODEL, options={"profile": "no-such-profile"}
            )
        )


def test_an_unknown_provider_option_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="regoin"):
        BedrockProvider(
            ProviderSettings(name="br", kind="bedrock", model=MODEL, options={"regoin": "x"})
        )


def test_the_documented_request_options_are_accepted(provider: BedrockProvider) -> None:
    provider.validate(_request(options={"top_p": 0.5, "stop_sequences": ["END"]}))


def test_an_unknown_request_option_is_an_invalid_request_naming_the_key(
    provider: BedrockProvider,
) -> None:
    with pytest.raises(InvalidRequest, match="top_n"):
        provider.validate(_request(options={"top_n": 5}))


def test_a_request_option_of_the_wrong_type_is_an_invalid_request(
    provider: BedrockProvider,
) -> None:
    with pytest.raises(InvalidRequest, match="top_p"):
        provider.validate(_request(options={"top_p": "high"}))


# -- the request on the wire ------------------------------------------------------


async def test_the_request_goes_to_converse_stream_for_the_configured_model(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    await _collect(provider, _request())

    [request] = fake.requests
    assert request.method == "POST"
    assert request.path == f"/model/{MODEL}/converse-stream"


async def test_the_request_is_signed_with_credentials_from_the_environment(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    await _collect(provider, _request())

    authorization = fake.requests[0].headers["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={FAKE_ACCESS_KEY_ID}/")
    assert "/us-east-1/bedrock/aws4_request" in authorization


async def test_system_messages_go_to_system_and_turns_alternate(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    messages = (
        Message(role="system", content="be brief"),
        Message(role="user", content="one"),
        Message(role="user", content="two"),
        Message(role="assistant", content="three"),
        Message(role="user", content="four"),
    )

    await _collect(provider, ProviderRequest(messages=messages))

    body = fake.requests[0].body
    assert body["system"] == [{"text": "be brief"}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
        {"role": "assistant", "content": [{"text": "three"}]},
        {"role": "user", "content": [{"text": "four"}]},
    ]


async def test_inference_settings_come_from_the_request_over_provider_defaults(
    fake: FakeBedrock,
) -> None:
    async with _provider(fake.url, max_tokens=100, temperature=0.2, top_p=0.9) as bedrock:
        request = _request(max_tokens=7, options={"stop_sequences": ["END"]})
        await _collect(bedrock, request)

    assert fake.requests[0].body["inferenceConfig"] == {
        "maxTokens": 7,
        "temperature": 0.2,
        "topP": 0.9,
        "stopSequences": ["END"],
    }


async def test_top_k_goes_in_the_additional_model_request_fields(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    await _collect(provider, _request(options={"top_k": 5}))

    body = fake.requests[0].body
    assert body["additionalModelRequestFields"] == {"top_k": 5}
    assert "topK" not in body.get("inferenceConfig", {})


async def test_a_request_model_overrides_the_configured_model(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    await _collect(provider, _request(model="meta.llama-test"))

    assert fake.requests[0].model_id == "meta.llama-test"


# -- the answer -------------------------------------------------------------------


async def test_text_deltas_and_usage_pass_through_exactly(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.answer(["Hel", "lo, ", "wörld ", "✓"], input_tokens=11, output_tokens=4))

    events = await _collect(provider, _request())

    assert events == ["Hel", "lo, ", "wörld ", "✓", Usage(prompt_tokens=11, completion_tokens=4)]


async def test_events_split_across_reads_are_reassembled(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.answer(["a", "b"], input_tokens=1, output_tokens=2, split_events=True))

    assert await _collect(provider, _request()) == ["a", "b", Usage(1, 2)]


async def test_sequential_streams_reuse_one_client_and_connection(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    await _collect(provider, _request())
    await _collect(provider, _request())

    assert len(fake.requests) == 2
    assert len(fake.connections) == 1


# -- failures ---------------------------------------------------------------------


async def test_a_500_before_the_stream_is_a_provider_error_tried_only_once(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.error(500, "InternalServerException", "the model fell over"))

    with pytest.raises(ProviderError, match="the model fell over") as caught:
        await _collect(provider, _request())

    assert type(caught.value) is ProviderError
    assert len(fake.requests) == 1


async def test_a_429_throttling_is_rate_limited_with_its_retry_after(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.error(429, "ThrottlingException", "Too many requests", {"Retry-After": "3"}))

    with pytest.raises(RateLimited, match="Too many requests") as caught:
        await _collect(provider, _request())

    assert caught.value.retry_after == 3.0
    assert len(fake.requests) == 1


async def test_a_403_access_denied_is_a_provider_auth_error(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.error(403, "AccessDeniedException", "You don't have access to the model"))

    with pytest.raises(ProviderAuthError, match="have access to the model"):
        await _collect(provider, _request())


async def test_an_unrecognized_client_is_a_provider_auth_error(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply.error(403, "UnrecognizedClientException", "The security token is invalid"))

    with pytest.raises(ProviderAuthError):
        await _collect(provider, _request())


async def test_an_in_stream_throttling_exception_is_rate_limited(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(
        Reply(
            events=[
                es.message_start(),
                es.text_delta("partial"),
                es.exception_event("throttlingException", "slow down"),
            ]
        )
    )

    with pytest.raises(RateLimited, match="slow down"):
        await _collect(provider, _request())


@pytest.mark.parametrize(
    "exception_type",
    [
        "modelStreamErrorException",
        "internalServerException",
        "serviceUnavailableException",
        "validationException",
    ],
)
async def test_other_in_stream_exceptions_are_provider_errors(
    fake: FakeBedrock, provider: BedrockProvider, exception_type: str
) -> None:
    fake.script(Reply(events=[es.message_start(), es.exception_event(exception_type, "it broke")]))

    with pytest.raises(ProviderError, match="it broke") as caught:
        await _collect(provider, _request())

    assert type(caught.value) is ProviderError
    assert exception_type in caught.value.message


async def test_a_connection_dropped_mid_stream_is_a_provider_error_not_an_answer(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("half an ")], then="drop"))
    received: list[ProviderEvent] = []

    with pytest.raises(ProviderError, match=END_MARKER_MISSING):
        await _collect(provider, _request(), into=received)

    assert received == ["half an "]


async def test_a_cleanly_framed_stream_without_message_stop_is_a_provider_error(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("half"), es.content_block_stop()]))

    with pytest.raises(ProviderError, match=END_MARKER_MISSING):
        await _collect(provider, _request())


async def test_a_stream_silent_past_the_read_timeout_is_a_request_timeout(
    fake: FakeBedrock,
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("a")], then="stall"))

    async with _provider(fake.url, read_timeout=0.2) as bedrock:
        with pytest.raises(RequestTimeout):
            await _collect(bedrock, _request())


async def test_an_unreachable_endpoint_is_a_provider_error() -> None:
    async with running_fake_bedrock() as gone:
        url = gone.url
    async with _provider(url) as bedrock:
        with pytest.raises(ProviderError, match="connect"):
            await _collect(bedrock, _request())


async def test_the_aws_secret_never_reaches_logs_or_error_messages(
    fake: FakeBedrock, provider: BedrockProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script(
        Reply.answer(["ok"], input_tokens=1, output_tokens=1),
        Reply.error(403, "AccessDeniedException", "denied"),
    )

    await _collect(provider, _request())
    with pytest.raises(ProviderAuthError) as caught:
        await _collect(provider, _request())

    assert caplog.records, "debug logging should have captured botocore's records"
    assert FAKE_SECRET_ACCESS_KEY not in caplog.text
    assert FAKE_SECRET_ACCESS_KEY not in str(caught.value)
    assert FAKE_SECRET_ACCESS_KEY not in repr(caught.value.__cause__)


# -- closing early ----------------------------------------------------------------


async def test_aclose_mid_stream_closes_the_upstream_connection_within_100ms(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("first")], then="stall"))
    events = provider.stream(_request())
    assert await anext(events) == "first"

    started = time.monotonic()
    await events.aclose()

    await _closed_within(fake, started, 0.1)


async def test_cancelling_before_the_first_byte_closes_the_upstream_within_100ms(
    fake: FakeBedrock, provider: BedrockProvider
) -> None:
    fake.script(Reply(silent=True))
    consumer = asyncio.create_task(_collect(provider, _request()))
    await asyncio.wait_for(fake.request_arrived.wait(), AT_ONCE)

    started = time.monotonic()
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer

    await _closed_within(fake, started, 0.1)
