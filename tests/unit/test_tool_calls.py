"""The tool-call assembler with plain function calls: each upstream quirk it absorbs,
each malformed answer it refuses, and a property over random splits and interleavings."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwire.core.tool_calls import (
    CallEnded,
    CallFragment,
    CallStarted,
    ToolCallAssembler,
    ToolCallEvent,
    new_call_id,
)
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd, ToolCallPart
from tokenwire.protocol.errors import ProviderError


def numbered_ids() -> Any:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def assembler(**limits: int) -> ToolCallAssembler:
    return ToolCallAssembler(new_id=numbered_ids(), **limits)


def play(items: list[ToolCallDelta | ToolCallEnd], **limits: int) -> list[ToolCallEvent]:
    calls = assembler(**limits)
    return [event for item in items for event in calls.feed(item)]


def arguments_of(events: list[ToolCallEvent], index: int) -> str:
    return "".join(e.arguments for e in events if isinstance(e, CallFragment) and e.index == index)


def test_a_call_in_fragments_becomes_start_deltas_and_end() -> None:
    events = play(
        [
            ToolCallDelta(0, upstream_id="up_1", name="get_weather", arguments='{"ci'),
            ToolCallDelta(0, arguments='ty": "Paris"}'),
            ToolCallEnd(0),
        ]
    )
    assert events == [
        CallStarted(0, "call_0", "get_weather"),
        CallFragment(0, '{"ci'),
        CallFragment(0, 'ty": "Paris"}'),
        CallEnded(0, "call_0", "get_weather", '{"city": "Paris"}'),
    ]


def test_ids_are_tokenwires_own_call_and_24_hex() -> None:
    ids = {new_call_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    [started, *_] = ToolCallAssembler().feed(ToolCallDelta(0, upstream_id="toolu_x", name="f"))
    assert isinstance(started, CallStarted)
    assert started.id.startswith("call_")
    assert started.id != "toolu_x"


def test_a_first_index_of_one_is_numbered_zero() -> None:
    events = play([ToolCallDelta(1, name="f", arguments="{}"), ToolCallEnd(1)])
    assert events[0] == CallStarted(0, "call_0", "f")
    assert events[-1] == CallEnded(0, "call_0", "f", "{}")


def test_id_and_name_repeated_on_every_fragment_start_the_call_once() -> None:
    events = play(
        [
            ToolCallDelta("up_1", upstream_id="up_1", name="f", arguments='{"a"'),
            ToolCallDelta("up_1", upstream_id="up_1", name="f", arguments=": 1}"),
            ToolCallEnd("up_1"),
        ]
    )
    assert [type(e) for e in events] == [CallStarted, CallFragment, CallFragment, CallEnded]
    assert events[-1] == CallEnded(0, "call_0", "f", '{"a": 1}')


def test_a_late_name_holds_the_start_and_the_fragments_until_it_comes() -> None:
    calls = assembler()
    assert calls.feed(ToolCallDelta(0, arguments='{"q":')) == []
    assert calls.feed(ToolCallDelta(0, arguments=' "x"}')) == []
    assert calls.feed(ToolCallDelta(0, name="search")) == [
        CallStarted(0, "call_0", "search"),
        CallFragment(0, '{"q": "x"}'),
    ]
    assert calls.feed(ToolCallEnd(0)) == [CallEnded(0, "call_0", "search", '{"q": "x"}')]


def test_null_and_empty_argument_fragments_send_nothing() -> None:
    events = play(
        [
            ToolCallDelta(0, name="f", arguments=""),  # `arguments: null` arrives as ""
            ToolCallDelta(0, arguments=""),
            ToolCallDelta(0, arguments="{}"),
            ToolCallDelta(0, arguments=""),
            ToolCallEnd(0),
        ]
    )
    assert [type(e) for e in events] == [CallStarted, CallFragment, CallEnded]


def test_an_empty_first_partial_json_is_skipped() -> None:
    events = play(
        [
            ToolCallDelta("toolu_1", upstream_id="toolu_1", name="f"),
            ToolCallDelta("toolu_1", arguments=""),
            ToolCallDelta("toolu_1", arguments='{"n": 2}'),
            ToolCallEnd("toolu_1"),
        ]
    )
    assert arguments_of(events, 0) == '{"n": 2}'


def test_a_call_with_no_arguments_at_all_is_the_empty_object() -> None:
    events = play([ToolCallDelta(0, name="now"), ToolCallEnd(0)])
    assert events[1:] == [CallFragment(0, "{}"), CallEnded(0, "call_0", "now", "{}")]


def test_fragments_are_correlated_by_key_not_by_arrival() -> None:
    events = play(
        [
            ToolCallDelta("b", name="second", arguments='{"x"'),
            ToolCallDelta("a", name="first", arguments='{"y"'),
            ToolCallDelta("b", arguments=": 2}"),
            ToolCallDelta("a", arguments=": 1}"),
            ToolCallEnd("a"),
            ToolCallEnd("b"),
        ]
    )
    ends = [e for e in events if isinstance(e, CallEnded)]
    assert ends == [
        CallEnded(1, "call_1", "first", '{"y": 1}'),
        CallEnded(0, "call_0", "second", '{"x": 2}'),
    ]


def test_indexes_follow_the_order_calls_start_not_the_order_they_were_seen() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, arguments="{}"))  # no name yet: not started
    [started] = calls.feed(ToolCallDelta(1, name="named_first"))
    assert started == CallStarted(0, "call_0", "named_first")
    assert calls.feed(ToolCallDelta(0, name="named_later"))[0] == CallStarted(
        1, "call_1", "named_later"
    )


def test_a_call_is_final_only_at_its_end() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, name="f", arguments='{"a": 1}'))
    assert calls.calls == ()
    assert calls.open
    calls.feed(ToolCallEnd(0))
    assert calls.calls == (ToolCallPart("call_0", "f", '{"a": 1}'),)
    assert calls.finish() == calls.calls


def test_finish_lists_calls_by_index_whatever_order_they_ended_in() -> None:
    calls = assembler()
    for key, name in (("x", "f"), ("y", "g")):
        calls.feed(ToolCallDelta(key, name=name, arguments="{}"))
    calls.feed(ToolCallEnd("y"))
    calls.feed(ToolCallEnd("x"))
    assert [c.name for c in calls.finish()] == ["f", "g"]


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ('{"city": "Par', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"text"', "not a JSON object"),
        ('{"x": NaN}', "not valid JSON"),
        (" ", "not valid JSON"),
    ],
)
def test_arguments_that_are_not_a_json_object_are_an_error_not_a_call(
    arguments: str, why: str
) -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, name="get_weather", arguments=arguments))
    with pytest.raises(ProviderError, match=f"called 'get_weather' with arguments that are {why}"):
        calls.feed(ToolCallEnd(0))
    assert calls.calls == ()


def test_a_call_that_never_got_a_name_is_an_error() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, arguments="{}"))
    with pytest.raises(ProviderError, match="has no name"):
        calls.feed(ToolCallEnd(0))


def test_an_answer_that_ends_with_a_call_open_is_an_error() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, name="f", arguments="{}"))
    with pytest.raises(ProviderError, match="still open"):
        calls.finish()


def test_an_answer_that_ends_with_a_nameless_call_pending_is_an_error() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, arguments="{}"))
    with pytest.raises(ProviderError, match="still open"):
        calls.finish()


def test_an_end_for_an_unknown_call_is_an_error() -> None:
    with pytest.raises(ProviderError, match="not open"):
        assembler().feed(ToolCallEnd(3))


def test_a_fragment_after_the_end_is_an_error() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, name="f", arguments="{}"))
    calls.feed(ToolCallEnd(0))
    with pytest.raises(ProviderError, match="after its end"):
        calls.feed(ToolCallDelta(0, arguments="{}"))


def test_a_name_that_changes_is_an_error() -> None:
    calls = assembler()
    calls.feed(ToolCallDelta(0, name="f"))
    with pytest.raises(ProviderError, match="changed its name"):
        calls.feed(ToolCallDelta(0, name="g"))


def test_more_calls_than_the_cap_is_an_error() -> None:
    calls = assembler(max_calls=3)
    for key in range(3):
        calls.feed(ToolCallDelta(key, name="f"))
    with pytest.raises(ProviderError, match="more than 3 tool calls"):
        calls.feed(ToolCallDelta(3, name="f"))


def test_arguments_past_the_byte_cap_are_an_error() -> None:
    calls = assembler(max_argument_bytes=10)
    calls.feed(ToolCallDelta(0, name="f", arguments='{"a": "é'))  # 9 bytes in UTF-8
    with pytest.raises(ProviderError, match="passed 10 bytes"):
        calls.feed(ToolCallDelta(0, arguments='é"}'))


# -- property: any split and interleaving of N calls reassembles exactly ----------------

call_arguments = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()),
    max_size=4,
)


@st.composite
def parallel_calls(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[Any]]:
    """N calls (name, arguments JSON), and a stream of their fragments: each call cut at
    random points, the calls' fragments interleaved at random, each call ended after its
    last fragment, keys as an upstream might give them (ids or indexes from 1)."""
    count = draw(st.integers(min_value=1, max_value=6))
    calls = [
        (f"tool_{i}", json.dumps(draw(call_arguments), ensure_ascii=draw(st.booleans())))
        for i in range(count)
    ]
    use_ids = draw(st.booleans())
    queues: list[list[ToolCallDelta | ToolCallEnd]] = []
    for number, (name, arguments) in enumerate(calls):
        key: str | int = f"up_{number}" if use_ids else number + 1
        cuts = sorted(draw(st.sets(st.integers(0, len(arguments)), max_size=6)))
        pieces = [arguments[a:b] for a, b in itertools.pairwise([0, *cuts, len(arguments)])]
        late_name = draw(st.booleans()) and len(pieces) > 1
        repeat = draw(st.booleans())
        items: list[ToolCallDelta | ToolCallEnd] = []
        for position, piece in enumerate(pieces):
            named = (position == 1) if late_name else (position == 0 or repeat)
            items.append(ToolCallDelta(key, name=name if named else None, arguments=piece))
        items.append(ToolCallEnd(key))
        queues.append(items)
    stream: list[Any] = []
    while any(queues):
        pick = draw(st.sampled_from([q for q in queues if q]))
        stream.append(pick.pop(0))
    return calls, stream


@settings(max_examples=300, deadline=None)
@given(parallel_calls())
def test_random_splits_and_interleavings_reassemble_exactly(
    case: tuple[list[tuple[str, str]], list[ToolCallDelta | ToolCallEnd]],
) -> None:
    calls, stream = case
    assembler_ = assembler()
    events = [event for item in stream for event in assembler_.feed(item)]
    finished = assembler_.finish()

    starts = [e for e in events if isinstance(e, CallStarted)]
    assert [s.index for s in starts] == list(range(len(calls)))  # dense, in start order
    by_name = {name: arguments for name, arguments in calls}
    assert sorted((c.name, c.arguments) for c in finished) == sorted(by_name.items())
    for start in starts:
        streamed = arguments_of(events, start.index)
        assert streamed == by_name[start.name]
        [end] = [e for e in events if isinstance(e, CallEnded) and e.index == start.index]
        assert (end.id, end.name, end.arguments) == (start.id, start.name, streamed)
        # every fragment of a call comes after its start and before its end
        positions = [
            n
            for n, e in enumerate(events)
            if not isinstance(e, CallStarted) and e.index == start.index
        ]
        assert min(positions) > events.index(start)
        assert isinstance(events[max(positions)], CallEnded)
