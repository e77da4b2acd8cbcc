"""Anthropic Messages (`POST /v1/messages`) end to end: the official SDK against a real
server, and raw HTTP clients that hang up, whose requests must be cancelled at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.support.server import (
    RunningServer,
    gateway_with,
    running_server,
    simulated_settings,
)
from tests.support.waiting import eventually
from tokenwire.core.provider import ProviderEvent, ProviderRequest, Usage, estimate_tokens
from tokenwire.protocol.errors import ProviderError, RateLimited

PROMPT = [{"role": "user", "content": "Tell me about streaming."}]
# The simulated provider answers 60 deltas; 2 ms apart keeps these tests quick.
FAST = simulated_settings(
    providers=[{"name": "simulated", "kind": "simulated", "options": {"delay_ms": 2}}]
)
NO_RETRIES = simulated_settings(routing={"max_retries": 0})


class ScriptedProvider:
    """A provider double: `deltas` words `delay` apart after `first_delay`, then a
    failure (`fail_with` after `fail_after` deltas) or usage; records when its stream
    was closed, as `WatchedProvider` does."""

    kind = "simulated"
    model = "scripted-1"

    def __init__(
        self,
        name: str = "scripted",
        *,
        deltas: int = 200,
        delay: float = 0.05,
        first_delay: float = 0.0,
        fail_after: int | None = None,
        fail_with: ProviderError | None = None,
    ) -> None:
        self.name = name
        self.deltas = deltas
        self.delay = delay
        self.first_delay = first_delay
        self.fail_after = fail_after
        self.fail_with = fail_with
        self.started = asyncio.Event()
        self.deltas_sent = 0
        self.closed_at: list[float] = []

    def readiness(self) -> str | None:
        return None

    def validate(self, request: ProviderRequest) -> None:
        return None

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return self.deltas

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.started.set()
        try:
            await asyncio.sleep(self.first_delay)
            for index in range(self.deltas):
                if self.fail_with is not None and index == (self.fail_after or 0):
                    raise self.fail_with
                if index:
                    await asyncio.sleep(self.delay)
                self.deltas_sent += 1
                yield f" w{index}"
            yield Usage(estimate_tokens(request.prompt_text), self.deltas)
        finally:
            self.closed_at.append(time.monotonic())

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def sdk(server: RunningServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # No retries: a 429 or 5xx must reach the test as the SDK's exception.
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)
    async with client:
        yield client


async def stats(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(server.url + "/api/streaming/stats")).json()
    return body


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "scripted", "max_tokens": 1000, "messages": PROMPT, **fields}


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
    provider = ScriptedProvider(fail_with=RateLimited("slow down", retry_after=3))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model="scripted", max_tokens=50, messages=PROMPT)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert "slow down" in caught.value.body["error"]["message"]


async def test_a_provider_failing_midway_is_a_server_error_when_not_streaming() -> None:
    provider = ScriptedProvider(delay=0.001, fail_after=2, fail_with=ProviderError("boom"))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model="scripted", max_tokens=50, messages=PROMPT)
    assert caught.value.status_code == 502
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


async def test_a_provider_failing_midway_is_an_error_event_in_a_stream() -> None:
    provider = ScriptedProvider(delay=0.001, fail_after=2, fail_with=ProviderError("boom"))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    texts: list[str] = []
    async with running_server(gateway=gateway) as server, sdk(server) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(
                model="scripted", max_tokens=50, messages=PROMPT
            ) as stream:
                async for text in stream.text_stream:
                    texts.append(text)
    assert texts == [" w0", " w1"]
    # The SDK raises the base class: the response's status is the stream's 200.
    assert type(caught.value) is anthropic.APIStatusError
    assert caught.value.status_code == 200
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


async def test_a_rate_limit_after_the_stream_started_is_an_error_event() -> None:
    provider = ScriptedProvider(fail_with=RateLimited("slow down", retry_after=3))
    gateway = gateway_with(provider, settings=NO_RETRIES)
    async with running_server(gateway=gateway) as server, httpx.AsyncClient() as http:
        response = await http.post(server.url + "/v1/messages", json=body(stream=True))
    assert response.status_code == 200
    frames = [f for f in response.text.split("\n\n") if f]
    assert [f.split("\n")[0] for f in frames] == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: error",
    ]
    error = json.loads(frames[-1].split("\n")[1].removeprefix("data: "))
    assert error == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


# -- clients that go away ----------------------------------------------------------------


async def closed_soon_and_counted(
    server: RunningServer, provider: ScriptedProvider, hung_up: float, seen: int
) -> None:
    """The provider's stream closed within a second of the hang-up, the request ended
    as cancelled, and what was streamed before is counted."""
    await eventually(lambda: provider.closed_at, timeout=3)
    assert provider.closed_at[0] - hung_up < 1.0
    assert provider.deltas_sent < provider.deltas

    async def cancelled_once() -> dict[str, Any]:
        while True:
            numbers = await stats(server)
            if numbers["streams"]["by_status"]["cancelled"] == 1:
                return numbers
            await asyncio.sleep(0.01)

    numbers = await asyncio.wait_for(cancelled_once(), 3)
    assert numbers["streams"]["by_status"]["completed"] == 0
    counted = numbers["providers"][provider.name]
    assert counted["cancelled"] == 1
    assert seen <= counted["completion_tokens"] <= provider.deltas_sent


async def test_a_stream_whose_client_leaves_after_the_first_delta_is_cancelled() -> None:
    provider = ScriptedProvider(delay=0.05)
    async with running_server(gateway=gateway_with(provider)) as server:
        seen = 0
        async with (
            httpx.AsyncClient() as http,
            http.stream("POST", server.url + "/v1/messages", json=body(stream=True)) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "event: content_block_delta":
                    seen += 1
                if seen == 3:
                    break
        hung_up = time.monotonic()
        await closed_soon_and_counted(server, provider, hung_up, seen)


async def test_a_stream_whose_client_leaves_before_the_first_token_is_cancelled() -> None:
    provider = ScriptedProvider(first_delay=30)
    async with running_server(gateway=gateway_with(provider)) as server:
        async with (
            httpx.AsyncClient() as http,
            http.stream("POST", server.url + "/v1/messages", json=body(stream=True)) as response,
        ):
            async for line in response.aiter_lines():
                if line == "event: ping":
                    break
        hung_up = time.monotonic()
        await closed_soon_and_counted(server, provider, hung_up, 0)
        assert provider.deltas_sent == 0


async def test_a_waiting_client_that_leaves_cancels_its_request() -> None:
    provider = ScriptedProvider(delay=0.05)
    async with running_server(gateway=gateway_with(provider)) as server:
        async with httpx.AsyncClient() as http:
            waiting = asyncio.create_task(http.post(server.url + "/v1/messages", json=body()))
            await eventually(lambda: provider.deltas_sent >= 3, timeout=5)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        hung_up = time.monotonic()
        await closed_soon_and_counted(server, provider, hung_up, 3)
