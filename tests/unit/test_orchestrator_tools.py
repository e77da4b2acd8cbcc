"""An answer that calls tools, through one request's run without sockets: the log's
tool events, stream_end's fields, cancel mid-call, malformed calls, deadlines and
fallback, compact hydration."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.support.providers import Scripted, WatchedProvider
from tests.support.waiting import AT_ONCE, eventually
from tests.unit.test_deadlines import NEVER, ask, slot
from tests.unit.test_orchestrator import make_run, simulated
from tokenwire.core.eventlog import EventLog
from tokenwire.core.hydration import compacted
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.core.spec import RequestKey
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd, ToolCallPart, ToolResultPart
from tokenwire.protocol.errors import InvalidRequest, ProviderError
from tokenwire.protocol.events import EventType
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.settings import ProviderSettings

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}
TIME = {"name": "get_time", "arguments": {"zone": "Europe/Paris", "format": "24h"}}


def scripted_calls(*calls: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"tool_calls": list(calls), "delay_ms": 0, "fragment_chars": 5, **options}


async def test_a_call_is_logged_as_start_deltas_and_end_in_seq_order() -> None:
    run, inbox = make_run(simulated(), options=scripted_calls(WEATHER))

    outcome = await run.run()

    tool_frames = [f for f in inbox.frames if f["event_type"].startswith("tool_call")]
    kinds = [f["event_type"] for f in tool_frames]
    assert kinds[0] == "tool_call_start"
    assert kinds[-1] == "tool_call_end"
    assert set(kinds[1:-1]) == {"tool_call_delta"}
    assert len(kinds) > 3  # the arguments came in several fragments
    assert [f["seq"] for f in inbox.frames] == list(range(1, len(inbox.frames) + 1))
    start, end = tool_frames[0]["data"], tool_frames[-1]["data"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", start["id"])
    assert start == {"index": 0, "id": start["id"], "name": "get_weather"}
    arguments = "".join(f["data"]["arguments"] for f in tool_frames[1:-1])
    assert json.loads(arguments) == {"city": "Paris"}
    assert end == {**start, "arguments": arguments}
    assert outcome.tool_calls == (ToolCallPart(start["id"], "get_weather", arguments),)
    assert run.tool_calls == outcome.tool_calls


async def test_stream_end_of_an_answer_that_called_tools_lists_them() -> None:
    run, inbox = make_run(simulated(), options=scripted_calls(WEATHER, TIME, interleave=True))

    await run.run()

    [end] = inbox.of("stream_end")
    ends = inbox.of("tool_call_end")
    assert end["status"] == "completed"
    assert end["finish_reason"] == "tool_calls"
    assert end["tool_calls"] == [
        {"id": e["id"], "name": e["name"], "arguments": e["arguments"]} for e in ends
    ]
    assert [c["name"] for c in end["tool_calls"]] == ["get_weather", "get_time"]
    assert [json.loads(c["arguments"]) for c in end["tool_calls"]] == [
        WEATHER["arguments"],
        TIME["arguments"],
    ]


async def test_interleaved_calls_keep_their_own_indexes_and_ids() -> None:
    run, inbox = make_run(simulated(), options=scripted_calls(WEATHER, TIME, interleave=True))

    await run.run()

    deltas = [d["index"] for d in inbox.of("tool_call_delta")]
    assert deltas[:4] == [0, 1, 0, 1]  # the fragments took turns
    starts = inbox.of("tool_call_start")
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[0]["id"] != starts[1]["id"]


async def test_text_before_a_call_is_flushed_before_the_call_starts() -> None:
    options = scripted_calls(WEATHER, text_before="Let me look that up.")
    run, inbox = make_run(simulated(), options=options)

    await run.run()

    kinds = inbox.kinds()
    text = "".join(c["chunk"] for c in inbox.of("chunk"))
    assert text == "Let me look that up."
    assert kinds.index("tool_call_start") > max(i for i, k in enumerate(kinds) if k == "chunk")


async def test_a_provider_that_says_stop_after_calling_tools_still_ends_with_tool_calls() -> None:
    says_stop = Scripted(
        [
            (0.0, ToolCallDelta(1, upstream_id="x", name="f", arguments='{"a": 1}')),
            (0.0, ToolCallEnd(1)),
        ],
        usage=Usage(prompt_tokens=3, completion_tokens=4, finish_reason="stop"),
    )
    run, inbox = make_run(says_stop)

    await run.run()

    [end] = inbox.of("stream_end")
    assert end["finish_reason"] == "tool_calls"
    assert [c["name"] for c in end["tool_calls"]] == ["f"]


async def test_a_text_answer_has_no_tool_calls_in_its_stream_end() -> None:
    run, inbox = make_run(simulated(), options={"tokens": 5, "delay_ms": 0})

    outcome = await run.run()

    [end] = inbox.of("stream_end")
    assert end["finish_reason"] == "stop"
    assert "tool_calls" not in end
    assert outcome.tool_calls == ()


async def test_arguments_that_are_not_json_end_the_answer_in_an_error_not_a_call() -> None:
    broken = {"name": "get_weather", "arguments": '{"city": "Par'}
    run, inbox = make_run(simulated(), options=scripted_calls(broken))

    outcome = await run.run()

    [error] = inbox.of("error")
    assert error["error_type"] == "provider_error"
    assert "'get_weather' with arguments that are not valid JSON" in error["error"]
    [end] = inbox.of("stream_end")
    assert end["status"] == "error"
    assert "tool_calls" not in end
    assert inbox.of("tool_call_end") == []
    assert outcome.tool_calls == ()


async def test_an_answer_that_ends_with_a_call_open_is_an_error() -> None:
    unfinished = Scripted(
        [(0.0, ToolCallDelta(0, name="f", arguments="{}"))],
        usage=Usage(prompt_tokens=1, completion_tokens=1, finish_reason="tool_calls"),
    )
    run, inbox = make_run(unfinished)

    await run.run()

    [error] = inbox.of("error")
    assert "still open" in error["error"]
    assert inbox.of("stream_end")[0]["status"] == "error"


async def test_cancel_mid_call_closes_the_provider_and_sends_no_tool_call_end() -> None:
    provider = WatchedProvider()
    options = scripted_calls(WEATHER, stall_after=3)  # start + 2 fragments, then silence
    run, inbox = make_run(provider, options=options)
    task = asyncio.create_task(run.run())
    await eventually(lambda: len(inbox.of("tool_call_delta")) >= 2)

    run.cancel("client_cancelled")
    outcome = await asyncio.wait_for(task, AT_ONCE)

    assert provider.closed.is_set()
    [end] = inbox.of("stream_end")
    assert end["status"] == "cancelled"
    assert "tool_calls" not in end
    assert inbox.of("tool_call_start") != []
    assert inbox.of("tool_call_end") == []
    assert outcome.tool_calls == ()


def test_a_tool_fragment_meets_the_first_token_deadline_and_re_arms_silence() -> None:
    # Fragments 50 s apart, each inside the 60 s first-token and silence deadlines, the
    # whole 150 s: no text at all, and the answer still completes.
    calls = Scripted(
        [
            (50.0, ToolCallDelta(0, name="f", arguments='{"a"')),
            (50.0, ToolCallDelta(0, arguments=": 1}")),
            (50.0, ToolCallEnd(0)),
        ],
        usage=Usage(prompt_tokens=1, completion_tokens=2, finish_reason="tool_calls"),
    )

    ended = ask(slot(calls))

    assert ended.end["status"] == "completed"
    assert ended.end["finish_reason"] == "tool_calls"
    assert ended.at == pytest.approx(150.0)
    assert ended.end["ttft"] is not None  # the first tool event was the first output


def test_a_call_that_stalls_mid_arguments_meets_the_silence_deadline() -> None:
    stalls = Scripted(
        [(1.0, ToolCallDelta(0, name="f", arguments='{"a"')), (NEVER, ToolCallEnd(0))]
    )

    ended = ask(slot(stalls))

    assert ended.error["deadline"] == "silence"
    assert ended.at == pytest.approx(61.0)


def test_after_a_tool_event_went_out_a_failure_falls_back_to_no_other_provider() -> None:
    class FailsMidCall(Scripted):
        async def stream(self, request: Any) -> Any:
            async for item in super().stream(request):
                yield item
            raise ProviderError("the upstream dropped mid-call")

    failing = FailsMidCall([(1.0, ToolCallDelta(0, name="f", arguments="{"))], name="failing")
    spare = Scripted([(1.0, "text")], name="spare")

    ended = ask(slot(failing), slot(spare))

    assert ended.end["status"] == "error"
    assert ended.end["provider_used"] == "failing"
    assert spare.streams == 0
    assert failing.streams == 1  # nor retried on the same provider


# -- the simulated provider's round trip ------------------------------------------------


def simulated_answer(messages: tuple[Message, ...], **options: Any) -> list[ProviderEvent]:
    provider = SimulatedProvider(
        ProviderSettings(name="sim", kind="simulated", options={"delay_ms": 0, **options})
    )

    async def collect() -> list[ProviderEvent]:
        return [item async for item in provider.stream(ProviderRequest(messages=messages))]

    return asyncio.run(collect())


def test_the_simulated_provider_answers_tool_results_with_text_that_echoes_them() -> None:
    call = ToolCallPart("call_1", "get_weather", '{"city": "Paris"}')
    turns = (
        Message(role="user", content="weather?"),
        Message.of_parts("assistant", (call,)),
        Message.of_parts("tool", (ToolResultPart("call_1", "sunny, 21 C"),)),
    )

    answer = simulated_answer(turns, tool_calls=[WEATHER])

    text = "".join(item for item in answer if isinstance(item, str))
    assert text == "results: sunny, 21 C"
    assert not any(isinstance(item, ToolCallDelta | ToolCallEnd) for item in answer)
    assert isinstance(answer[-1], Usage)
    assert answer[-1].finish_reason == "stop"


def test_the_simulated_provider_sends_arguments_in_fragment_chars_pieces() -> None:
    answer = simulated_answer((Message(role="user", content="hi"),), tool_calls=[WEATHER])

    fragments = [item.arguments for item in answer if isinstance(item, ToolCallDelta)]
    assert "".join(fragments) == json.dumps(WEATHER["arguments"])
    assert all(len(f) <= 8 for f in fragments)  # the default fragment_chars
    assert len(fragments) > 1


# -- compact hydration -------------------------------------------------------------------


def test_compact_hydration_keeps_tool_events_and_merges_the_text_on_each_side() -> None:
    log = EventLog(RequestKey("u", "r1"), "s", 1 << 20)
    log.append(EventType.STREAM_START, {"request_id": "r1"})
    for index, token in enumerate(["Let", " me", " see"]):
        log.append(EventType.TOKEN, {"token": token, "index": index})
    call = {"index": 0, "id": "call_1", "name": "f"}
    log.append(EventType.TOOL_CALL_START, call)
    log.append(EventType.TOOL_CALL_DELTA, {"index": 0, "arguments": "{}"})
    log.append(EventType.TOOL_CALL_END, {**call, "arguments": "{}"})
    for index, token in enumerate([" and", " then"], start=3):
        log.append(EventType.TOKEN, {"token": token, "index": index})

    held = compacted(log, 1)

    assert [(r.event_type.value, r.seq) for r in held] == [
        ("chunk", 4),
        ("tool_call_start", 5),
        ("tool_call_delta", 6),
        ("tool_call_end", 7),
        ("chunk", 9),
    ]
    assert [(r.data["chunk"], r.data["compacted"]) for r in held if r.seq in (4, 9)] == [
        ("Let me see", 3),
        (" and then", 2),
    ]
    assert [r.data for r in held[1:4]] == [r.data for r in log.records(4) if r.seq <= 7]


async def test_a_simulated_failure_mid_call_ends_in_an_error_without_the_call() -> None:
    run, inbox = make_run(simulated(), options=scripted_calls(WEATHER, fail_after=3))

    outcome = await run.run()

    assert len(inbox.of("tool_call_delta")) == 3  # the three deltas sent before the failure
    assert inbox.of("tool_call_end") == []
    assert inbox.of("stream_end")[0]["status"] == "error"
    assert "simulated failure after 3 deltas" in inbox.of("error")[0]["error"]
    assert outcome.tool_calls == ()


def test_a_scripted_call_with_a_name_no_tool_may_have_is_refused() -> None:
    provider = simulated()
    bad = {"tool_calls": [{"name": "get weather!", "arguments": {}}]}

    with pytest.raises(InvalidRequest, match=re.escape("config.options.tool_calls[0].name")):
        provider.validate(
            ProviderRequest(messages=(Message(role="user", content="hi"),), options=bad)
        )
