"""Tool calls on the Responses API, with the official openai SDK as the oracle: its
`responses.stream` helper raises on a changed item identity or an unfinished item;
round trips with `function_call_output`, with and without `previous_response_id`;
a background response resumed in the middle of a call."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from tests.support.providers import WatchedProvider
from tests.support.server import RunningServer, gateway_with, running_server
from tests.support.waiting import eventually
from tokenwire.core.tools import Capabilities

WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather now in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TIME_TOOL: Any = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
CALLER = Capabilities(tools=True, parallel_tool_calls=True, vision=True)
CALLS = [
    {"name": "get_weather", "arguments": {"city": "Paris"}},
    {"name": "get_time", "arguments": {"zone": "Europe/Paris"}},
]


def caller(name: str = "tooly", **options: Any) -> WatchedProvider:
    """A provider that answers every prompt with some text, then the two calls."""
    script = {"tool_calls": CALLS, "text_before": "Let me check.", "fragment_chars": 5}
    return WatchedProvider(name, **{"delay_ms": 1, **script, **options})


@contextlib.asynccontextmanager
async def sdk(*providers: Any) -> AsyncIterator[tuple[RunningServer, openai.AsyncOpenAI]]:
    async with running_server(gateway=gateway_with(*providers, capabilities=CALLER)) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        try:
            yield server, client
        finally:
            await client.close()


async def test_the_sdk_s_stream_helper_reads_text_then_parallel_calls() -> None:
    async with (
        sdk(caller(interleave=True)) as (_, client),
        client.responses.stream(
            model="tooly", input="Weather and time in Paris?", tools=[WEATHER_TOOL, TIME_TOOL]
        ) as stream,
    ):
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()

    assert final.status == "completed"
    assert final.output_text == "Let me check."
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (call["name"], call["arguments"]) for call in CALLS
    ]
    assert all(c.call_id.startswith("call_") and c.id == "fc_" + c.call_id[5:] for c in calls)
    assert [item.type for item in final.output] == ["message", "function_call", "function_call"]
    assert kinds.count("response.function_call_arguments.done") == 2
    assert [t.name for t in final.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]


async def test_a_whole_response_lists_its_calls_in_output() -> None:
    async with sdk(caller()) as (_, client):
        response = await client.responses.create(
            model="tooly",
            input="Weather in Paris?",
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
        )

    assert response.status == "completed"
    assert [item.type for item in response.output] == [
        "message",
        "function_call",
        "function_call",
    ]
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert response.parallel_tool_calls is False


async def test_a_round_trip_without_previous_response_id_sends_the_output_back() -> None:
    provider = caller()
    async with sdk(provider) as (_, client):
        first = await client.responses.create(
            model="tooly", input="Weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL]
        )
        calls = [item for item in first.output if item.type == "function_call"]
        answers = [
            {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name} ok"}
            for c in calls
        ]
        second = await client.responses.create(
            model="tooly",
            input=[{"role": "user", "content": "Weather in Paris?"}, *first.output, *answers],  # type: ignore[list-item]
            tools=[WEATHER_TOOL, TIME_TOOL],
        )
        sent = provider.requests[-1].messages

    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert [(c.id, c.name) for c in sent[1].tool_calls] == [(c.call_id, c.name) for c in calls]
    assert second.output_text == "results: get_weather ok; get_time ok"


async def test_an_output_that_answers_no_call_is_a_400_naming_it() -> None:
    async with sdk(caller()) as (_, client):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="tooly",
                input=[{"type": "function_call_output", "call_id": "call_nothing", "output": "x"}],
            )

    assert refused.value.type == "invalid_request_error"
    assert "input[0].call_id: answers no function call" in refused.value.message


async def test_input_items_list_the_calls_and_outputs_sent() -> None:
    async with sdk(caller()) as (_, client):
        first = await client.responses.create(model="tooly", input="Paris?", tools=[WEATHER_TOOL])
        calls = [item for item in first.output if item.type == "function_call"]
        answers = [
            {"type": "function_call_output", "call_id": c.call_id, "output": "ok"} for c in calls
        ]
        second = await client.responses.create(
            model="tooly",
            input=[{"role": "user", "content": "Paris?"}, *calls, *answers],  # type: ignore[list-item]
        )
        listed = [item async for item in client.responses.input_items.list(second.id, order="asc")]

    assert [item.type for item in listed] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
    ]
    assert [item.id for item in listed[1:3]] == [c.id for c in calls]
    assert [item.call_id for item in listed[3:]] == [c.call_id for c in calls]  # type: ignore[union-attr]


async def test_a_background_response_resumes_exactly_in_the_middle_of_a_call() -> None:
    async with sdk(caller(fragment_chars=2)) as (_, client):
        stream = await client.responses.create(
            model="tooly", input="Paris?", tools=[WEATHER_TOOL], stream=True, background=True
        )
        response_id, seen = "", []
        async for event in stream:
            seen.append(event)
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.function_call_arguments.delta":
                break  # the client leaves in the middle of the first call's arguments
        await stream.close()
        rest = [
            e
            async for e in await client.responses.retrieve(
                response_id, stream=True, starting_after=seen[-1].sequence_number
            )
        ]
        whole = [e async for e in await client.responses.retrieve(response_id, stream=True)]

    assert [e.to_dict() for e in seen + rest] == [e.to_dict() for e in whole]
    assert whole[-1].type == "response.completed"
    arguments = "".join(
        e.delta for e in seen + rest if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == "".join(json.dumps(call["arguments"]) for call in CALLS)


async def test_a_round_trip_with_previous_response_id_answers_its_calls() -> None:
    provider = caller()
    async with sdk(provider) as (_, client):
        first = await client.responses.create(
            model="tooly", input="Weather in Paris?", tools=[WEATHER_TOOL, TIME_TOOL]
        )
        calls = [item for item in first.output if item.type == "function_call"]
        second = await client.responses.create(
            model="tooly",
            previous_response_id=first.id,
            instructions="Be brief.",
            input=[
                {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name} ok"}
                for c in calls
            ],
            tools=[WEATHER_TOOL, TIME_TOOL],
        )
        sent = provider.requests[-1].messages

    assert [m.role for m in sent] == ["user", "assistant", "tool", "system"]
    assert sent[1].content == "Let me check."
    assert [c.id for c in sent[1].tool_calls] == [c.call_id for c in calls]
    assert [r.tool_call_id for r in sent[2].tool_results] == [c.call_id for c in calls]
    assert second.output_text == "results: get_weather ok; get_time ok"
    assert second.previous_response_id == first.id


async def test_continuing_a_response_that_called_tools_needs_their_outputs() -> None:
    async with sdk(caller()) as (_, client):
        first = await client.responses.create(
            model="tooly", input="Weather in Paris?", tools=[WEATHER_TOOL]
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="tooly", previous_response_id=first.id, input="Never mind."
            )

    call_ids = [item.call_id for item in first.output if item.type == "function_call"]
    assert refused.value.message.endswith(
        "input: comes before the function_call_output of "
        + ", ".join(f"{c} (made by previous_response_id)" for c in call_ids)
    )


async def test_a_background_response_cancelled_mid_call_ends_the_call_incomplete() -> None:
    # Stalls after the text and two fragments of the first call's arguments.
    provider = caller(text_before="", fragment_chars=3, stall_after=2)
    async with sdk(provider) as (server, client):
        started = await client.responses.create(
            model="tooly", input="Paris?", tools=[WEATHER_TOOL], background=True
        )
        await eventually(lambda: provider.deltas_sent == 2, 5)
        cancelled = await client.responses.cancel(started.id)
        events = [e async for e in await client.responses.retrieve(started.id, stream=True)]
        await eventually(lambda: server.gateway.running == 0, 5)

    assert cancelled.status == "cancelled"
    assert [(o.type, o.status) for o in cancelled.output] == [("function_call", "incomplete")]
    assert [e.type for e in events[-3:]] == [
        "response.function_call_arguments.delta",
        "response.output_item.done",
        "response.cancelled",
    ]
    assert "response.function_call_arguments.done" not in [e.type for e in events]


async def test_an_item_reference_brings_back_the_text_of_a_stored_response() -> None:
    # As the AI SDK sends the model's earlier text when the responses are stored.
    provider = caller()
    async with sdk(provider) as (_, client):
        first = await client.responses.create(model="tooly", input="Paris?", tools=[WEATHER_TOOL])
        text, *calls = first.output
        answers = [
            {"type": "function_call_output", "call_id": c.call_id, "output": "ok"}  # type: ignore[union-attr]
            for c in calls
        ]
        await client.responses.create(
            model="tooly",
            input=[
                {"role": "user", "content": "Paris?"},
                {"type": "item_reference", "id": text.id},  # type: ignore[typeddict-item]
                *calls,  # type: ignore[list-item]
                *answers,
            ],
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(
                model="tooly", input=[{"type": "item_reference", "id": "msg_" + "0" * 32}]
            )
        sent = provider.requests[-1].messages

    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].content == "Let me check."
    assert len(sent[1].tool_calls) == 2
    assert refused.value.message.endswith(
        "input[0].id: no message of a stored response has this id"
    )


async def test_tools_forced_on_a_provider_that_cannot_call_them_are_a_400() -> None:
    plain = WatchedProvider("plain")
    async with running_server(gateway=gateway_with(plain)) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model="plain", input="Paris?", tools=[WEATHER_TOOL])
        await client.close()

    assert refused.value.code == "unsupported_feature"
    assert plain.requests == []
