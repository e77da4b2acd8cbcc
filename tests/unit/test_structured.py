"""Structured output's checks, as plain function calls: a request's schema before anything
runs, a whole answer against it, the simulated provider's example JSON, and which schemas
the local model's grammar can hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tokenwire.core.structured import (
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    check_schema,
    from_anthropic,
    from_openai,
    judge,
    response_format,
)
from tokenwire.core.tools import ResponseFormat
from tokenwire.protocol.errors import InvalidRequest, UnsupportedFeature
from tokenwire.protocol.formats import AnthropicJsonSchema, JsonObjectFormat, JsonSchemaFormat
from tokenwire.providers.example_json import example
from tokenwire.providers.local_grammar import grammar_for

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3},
        "age": {"type": "integer", "minimum": 18},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "home": {"$ref": "#/$defs/Place"},
        "kind": {"enum": ["a", "b"]},
    },
    "required": ["name", "age", "tags", "home", "kind"],
    "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
FMT = ResponseFormat(type="json_schema", name="person", schema=PERSON)
WHERE = "response_format.json_schema.schema"


# -- the request's schema ------------------------------------------------------------


def test_a_valid_schema_becomes_the_cores_format() -> None:
    fmt = response_format("json_schema", WHERE, name="person", schema=PERSON, strict=True)

    assert fmt == ResponseFormat("json_schema", "person", PERSON, True)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ([1, 2], f"{WHERE}: must be a JSON object (a JSON Schema)"),
        ({"type": "string"}, f"{WHERE}.type: must be 'object': the answer is a JSON object"),
        ({"type": "nothing"}, f"{WHERE}.type: not a valid JSON Schema: "),
        (
            {"properties": {"age": {"minimum": "ten"}}},
            f"{WHERE}.properties.age.minimum: not a valid JSON Schema: 'ten' is not of type",
        ),
    ],
)
def test_a_schema_that_is_not_one_is_refused_naming_the_field(schema: Any, expected: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_schema(schema, WHERE)

    assert refused.value.message.startswith(expected)


def test_a_schema_nested_too_deep_is_refused() -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        schema = {"type": "object", "properties": {"x": schema}}

    with pytest.raises(InvalidRequest, match=f"nests deeper than {MAX_SCHEMA_DEPTH} levels"):
        check_schema(schema, WHERE)


def test_a_schema_too_large_is_refused() -> None:
    properties = {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(1000)}

    with pytest.raises(InvalidRequest, match=f"more than {MAX_SCHEMA_BYTES}"):
        check_schema({"type": "object", "properties": properties}, WHERE)


def test_each_shape_of_format_names_its_own_field() -> None:
    openai_shape = JsonSchemaFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}
    )
    anthropic_shape = AnthropicJsonSchema.model_validate(
        {"type": "json_schema", "schema": {"required": "name"}}
    )

    with pytest.raises(InvalidRequest, match=r"^response_format\.json_schema\.schema\.type:"):
        from_openai(openai_shape, "response_format")
    with pytest.raises(InvalidRequest, match=r"^output_config\.format\.schema\.required:"):
        from_anthropic(anthropic_shape, "output_config.format")
    assert from_openai(JsonObjectFormat(type="json_object"), "x") == ResponseFormat("json_object")
    assert from_openai(None, "x") is None


# -- the whole answer ----------------------------------------------------------------


def test_an_answer_of_the_schema_is_valid() -> None:
    answer = {"name": "Ada", "age": 36, "tags": ["a", "b"], "home": {"city": "L"}, "kind": "a"}

    assert judge(FMT, json.dumps(answer), cut=False).as_dict() == {"valid": True}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"name": "Ada"', "the answer is not JSON: "),
        ("[1, 2]", "the answer is JSON but not an object"),
        (
            '{"name": "Ada", "age": 3, "tags": ["a", "b"], "home": {}, "kind": "a"}',
            "the answer does not match the schema at $.age: 3 is less than the minimum of 18",
        ),
        ('{"name": "Ada"}', "the answer does not match the schema: 'age' is a required property"),
    ],
)
def test_an_answer_that_misses_its_schema_says_how(text: str, error: str) -> None:
    verdict = judge(FMT, text, cut=False)

    assert not verdict.valid
    assert verdict.error is not None
    assert verdict.error.startswith(error)


def test_an_answer_cut_at_max_tokens_is_never_valid_even_if_it_parses() -> None:
    verdict = judge(ResponseFormat("json_object"), "{}", cut=True)

    assert verdict.as_dict() == {
        "valid": False,
        "error": "the answer was cut at max_tokens before its JSON was complete",
    }


def test_json_object_takes_any_object() -> None:
    assert judge(ResponseFormat("json_object"), '{"anything": [1]}', cut=False).valid
    assert not judge(ResponseFormat("json_object"), '"text"', cut=False).valid


# -- the simulated provider's example ------------------------------------------------


def test_the_example_for_a_schema_meets_it() -> None:
    assert judge(FMT, json.dumps(example(PERSON)), cut=False).valid


def test_the_example_for_a_schema_without_a_type_is_an_object() -> None:
    untyped = {"unknown-keyword": [1, {}], "title": "anything"}

    assert judge(
        ResponseFormat("json_schema", schema=untyped), json.dumps(example(untyped)), cut=False
    ).valid


# -- the local model's grammar -------------------------------------------------------


def test_a_schema_the_grammar_can_hold_gets_a_grammar_built_once() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 9}}}

    first = grammar_for(ResponseFormat("json_schema", schema=schema))
    again = grammar_for(ResponseFormat("json_schema", schema=dict(reversed(schema.items()))))

    assert '"\\"city\\""' in first._grammar
    assert again is first


def test_json_object_gets_the_json_grammar() -> None:
    assert "object" in grammar_for(ResponseFormat("json_object"))._grammar


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        (PERSON, "schema.properties.age.minimum"),
        ({"type": "object", "not": {"required": ["a"]}}, "schema.not"),
        (
            {"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
            "schema.properties.a.uniqueItems",
        ),
        ({"type": "object", "allOf": [{"properties": {}}]}, "schema.allOf"),
    ],
)
def test_a_schema_the_grammar_cannot_hold_is_refused_naming_the_keyword(
    schema: dict[str, Any], where: str
) -> None:
    with pytest.raises(UnsupportedFeature, match=rf"^{where}: the local model's grammar cannot"):
        grammar_for(ResponseFormat("json_schema", schema=schema))


def test_a_schema_of_something_other_than_an_object_is_refused_by_the_grammar() -> None:
    with pytest.raises(UnsupportedFeature, match="only a schema of an object"):
        grammar_for(ResponseFormat("json_schema", schema={"type": "string"}))
