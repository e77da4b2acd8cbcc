"""Tool calls on the Messages dialect end to end: the anthropic SDK (its stream helper the
oracle) against a real server whose providers are the fake Anthropic upstream and the
simulated provider's scripted calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.anthropic_upstream import (
    blocks_answer,
    messages_api,
    text_block,
    tool_block,
)
from tests.fakes.openai_upstream import Reply, ScriptedUpstream
from tests.support.server import RunningServer, running_server, simulated_settings

KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
CALLS = blocks_answer(
    [
        text_block("Let me ", "look."),
        tool_block("toolu_01", "get_weather", '{"city"', ': "Paris"}'),
        tool_block("toolu_02", "get_weather", '{"city": "Oslo"}'),
    ]
)


@contextlib.asynccontextmanager
async def served(
    monkeypatch: pytest.MonkeyPatch, upstream_reply: Any = CALLS
) -> AsyncIterator[tuple[RunningServer, ScriptedUpstream, anthropic.AsyncAnthropic]]:
    """A server with `claude` (the fake upstream) and `sim` (scripting one call)."""
    monkeypatch.setenv(KEY_ENV, "sk-ant-test")
    scripted = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    async with ScriptedUpstream(messages_api(upstream_reply)) as upstream:
        providers = [
            {
                "name": "claude",
                "kind": "anthropic",
                "model": "claude-test",
                "base_url": upstream.url,
                "api_key_env": KEY_ENV,
            },
            {"name": "sim", "kind": "simulated", "options": {"delay_ms": 0, **scripted}},
        ]
        async with running_server(simulated_settings(providers=providers)) as server:
            client = anthropic.AsyncAnthropic(
                base_url=server.url, api_key="unused", max_retries=0, timeout=30
            )
            async with client:
                yield server, upstream, client


async def raw_events(server: RunningServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's events as sent, `ping` included."""
    events = []
    async with (
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", server.url + "/v1/messages", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


# -- answers that call tools ---------------------------------------------------------


async def test_the_stream_helper_reads_text_then_two_calls_with_tokenwire_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch) as (_, upstream, client):
        async with client.messages.stream(
            model="claude", max_tokens=100, messages=ASK, tools=[WEATHER]
        ) as stream:
            final = await stream.get_final_message()
        sent = (await upstream.exchange()).json()

    assert sent["tools"] == [WEATHER]
    assert final.stop_reason == "tool_use"
    text, first, second = final.content
    assert text.type == "text"
    assert text.text == "Let me look."
    assert first.type == "tool_use"
    assert second.type == "tool_use"
    assert (first.name, first.input) == ("get_weather", {"city": "Paris"})
    assert second.input == {"city": "Oslo"}
    assert first.id.startswith("call_")
    assert second.id.startswith("call_")
    assert first.id != second.id


async def test_a_text_block_is_closed_before_each_tool_use_block_and_indexes_count_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch) as (server, _, _):
        body = {"model": "claude", "max_tokens": 100, "messages": ASK, "tools": [WEATHER]}
        events = await raw_events(server, {**body, "stream": True})

    sequence = [
        (e["type"], e["index"], (e.get("content_block") or e.get("delta") or {}).get("type"))
        for e in events
        if e["type"].startswith("content_block")
    ]
    # Runs of deltas, one entry each: how the fragments are cut is the upstream's affair.
    runs = [item for i, item in enumerate(sequence) if i == 0 or item != sequence[i - 1]]
    assert runs == [
        ("content_block_start", 0, "text"),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
    ]
    assert events[0]["type"] == "message_start"
    assert events[2]["type"] == "ping"  # after the first block's start, as Anthropic has it
    start = next(e for e in events if e.get("content_block", {}).get("type") == "tool_use")
    assert start["content_block"]["input"] == {}
    [delta] = [e for e in events if e["type"] == "message_delta"]
    assert delta["delta"]["stop_reason"] == "tool_use"


async def test_create_answers_tool_use_blocks_with_parsed_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch) as (_, _, client):
        message = await client.messages.create(
            model="claude",
            max_tokens=100,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "any", "disable_parallel_tool_use": False},
        )

    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[2].input == {"city": "Oslo"}  # type: ignore[union-attr]


