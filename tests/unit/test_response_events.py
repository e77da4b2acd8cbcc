"""The Responses translation of a log that holds tool calls, fed hand-made records
and read by the openai SDK's own stream state (the one `responses.stream` uses,
which raises on a changed item identity, an unfinished item, an unknown index)."""

from __future__ import annotations

from typing import Any

import pytest
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tokenwire.core.eventlog import EventLog
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.events import EventType
from tokenwire.transports.v1.response_events import ResponseStream, replayed

CALL_A = "call_" + "a" * 24
CALL_B = "call_" + "b" * 24
WEATHER = '{"city": "Paris"}'
TIME = '{"zone": "UTC"}'
TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def a_log(params: dict[str, Any] | None = None) -> EventLog:
    log = EventLog(RequestKey("ada", "resp_0123"), None, 1 << 20, clock=lambda: 1764471234.0)
    log.annotations["responses"] = {"model": "auto", "background": False, **(params or {})}
    log.append(EventType.STREAM_START, {"request_id": "resp_0123"})
    return log


def text(log: EventLog, *tokens: str) -> None:
    for token in tokens:
        log.append(EventType.TOKEN, {"token": token})


def start(log: EventLog, index: int, call_id: str, name: str) -> None:
    log.append(EventType.TOOL_CALL_START, {"index": index, "id": call_id, "name": name})


def fragment(log: EventLog, index: int, arguments: str) -> None:
    log.append(EventType.TOOL_CALL_DELTA, {"index": index, "arguments": arguments})


def end(log: EventLog, index: int, call_id: str, name: str, arguments: str) -> None:
    log.append(
        EventType.TOOL_CALL_END,
        {"index": index, "id": call_id, "name": name, "arguments": arguments},
    )


def call(log: EventLog, index: int, call_id: str, name: str, arguments: str) -> None:
    start(log, index, call_id, name)
    half = len(arguments) // 2
    fragment(log, index, arguments[:half])
    fragment(log, index, arguments[half:])
    end(log, index, call_id, name, arguments)


def finish(log: EventLog, status: str = "completed", finish_reason: str = "tool_calls") -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    log.append(
        EventType.STREAM_END,
        {"status": status, "finish_reason": finish_reason, "usage": usage},
    )


def events_of(log: EventLog) -> list[dict[str, Any]]:
    stream = ResponseStream(log)
    return [event for record in log.records(0) for event in stream.feed(record)]


