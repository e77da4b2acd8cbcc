"""Tool calls on the Chat Completions dialect, with the official `openai` SDK's stream
helper as the oracle (it raises on a first index of 1, on ids that change, on faults),
against a real server whose calls come from the scripted simulated provider or from a
fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from tests.fakes.openai_upstream import (
    Reply,
    ScriptedUpstream,
    call_fragment,
    calls,
    delta_frames,
    openai_answer,
)
from tests.support.server import RunningServer, running_server
from tests.support.waiting import AT_ONCE
from tokenwire.settings import load_settings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "weather in Paris and Rome?"}]
PARIS = {"city": "Paris"}
ROME = {"city": "Rome"}


def caller(name: str = "caller", **options: Any) -> dict[str, Any]:
    """A simulated provider that calls get_weather for Paris and Rome."""
    script = {
        "tool_calls": [
            {"name": "get_weather", "arguments": PARIS},
            {"name": "get_weather", "arguments": ROME},
        ],
        "fragment_chars": 4,
        "delay_ms": 0,
        **options,
    }
    return {"name": name, "kind": "simulated", "options": script}


PLAIN = {"name": "caller", "kind": "simulated"}

# One event loop for the module, so that the refusals below share one server.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain() -> AsyncIterator[RunningServer]:
    """A server whose simulated provider calls no tools (refusals need no calls)."""
    async with running_server(load_settings(None, {"providers": [PLAIN]})) as server:
        yield server


async def refusal(server: RunningServer, body: dict[str, Any]) -> str:
    """The 400's message for a Chat Completions request."""
    async with httpx.AsyncClient() as http:
        response = await http.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 400
    message: str = response.json()["error"]["message"]
    return message


def openai_provider(upstream: ScriptedUpstream) -> dict[str, Any]:
    return {"name": "oa", "kind": "openai", "model": "m", "base_url": upstream.url + "/v1"}


@contextlib.asynccontextmanager
async def serving(
    *providers: dict[str, Any],
) -> AsyncIterator[tuple[RunningServer, openai.AsyncOpenAI]]:
    settings = load_settings(None, {"providers": list(providers)})
    async with running_server(settings) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        try:
            yield server, client
        finally:
            await client.close()


