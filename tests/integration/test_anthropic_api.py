"""Anthropic Messages (`POST /v1/messages`) end to end: the official SDK against a real
server, and raw HTTP clients that hang up, whose requests must be cancelled at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.providers import TroubledProvider, WatchedProvider
from tests.support.server import (
    RunningServer,
    gateway_with,
    running_server,
    simulated_settings,
)
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.protocol.errors import RateLimited

PROMPT = [{"role": "user", "content": "Tell me about streaming."}]
# The simulated provider answers 60 deltas; 2 ms apart keeps these tests quick.
FAST = simulated_settings(
    providers=[{"name": "simulated", "kind": "simulated", "options": {"delay_ms": 2}}]
)
NO_RETRIES = simulated_settings(routing={"max_retries": 0})
MIDWAY = "the upstream failed mid-answer"  # TroubledProvider's failure


@contextlib.asynccontextmanager
async def sdk(server: RunningServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # No retries: a 429 or 5xx must reach the test as the SDK's exception. A timeout of
    # our own also keeps the SDK from computing one from `max_tokens` (absent in one test).
    client = anthropic.AsyncAnthropic(
        base_url=server.url, api_key="unused", max_retries=0, timeout=30
    )
    async with client:
        yield client


async def stats(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(server.url + "/api/streaming/stats")).json()
    return body


async def read_into(texts: list[str], streaming: Any) -> None:
    """The text of an SDK stream helper's deltas, as they come."""
    async with streaming as stream:
        async for text in stream.text_stream:
            texts.append(text)


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1000, "messages": PROMPT, **fields}


# -- answers -------------------------------------------------------------------------


async def test_create_returns_the_text_usage_and_end_turn() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        message = await client.messages.create(
            model="simulated", max_tokens=1000, messages=PROMPT, system="Be brief."
        )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "simulated"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    [block] = message.content
    assert block.type == "text"
    assert len(block.text.split()) == 60
    assert message.usage.output_tokens == 60
    assert message.usage.input_tokens > 0


async def test_create_cut_by_max_tokens_says_max_tokens() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        message = await client.messages.create(model="simulated", max_tokens=7, messages=PROMPT)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 7
    assert len(message.content[0].text.split()) == 7


async def test_the_stream_helper_gives_the_deltas_and_the_same_message() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        whole = await client.messages.create(model="simulated", max_tokens=20, messages=PROMPT)
        async with client.messages.stream(
            model="simulated", max_tokens=20, messages=PROMPT
        ) as stream:
            deltas = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert len(deltas) == 20
    assert "".join(deltas) == whole.content[0].text
    assert final.content[0].type == "text"
    assert final.content[0].text == whole.content[0].text
    assert final.id.startswith("msg_")
    assert final.id != whole.id
    assert final.model == "simulated"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 20
    assert final.usage.input_tokens == whole.usage.input_tokens


async def test_the_raw_stream_names_every_event_as_anthropic_does() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        stream = await client.messages.create(
            model="simulated", max_tokens=3, messages=PROMPT, stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # `ping` is there too; the SDK skips it


async def test_auto_routes_to_a_provider() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        message = await client.messages.create(model="auto", max_tokens=5, messages=PROMPT)
    assert message.model == "simulated"
    assert message.usage.output_tokens == 5


# -- errors before an answer -----------------------------------------------------------


async def test_an_unknown_model_is_not_found() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.messages.create(model="claude-nope", max_tokens=5, messages=PROMPT)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": caught.value.body["error"]["message"]},
    }
    assert "claude-nope" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"messages": [{"role": "system", "content": "hi"}]}, "role"),
        ({"max_tokens": anthropic.omit}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"extra_body": {"top_k": 5}}, "top_k"),
        ({"extra_body": {"temperature": 1.5}}, "temperature"),
        ({"extra_body": {"frequency_penalty": 1}}, "unknown key"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"extra_body": {"metadata": {"user_id": json.loads("[" * 40 + "]" * 40)}}}, "deeper"),
    ],
)
async def test_a_bad_body_is_a_400_in_anthropic_s_shape(
    fields: dict[str, Any], complaint: str
) -> None:
    request: dict[str, Any] = {"model": "simulated", "max_tokens": 5, "messages": PROMPT}
    request.update(fields)
    async with running_server(FAST) as server, sdk(server) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**request)
    error = caught.value.body
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert complaint in error["error"]["message"]


