"""A Chat Completions request's tools and tool_choice: a definition the core cannot use
is refused naming it, in the same words as the Responses dialect (found probing what
the OpenAPI fuzz sends: these were answered 200 here and refused by the other two)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tokenwire.protocol.messages import describe_validation_error
from tokenwire.transports.v1.chat import ChatCompletionRequest

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
HI = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "auto", "messages": HI, **fields})


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        body(**fields)
    return describe_validation_error(refused.value, model=ChatCompletionRequest)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            'tools[0].function.parameters: must be a JSON Schema of type "object"',
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name: another tool has this name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name: no tool of this name in tools",
        ),
        ({"tool_choice": "required"}, 'tool_choice: "required" needs tools'),
    ],
)
def test_a_tool_definition_that_cannot_be_used_is_refused_naming_it(
    fields: dict[str, Any], expected: str
) -> None:
    assert expected in refusal(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [WEATHER], "tool_choice": "required"},
        {
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        {"tools": [{"type": "function", "function": {"name": "f"}}]},  # no parameters: {}
        {"tool_choice": "none"},
    ],
)
def test_tools_the_core_can_use_are_taken(fields: dict[str, Any]) -> None:
    assert body(**fields).model_dump(exclude_none=True).keys() >= fields.keys()


@pytest.mark.parametrize(
    ("parameters", "passed_on"),
    [
        # What the openai SDK sends for a tool of no arguments, as OpenAI takes it: the
        # last release refused it (found by the LiteLLM tool-call test).
        ({}, {"type": "object"}),
        ({"properties": {"city": {}}}, {"type": "object", "properties": {"city": {}}}),
        ({"type": "object"}, {"type": "object"}),
    ],
)
def test_a_schema_without_a_type_is_taken_as_an_object_schema(
    parameters: dict[str, Any], passed_on: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    assert body(tools=[tool]).tools[0].function.parameters == passed_on  # type: ignore[index]
