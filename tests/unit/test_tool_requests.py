"""An `ai_request`'s tools, tool choice and tool results: every bound and malformed
definition is refused naming its field, and a valid one becomes the core's types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenwire.core.tools import NamedTool, ToolResultPart, ToolSpec
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import (
    MAX_TOOL_DESCRIPTION_CHARS,
    MAX_TOOL_PARAMETERS_BYTES,
    MAX_TOOL_RESULTS,
    MAX_TOOLS,
    AiRequest,
    parse_client_message,
)
from tokenwire.transports.requests import spec_from_ai_request

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def parse(**fields: Any) -> AiRequest:
    message = parse_client_message(json.dumps({"type": "ai_request", **fields}))
    assert isinstance(message, AiRequest)
    return message


def refusal(**fields: Any) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse(**fields)
    return str(caught.value)


def tool(**changes: Any) -> dict[str, Any]:
    return {**WEATHER, **changes}


# -- tools ------------------------------------------------------------------------


def test_tools_choice_and_parallel_become_the_generation_s() -> None:
    message = parse(
        prompt="Weather in Paris?",
        tools=[WEATHER, {"name": "now"}],
        tool_choice={"name": "get_weather"},
        parallel_tool_calls=False,
    )
    generation = spec_from_ai_request(message, "ada", None).generation
    assert generation.tools == (
        ToolSpec("get_weather", "The weather in a city", WEATHER["parameters"]),
        ToolSpec("now", "", {"type": "object", "properties": {}}),
    )
    assert generation.tool_choice == NamedTool("get_weather")
    assert generation.parallel_tool_calls is False


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_a_tool_mode_is_passed_on_as_given(choice: str) -> None:
    message = parse(prompt="hi", tools=[WEATHER], tool_choice=choice)
    assert spec_from_ai_request(message, "ada", None).generation.tool_choice == choice


def test_a_request_without_tools_asks_for_none() -> None:
    generation = spec_from_ai_request(parse(prompt="hi"), "ada", None).generation
    assert (generation.tools, generation.tool_choice, generation.parallel_tool_calls) == (
        (),
        None,
        None,
    )


@pytest.mark.parametrize("name", ["", "a" * 65, "get weather", "wetter.heute", "café"])
def test_a_tool_name_outside_the_alphabet_or_length_is_refused(name: str) -> None:
    assert refusal(prompt="hi", tools=[tool(name=name)]).startswith("tools[0].name: must be")


def test_a_name_of_64_letters_digits_underscores_and_dashes_is_accepted() -> None:
    name = "Get_weather-2" + "x" * 51
    assert parse(prompt="hi", tools=[tool(name=name)]).tools is not None


def test_a_tool_offered_twice_is_refused_naming_the_second() -> None:
    message = refusal(prompt="hi", tools=[WEATHER, {"name": "now"}, WEATHER])
    assert message == "tools[2].name: 'get_weather' is offered twice"


def test_more_tools_than_the_bound_are_refused() -> None:
    tools = [tool(name=f"t{n}") for n in range(MAX_TOOLS + 1)]
    assert refusal(prompt="hi", tools=tools).startswith("tools: ")
    assert parse(prompt="hi", tools=tools[:MAX_TOOLS]).tools is not None


@pytest.mark.parametrize(
    ("parameters", "said"),
    [
        ({"type": "string"}, 'tools[0].parameters: must be a JSON Schema of "type": "object"'),
        ({"properties": {}}, 'tools[0].parameters: must be a JSON Schema of "type": "object"'),
        ([], "tools[0].parameters: expected an object"),
        ("{}", "tools[0].parameters: expected an object"),
        (
            {"type": "object", "properties": []},
            "tools[0].parameters: properties: expected an object",
        ),
        (
            {"type": "object", "required": "city"},
            "tools[0].parameters: required: expected a list of strings",
        ),
    ],
)
def test_parameters_that_are_no_object_schema_are_refused(parameters: Any, said: str) -> None:
    assert refusal(prompt="hi", tools=[tool(parameters=parameters)]) == said


def test_parameters_larger_than_the_bound_are_refused() -> None:
    big = {"type": "object", "description": "x" * MAX_TOOL_PARAMETERS_BYTES}
    assert refusal(prompt="hi", tools=[tool(parameters=big)]) == (
        f"tools[0].parameters: is larger than {MAX_TOOL_PARAMETERS_BYTES} bytes as JSON"
    )


def test_a_description_longer_than_the_bound_is_refused() -> None:
    long = "x" * (MAX_TOOL_DESCRIPTION_CHARS + 1)
    assert refusal(prompt="hi", tools=[tool(description=long)]).startswith("tools[0].description: ")


def test_an_unknown_key_in_a_tool_is_refused() -> None:
    assert refusal(prompt="hi", tools=[tool(type="function")]) == "tools[0].type: unknown key"


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ({"name": "set_alarm"}, "tool_choice.name: 'set_alarm' is not one of 'tools'"),
        ("sometimes", "tool_choice: expected 'auto', 'none' or 'required'"),
        ({"name": "get weather"}, "tool_choice.name: must be 1 to 64"),
    ],
)
def test_a_tool_choice_that_names_no_offered_tool_is_refused(choice: Any, said: str) -> None:
    assert refusal(prompt="hi", tools=[WEATHER], tool_choice=choice).startswith(said)


def test_a_required_tool_call_without_tools_is_refused() -> None:
    assert refusal(prompt="hi", tool_choice="required") == "tool_choice: 'required' needs 'tools'"


def test_parallel_tool_calls_must_be_true_or_false() -> None:
    said = refusal(prompt="hi", tools=[WEATHER], parallel_tool_calls="yes")
    assert said == "parallel_tool_calls: expected true or false"


# -- tool results -----------------------------------------------------------------


def test_results_without_a_prompt_become_a_tool_turn() -> None:
    message = parse(
        conversation_id="c1",
        tool_results=[
            {"tool_call_id": "call_1", "content": "18 C"},
            {"tool_call_id": "call_2", "content": "no such city", "is_error": True},
        ],
    )
    spec = spec_from_ai_request(message, "ada", None)
    assert len(spec.messages) == 1
    turn = spec.messages[0]
    assert turn.role == "tool"
    assert turn.tool_results == (
        ToolResultPart("call_1", "18 C"),
        ToolResultPart("call_2", "no such city", is_error=True),
    )


def test_results_come_before_a_new_prompt() -> None:
    message = parse(
        conversation_id="c1",
        tool_results=[{"tool_call_id": "call_1", "content": "18 C"}],
        prompt="And tomorrow?",
    )
    turns = spec_from_ai_request(message, "ada", None).messages
    assert [turn.role for turn in turns] == ["tool", "user"]


def test_results_need_the_conversation_they_answer() -> None:
    said = refusal(tool_results=[{"tool_call_id": "call_1", "content": "18 C"}])
    assert said == "tool_results: need the 'conversation_id' whose calls they answer"


def test_a_call_answered_twice_is_refused() -> None:
    results = [
        {"tool_call_id": "call_1", "content": "a"},
        {"tool_call_id": "call_1", "content": "b"},
    ]
    said = refusal(conversation_id="c1", tool_results=results)
    assert said == "tool_results[1].tool_call_id: 'call_1' is answered twice"


@pytest.mark.parametrize(
    ("result", "said"),
    [
        ({"content": "x"}, "tool_results[0].tool_call_id: required"),
        ({"tool_call_id": "call_1"}, "tool_results[0].content: required"),
        ({"tool_call_id": "call 1", "content": "x"}, "tool_results[0].tool_call_id: "),
        ({"tool_call_id": "call_1", "content": {"t": 18}}, "tool_results[0].content: expected a"),
        ({"tool_call_id": "call_1", "content": "x", "is_error": 1}, "tool_results[0].is_error: "),
        ({"tool_call_id": "call_1", "content": "x", "name": "f"}, "tool_results[0].name: unknown"),
    ],
)
def test_a_malformed_result_is_refused_naming_its_field(result: Any, said: str) -> None:
    assert refusal(conversation_id="c1", tool_results=[result]).startswith(said)


def test_an_empty_or_overlong_result_list_is_refused() -> None:
    assert refusal(conversation_id="c1", tool_results=[]).startswith("tool_results: ")
    many = [{"tool_call_id": f"call_{n}", "content": ""} for n in range(MAX_TOOL_RESULTS + 1)]
    assert refusal(conversation_id="c1", tool_results=many).startswith("tool_results: ")


def test_nothing_to_answer_is_refused_naming_what_would_do() -> None:
    assert "'tool_results'" in refusal(conversation_id="c1")
