"""Structured output as each hosted provider's upstream receives it (fakes that speak
the real wire format): OpenAI's `response_format`, Anthropic's `output_config.format`,
and Bedrock's forced tool, whose input comes back as the answer's text ending `stop`."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from tests.fakes import bedrock_eventstream as es
from tests.fakes.anthropic_upstream import anthropic_answer
from tests.fakes.bedrock_server import FakeBedrock, Reply
from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer
from tests.support.server import RunningServer, of_type, running_server, ws_client
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.core.tools import ResponseFormat, ToolSpec
from tokenwire.protocol.errors import UnsupportedFeature
from tokenwire.providers.bedrock import FORMAT_TOOL, BedrockProvider
from tokenwire.settings import ProviderSettings, load_settings

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
OPENAI_SHAPE: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": SCHEMA},
}
ANSWER = ['{"city":', ' "Paris"}']


@contextlib.asynccontextmanager
async def serving(kind: str) -> AsyncIterator[tuple[ScriptedUpstream, RunningServer]]:
    async with ScriptedUpstream() as upstream:
        suffix = "/v1" if kind == "openai" else ""
        providers = [{"name": kind, "kind": kind, "model": "m", "base_url": upstream.url + suffix}]
        async with running_server(load_settings(None, {"providers": providers})) as server:
            yield upstream, server


async def test_openai_receives_response_format_in_its_own_shape() -> None:
    async with serving("openai") as (upstream, server), ws_client(server) as client:
        upstream.reply = openai_answer(ANSWER, 3, 2)
        config = {
            "response_format": {
                **OPENAI_SHAPE,
                "json_schema": {**OPENAI_SHAPE["json_schema"], "strict": True},
            }
        }
        frames = await client.ask("a city", config=config)
        body = (await upstream.exchange()).json()

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": SCHEMA, "strict": True},
    }
    assert frames[-1]["data"]["structured"] == {"valid": True}


async def test_openai_receives_json_object() -> None:
    async with serving("openai") as (upstream, server), ws_client(server) as client:
        upstream.reply = openai_answer(ANSWER, 3, 2)
        await client.ask("a city", config={"response_format": {"type": "json_object"}})
        body = (await upstream.exchange()).json()

    assert body["response_format"] == {"type": "json_object"}


async def test_anthropic_receives_output_config_format_beside_the_clients_effort() -> None:
    async with serving("anthropic") as (upstream, server):
        upstream.reply = anthropic_answer(ANSWER, 3, 2)
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)
        message = await client.messages.create(
            model="anthropic",
            max_tokens=50,
            messages=[{"role": "user", "content": "a city"}],
            output_config={"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}},
        )
        body = (await upstream.exchange()).json()

    assert body["output_config"] == {
        "effort": "low",
        "format": {"type": "json_schema", "schema": SCHEMA},
    }
    assert message.stop_reason == "end_turn"


async def test_anthropic_receives_json_object_as_a_schema_of_any_object() -> None:
    async with serving("anthropic") as (upstream, server), ws_client(server) as client:
        upstream.reply = anthropic_answer(ANSWER, 3, 2)
        await client.ask("a city", config={"response_format": {"type": "json_object"}})
        body = (await upstream.exchange()).json()

    assert body["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}
    }


# -- bedrock: a forced tool ----------------------------------------------------------


def tool_answer(fragments: list[str]) -> Reply:
    """Bedrock's stream when the forced tool is used: its input in fragments, `tool_use`."""
    start = {"toolUse": {"toolUseId": "tooluse_1", "name": FORMAT_TOOL}}
    return Reply(
        events=[
            es.message_start(),
            es.event("contentBlockStart", {"contentBlockIndex": 0, "start": start}),
            *(
                es.event(
                    "contentBlockDelta",
                    {"contentBlockIndex": 0, "delta": {"toolUse": {"input": f}}},
                )
                for f in fragments
            ),
            es.content_block_stop(),
            es.message_stop("tool_use"),
            es.metadata(5, 4),
        ]
    )


@contextlib.asynccontextmanager
async def bedrock(fake: FakeBedrock) -> AsyncIterator[BedrockProvider]:
    provider = BedrockProvider(
        ProviderSettings(
            name="br", kind="bedrock", model="m", base_url=fake.url, options={"region": "us-east-1"}
        )
    )
    try:
        yield provider
    finally:
        await provider.aclose()


async def collect(provider: BedrockProvider, request: ProviderRequest) -> list[ProviderEvent]:
    async with contextlib.aclosing(provider.stream(request)) as events:
        return [event async for event in events]


def city_request(fmt: ResponseFormat) -> ProviderRequest:
    return ProviderRequest(messages=(Message("user", "a city"),), response_format=fmt)


async def test_bedrock_forces_a_tool_and_re_emits_its_input_as_text_ending_stop(
    fake: FakeBedrock,
) -> None:
    fake.script(tool_answer(ANSWER))
    async with bedrock(fake) as provider:
        events = await collect(provider, city_request(ResponseFormat("json_schema", schema=SCHEMA)))

    *text, usage = events
    assert text == ANSWER
    assert isinstance(usage, Usage)
    assert usage.finish_reason == "stop"
    assert fake.requests[0].body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": FORMAT_TOOL,
                    "description": "Give the answer as this tool's input.",
                    "inputSchema": {"json": SCHEMA},
                }
            }
        ],
        "toolChoice": {"tool": {"name": FORMAT_TOOL}},
    }


async def test_bedrock_forced_tool_cut_by_max_tokens_ends_length(fake: FakeBedrock) -> None:
    reply = tool_answer(ANSWER[:1])
    reply.events[-2] = es.message_stop("max_tokens")
    fake.script(reply)
    async with bedrock(fake) as provider:
        events = await collect(provider, city_request(ResponseFormat("json_object")))

    usage = events[-1]
    assert isinstance(usage, Usage)
    assert usage.finish_reason == "length"
    assert fake.requests[0].body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {
        "json": {"type": "object"}
    }


async def test_bedrock_without_a_format_sends_no_tool(fake: FakeBedrock) -> None:
    async with bedrock(fake) as provider:
        await collect(provider, ProviderRequest(messages=(Message("user", "hi"),)))

    assert "toolConfig" not in fake.requests[0].body


async def test_bedrock_refuses_a_format_beside_the_requests_own_tools(fake: FakeBedrock) -> None:
    request = ProviderRequest(
        messages=(Message("user", "a city"),),
        tools=(ToolSpec(name="lookup"),),
        response_format=ResponseFormat("json_object"),
    )
    async with bedrock(fake) as provider:
        with pytest.raises(UnsupportedFeature, match="through a forced tool"):
            provider.validate(request)


async def test_bedrock_forced_tool_reaches_a_websocket_client_as_text(fake: FakeBedrock) -> None:
    fake.script(tool_answer(ANSWER))
    providers = [
        {
            "name": "br",
            "kind": "bedrock",
            "model": "m",
            "base_url": fake.url,
            "options": {"region": "us-east-1"},
        }
    ]
    settings = load_settings(None, {"providers": providers})
    async with running_server(settings) as server, ws_client(server) as client:
        frames = await client.ask("a city", config={"response_format": OPENAI_SHAPE})

    assert json.loads("".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))) == {
        "city": "Paris"
    }
    assert frames[-1]["data"]["finish_reason"] == "stop"
    assert frames[-1]["data"]["structured"] == {"valid": True}
