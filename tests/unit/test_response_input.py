"""A Responses request's tools and input items, as the core receives them: function
tools and choices, calls sent back as history, their outputs answering exactly the
calls made before them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tokenwire.core.provider import Message, TextPart
from tokenwire.core.tools import NamedTool, ToolCallPart, ToolResultPart, ToolSpec
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import describe_validation_error
from tokenwire.transports.v1.response_input import listed_items, turns_of
from tokenwire.transports.v1.responses import ResponseCreateRequest

CALL_A = "call_" + "a" * 24
CALL_B = "call_" + "b" * 24
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def body(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "auto", "input": "hi", **fields})


def refusal(**fields: Any) -> str:
    """The body's refusal in the words a client reads."""
    with pytest.raises(ValidationError) as refused:
        body(**fields)
    return describe_validation_error(refused.value, model=ResponseCreateRequest)


def a_call(call_id: str = CALL_A, arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": "get_weather",
        "arguments": arguments,
    }


def an_output(call_id: str = CALL_A, output: Any = "18 C") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def turns(items: list[dict[str, Any]], **calls_before: str) -> tuple[Message, ...]:
    return turns_of(body(input=items).input, None, calls_before)


def problem(items: list[dict[str, Any]], **calls_before: str) -> str:
    with pytest.raises(InvalidRequest) as refused:
        turns(items, **calls_before)
    return str(refused.value)


# -- tools ----------------------------------------------------------------------------


def test_function_tools_and_a_named_choice_reach_the_core() -> None:
    request = body(
        tools=[{**WEATHER, "description": "Weather now", "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )

    assert request.tool_specs() == (
        ToolSpec("get_weather", "Weather now", {"type": "object"}, strict=True),
    )
    assert request.choice() == NamedTool("get_weather")
    assert request.parallel_tool_calls is False


def test_a_tool_without_parameters_takes_an_empty_object() -> None:
    request = body(tools=[{"type": "function", "name": "now"}], tool_choice="required")

    assert request.tool_specs() == (ToolSpec("now", "", {"type": "object"}),)
    assert request.choice() == "required"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type: only function tools"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type: only function tools"),
        ({"tools": [{**WEATHER, "name": "get weather"}]}, "tools[0].name: String should match"),
        (
            {"tools": [{**WEATHER, "parameters": {"type": "string"}}]},
            'tools[0].parameters: must be a JSON Schema of type "object"',
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name: another tool has this name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}},
            "tool_choice.name: no tool of this name in tools",
        ),
        ({"tool_choice": "required"}, 'tool_choice: "required" needs tools'),
        ({"tools": [WEATHER] * 129}, "tools: List should have at most 128 items"),
        # Found by the OpenAPI fuzz: a tools that is no list was a 500.
        ({"tools": True}, "tools: expected a list"),
        ({"tools": {"type": "web_search"}}, "tools: expected a list"),
    ],
)
def test_a_tool_definition_that_cannot_be_used_is_refused_naming_it(
    fields: dict[str, Any], expected: str
) -> None:
    assert refusal(**fields).startswith(expected)


# -- input items ----------------------------------------------------------------------


def test_calls_sent_back_with_their_outputs_are_an_assistant_turn_then_a_tool_turn() -> None:
    sent = turns(
        [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "message", "role": "assistant", "content": "Checking."},
            a_call(CALL_A),
            a_call(CALL_B, '{"city": "Rome"}'),
            an_output(CALL_A),
            an_output(
                CALL_B, [{"type": "input_text", "text": "21 "}, {"type": "input_text", "text": "C"}]
            ),
        ]
    )

    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].parts == (
        TextPart("Checking."),
        ToolCallPart(CALL_A, "get_weather", '{"city": "Paris"}'),
        ToolCallPart(CALL_B, "get_weather", '{"city": "Rome"}'),
    )
    assert sent[2].tool_results == (
        ToolResultPart(CALL_A, "18 C"),
        ToolResultPart(CALL_B, "21 C"),
    )


