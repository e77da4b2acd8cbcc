"""The OpenAI dialects with the official `openai` SDK against a real server: Chat
Completions, the Responses API with background resume, models, errors, and clients
that go away."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.background import left_after, resumed_after
from tests.support.providers import TroubledProvider, WatchedProvider
from tests.support.server import RunningServer, gateway_with, running_server
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.protocol.errors import RateLimited

HI = [{"role": "user", "content": "hi"}]


@contextlib.asynccontextmanager
async def sdk(*providers: Any) -> AsyncIterator[tuple[RunningServer, openai.AsyncOpenAI]]:
    gateway = gateway_with(*providers) if providers else None
    async with running_server(gateway=gateway) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        try:
            yield server, client
        finally:
            await client.close()


async def stats(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(server.url + "/api/streaming/stats")).json()
    return body


async def collect(stream: Any, into: list[Any]) -> None:
    async for item in stream:
        into.append(item)


# -- Chat Completions ---------------------------------------------------------------


async def test_a_chat_completion_with_usage_and_finish_reason() -> None:
    async with sdk() as (_, client):
        whole = await client.chat.completions.create(model="auto", messages=HI)
        cut = await client.chat.completions.create(model="simulated", messages=HI, max_tokens=5)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert len(whole.choices[0].message.content.split()) == 60  # type: ignore[union-attr]
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 60
    assert whole.model == "simulated"
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 5


async def test_a_streamed_chat_completion_is_openai_s_wire_format() -> None:
    async with sdk() as (server, _), httpx.AsyncClient() as http:
        body = {
            "model": "simulated",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await http.post(server.url + "/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1] if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 60
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 60


async def test_the_sdk_streams_a_chat_completion_and_sees_usage_only_when_asked() -> None:
    async with sdk() as (_, client):
        without = [
            c
            async for c in await client.chat.completions.create(
                model="simulated", messages=HI, stream=True
            )
        ]
        with_usage = [
            c
            async for c in await client.chat.completions.create(
                model="simulated", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        ]
    assert all(c.usage is None for c in without)
    assert with_usage[-1].usage is not None
    assert with_usage[-1].usage.total_tokens == with_usage[-1].usage.prompt_tokens + 60


async def test_models_list_every_provider_and_auto() -> None:
    async with sdk(WatchedProvider("alpha"), WatchedProvider("beta")) as (_, client):
        models = await client.models.list()
        assert [m.id for m in models.data] == ["alpha", "beta", "auto"]
        answer = await client.chat.completions.create(model="beta", messages=HI)
    assert answer.model == "beta"


async def test_chat_errors_are_openai_s_so_the_sdk_raises_its_own_classes() -> None:
    limited = TroubledProvider("limited", before_first=RateLimited("slow down", retry_after=3))
    async with sdk(limited) as (server, client):
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(model="gpt-9", messages=HI)
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(
                model="auto", messages=[{"role": "tool", "content": "x"}]
            )
        assert "messages" in str(bad.value)
        with pytest.raises(openai.RateLimitError) as throttled:
            await client.chat.completions.create(model="limited", messages=HI)
        assert throttled.value.response.headers["retry-after"] == "3"
        async with httpx.AsyncClient() as http:
            for raw in (
                b'{"model": "auto", "temperature": NaN, "messages": []}',
                b'{"model": "auto", "messages": ' + b"[" * 40 + b"]" * 40 + b"}",
                b'{"model": "auto", "stop": ["a", "b", "c", "d", "e"], "messages": '
                b'[{"role": "user", "content": "hi"}]}',
            ):
                response = await http.post(
                    server.url + "/v1/chat/completions",
                    content=raw,
                    headers={"content-type": "application/json"},
                )
                assert response.status_code == 400
                assert response.json()["error"]["type"] == "invalid_request_error"


async def test_an_error_after_the_stream_started_makes_the_sdk_raise() -> None:
    async with sdk(TroubledProvider("flaky", fail_after=3)) as (_, client):
        stream = await client.chat.completions.create(model="flaky", messages=HI, stream=True)
        seen: list[Any] = []
        with pytest.raises(openai.APIError, match="mid-answer"):
            await collect(stream, seen)
    assert len(seen) >= 3


# -- clients that go away -------------------------------------------------------------


async def test_a_streaming_client_that_leaves_cancels_and_its_tokens_are_counted() -> None:
    provider = WatchedProvider()
    async with sdk(provider) as (server, _), httpx.AsyncClient() as http:
        body = {"model": "watched", "messages": HI, "stream": True}
        async with http.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
            lines = r.aiter_lines()
            contents = 0
            async for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    contents += 1
                if contents == 3:
                    break
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, 2)
        counted = (await stats(server))["providers"]["watched"]
    assert counted["cancelled"] == 1
    assert 3 <= counted["completion_tokens"] < 60


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_before_the_first_token_cancels_at_once(stream: bool) -> None:
    provider = TroubledProvider("slow", wait_first=30)
    async with sdk(provider) as (server, _), httpx.AsyncClient() as http:
        body = {"model": "slow", "messages": HI, "stream": stream}
        call = asyncio.ensure_future(http.post(server.url + "/v1/chat/completions", json=body))
        await eventually(lambda: provider.requests, 2)
        call.cancel()  # the client hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, 1)


WHOLE_ANSWER_CALLS = {
    "chat completions": ("/v1/chat/completions", {"model": "watched", "messages": HI}),
    "responses": ("/v1/responses", {"model": "watched", "input": "hi"}),
}


@pytest.mark.parametrize("dialect", WHOLE_ANSWER_CALLS)
async def test_a_client_waiting_for_a_whole_answer_that_leaves_cancels_it(dialect: str) -> None:
    path, body = WHOLE_ANSWER_CALLS[dialect]
    provider = WatchedProvider(tokens=5000, delay_ms=5)
    async with sdk(provider) as (server, _), httpx.AsyncClient() as http:
        call = asyncio.ensure_future(http.post(server.url + path, json=body))
        await eventually(lambda: provider.deltas_sent > 10, 3)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, 1)
        counted = (await stats(server))["providers"]["watched"]
    assert counted["cancelled"] == 1
    assert counted["completion_tokens"] > 10


# -- Responses ------------------------------------------------------------------------


async def test_a_response_not_streamed() -> None:
    async with sdk() as (_, client):
        response = await client.responses.create(model="auto", input="hello", instructions="brief")
        cut = await client.responses.create(model="auto", input="hello", max_output_tokens=4)
    assert response.status == "completed"
    assert len(response.output_text.split()) == 60
    assert response.usage is not None
    assert response.usage.output_tokens == 60
    assert response.instructions == "brief"
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


async def test_a_streamed_response_has_openai_s_events_with_gapless_sequence_numbers() -> None:
    async with sdk() as (_, client):
        events = [
            e
            async for e in await client.responses.create(
                model="simulated", input="hello", stream=True
            )
        ]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds.count("response.output_text.delta") == 60
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response  # type: ignore[union-attr]
    assert done.output_text == "".join(
        e.delta
        for e in events
        if e.type == "response.output_text.delta"  # type: ignore[union-attr]
    )


async def test_a_background_response_outlives_its_client_and_resumes_exactly() -> None:
    async with sdk() as (_, client):
        response_id, first = await left_after(client, 10, "a long story")
        rest = await resumed_after(client, response_id, first[-1][0])
        final = await client.responses.retrieve(response_id)
    numbers = [n for n, _ in first + rest]
    assert numbers == sorted(set(numbers))
    assert len(first + rest) == 60
    assert final.status == "completed"
    assert final.output_text == "".join(d for _, d in first + rest)


async def test_a_foreground_streamed_response_ends_with_its_client() -> None:
    provider = WatchedProvider()
    async with sdk(provider) as (server, client):
        stream = await client.responses.create(model="watched", input="hi", stream=True)
        async for event in stream:
            if event.type == "response.output_text.delta":
                break
        await stream.close()
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, 1)


async def test_a_background_response_can_be_cancelled() -> None:
    async with sdk() as (_, client):
        started = await client.responses.create(model="simulated", input="x", background=True)
        assert started.status == "in_progress"
        cancelled = await client.responses.cancel(started.id)
        events = [e.type async for e in await client.responses.retrieve(started.id, stream=True)]
    assert cancelled.status == "cancelled"
    assert events[-1] == "response.cancelled"


async def test_previous_response_id_continues_the_user_s_conversation() -> None:
    provider = WatchedProvider()
    async with sdk(provider) as (server, client):
        first = await client.responses.create(model="watched", input="My name is Ada")
        second = await client.responses.create(
            model="watched", input="Who am I?", previous_response_id=first.id
        )
        sent = [(m.role, m.content) for m in provider.requests[-1].messages]
        assert second.previous_response_id == first.id
        assert sent == [
            ("user", "My name is Ada"),
            ("assistant", first.output_text),
            ("user", "Who am I?"),
        ]
        stranger = openai.AsyncOpenAI(
            base_url=server.url + "/v1?user_id=mallory", api_key="x", max_retries=0
        )
        with pytest.raises(openai.NotFoundError):
            await stranger.responses.retrieve(first.id)
        await stranger.close()


async def test_a_response_still_in_progress_cannot_be_continued_yet() -> None:
    # Its answer is not part of the conversation until it completes.
    held, quick = WatchedProvider("held", stall_after=1), WatchedProvider("quick")
    async with sdk(held, quick) as (server, client):
        running = await client.responses.create(model="held", input="x", background=True)
        with pytest.raises(openai.BadRequestError, match="in progress") as refused:
            await client.responses.create(
                model="quick", input="go on", previous_response_id=running.id
            )
        assert refused.value.type == "invalid_request_error"
        assert server.gateway.running == 1
        await client.responses.cancel(running.id)


async def test_a_response_not_stored_cannot_be_retrieved_or_continued() -> None:
    async with sdk() as (_, client):
        ephemeral = await client.responses.create(model="auto", input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(ephemeral.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(
                model="auto", input="y", previous_response_id=ephemeral.id
            )


async def test_the_openapi_document_and_the_interactive_docs_are_served() -> None:
    async with sdk() as (server, _), httpx.AsyncClient() as http:
        spec = (await http.get(server.url + "/openapi.json")).json()
        docs = await http.get(server.url + "/docs")
    assert {"/v1/chat/completions", "/v1/models", "/v1/responses", "/v1/messages"} <= set(
        spec["paths"]
    )
    assert docs.status_code == 200


async def test_a_streamed_chat_that_fails_before_any_text_is_an_http_error() -> None:
    limited = TroubledProvider("limited", before_first=RateLimited("slow down", retry_after=2))
    async with sdk(limited) as (_, client):
        with pytest.raises(openai.RateLimitError) as throttled:
            await client.chat.completions.create(model="limited", messages=HI, stream=True)
    assert throttled.value.response.headers["retry-after"] == "2"


async def test_after_a_fallback_the_chunks_name_the_provider_that_answered() -> None:
    down = TroubledProvider("down", before_first=RateLimited("no", retry_after=0.01))
    async with sdk(down, WatchedProvider("spare")) as (_, client):
        chunks = [
            c
            async for c in await client.chat.completions.create(
                model="auto", messages=HI, stream=True
            )
        ]
    assert {c.model for c in chunks if c.choices and c.choices[0].delta.content} == {"spare"}


@pytest.mark.parametrize("stream", [True, False])
async def test_a_foreground_response_whose_client_leaves_before_the_first_token_is_cancelled(
    stream: bool,
) -> None:
    provider = TroubledProvider("slow", wait_first=30)
    async with sdk(provider) as (server, _), httpx.AsyncClient() as http:
        body = {"model": "slow", "input": "hi", "stream": stream}
        call = asyncio.ensure_future(http.post(server.url + "/v1/responses", json=body))
        await eventually(lambda: provider.requests, 2)
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, 1)


async def test_a_background_response_runs_on_when_its_only_client_leaves() -> None:
    provider = WatchedProvider(tokens=40, delay_ms=5)
    async with sdk(provider) as (server, client):
        stream = await client.responses.create(
            model="watched", input="hi", stream=True, background=True
        )
        response_id = ""
        async for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
                break
        await stream.close()
        await eventually(lambda: server.gateway.running == 0, 5)
        final = await client.responses.retrieve(response_id)
    assert final.status == "completed"
    assert len(final.output_text.split()) == 40
