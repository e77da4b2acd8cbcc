"""Conversations that call tools: an answer's calls stay pending until exactly their
results come, trimming drops a call with its results, and only finished calls are kept."""

from __future__ import annotations

import json

import pytest

from tokenwire.backends.memory import MemoryConversationStore
from tokenwire.core.conversations import (
    Conversation,
    answer_turn,
    check_results,
    pending_calls,
    turn_as_json,
    turn_from_json,
    turn_tokens,
    with_pending_exchange,
)
from tokenwire.core.provider import ImagePart, Message, TextPart
from tokenwire.core.tools import ToolCallPart, ToolResultPart
from tokenwire.protocol.errors import InvalidRequest

WEATHER = ToolCallPart("call_a1", "get_weather", '{"city": "Paris"}')
TIME = ToolCallPart("call_b2", "get_time", '{"zone": "CET"}')


def user(text: str) -> Message:
    return Message(role="user", content=text)


def results(*pairs: tuple[str, str]) -> Message:
    return Message(role="tool", content="", parts=tuple(ToolResultPart(i, c) for i, c in pairs))


def asked_weather() -> tuple[Message, ...]:
    return (user("Weather and time in Paris?"), answer_turn("Let me look.", [WEATHER, TIME]))


def refusal(history: tuple[Message, ...], *new: Message) -> str:
    with pytest.raises(InvalidRequest) as caught:
        check_results(history, new, "c1")
    return str(caught.value)


def test_an_answer_that_called_tools_keeps_its_text_then_its_calls() -> None:
    turn = answer_turn("Let me look.", [WEATHER, TIME])
    assert turn.role == "assistant"
    assert turn.content == "Let me look."
    assert turn.parts == (TextPart("Let me look."), WEATHER, TIME)
    assert answer_turn("", [WEATHER]).parts == (WEATHER,)
    assert answer_turn("Sunny.", []) == Message(role="assistant", content="Sunny.")


def test_the_calls_of_the_last_answer_are_pending_until_results_follow() -> None:
    history = asked_weather()
    assert pending_calls(history) == (WEATHER, TIME)
    assert pending_calls((*history, results(("call_a1", "18 C"), ("call_b2", "09:00")))) == ()
    assert pending_calls((user("hi"), answer_turn("hello", []))) == ()
    assert pending_calls(()) == ()


def test_results_for_exactly_the_pending_calls_are_accepted_in_any_order() -> None:
    check_results(asked_weather(), (results(("call_b2", "09:00"), ("call_a1", "18 C")),), "c1")
    check_results(
        asked_weather(),
        (results(("call_a1", "18 C"), ("call_b2", "09:00")), user("And tomorrow?")),
        "c1",
    )


def test_a_new_prompt_while_calls_are_pending_is_refused_naming_them() -> None:
    said = refusal(asked_weather(), user("Never mind"))
    assert said == (
        'conversation_id: the last answer of conversation "c1" called tools whose results '
        "are pending (call_a1 (get_weather), call_b2 (get_time)): send them as tool_results"
    )


def test_a_missing_result_is_refused_naming_the_call() -> None:
    said = refusal(asked_weather(), results(("call_a1", "18 C")))
    assert said == "tool_results: missing the results of call_b2 (get_time)"


def test_a_result_for_no_pending_call_is_refused_naming_it() -> None:
    said = refusal(asked_weather(), results(("call_a1", "18 C"), ("call_zz", "?")))
    assert said.startswith('tool_results[1].tool_call_id: "call_zz" is not a pending call')


def test_results_in_a_conversation_with_nothing_pending_are_refused() -> None:
    answered = (*asked_weather(), results(("call_a1", "1"), ("call_b2", "2")))
    for history in ((), (user("hi"), answer_turn("hello", [])), answered):
        said = refusal(history, results(("call_a1", "18 C")))
        assert said == 'tool_results: conversation "c1" has no pending tool calls'


def test_a_plain_conversation_continues_as_before() -> None:
    check_results((user("hi"), answer_turn("hello", [])), (user("again"),), "c1")
    check_results((), (user("first"),), "c1")


def test_trimming_drops_a_call_and_its_results_together() -> None:
    call_turn = answer_turn("", [WEATHER])
    result_turn = results(("call_a1", "18 C"))
    final = answer_turn("It is 18 C.", [])
    bound = turn_tokens(result_turn) + turn_tokens(final) + turn_tokens(user("hi"))
    conversation = Conversation(max_tokens=bound)
    conversation.extend((user("Weather?"), call_turn, result_turn, final, user("hi")))
    turns = conversation.turns
    for i, turn in enumerate(turns):
        if turn.role == "tool":
            assert i > 0
            assert turns[i - 1].tool_calls, turns
    assert result_turn not in turns


def test_calls_and_results_count_towards_the_token_bound() -> None:
    assert turn_tokens(answer_turn("", [WEATHER])) > 0
    assert turn_tokens(results(("call_a1", "x" * 400))) >= 100


async def test_the_memory_store_keeps_calls_pending_across_lookups() -> None:
    store = MemoryConversationStore(max_tokens=4096)
    await store.extend("ada", "c1", asked_weather())
    history = await store.history("ada", "c1")
    assert pending_calls(history) == (WEATHER, TIME)
    assert await store.history("bob", "c1") == ()


def test_results_keep_the_exchange_of_their_calls_where_the_bounds_would_cut_it() -> None:
    history = (user("hi"), answer_turn("hello", []), *asked_weather())
    assert with_pending_exchange(history, ()) == asked_weather()
    assert with_pending_exchange(history, history[2:]) == history[2:]
    answered = (*asked_weather(), results(("call_a1", "1"), ("call_b2", "2")))
    assert with_pending_exchange(answered, ()) == ()


def test_turns_survive_json_as_a_shared_store_would_keep_them() -> None:
    image = ImagePart(media_type="image/png", data=b"\x89PNG\r\n\x1a\n", detail="low")
    turns = (
        Message(role="system", content="Be brief."),
        Message.of_parts("user", (TextPart("what is", {"type": "ephemeral"}), image)),
        Message.of_parts("user", (TextPart("and"), ImagePart(url="https://x.example/a.png"))),
        *asked_weather(),
        Message(
            role="tool",
            content="",
            parts=(ToolResultPart("call_a1", "18 C"), ToolResultPart("call_b2", "?", True)),
        ),
    )
    kept = [json.loads(json.dumps(turn_as_json(turn))) for turn in turns]
    assert tuple(turn_from_json(data) for data in kept) == turns
    with pytest.raises(ValueError, match="not a role"):
        turn_from_json({**kept[0], "role": "robot"})
