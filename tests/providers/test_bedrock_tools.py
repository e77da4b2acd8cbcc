"""Tool calls through the bedrock provider, against the fake Bedrock runtime."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest

from tests.fakes import bedrock_eventstream as es
from tests.fakes.bedrock_server import FakeBedrock, Reply
from tests.support.server import running_server, simulated_settings
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, TextPart, Usage
from tokenwire.core.tools import (
    NamedTool,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import ProviderError
from tokenwire.providers.bedrock import BedrockProvider
from tokenwire.settings import ProviderSettings

pytestmark = pytest.mark.usefixtures("aws_credentials")

ASK = (Message(role="user", content="weather in Paris and Oslo?"),)
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
HISTORY = (
    *ASK,
    Message(
        role="assistant",
        content="Let me look.",
        parts=(
            TextPart("Let me look."),
            ToolCallPart("call_0a1b", "get_weather", '{"city": "Paris"}'),
        ),
    ),
    Message(
        role="tool", content="", parts=(ToolResultPart("call_0a1b", "no station", is_error=True),)
    ),
)


@pytest.fixture
async def provider(fake: FakeBedrock) -> AsyncIterator[BedrockProvider]:
    settings = ProviderSettings(
        name="br", kind="bedrock", model="anthropic.claude-test", base_url=fake.url
    )
    bedrock = BedrockProvider(settings)
    yield bedrock
    await bedrock.aclose()


async def until_failure(provider: BedrockProvider) -> tuple[list[ProviderEvent], Exception | None]:
    """The events an answer yields before it fails, and its failure."""
    events: list[ProviderEvent] = []
    try:
        async for event in provider.stream(ProviderRequest(ASK, tools=(WEATHER,))):
            events.append(event)
    except Exception as failure:
        return events, failure
    return events, None


async def ask(
    provider: BedrockProvider, messages: tuple[Message, ...] = ASK, **fields: Any
) -> list[ProviderEvent]:
    request = ProviderRequest(messages, **{"tools": (WEATHER,), **fields})
    return [event async for event in provider.stream(request)]


def answer(*blocks: list[bytes], reason: str = "tool_use") -> Reply:
    events = [es.message_start(), *(e for block in blocks for e in block)]
    return Reply(events=[*events, es.message_stop(reason), es.metadata(5, 9)])


def text(index: int, *deltas: str) -> list[bytes]:
    return [*(es.text_delta(d, index) for d in deltas), es.content_block_stop(index)]


# -- what is sent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"auto": {}}),
        ("required", {"any": {}}),
        (NamedTool("get_weather"), {"tool": {"name": "get_weather"}}),
    ],
)
async def test_tools_go_in_the_tool_config_with_their_choice(
    provider: BedrockProvider, fake: FakeBedrock, choice: Any, expected: dict[str, Any]
) -> None:
    fake.script(answer(text(0, "ok"), reason="end_turn"))

    await ask(provider, tool_choice=choice)

    assert fake.requests[0].body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "inputSchema": {"json": dict(WEATHER.parameters)},
                }
            }
        ],
        "toolChoice": expected,
    }


async def test_calls_and_results_in_the_history_become_tool_use_and_tool_result_blocks(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.script(answer(text(0, "ok"), reason="end_turn"))

    await ask(provider, HISTORY)

    assert fake.requests[0].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"text": "Let me look."},
                {
                    "toolUse": {
                        "toolUseId": "call_0a1b",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "toolResult": {
                        "toolUseId": "call_0a1b",
                        "content": [{"text": "no station"}],
                        "status": "error",
                    }
                }
            ],
        },
    ]


@pytest.mark.parametrize("fields", [{"tools": ()}, {"tool_choice": "none"}])
async def test_a_history_of_calls_is_sent_with_the_called_tools_when_none_are_offered(
    provider: BedrockProvider, fake: FakeBedrock, fields: dict[str, Any]
) -> None:
    fake.script(answer(text(0, "ok"), reason="end_turn"))

    events = await ask(provider, HISTORY, **fields)

    config = fake.requests[0].body["toolConfig"]
    assert [t["toolSpec"]["name"] for t in config["tools"]] == ["get_weather"]
    assert events[0] == "ok"


async def test_a_request_of_no_tools_and_no_history_of_calls_has_no_tool_config(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.script(answer(text(0, "ok"), reason="end_turn"))

    await ask(provider, tools=())

    assert "toolConfig" not in fake.requests[0].body


# -- what comes back -------------------------------------------------------------


async def test_parallel_calls_after_text_stream_as_deltas_keyed_by_block_index(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.script(
        answer(
            text(0, "Let me look."),
            es.tool_use(1, "tooluse_a", "get_weather", '{"city"', ': "Paris"}'),
            es.tool_use(2, "tooluse_b", "get_weather", '{"city": "Oslo"}'),
        )
    )

    events = await ask(provider)

    assert events[:-1] == [
        "Let me look.",
        ToolCallDelta(1, upstream_id="tooluse_a", name="get_weather"),
        ToolCallDelta(1, arguments='{"city"'),
        ToolCallDelta(1, arguments=': "Paris"}'),
        ToolCallEnd(1),
        ToolCallDelta(2, upstream_id="tooluse_b", name="get_weather"),
        ToolCallDelta(2, arguments='{"city": "Oslo"}'),
        ToolCallEnd(2),
    ]
    usage = events[-1]
    assert isinstance(usage, Usage)
    assert (usage.finish_reason, usage.completion_tokens) == ("tool_calls", 9)


async def test_a_call_of_no_input_ends_with_an_empty_object(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    fake.script(answer(es.tool_use(0, "tooluse_a", "get_time")))

    events = await ask(provider)

    assert [e.arguments for e in events if isinstance(e, ToolCallDelta)] == ["", "{}"]
    assert ToolCallEnd(0) in events


@pytest.mark.parametrize(
    ("reason", "named"),
    [("max_tokens", "max_tokens"), ("malformed_tool_use", "malformed_tool_use")],
)
async def test_a_call_cut_by_its_stop_reason_is_an_error_and_never_ends(
    provider: BedrockProvider, fake: FakeBedrock, reason: str, named: str
) -> None:
    fake.script(answer(es.tool_use(0, "tooluse_a", "get_weather", '{"city": "Pa'), reason=reason))
    events, failure = await until_failure(provider)

    assert isinstance(failure, ProviderError)
    assert re.search(named, str(failure))

    assert not [e for e in events if isinstance(e, ToolCallEnd)]


async def test_an_exception_event_during_a_call_is_a_provider_error(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    call = es.tool_use(0, "tooluse_a", "get_weather", '{"ci')[:-1]
    failure = es.exception_event("modelStreamErrorException", "malformed_tool_use")
    fake.script(Reply(events=[es.message_start(), *call, failure]))

    with pytest.raises(ProviderError, match="malformed_tool_use"):
        await ask(provider)


async def test_a_stream_cut_in_the_middle_of_the_arguments_is_an_error(
    provider: BedrockProvider, fake: FakeBedrock
) -> None:
    call = es.tool_use(0, "tooluse_a", "get_weather", '{"ci', 'ty": "Paris"}')[:-2]
    fake.script(Reply(events=[es.message_start(), *call], then="drop"))

    with pytest.raises(ProviderError):
        await ask(provider)


# -- through the Messages dialect ----------------------------------------------------


@contextlib.asynccontextmanager
async def messages_client(fake: FakeBedrock) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The anthropic SDK on a server of `br` (the fake Bedrock) and `sim` (one call)."""
    scripted = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}
    providers = [
        {"name": "br", "kind": "bedrock", "model": "anthropic.claude-test", "base_url": fake.url},
        {"name": "sim", "kind": "simulated", "options": {"delay_ms": 0, **scripted}},
    ]
    async with running_server(simulated_settings(providers=providers)) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)
        async with client:
            yield client


