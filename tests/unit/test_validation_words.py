"""Validation errors in words: the client's own field names, never pydantic's labels."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import describe_validation_error, parse_message_object


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageUrl(_Body):
    url: str


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: str | ImageUrl


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Turn(_Body):
    role: Literal["user", "assistant"]
    content: Annotated[str, Field(max_length=8)] | list[Part]


class Request(_Body):
    messages: list[Turn]
    stop: str | list[str] | None = None
    metadata: dict[str, str] | None = None


def words(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        Request.model_validate(body)
    return describe_validation_error(caught.value, model=Request)


def turn(content: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (turn(5), "messages[0].content: must be a string or a list"),
        (
            turn([{"type": "text", "text": "a"}, {"type": "video"}]),
            "messages[0].content[1].type: expected 'text' or 'image_url'",
        ),
        (turn([{"text": "a"}]), "messages[0].content[0].type: expected 'text' or 'image_url'"),
        (turn([{"type": "image_url"}]), "messages[0].content[0].image_url: required"),
        (
            turn([{"type": "image_url", "image_url": 5}]),
            "messages[0].content[0].image_url: must be a string or an object",
        ),
        (
            turn([{"type": "image_url", "image_url": {"url": 5}}]),
            "messages[0].content[0].image_url.url: expected a string",
        ),
        (
            turn([{"type": "text", "text": 1}]),
            "messages[0].content[0].text: expected a string",
        ),
        (turn("far too long"), "messages[0].content: String should have at most 8 characters"),
        ({**turn("hi"), "stop": 3}, "stop: must be a string or a list"),
        ({**turn("hi"), "stop": ["a", 3]}, "stop[1]: expected a string"),
        ({**turn("hi"), "metadata": {"a b": 1}}, 'metadata["a b"]: expected a string'),
        ({**turn("hi"), "extra": 1}, "extra: unknown key"),
        ({"messages": [{"role": "user"}]}, "messages[0].content: required"),
    ],
)
def test_a_problem_is_named_by_the_client_s_path_in_words(
    body: dict[str, Any], expected: str
) -> None:
    assert words(body) == expected


def test_no_pydantic_label_or_tag_leaks() -> None:
    described = words(turn([{"type": "text", "text": 1}, {"type": "image_url", "image_url": 2}]))
    for leak in ("constrained", "list[", "function-", "TextPart", "ImagePart", "body", ".text."):
        assert leak not in described


def test_the_websocket_names_fields_the_same_way() -> None:
    frame = {"type": "ai_request", "messages": [{"role": "user", "content": 5}]}
    with pytest.raises(InvalidRequest) as caught:
        parse_message_object(frame)
    assert caught.value.message == "messages[0].content: must be a string or a list"


def test_the_websocket_s_blank_prompt_names_the_prompt() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_message_object({"type": "ai_request", "prompt": "  "})
    assert caught.value.message == "prompt: must contain more than whitespace"