def test_a_response_s_output_sent_back_as_it_came_is_taken() -> None:
    # What the SDK sends for `input=[..., *response.output, output]`.
    output_message = {
        "id": "msg_1",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []}
        ],
    }
    call = {**a_call(), "id": "fc_" + "a" * 24, "status": "completed"}

    sent = turns([{"role": "user", "content": "Paris?"}, output_message, call, an_output()])

    assert [m.role for m in sent] == ["user", "assistant", "tool"]


def test_outputs_answer_the_calls_of_the_previous_response_before_the_instructions() -> None:
    request = body(input=[an_output(CALL_A), {"role": "user", "content": "And tomorrow?"}])

    sent = turns_of(request.input, "Be brief.", {CALL_A: "get_weather"})

    assert [m.role for m in sent] == ["tool", "system", "user"]
    assert sent[0].tool_results == (ToolResultPart(CALL_A, "18 C"),)


def test_an_output_that_answers_no_call_is_refused_naming_it() -> None:
    assert problem([an_output(CALL_B)], **{CALL_A: "get_weather"}) == (
        "input[0].call_id: answers no function call waiting for its output"
    )


def test_a_call_of_the_previous_response_left_unanswered_is_refused() -> None:
    assert problem([{"role": "user", "content": "Never mind"}], **{CALL_A: "get_weather"}) == (
        f"input[0]: comes before the function_call_output of {CALL_A} "
        "(made by previous_response_id)"
    )


def test_a_plain_string_input_cannot_leave_the_previous_calls_unanswered() -> None:
    with pytest.raises(InvalidRequest, match=r"^input: comes before the function_call_output"):
        turns_of("Never mind.", None, {CALL_A: "get_weather"})


def test_a_call_without_its_output_is_refused_naming_it() -> None:
    assert problem([{"role": "user", "content": "Paris?"}, a_call()]) == (
        f"input: no function_call_output for {CALL_A} (made at input[1])"
    )


def test_an_output_before_its_call_is_refused() -> None:
    assert problem([an_output(), a_call()]) == (
        "input[0].call_id: answers no function call waiting for its output"
    )


def test_one_call_answered_twice_is_refused() -> None:
    assert problem([a_call(), an_output(), an_output()]) == (
        "input[2].call_id: answers no function call waiting for its output"
    )


def test_two_calls_with_one_call_id_are_refused() -> None:
    assert problem([a_call(), an_output(), a_call()]) == (
        "input[2].call_id: a call with this call_id came before"
    )


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (a_call(arguments="[1, 2]"), "input[0].arguments: must be the JSON text of an object"),
        (a_call(arguments="{"), "input[0].arguments: must be the JSON text of an object"),
        (a_call(call_id="call 1"), "input[0].call_id: String should match"),
        ({**a_call(), "name": ""}, "input[0].name: String should match"),
        (
            {"type": "reasoning", "summary": []},
            "input[0].type: expected 'message' or 'function_call' or 'function_call_output'",
        ),
    ],
)
def test_a_malformed_item_is_refused_naming_it(item: dict[str, Any], expected: str) -> None:
    assert refusal(input=[item]).startswith(expected)


def test_input_items_list_calls_and_outputs_with_ids() -> None:
    listed = listed_items(body(input=[a_call(), an_output()]).input)

    assert listed[0] == {**a_call(), "id": "fc_" + "a" * 24, "status": "completed"}
    assert listed[1]["id"].startswith("fco_")
    assert {k: v for k, v in listed[1].items() if k != "id"} == {
        **an_output(),
        "status": "completed",
    }


def test_a_schema_without_a_type_is_taken_as_an_object_schema() -> None:
    request = body(tools=[{"type": "function", "name": "now", "parameters": {}}])

    assert request.tool_specs() == (ToolSpec("now", "", {"type": "object"}),)
