"""Tool calls through the OpenAI provider, against a fake upstream that streams them in
OpenAI's exact wire format, with the quirks other compatible servers add."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.openai_upstream import (
    Reply,
    ScriptedUpstream,
    call_fragment,
    calls,
    delta_frames,
    error_frame,
    openai_answer,
)
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
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.providers.upstream import END_MARKER_MISSING
from tokenwire.settings import ProviderSettings

HELLO = (Message(role="user", content="weather in Paris and Rome?"),)
WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def provider(upstream: ScriptedUpstream) -> AsyncIterator[OpenAIProvider]:
    made = OpenAIProvider(
        ProviderSettings(name="oa", kind="openai", model="m", base_url=upstream.url + "/v1")
    )
    yield made
    await made.aclose()


async def ask(
    provider: OpenAIProvider, messages: tuple[Message, ...] = HELLO, **fields: Any
) -> list[ProviderEvent]:
    request = ProviderRequest(messages, tools=(WEATHER,), **fields)
    return [event async for event in provider.stream(request)]


async def answer(
    provider: OpenAIProvider, upstream: ScriptedUpstream, *deltas: dict[str, Any], **frames: Any
) -> list[ProviderEvent]:
    upstream.reply = Reply(frames=delta_frames(deltas, **frames))
    return await ask(provider)


async def collect(provider: OpenAIProvider, seen: list[ProviderEvent]) -> None:
    """Read the answer into `seen`, which keeps what came before a failure."""
    async for event in provider.stream(ProviderRequest(HELLO, tools=(WEATHER,))):
        seen.append(event)


# -- the request ------------------------------------------------------------------


async def test_tools_go_upstream_as_function_tools_with_choice_and_parallel_flag(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    strict = ToolSpec(name="add", parameters={"type": "object"}, strict=True)
    request = ProviderRequest(
        HELLO, tools=(WEATHER, strict), tool_choice=NamedTool("add"), parallel_tool_calls=False
    )

    [_ async for _ in provider.stream(request)]

    body = (await upstream.exchange()).json()
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER.parameters,
            },
        },
        {
            "type": "function",
            "function": {"name": "add", "parameters": {"type": "object"}, "strict": True},
        },
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("mode", ["auto", "none", "required"])
async def test_a_tool_mode_goes_upstream_as_its_word(
    provider: OpenAIProvider, upstream: ScriptedUpstream, mode: str
) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)

    await ask(provider, tool_choice=mode)

    body = (await upstream.exchange()).json()
    assert body["tool_choice"] == mode
    assert "parallel_tool_calls" not in body


async def test_without_tools_no_tool_field_is_sent(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # OpenAI refuses tool_choice and parallel_tool_calls in a request without tools.
    upstream.reply = openai_answer(["ok"], 1, 1)

    request = ProviderRequest(HELLO, tool_choice="auto", parallel_tool_calls=True)

    [_ async for _ in provider.stream(request)]

    body = (await upstream.exchange()).json()
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & body.keys()


async def test_history_renders_calls_and_one_tool_message_per_result(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = openai_answer(["sunny, rainy"], 1, 1)
    paris = ToolCallPart("call_1", "get_weather", '{"city":"Paris"}')
    rome = ToolCallPart("call_2", "get_weather", '{"city":"Rome"}')
    history = (
        *HELLO,
        Message.of_parts("assistant", (paris, rome)),
        Message.of_parts(
            "tool",
            (ToolResultPart("call_1", "sunny"), ToolResultPart("call_2", "timeout", is_error=True)),
        ),
        Message(role="user", content="and Oslo?"),
        Message.of_parts(
            "assistant", (TextPart("Let me look."), ToolCallPart("call_3", "get_weather", "{}"))
        ),
        Message.of_parts("tool", (ToolResultPart("call_3", "snow"),)),
    )

    await ask(provider, history)

    assert (await upstream.exchange()).json()["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: timeout"},
        {"role": "user", "content": "and Oslo?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_3",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_3", "content": "snow"},
    ]


# -- the stream -------------------------------------------------------------------


async def test_sequential_calls_in_openais_shape_become_deltas_then_ends(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="get_weather")),
        calls(call_fragment(0, arguments='{"city":')),
        calls(call_fragment(0, arguments='"Paris"}')),
        calls(call_fragment(1, id="call_b", name="get_weather")),
        calls(call_fragment(1, arguments='{"city":"Rome"}')),
    )

    assert events == [
        ToolCallDelta(0, "call_a", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city":'),
        ToolCallDelta(0, arguments='"Paris"}'),
        ToolCallDelta(1, "call_b", "get_weather", ""),
        ToolCallDelta(1, arguments='{"city":"Rome"}'),
        ToolCallEnd(0),
        ToolCallEnd(1),
        Usage(9, 5, finish_reason="tool_calls"),
    ]


async def test_interleaved_parallel_fragments_stay_with_their_index(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="f"), call_fragment(1, id="call_b", name="g")),
        calls(call_fragment(1, arguments='{"b":'), call_fragment(0, arguments='{"a":')),
        calls(call_fragment(0, arguments="1}"), call_fragment(1, arguments="2}")),
    )

    assert events[:6] == [
        ToolCallDelta(0, "call_a", "f", ""),
        ToolCallDelta(1, "call_b", "g", ""),
        ToolCallDelta(1, arguments='{"b":'),
        ToolCallDelta(0, arguments='{"a":'),
        ToolCallDelta(0, arguments="1}"),
        ToolCallDelta(1, arguments="2}"),
    ]
    assert events[6:8] == [ToolCallEnd(0), ToolCallEnd(1)]


async def test_ids_and_names_repeated_on_every_fragment_are_one_call(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="f", arguments='{"a":')),
        calls(call_fragment(0, id="call_a", name="f", arguments="1}")),
    )

    assert events[:3] == [
        ToolCallDelta(0, "call_a", "f", '{"a":'),
        ToolCallDelta(0, "call_a", "f", "1}"),
        ToolCallEnd(0),
    ]


async def test_a_late_name_null_arguments_and_a_first_index_of_one_pass_as_sent(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(1, id="call_a", arguments=None)),
        calls(call_fragment(1, bare=True)),
        calls(call_fragment(1, name="f", arguments='{"a":1}')),
    )

    assert events == [
        ToolCallDelta(1, "call_a", None, ""),
        ToolCallDelta(1),
        ToolCallDelta(1, name="f", arguments='{"a":1}'),
        ToolCallEnd(1),
        Usage(9, 5, finish_reason="tool_calls"),
    ]


async def test_text_before_a_call_comes_first(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        {"content": "Let me "},
        {"content": "check."},
        calls(call_fragment(0, id="call_a", name="f", arguments="{}")),
    )

    assert events == [
        "Let me ",
        "check.",
        ToolCallDelta(0, "call_a", "f", "{}"),
        ToolCallEnd(0),
        Usage(9, 5, finish_reason="tool_calls"),
    ]


async def test_another_id_at_a_used_index_is_another_call(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    # Some servers put every parallel call at index 0; concatenating their arguments
    # would make one call of two (google/adk-python#1038).
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="f", arguments='{"a":1}')),
        calls(call_fragment(0, id="call_b", name="f", arguments='{"a":2}')),
    )

    assert events[:4] == [
        ToolCallDelta(0, "call_a", "f", '{"a":1}'),
        ToolCallDelta("0:call_b", "call_b", "f", '{"a":2}'),
        ToolCallEnd(0),
        ToolCallEnd("0:call_b"),
    ]


async def test_calls_that_end_as_stop_end_the_answer_as_tool_calls(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="f", arguments="{}")),
        finish_reason="stop",
    )

    assert events[-2:] == [ToolCallEnd(0), Usage(9, 5, finish_reason="tool_calls")]


async def test_a_call_cut_by_the_token_budget_never_ends(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    events = await answer(
        provider,
        upstream,
        calls(call_fragment(0, id="call_a", name="f", arguments='{"a": "lo')),
        finish_reason="length",
    )

    assert events == [
        ToolCallDelta(0, "call_a", "f", '{"a": "lo'),
        Usage(9, 5, finish_reason="length"),
    ]


async def test_a_stream_cut_in_the_middle_of_arguments_is_an_error_without_ends(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(
        frames=delta_frames(
            [calls(call_fragment(0, id="call_a", name="f", arguments='{"a":'))],
            finish_reason=None,
        ),
        then="drop",
    )
    seen: list[ProviderEvent] = []

    with pytest.raises(ProviderError, match=END_MARKER_MISSING):
        await collect(provider, seen)

    assert seen == [ToolCallDelta(0, "call_a", "f", '{"a":')]


async def test_an_error_event_during_a_call_is_a_provider_error(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    frames = delta_frames([calls(call_fragment(0, id="call_a", name="f", arguments='{"a":'))])
    upstream.reply = Reply(frames=[*frames[:2], error_frame("the model crashed")])
    seen: list[ProviderEvent] = []

    with pytest.raises(ProviderError, match="upstream error: the model crashed"):
        await collect(provider, seen)

    assert seen == [ToolCallDelta(0, "call_a", "f", '{"a":')]