async def raw_chunks(server: RunningServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed chunks as sent, `[DONE]` checked and left off."""
    async with httpx.AsyncClient() as http:
        response = await http.post(server.url + "/v1/chat/completions", json=body)
    events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


# -- streamed calls -----------------------------------------------------------------


@pytest.mark.parametrize("interleave", [False, True])
async def test_the_sdk_stream_helper_assembles_calls_with_dense_indexes(interleave: bool) -> None:
    async with (
        serving(caller(interleave=interleave, text_before="Let me check.")) as (_, client),
        client.chat.completions.stream(
            model="caller",
            messages=ASK,
            tools=[WEATHER],  # type: ignore[list-item]
        ) as stream,
    ):
        async for _ in stream:
            pass
        completion = await stream.get_final_completion()

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    called = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in called] == [
        ("get_weather", PARIS),
        ("get_weather", ROME),
    ]
    assert all(c.id.startswith("call_") for c in called)
    assert len({c.id for c in called}) == 2


async def test_a_calls_id_type_and_name_come_in_its_first_fragment_only() -> None:
    async with serving(caller()) as (server, _):
        chunks = await raw_chunks(
            server, {"model": "caller", "messages": ASK, "tools": [WEATHER], "stream": True}
        )

    fragments = [
        call
        for chunk in chunks
        for choice in chunk["choices"]
        for call in choice["delta"].get("tool_calls", ())
    ]
    firsts = [f for f in fragments if "id" in f]
    assert [(f["index"], f["type"], f["function"]) for f in firsts] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "get_weather", "arguments": ""}),
    ]
    rest = [f for f in fragments if "id" not in f]
    assert all(
        set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in rest
    )
    by_index = {
        i: "".join(f["function"]["arguments"] for f in rest if f["index"] == i) for i in (0, 1)
    }
    assert json.loads(by_index[0]) == PARIS
    assert json.loads(by_index[1]) == ROME
    assert len(rest) > 2  # the arguments came in fragments, not whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_calls_stream_while_the_answer_is_still_running() -> None:
    # The answer stalls after its first call's fragments: they must reach the client
    # all the same (a call with no text before it opens the HTTP stream).
    async with serving(caller(stall_after=3)) as (server, _), httpx.AsyncClient() as http:
        body = {"model": "caller", "messages": ASK, "tools": [WEATHER], "stream": True}
        async with (
            asyncio.timeout(AT_ONCE),
            http.stream("POST", server.url + "/v1/chat/completions", json=body) as response,
        ):
            async for line in response.aiter_lines():
                if '"tool_calls"' in line:
                    break

    first = json.loads(line[6:])["choices"][0]["delta"]["tool_calls"][0]
    assert (first["index"], first["function"]["name"]) == (0, "get_weather")


async def test_a_whole_answer_has_message_tool_calls_and_null_content() -> None:
    async with serving(caller()) as (_, client):
        completion = await client.chat.completions.create(
            model="caller",
            messages=ASK,
            tools=[WEATHER],  # type: ignore[list-item]
        )

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    called = choice.message.tool_calls or []
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in called] == [
        ("function", "get_weather", PARIS),
        ("function", "get_weather", ROME),
    ]


async def test_calls_from_an_upstream_starting_at_index_one_reach_the_sdk_from_zero() -> None:
    # The SDK's helper raises IndexError on a first index of 1 (FACTS.md): tokenwire
    # renumbers, whatever the upstream sent.
    async with ScriptedUpstream() as upstream:
        upstream.reply = Reply(
            frames=delta_frames(
                [
                    calls(call_fragment(1, id="up_1", name="get_weather", arguments=None)),
                    calls(call_fragment(1, id="up_1", name="get_weather", arguments='{"city":')),
                    calls(call_fragment(1, id="up_1", name="get_weather", arguments='"Oslo"}')),
                ]
            )
        )
        async with (
            serving(openai_provider(upstream)) as (_, client),
            client.chat.completions.stream(
                model="oa",
                messages=ASK,
                tools=[WEATHER],  # type: ignore[list-item]
            ) as stream,
        ):
            async for _ in stream:
                pass
            completion = await stream.get_final_completion()

    [call] = completion.choices[0].message.tool_calls or []
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Oslo"},
    )
    assert call.id.startswith("call_")
    assert call.id != "up_1"


async def test_a_client_that_leaves_during_a_call_closes_the_upstream() -> None:
    async with ScriptedUpstream() as upstream:
        frames = delta_frames(
            [calls(call_fragment(0, id="up_1", name="get_weather", arguments='{"city":'))]
        )
        upstream.reply = Reply(frames=frames, cut_after=2, then="stall")
        async with serving(openai_provider(upstream)) as (server, _), httpx.AsyncClient() as http:
            body = {"model": "oa", "messages": ASK, "tools": [WEATHER], "stream": True}
            async with (
                asyncio.timeout(AT_ONCE),
                http.stream("POST", server.url + "/v1/chat/completions", json=body) as response,
            ):
                async for line in response.aiter_lines():
                    if '"tool_calls"' in line:
                        break
            exchange = await upstream.exchange()
            async with asyncio.timeout(AT_ONCE):
                await exchange.client_closed.wait()


# -- the request side ---------------------------------------------------------------


async def test_tools_choice_and_parallel_flag_reach_the_upstream() -> None:
    async with ScriptedUpstream(openai_answer(["ok"], 1, 1)) as upstream:
        async with serving(openai_provider(upstream)) as (_, client):
            await client.chat.completions.create(
                model="oa",
                messages=ASK,  # type: ignore[arg-type]
                tools=[WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False,
            )
        body = (await upstream.exchange()).json()

    assert body["tools"] == [WEATHER]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


async def test_calls_made_by_one_provider_are_answered_on_another() -> None:
    async with ScriptedUpstream(openai_answer(["Sunny", " and rainy."], 1, 1)) as upstream:
        async with serving(caller(), openai_provider(upstream)) as (_, client):
            first = await client.chat.completions.create(
                model="caller",
                messages=ASK,
                tools=[WEATHER],  # type: ignore[list-item]
            )
            message = first.choices[0].message
            called = message.tool_calls or []
            history: list[Any] = [
                *ASK,
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": called[0].id, "content": "sunny"},
                {"role": "tool", "tool_call_id": called[1].id, "content": "rainy"},
            ]
            second = await client.chat.completions.create(
                model="oa",
                messages=history,
                tools=[WEATHER],  # type: ignore[list-item]
            )
        sent = (await upstream.exchange()).json()["messages"]

    assert second.choices[0].message.content == "Sunny and rainy."
    assert sent[1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in called
            ],
        },
        {"role": "tool", "tool_call_id": called[0].id, "content": "sunny"},
        {"role": "tool", "tool_call_id": called[1].id, "content": "rainy"},
    ]


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
CALLING = {"role": "assistant", "content": None, "tool_calls": [CALL]}


@pytest.mark.parametrize(
    ("messages", "named"),
    [
        ([*ASK, CALLING], "messages[1].tool_calls: call 'call_1' has no tool message"),
        ([*ASK, CALLING, *ASK], "messages[1].tool_calls: call 'call_1' has no tool message"),
        (
            [*ASK, CALLING, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[2].tool_call_id: answers no call",
        ),
        (
            [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
            "messages[1].tool_call_id: answers no call",
        ),
        (
            [
                *ASK,
                CALLING,
                {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                {"role": "tool", "tool_call_id": "call_1", "content": "x"},
            ],
            "messages[3].tool_call_id: answers no call",
        ),
        ([*ASK, {"role": "tool", "content": "x"}], "messages[1].tool_call_id: required"),
        (
            [{"role": "user", "content": "x", "tool_calls": [CALL]}],
            "messages[0].tool_calls: only an assistant message",
        ),
        ([{"role": "assistant", "content": None}], "messages[0].content: required unless"),
        (
            [
                *ASK,
                CALLING,
                {"role": "tool", "tool_call_id": "call_1", "content": "x", "tool_calls": [CALL]},
            ],
            "messages[2].tool_calls: only an assistant message",
        ),
        (
            [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                },
            ],
            "messages[1].tool_calls[0].function.arguments: not a JSON object",
        ),
        (
            [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL, CALL]}],
            "messages[1].tool_calls[1].id: the same id twice",
        ),
    ],
)
async def test_a_history_whose_calls_and_results_do_not_match_is_a_400_naming_the_field(
    messages: list[dict[str, Any]], named: str
) -> None:
    async with serving(PLAIN) as (_, client):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="caller",
                messages=messages,
                tools=[WEATHER],  # type: ignore[arg-type, list-item]
            )

    assert named in refused.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "bad name", "parameters": {}}}]),
        ("tools", [{"type": "custom", "function": {"name": "f"}}]),
        ("tools", [WEATHER] * 129),
        ("tool_choice", "sometimes"),
    ],
)
async def test_malformed_tool_fields_are_a_400_naming_them(
    plain: RunningServer, field: str, value: Any
) -> None:
    body = {"model": "caller", "messages": ASK, field: value}

    assert field in await refusal(plain, body)


async def test_tools_forced_on_a_provider_that_calls_none_are_a_400_unsupported_feature() -> None:
    async with serving({**PLAIN, "name": "mute", "tools": False}) as (_, client):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="mute",
                messages=ASK,  # type: ignore[arg-type]
                tools=[WEATHER],  # type: ignore[list-item]
            )

    assert refused.value.code == "unsupported_feature"


async def test_auto_routes_a_request_with_tools_to_a_provider_that_calls_them() -> None:
    async with serving({**PLAIN, "name": "mute", "tools": False}, caller()) as (_, client):
        completion = await client.chat.completions.create(
            model="auto",
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )

    assert completion.model == "caller"
    assert completion.choices[0].finish_reason == "tool_calls"
