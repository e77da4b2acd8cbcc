"""The JavaScript clients people use, against a real tokenwire server: the Vercel AI SDK
(its OpenAI chat and responses models, OpenAI-compatible and Anthropic providers),
openai-node and the Anthropic TypeScript SDK, each run by Node (tests/clients/js).

Each test starts a server on a free port in this process, runs a Node script whose
checks print what the client saw, and asserts on that and on what the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.clients.seeing import (
    DESCRIPTION,
    PNG_DATA_URL,
    PNG_SOURCE,
    Seeing,
    anthropic_image_sources,
    openai_image_urls,
)
from tests.support.node import check, failed, passed, run_checks
from tests.support.providers import WatchedProvider
from tests.support.server import RunningServer, gateway_with, running_server
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.core.tools import Capabilities

TOKENS = 12
"""Deltas in each answer of the quick provider."""


@dataclass(frozen=True)
class Client:
    """One client library and API, as a Node script runs it."""

    script: str
    prefix: str
    """Its checks are PREFIX_plain, PREFIX_stream, PREFIX_abort, PREFIX_image."""
    output_tokens: Callable[[dict[str, Any]], int]
    """The answer's output tokens, from a plain or stream check's result."""


def openai_chat_tokens(result: dict[str, Any]) -> int:
    return int(result["usage"]["completion_tokens"])


def output_tokens(result: dict[str, Any]) -> int:
    """As the Responses API and Anthropic's Messages both name it."""
    return int(result["usage"]["output_tokens"])


def ai_sdk_tokens(result: dict[str, Any]) -> int:
    return int(result["usage"]["outputTokens"])


CLIENTS = {
    "openai-node chat": Client("openai_node.mjs", "chat", openai_chat_tokens),
    "openai-node responses": Client("openai_node.mjs", "responses", output_tokens),
    "anthropic-sdk messages": Client("anthropic_sdk.mjs", "messages", output_tokens),
    "ai-sdk openai chat": Client("ai_sdk.mjs", "chat", ai_sdk_tokens),
    "ai-sdk openai responses": Client("ai_sdk.mjs", "responses", ai_sdk_tokens),
    "ai-sdk openai-compatible": Client("ai_sdk.mjs", "compatible", ai_sdk_tokens),
    "ai-sdk anthropic": Client("ai_sdk.mjs", "anthropic", ai_sdk_tokens),
}


@contextlib.asynccontextmanager
async def serving(provider: WatchedProvider) -> AsyncIterator[RunningServer]:
    async with running_server(gateway=gateway_with(provider)) as server:
        yield server


async def provider_stats(server: RunningServer, name: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(server.url + "/api/streaming/stats")).json()
    counted: dict[str, Any] = stats["providers"][name]
    return counted


@pytest.mark.parametrize("name", CLIENTS)
async def test_a_whole_answer_and_a_stream_bring_the_same_text_and_the_usage(name: str) -> None:
    client = CLIENTS[name]
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with serving(provider) as server:
        lines = await run_checks(
            client.script,
            server.url,
            "simulated",
            f"{client.prefix}_plain",
            f"{client.prefix}_stream",
        )
    whole = passed(lines[f"{client.prefix}_plain"])
    streamed = passed(lines[f"{client.prefix}_stream"])
    assert whole["text"]
    assert streamed["text"] == whole["text"]  # the same prompt gives the same deltas
    assert client.output_tokens(whole) == client.output_tokens(streamed) == TOKENS
    assert len(provider.requests) == 2


@pytest.mark.parametrize("name", CLIENTS)
async def test_an_abort_mid_stream_cancels_the_request_on_the_server(name: str) -> None:
    client = CLIENTS[name]
    provider = WatchedProvider(tokens=5000, delay_ms=5)
    async with serving(provider) as server:
        aborted = passed(
            await check(client.script, server.url, "watched", f"{client.prefix}_abort")
        )
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        await eventually(lambda: server.gateway.running == 0, AT_ONCE)
        counted = await provider_stats(server, "watched")
    assert len(aborted["deltas"]) == 3  # it aborted mid-stream, after three deltas
    assert counted["cancelled"] == 1
    assert counted["completed"] == 0
    assert provider.deltas_sent < 5000


# -- openai-node: background responses ------------------------------------------------


async def test_openai_node_resumes_a_background_response_after_leaving_it() -> None:
    async with running_server() as server:
        resumed = passed(
            await check("openai_node.mjs", server.url, "simulated", "background_resume")
        )
    first, rest = resumed["first"], resumed["rest"]
    numbers = [n for n, _ in first + rest]
    assert len(first) == 10
    assert numbers == list(range(numbers[0], numbers[0] + 60))  # no gap, no repeat
    assert resumed["last"] == "response.completed"
    assert resumed["status"] == "completed"
    assert resumed["text"] == "".join(delta for _, delta in first + rest)