async def test_tool_choice_reaches_the_upstream_in_its_own_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch) as (_, upstream, client):
        await client.messages.create(
            model="claude",
            max_tokens=100,
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        )
        sent = (await upstream.exchange()).json()

    assert sent["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }


# -- round trips ----------------------------------------------------------------------


async def test_a_call_made_by_one_provider_is_answered_on_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch, blocks_answer([text_block("Mild.")])) as (_, up, client):
        called = await client.messages.create(
            model="sim", max_tokens=100, messages=ASK, tools=[WEATHER]
        )
        [call] = [b for b in called.content if b.type == "tool_use"]
        history: list[Any] = [
            *ASK,
            {"role": "assistant", "content": called.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}],
            },
        ]
        answer = await client.messages.create(
            model="claude", max_tokens=100, messages=history, tools=[WEATHER]
        )
        sent = (await up.exchange()).json()

    assert answer.content[0].type == "text"
    assert answer.stop_reason == "end_turn"
    assert call.id.startswith("call_")
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}
        ],
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"}],
    }


def history_of(result_id: str, *, answered: bool = True, calls: int = 1) -> list[Any]:
    made = [
        {"type": "tool_use", "id": f"call_a{n}", "name": "get_weather", "input": {"city": "Oslo"}}
        for n in range(1, calls + 1)
    ]
    turns: list[Any] = [*ASK, {"role": "assistant", "content": made}]
    if answered:
        result = {"type": "tool_result", "tool_use_id": result_id, "content": "x"}
        turns.append({"role": "user", "content": [result]})
    else:
        turns.append({"role": "user", "content": "go on"})
    return turns


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        (history_of("call_zz"), "messages[2].content"),
        (history_of("call_a1", answered=False), "messages[1].content"),
        (history_of("call_a1")[:2], "messages[1].content"),
        (history_of("call_a1", calls=2), "immediately after: call_a2"),
    ],
    ids=["an unknown id", "a call without its result", "a call at the end", "one of two"],
)
async def test_results_that_do_not_answer_the_calls_before_are_a_400_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, messages: list[Any], named: str
) -> None:
    async with served(monkeypatch) as (_, upstream, client):
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(
                model="claude", max_tokens=100, messages=messages, tools=[WEATHER]
            )

    assert named in str(refused.value)
    assert not upstream.exchanges


async def test_a_tool_choice_naming_no_offered_tool_is_a_400(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with served(monkeypatch) as (_, _, client):
        with pytest.raises(anthropic.BadRequestError, match=r"tool_choice\.name"):
            await client.messages.create(
                model="claude",
                max_tokens=100,
                messages=ASK,
                tools=[WEATHER],
                tool_choice={"type": "tool", "name": "get_time"},
            )


async def test_an_answer_that_starts_with_a_call_streams_the_call_before_the_answer_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upstream sends the call's start and a fragment, then falls silent.
    frames = blocks_answer([tool_block("toolu_01", "get_weather", '{"city"', ': "Oslo"}')]).frames
    stalled = Reply(frames=frames, cut_after=4, then="stall")
    async with served(monkeypatch, stalled) as (server, _, _):
        body = {"model": "claude", "max_tokens": 100, "messages": ASK, "tools": [WEATHER]}
        seen: list[dict[str, Any]] = []
        # A bound that turns a hang (the call held back until the end) into a failure.
        async with (
            asyncio.timeout(20),
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", server.url + "/v1/messages", json={**body, "stream": True}) as got,
        ):
            async for line in got.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line.removeprefix("data: ")))
                if any(e["type"] == "content_block_delta" for e in seen):
                    break

    assert [e["type"] for e in seen] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
    ]
    assert seen[1]["content_block"]["type"] == "tool_use"
    assert seen[1]["content_block"]["id"].startswith("call_")
    assert seen[1]["index"] == 0


async def test_tools_forced_on_a_provider_that_calls_none_are_a_400_before_any_answer() -> None:
    providers = [{"name": "plain", "kind": "simulated", "tools": False, "options": {"delay_ms": 0}}]
    async with running_server(simulated_settings(providers=providers)) as server:
        body = {"model": "plain", "max_tokens": 10, "messages": ASK, "tools": [WEATHER]}
        async with httpx.AsyncClient(timeout=30) as http:
            whole = await http.post(server.url + "/v1/messages", json=body)
            streamed = await http.post(server.url + "/v1/messages", json={**body, "stream": True})

    for response in (whole, streamed):
        assert response.status_code == 400
        assert response.json()["type"] == "error"
        assert "tool" in response.json()["error"]["message"]
