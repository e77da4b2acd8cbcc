"""Usage that tokenwire estimated, because the provider reported none, is marked so on every
dialect, and the official SDKs still parse what carries the mark.

The provider `uncounted` is an OpenAI-compatible server that, as llama.cpp's does, never
sends a usage chunk: 24 tokens of a long word, one a delta, cut at `max_tokens`. A quarter
of the characters would say 48 tokens; the estimate says 24. `simulated` counts its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.openai_upstream import Reply, ScriptedUpstream, chat_frames
from tests.support.server import RunningServer, running_server
from tokenwire.settings import load_settings

HEADER = "tokenwire-usage-estimated"
BUDGET = 24
ANSWER = [" capital"] * BUDGET
HI = [{"role": "user", "content": "What is the capital of France?"}]
ESTIMATED = [("uncounted", True), ("simulated", False)]


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    frames = chat_frames(ANSWER, 0, 0, include_usage=False, finish_reason="length")
    async with ScriptedUpstream(Reply(frames=frames)) as upstream:
        uncounted = {
            "name": "uncounted",
            "kind": "openai",
            "model": "gemma",
            "base_url": upstream.url + "/v1",
        }
        providers = [uncounted, {"name": "simulated", "kind": "simulated"}]
        async with running_server(load_settings(None, {"providers": providers})) as running:
            yield running


@contextlib.asynccontextmanager
async def openai_sdk(server: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        yield client


@contextlib.asynccontextmanager
async def anthropic_sdk(server: RunningServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)
    async with client:
        yield client


def extra(usage: Any) -> Any:
    """The `estimated` field as the SDK parsed it (an extra field of its usage model)."""
    return usage.model_dump()["estimated"]


# -- Chat Completions ------------------------------------------------------------------


@pytest.mark.parametrize(("model", "estimated"), ESTIMATED)
async def test_a_whole_chat_completion_marks_estimated_usage_in_a_header_and_its_usage(
    server: RunningServer, model: str, estimated: bool
) -> None:
    async with openai_sdk(server) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=HI, max_tokens=BUDGET
        )
    completion = raw.parse()
    assert raw.headers.get(HEADER) == ("true" if estimated else None)
    assert completion.usage is not None
    assert (completion.usage.completion_tokens, extra(completion.usage)) == (BUDGET, estimated)
    assert completion.choices[0].finish_reason == "length"


async def test_a_streamed_chat_completion_marks_estimated_usage_in_its_usage_chunk(
    server: RunningServer,
) -> None:
    async with openai_sdk(server) as client:
        stream = await client.chat.completions.create(
            model="uncounted",
            messages=HI,
            max_tokens=BUDGET,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.completion_tokens, extra(usage)) == (BUDGET, True)


# -- Responses ----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "estimated"), ESTIMATED)
async def test_a_whole_response_marks_estimated_usage_when_created_and_when_retrieved(
    server: RunningServer, model: str, estimated: bool
) -> None:
    async with openai_sdk(server) as client:
        created = await client.responses.with_raw_response.create(
            model=model, input="What is the capital of France?", max_output_tokens=BUDGET
        )
        response = created.parse()
        retrieved = await client.responses.with_raw_response.retrieve(response.id)
    for raw in (created, retrieved):
        assert raw.headers.get(HEADER) == ("true" if estimated else None)
    assert response.usage is not None
    assert (response.usage.output_tokens, extra(response.usage)) == (BUDGET, estimated)
    assert response.output_text


async def test_a_streamed_response_marks_estimated_usage_in_its_final_event(
    server: RunningServer,
) -> None:
    async with openai_sdk(server) as client:
        stream = await client.responses.create(
            model="uncounted", input="hi", max_output_tokens=BUDGET, stream=True
        )
        events = [event async for event in stream]
    final = events[-1]
    assert final.type == "response.incomplete"  # it reached max_output_tokens
    usage = final.response.usage
    assert usage is not None
    assert (usage.output_tokens, extra(usage)) == (BUDGET, True)


# -- Messages -------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "estimated"), ESTIMATED)
async def test_a_whole_message_marks_estimated_usage_in_a_header_and_its_usage(
    server: RunningServer, model: str, estimated: bool
) -> None:
    async with anthropic_sdk(server) as client:
        raw = await client.messages.with_raw_response.create(
            model=model, max_tokens=BUDGET, messages=HI
        )
        message = await raw.parse()
    assert raw.headers.get(HEADER) == ("true" if estimated else None)
    assert (message.usage.output_tokens, extra(message.usage)) == (BUDGET, estimated)
    assert message.stop_reason == "max_tokens"


async def test_a_streamed_message_marks_estimated_usage_in_its_message_delta(
    server: RunningServer,
) -> None:
    async with anthropic_sdk(server) as client:
        stream = await client.messages.create(
            model="uncounted", max_tokens=BUDGET, messages=HI, stream=True
        )
        events = [event async for event in stream]
        async with client.messages.stream(
            model="uncounted", max_tokens=BUDGET, messages=HI
        ) as helper:
            final = await helper.get_final_message()
    (delta,) = [event for event in events if event.type == "message_delta"]
    assert (delta.usage.output_tokens, extra(delta.usage)) == (BUDGET, True)
    assert final.usage.output_tokens == BUDGET  # the SDK's helper still parses it


# -- tokenwire's own protocol ----------------------------------------------------------------


async def test_an_sse_stream_end_says_its_usage_was_estimated(server: RunningServer) -> None:
    body = {"prompt": "hi", "config": {"provider": "uncounted", "max_tokens": BUDGET}}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(server.url + "/api/streams", json=body)
    ends = [
        json.loads(block.split("data: ", 1)[1])
        for block in response.text.split("\n\n")
        if "event: stream_end" in block
    ]
    assert [end["data"]["usage"]["estimated"] for end in ends] == [True]
    assert ends[0]["data"]["usage"]["completion_tokens"] == BUDGET