async def test_openai_node_cancels_a_background_response() -> None:
    provider = WatchedProvider(tokens=5000, delay_ms=5)
    async with serving(provider) as server:
        cancelled = passed(
            await check("openai_node.mjs", server.url, "watched", "background_cancel")
        )
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        counted = await provider_stats(server, "watched")
    assert cancelled == {
        "started": "in_progress",
        "cancelled": "cancelled",
        "last": "response.cancelled",
    }
    assert counted["cancelled"] == 1


# -- what issue 22 mends: fields, endpoints and images the SDKs send -------------------


async def test_the_ai_sdk_responses_model_may_send_user() -> None:
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with serving(provider) as server:
        answered = passed(await check("ai_sdk.mjs", server.url, "simulated", "responses_user"))
    assert answered["text"]
    assert answered["finishReason"] == "stop"


async def test_openai_node_retrieves_a_model_by_its_id() -> None:
    async with running_server() as server:
        found = passed(await check("openai_node.mjs", server.url, "simulated", "models_retrieve"))
    assert found["id"] == "simulated"
    assert found["object"] == "model"


async def test_openai_node_lists_the_input_items_of_a_response() -> None:
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with serving(provider) as server:
        listed = passed(await check("openai_node.mjs", server.url, "simulated", "input_items"))
    [item] = listed["items"]
    assert item["type"] == "message"
    assert item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "hello there"}]


async def test_openai_node_deletes_a_stored_response() -> None:
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with serving(provider) as server:
        deleted = passed(
            await check("openai_node.mjs", server.url, "simulated", "responses_delete")
        )
    assert deleted == {"deleted": True, "afterwards": "NotFoundError", "status": 404}


async def test_anthropic_sdk_counting_tokens_on_a_provider_that_cannot_is_a_bad_request() -> None:
    async with running_server() as server:
        refused = failed(await check("anthropic_sdk.mjs", server.url, "simulated", "count_tokens"))
    assert refused["name"] == "BadRequestError"
    assert refused["status"] == 400
    body = refused["body"]
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


# Which provider each client's image goes to, and how that provider's upstream sees it.
IMAGE_ROUTES = {
    "openai-node chat": ("oa", openai_image_urls, [PNG_DATA_URL]),
    "openai-node responses": ("oa", openai_image_urls, [PNG_DATA_URL]),
    "anthropic-sdk messages": ("an", anthropic_image_sources, [PNG_SOURCE]),
    "ai-sdk openai chat": ("oa", openai_image_urls, [PNG_DATA_URL]),
    "ai-sdk openai responses": ("oa", openai_image_urls, [PNG_DATA_URL]),
    "ai-sdk openai-compatible": ("oa", openai_image_urls, [PNG_DATA_URL]),
    "ai-sdk anthropic": ("an", anthropic_image_sources, [PNG_SOURCE]),
}


@pytest.mark.parametrize("name", CLIENTS)
async def test_an_image_that_a_client_sends_reaches_a_provider_that_sees(
    name: str, seeing: Seeing
) -> None:
    client = CLIENTS[name]
    provider, image_of, expected = IMAGE_ROUTES[name]
    answered = passed(
        await check(client.script, seeing.server.url, provider, f"{client.prefix}_image")
    )
    exchange = await seeing.upstreams[provider].exchange(0)
    assert answered["text"] == DESCRIPTION
    assert image_of(exchange.json()) == expected


# -- issue 23: tool calls --------------------------------------------------------------


async def test_the_ai_sdk_responses_model_runs_a_tool_round_trip() -> None:
    # Text, then a call of the SDK's tool; the second step echoes the tool's result.
    script = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    provider = WatchedProvider("tooly", delay_ms=1, tool_calls=script, text_before="Checking.")
    caller = Capabilities(tools=True, parallel_tool_calls=True)
    async with running_server(gateway=gateway_with(provider, capabilities=caller)) as server:
        ran = passed(await check("ai_sdk.mjs", server.url, "tooly", "responses_tools"))
    first, second = ran["steps"]
    assert first["finishReason"] == "tool-calls"
    [call] = first["calls"]
    assert call["id"].startswith("call_")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})
    assert first["results"] == ["18 C in Paris"]
    assert second["finishReason"] == "stop"
    assert ran["text"].endswith("results: 18 C in Paris")
    sent = provider.requests[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert [c.id for c in sent[1].tool_calls] == [call["id"]]