def read_by_the_sdk(events: list[dict[str, Any]]) -> Any:
    """The final response as `responses.stream` makes it of these events: it raises
    where they are wrong (each event is validated against the SDK's types first)."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=TOOLS, text_format=omit)
    seen = [out for event in events for out in state.handle_event(EVENTS.validate_python(event))]
    assert seen[-1].type == "response.completed"
    return seen[-1].response


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


def test_text_before_a_call_is_item_0_closed_before_the_call_opens() -> None:
    log = a_log()
    text(log, "Let me ", "check.")
    call(log, 0, CALL_A, "get_weather", WEATHER)
    finish(log)

    events = events_of(log)

    assert kinds(events) == [
        "created",
        "in_progress",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    assert [e.get("output_index") for e in events[2:9]] == [0] * 7
    assert [e.get("output_index") for e in events[9:14]] == [1] * 5
    read_by_the_sdk(events)


def test_an_answer_that_only_calls_opens_no_message_item() -> None:
    log = a_log()
    call(log, 0, CALL_A, "get_weather", WEATHER)
    finish(log)

    events = events_of(log)

    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [(0, "function_call")]
    final = Response.model_validate(events[-1]["response"])
    assert [item.type for item in final.output] == ["function_call"]
    assert final.output_text == ""


def test_a_call_keeps_its_fc_and_call_ids_from_added_to_done() -> None:
    log = a_log()
    call(log, 0, CALL_A, "get_weather", WEATHER)
    finish(log)

    events = events_of(log)

    items = [e["item"] for e in events if e["type"].startswith("response.output_item.")]
    assert [(i["id"], i["call_id"], i["status"]) for i in items] == [
        ("fc_" + "a" * 24, CALL_A, "in_progress"),
        ("fc_" + "a" * 24, CALL_A, "completed"),
    ]
    assert items[0]["arguments"] == ""
    assert items[1]["arguments"] == WEATHER
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert {e["item_id"] for e in deltas} == {"fc_" + "a" * 24}
    assert "".join(e["delta"] for e in deltas) == WEATHER


def test_parallel_calls_interleaved_reach_their_own_items() -> None:
    log = a_log()
    start(log, 0, CALL_A, "get_weather")
    start(log, 1, CALL_B, "get_time")
    fragment(log, 1, '{"zone": ')
    fragment(log, 0, '{"city": ')
    fragment(log, 1, '"UTC"}')
    fragment(log, 0, '"Paris"}')
    end(log, 1, CALL_B, "get_time", TIME)
    end(log, 0, CALL_A, "get_weather", WEATHER)
    finish(log)

    final = read_by_the_sdk(events_of(log))

    assert [(o.call_id, o.name, o.arguments) for o in final.output] == [
        (CALL_A, "get_weather", WEATHER),
        (CALL_B, "get_time", TIME),
    ]


def test_text_after_a_call_opens_a_message_item_of_its_own() -> None:
    log = a_log()
    text(log, "First.")
    call(log, 0, CALL_A, "get_weather", WEATHER)
    text(log, "Then.")
    finish(log)

    events = events_of(log)

    final = read_by_the_sdk(events)
    assert [(o.type, o.id) for o in final.output] == [
        ("message", "msg_0123"),
        ("function_call", "fc_" + "a" * 24),
        ("message", "msg_0123_2"),
    ]
    assert final.output_text == "First.Then."


def test_the_final_response_lists_the_calls_and_echoes_the_tools() -> None:
    log = a_log({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False})
    text(log, "Checking.")
    call(log, 0, CALL_A, "get_weather", WEATHER)
    finish(log)

    final = Response.model_validate(replayed(log).response())

    assert final.status == "completed"
    assert final.tool_choice == "required"
    assert final.parallel_tool_calls is False
    assert [t.model_dump(exclude_none=True) for t in final.tools] == TOOLS
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output[1].model_dump(exclude_none=True) == {
        "id": "fc_" + "a" * 24,
        "type": "function_call",
        "status": "completed",
        "call_id": CALL_A,
        "name": "get_weather",
        "arguments": WEATHER,
    }


def test_a_response_without_tools_echoes_openai_s_defaults() -> None:
    log = a_log()
    text(log, "Hi.")
    finish(log, finish_reason="stop")

    final = Response.model_validate(replayed(log).response())

    assert (final.tools, final.tool_choice, final.parallel_tool_calls) == ([], "auto", True)


def test_a_call_cut_by_a_cancel_ends_incomplete_without_final_arguments() -> None:
    log = a_log()
    start(log, 0, CALL_A, "get_weather")
    fragment(log, 0, '{"ci')
    finish(log, status="cancelled", finish_reason="stop")

    events = events_of(log)

    assert kinds(events)[-3:] == [
        "function_call_arguments.delta",
        "output_item.done",
        "cancelled",
    ]
    assert events[-2]["item"]["status"] == "incomplete"
    assert events[-2]["item"]["call_id"] == CALL_A
    assert events[-1]["response"]["output"] == [events[-2]["item"]]


def test_a_response_in_progress_shows_the_call_so_far() -> None:
    log = a_log()
    start(log, 0, CALL_A, "get_weather")
    fragment(log, 0, '{"city"')

    now = replayed(log).response()

    assert now["status"] == "in_progress"
    assert now["output"] == [
        {
            "id": "fc_" + "a" * 24,
            "type": "function_call",
            "status": "in_progress",
            "call_id": CALL_A,
            "name": "get_weather",
            "arguments": '{"city"',
        }
    ]


def test_sequence_numbers_are_gapless_and_the_same_on_every_reading() -> None:
    log = a_log()
    text(log, "a", "b")
    call(log, 0, CALL_A, "get_weather", WEATHER)
    call(log, 1, CALL_B, "get_time", TIME)
    finish(log)

    first, second = events_of(log), events_of(log)

    assert [e["sequence_number"] for e in first] == list(range(len(first)))
    assert first == second


@pytest.mark.parametrize("cut", range(3, 20))
def test_resuming_after_any_event_gives_exactly_the_rest(cut: int) -> None:
    log = a_log()
    text(log, "a")
    call(log, 0, CALL_A, "get_weather", WEATHER)
    call(log, 1, CALL_B, "get_time", TIME)
    finish(log)
    whole = events_of(log)

    rest = [e for e in events_of(log) if e["sequence_number"] > cut]

    assert whole[: cut + 1] + rest == whole


def test_the_end_s_arguments_are_the_call_s_even_without_fragments() -> None:
    # A call with no arguments may send no fragment; its end still says "{}".
    log = a_log()
    start(log, 0, CALL_A, "now")
    end(log, 0, CALL_A, "now", "{}")
    finish(log)

    events = events_of(log)

    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done[0]["arguments"] == "{}"
    assert read_by_the_sdk(events).output[0].arguments == "{}"
