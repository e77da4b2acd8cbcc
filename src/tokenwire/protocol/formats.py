"""Structured output as clients ask for it, in OpenAI's and Anthropic's shapes.

OpenAI's (`config.response_format` on the WebSocket, Chat Completions'
`response_format`): `{"type": "json_schema", "json_schema": {name, schema,
strict}}`, `{"type": "json_object"}` or `{"type": "text"}`. Responses flattens the
first (`text.format`: `{"type": "json_schema", name, schema, strict}`); Messages
takes `output_config.format`: `{"type": "json_schema", schema}`. These models check
the shape only; whether a schema is a valid JSON Schema within bounds is the core's
check (core/structured.py), which names the client's field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FormatName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""OpenAI's rule for a format's name."""


class _Format(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class JsonSchemaSpec(_Format):
    name: FormatName
    description: Annotated[str, Field(max_length=4096)] | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Format):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class JsonObjectFormat(_Format):
    type: Literal["json_object"]


class TextFormat(_Format):
    type: Literal["text"]


OpenAIFormat = Annotated[
    JsonSchemaFormat | JsonObjectFormat | TextFormat, Field(discriminator="type")
]


class FlatJsonSchemaFormat(_Format):
    """Responses' `text.format` for a schema: the `json_schema` object's fields inline."""

    type: Literal["json_schema"]
    name: FormatName
    description: Annotated[str, Field(max_length=4096)] | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


ResponsesFormat = Annotated[
    FlatJsonSchemaFormat | JsonObjectFormat | TextFormat, Field(discriminator="type")
]


class AnthropicJsonSchema(_Format):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")
