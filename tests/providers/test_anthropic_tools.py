"""Tool calls through the Anthropic provider, against the fake Messages upstream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.anthropic_upstream import (
    block_frames,
    blocks_answer,
    blocks_frames,
    messages_api,
    sse_event,
    text_block,
    tool_block,
)
from tests.fakes.openai_upstream import Reply, ScriptedUpstream
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
from tokenwire.providers.anthropic_messages import AnthropicProvider
from tokenwire.settings import ProviderSettings

KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"
ASK = (Message(role="user", content="weather in Paris and Oslo?"),)
WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def provider(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[AnthropicProvider]:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test")
    settings = ProviderSettings(
        name="an", kind="anthropic", model="m", base_url=upstream.url, api_key_env=KEY_ENV
    )
    made = AnthropicProvider(settings)
    yield made
    await made.aclose()


async def until_failure(
    provider: AnthropicProvider,
) -> tuple[list[ProviderEvent], Exception | None]:
    """The events an answer yields before it fails, and its failure."""
    events: list[ProviderEvent] = []
    try:
        async for event in provider.stream(ProviderRequest(ASK, tools=(WEATHER,))):
            events.append(event)
    except Exception as failure:
        return events, failure
    return events, None


async def ask(
    provider: AnthropicProvider, messages: tuple[Message, ...] = ASK, **fields: Any
) -> list[ProviderEvent]:
    request = ProviderRequest(messages, **{"tools": (WEATHER,), **fields})
    return [event async for event in provider.stream(request)]


async def sent(upstream: ScriptedUpstream) -> dict[str, Any]:
    body: dict[str, Any] = (await upstream.exchange()).json()
    return body


# -- what is sent ----------------------------------------------------------------


async def test_tools_are_sent_with_their_input_schema_and_auto_is_the_default(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = blocks_answer([text_block("ok")])

    await ask(provider)

    body = await sent(upstream)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": dict(WEATHER.parameters),
        }
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (NamedTool("get_weather"), None, {"type": "tool", "name": "get_weather"}),
        ("none", False, {"type": "none"}),
    ],
)
async def test_tool_choice_is_sent_in_anthropic_words(
    provider: AnthropicProvider,
    upstream: ScriptedUpstream,
    choice: Any,
    parallel: bool | None,
    expected: dict[str, Any],
) -> None:
    upstream.reply = blocks_answer([text_block("ok")])

    await ask(provider, tool_choice=choice, parallel_tool_calls=parallel)

    assert (await sent(upstream))["tool_choice"] == expected


HISTORY = (
    *ASK,
    Message(
        role="assistant",
        content="Let me look.",
        parts=(
            TextPart("Let me look."),
            ToolCallPart("call_0a1b", "get_weather", '{"city": "Paris"}'),
            ToolCallPart("call_2c3d", "get_weather", '{"city": "Oslo"}'),
        ),
    ),
    Message(
        role="tool",
        content="",
        parts=(
            ToolResultPart("call_0a1b", "18 C"),
            ToolResultPart("call_2c3d", "no such station", is_error=True),
        ),
    ),
)


async def test_calls_and_results_in_the_history_become_tool_use_and_tool_result_blocks(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = messages_api(blocks_answer([text_block("Mild in Paris.")]))

    await ask(provider, HISTORY)

    assert (await sent(upstream))["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_0a1b",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2c3d",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_0a1b", "content": "18 C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2c3d",
                    "content": "no such station",
                    "is_error": True,
                },
            ],
        },
    ]


async def test_a_user_turn_after_the_results_joins_their_turn(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = messages_api(blocks_answer([text_block("ok")]))

    await ask(provider, (*HISTORY, Message(role="user", content="and tomorrow?")))

    last = (await sent(upstream))["messages"][-1]
    assert last["role"] == "user"
    assert [b["type"] for b in last["content"]] == ["tool_result", "tool_result", "text"]


async def test_a_history_of_calls_without_tools_offers_the_called_tools_and_forbids_calls(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = messages_api(blocks_answer([text_block("ok")]))

    events = await ask(provider, HISTORY, tools=())

    body = await sent(upstream)
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "none"}
    assert events[0] == "ok"


# -- what comes back -------------------------------------------------------------


async def test_parallel_calls_after_text_stream_as_deltas_keyed_by_block_index(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = blocks_answer(
        [
            text_block("Let me ", "look."),
            tool_block("toolu_01", "get_weather", '{"city"', ': "Paris"}'),
            tool_block("toolu_02", "get_weather", '{"city": "Oslo"}'),
        ]
    )

    events = await ask(provider)

    assert events[:-1] == [
        "Let me ",
        "look.",
        ToolCallDelta(1, upstream_id="toolu_01", name="get_weather"),
        ToolCallDelta(1, arguments=""),
        ToolCallDelta(1, arguments='{"city"'),
        ToolCallDelta(1, arguments=': "Paris"}'),
        ToolCallEnd(1),
        ToolCallDelta(2, upstream_id="toolu_02", name="get_weather"),
        ToolCallDelta(2, arguments=""),
        ToolCallDelta(2, arguments='{"city": "Oslo"}'),
        ToolCallEnd(2),
    ]
    assert isinstance(events[-1], Usage)
    assert events[-1].finish_reason == "tool_calls"


async def test_text_between_calls_stays_text(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = blocks_answer(
        [
            tool_block("toolu_01", "get_weather", '{"city": "Paris"}'),
            text_block("and now Oslo"),
            tool_block("toolu_02", "get_weather", '{"city": "Oslo"}'),
        ]
    )

    events = await ask(provider)

    assert [e for e in events if isinstance(e, str)] == ["and now Oslo"]
    assert [e.key for e in events if isinstance(e, ToolCallEnd)] == [0, 2]


async def test_a_call_of_no_input_ends_with_an_empty_object(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = blocks_answer([tool_block("toolu_01", "get_time")])

    events = await ask(provider)

    arguments = "".join(e.arguments for e in events if isinstance(e, ToolCallDelta))
    assert arguments == "{}"
    assert ToolCallEnd(0) in events


async def test_max_tokens_in_the_middle_of_the_arguments_is_an_error_and_no_call_ends(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    frames = blocks_frames(
        [tool_block("toolu_01", "get_weather", '{"city": "Pa')], stop_reason="max_tokens"
    )
    upstream.reply = Reply(frames=frames)
    events, failure = await until_failure(provider)

    assert isinstance(failure, ProviderError)
    assert re.search("max_tokens", str(failure))

    assert not [e for e in events if isinstance(e, ToolCallEnd)]


async def test_a_stream_cut_in_the_middle_of_the_arguments_is_an_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    frames = blocks_frames([tool_block("toolu_01", "get_weather", '{"city"', ': "Paris"}')])
    # message_start, block start, two of its three fragments: then the socket drops.
    upstream.reply = Reply(frames=frames, cut_after=4, then="drop")

    with pytest.raises(ProviderError, match=r"cut short|connection"):
        await ask(provider)


async def test_an_error_event_during_a_call_is_a_provider_error(
    provider: AnthropicProvider, upstream: ScriptedUpstream
) -> None:
    started = blocks_frames([text_block("x")])[:1]
    call = block_frames(0, tool_block("toolu_01", "get_weather", '{"ci'))[:-1]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.reply = Reply(frames=[*started, *call, sse_event("error", error)])

    with pytest.raises(ProviderError, match="Overloaded"):
        await ask(provider)