async def test_nan_sent_raw_is_a_400_in_anthropic_s_shape() -> None:
    raw = (
        '{"model": "simulated", "max_tokens": 5, "temperature": NaN,'
        ' "messages": [{"role": "user", "content": "hi"}]}'
    )
    async with running_server(FAST) as server, httpx.AsyncClient() as http:
        response = await http.post(
            server.url + "/v1/messages",
            content=raw,
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "NaN" in error["error"]["message"]


async def test_a_temperature_in_range_and_a_list_of_blocks_are_taken() -> None:
    async with running_server(FAST) as server, sdk(server) as client:
        message = await client.messages.create(
            model="simulated",
            max_tokens=5,
            system=[{"type": "text", "text": "Be brief."}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ],
            stop_sequences=["never-a-word"],
            metadata={"user_id": "someone"},
            extra_body={"temperature": 0.5, "top_p": 0.9},
        )
    assert message.usage.output_tokens == 5


# -- provider failures -----------------------------------------------------------------


async def test_a_rate_limited_provider_is_a_rate_limit_error_with_retry_after() -> None:
    provider = TroubledProvider(before_first=RateLimited("slow down", retry_after=3))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model="troubled", max_tokens=50, messages=PROMPT)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert "slow down" in caught.value.body["error"]["message"]


async def test_a_provider_failing_midway_is_a_server_error_when_not_streaming() -> None:
    provider = TroubledProvider(fail_after=2)
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model="troubled", max_tokens=50, messages=PROMPT)
    assert caught.value.status_code == 502
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": MIDWAY}}


async def test_a_provider_failing_midway_is_an_error_event_in_a_stream() -> None:
    provider = TroubledProvider(fail_after=2)
    gateway = gateway_with(provider, settings=NO_RETRIES)
    texts: list[str] = []
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        streaming = client.messages.stream(model="troubled", max_tokens=50, messages=PROMPT)
        with pytest.raises(anthropic.APIStatusError) as caught:
            await read_into(texts, streaming)
    assert len(texts) == 2
    # The SDK raises the base class: the response's status is the stream's 200.
    assert type(caught.value) is anthropic.APIStatusError
    assert caught.value.status_code == 200
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": MIDWAY}}


async def test_a_rate_limit_before_any_text_is_a_429_even_when_streaming() -> None:
    # Nothing has been streamed yet, so the status can still say it, as Anthropic's does.
    provider = TroubledProvider(before_first=RateLimited("slow down", retry_after=3))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, httpx.AsyncClient() as http:
        response = await http.post(server.url + "/v1/messages", json=body("troubled", stream=True))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


# -- clients that go away ----------------------------------------------------------------


async def closed_soon_and_counted(
    server: RunningServer, provider: WatchedProvider, seen: int
) -> None:
    """The provider's stream closed after the hang-up (long before its own end: it would
    run for minutes), the request ended as cancelled, and what was streamed before is
    counted."""
    await asyncio.wait_for(provider.closed.wait(), AT_ONCE)

    async def cancelled_once() -> dict[str, Any]:
        while True:
            numbers = await stats(server)
            if numbers["streams"]["by_status"]["cancelled"] == 1:
                return numbers
            await asyncio.sleep(0.01)

    numbers = await asyncio.wait_for(cancelled_once(), AT_ONCE)
    assert numbers["streams"]["by_status"]["completed"] == 0
    counted = numbers["providers"][provider.name]
    assert counted["cancelled"] == 1
    assert seen <= counted["completion_tokens"] <= provider.deltas_sent


async def test_a_stream_whose_client_leaves_after_the_first_delta_is_cancelled() -> None:
    provider = WatchedProvider(tokens=5000, delay_ms=50)  # 250 s unless cancelled
    async with running_server(gateway=gateway_with(provider)) as server:
        seen = 0
        async with (
            httpx.AsyncClient() as http,
            http.stream(
                "POST", server.url + "/v1/messages", json=body("watched", stream=True)
            ) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "event: content_block_delta":
                    seen += 1
                if seen == 3:
                    break
        await closed_soon_and_counted(server, provider, seen)


async def test_a_stream_whose_client_leaves_before_the_first_token_is_cancelled() -> None:
    provider = TroubledProvider(wait_first=30)
    async with running_server(gateway=gateway_with(provider)) as server:
        async with httpx.AsyncClient() as http:
            call = asyncio.ensure_future(
                http.post(server.url + "/v1/messages", json=body("troubled", stream=True))
            )
            await eventually(lambda: provider.requests, timeout=5)
            call.cancel()  # the client hangs up while waiting for the first token
            with contextlib.suppress(asyncio.CancelledError):
                await call
        await closed_soon_and_counted(server, provider, 0)
        assert provider.deltas_sent == 0


async def test_a_waiting_client_that_leaves_cancels_its_request() -> None:
    provider = WatchedProvider(tokens=5000, delay_ms=50)
    async with running_server(gateway=gateway_with(provider)) as server:
        async with httpx.AsyncClient() as http:
            request = http.post(server.url + "/v1/messages", json=body("watched"))
            waiting = asyncio.create_task(request)
            await eventually(lambda: provider.deltas_sent >= 3, timeout=5)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        await closed_soon_and_counted(server, provider, 3)