async def test_a_bedrock_call_reaches_the_sdk_as_a_tool_use_block(fake: FakeBedrock) -> None:
    fake.script(answer(es.tool_use(0, "tooluse_a", "get_weather", '{"city":', ' "Oslo"}')))

    async with messages_client(fake) as client:
        tool = {"name": "get_weather", "input_schema": dict(WEATHER.parameters)}
        async with client.messages.stream(
            model="br", max_tokens=100, messages=[{"role": "user", "content": "hi"}], tools=[tool]
        ) as stream:
            final = await stream.get_final_message()

    [call] = final.content
    assert call.type == "tool_use"
    assert (call.name, call.input) == ("get_weather", {"city": "Oslo"})
    assert call.id.startswith("call_")
    assert final.stop_reason == "tool_use"


async def test_a_call_made_elsewhere_is_answered_on_bedrock_without_tools(
    fake: FakeBedrock,
) -> None:
    fake.script(answer(text(0, "Rainy."), reason="end_turn"))

    async with messages_client(fake) as client:
        ask: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
        tool = {"name": "get_weather", "input_schema": dict(WEATHER.parameters)}
        called = await client.messages.create(
            model="sim", max_tokens=100, messages=ask, tools=[tool]
        )
        [call] = called.content
        assert call.type == "tool_use"
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "4 C"}
        history = [
            *ask,
            {"role": "assistant", "content": called.content},
            {"role": "user", "content": [result]},
        ]
        answer_ = await client.messages.create(model="br", max_tokens=100, messages=history)

    assert answer_.content[0].type == "text"
    assert answer_.content[0].text == "Rainy."
    sent = fake.requests[0].body
    assert sent["messages"][1]["content"] == [
        {"toolUse": {"toolUseId": call.id, "name": "get_weather", "input": {"city": "Oslo"}}}
    ]
    assert "toolConfig" in sent
