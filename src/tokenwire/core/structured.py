"""Structured output: the schemas a request may ask for, and whether an answer meets one.

A request's schema is checked before anything runs (a JSON object, bounded in size
and depth, a valid JSON Schema by the validator's own meta-schema), so that a
provider or a grammar never sees one that would fail late. An answer is checked
once it is whole: a JSON text that parses to an object and validates against the
schema. An answer cut by `max_tokens` is never valid, whatever it parses to, because
the model did not finish what it meant to write.

Validation uses `jsonschema`, which resolves no remote `$ref` unless told to: a
schema cannot make the gateway fetch anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.validators import validator_for

from tokenwire.core.tools import ResponseFormat
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.formats import (
    AnthropicJsonSchema,
    FlatJsonSchemaFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    TextFormat,
)

MAX_SCHEMA_BYTES = 64 * 1024
"""A schema's JSON text at most; real ones (pydantic models, tool arguments) are a few KB."""
MAX_SCHEMA_DEPTH = 32
"""Nesting of a schema's containers at most (each level of an object is two: `properties`
and the property's own schema)."""
MAX_ERROR_CHARS = 300
"""An answer's validation error as reported: enough to see what failed, not the answer."""

JSON_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object"}
"""What `json_object` asks for: any JSON object."""


def response_format(
    kind: str,
    where: str,
    *,
    name: str | None = None,
    schema: Mapping[str, Any] | None = None,
    strict: bool | None = None,
) -> ResponseFormat:
    """A client's format in the core's terms, its schema checked; `where` names the client's
    field of the schema in any refusal (`response_format.json_schema.schema`)."""
    if kind == "json_object":
        return ResponseFormat(type="json_object")
    if kind != "json_schema":
        raise InvalidRequest(f"{where}: unknown format type {kind!r}")
    if schema is None:
        raise InvalidRequest(f"{where}: a json_schema format needs a schema")
    check_schema(schema, where)
    return ResponseFormat(type="json_schema", name=name, schema=schema, strict=strict)


def from_openai(
    fmt: JsonSchemaFormat | JsonObjectFormat | TextFormat | None, where: str
) -> ResponseFormat | None:
    """OpenAI's `response_format` (at the client's field `where`); None for plain text."""
    if isinstance(fmt, JsonSchemaFormat):
        spec = fmt.json_schema
        return response_format(
            "json_schema",
            f"{where}.json_schema.schema",
            name=spec.name,
            schema=spec.schema_,
            strict=spec.strict,
        )
    return _plain_or_object(fmt)


def from_responses(
    fmt: FlatJsonSchemaFormat | JsonObjectFormat | TextFormat | None, where: str
) -> ResponseFormat | None:
    """Responses' `text.format`; None for plain text."""
    if isinstance(fmt, FlatJsonSchemaFormat):
        return response_format(
            "json_schema", f"{where}.schema", name=fmt.name, schema=fmt.schema_, strict=fmt.strict
        )
    return _plain_or_object(fmt)


def from_anthropic(fmt: AnthropicJsonSchema | None, where: str) -> ResponseFormat | None:
    """Anthropic's `output_config.format`: always a schema, always adhered to strictly."""
    if fmt is None:
        return None
    return response_format("json_schema", f"{where}.schema", schema=fmt.schema_, strict=True)


def _plain_or_object(fmt: JsonObjectFormat | TextFormat | None) -> ResponseFormat | None:
    return ResponseFormat(type="json_object") if isinstance(fmt, JsonObjectFormat) else None


def check_schema(schema: Any, where: str) -> None:
    """Raise `InvalidRequest` naming `where` unless `schema` is a JSON object of bounded
    size and depth that is a valid JSON Schema of an object (what every answer is)."""
    if not isinstance(schema, Mapping):
        raise InvalidRequest(f"{where}: must be a JSON object (a JSON Schema)")
    # Depth first: it is checked without recursion, and it bounds the encoder's.
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise InvalidRequest(f"{where}: nests deeper than {MAX_SCHEMA_DEPTH} levels")
    size = len(orjson.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"{where}: is {size} bytes of JSON, more than {MAX_SCHEMA_BYTES}")
    try:
        validator_for(schema).check_schema(dict(schema))
    except SchemaError as exc:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
        raise InvalidRequest(
            f"{where}{path}: not a valid JSON Schema: {_short(exc.message)}"
        ) from None
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        # An answer is a JSON object (as OpenAI's and Anthropic's APIs require too).
        raise InvalidRequest(f"{where}.type: must be 'object': the answer is a JSON object")


def schema_of(fmt: ResponseFormat) -> Mapping[str, Any]:
    """The schema an answer must meet: the request's, or any object for `json_object`."""
    return fmt.schema if fmt.schema is not None else JSON_OBJECT_SCHEMA


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an answer meets its format; `error` says why not."""

    valid: bool
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"valid": True} if self.valid else {"valid": False, "error": self.error}


CUT = Verdict(False, "the answer was cut at max_tokens before its JSON was complete")


def judge(fmt: ResponseFormat, text: str, cut: bool) -> Verdict:
    """The verdict on a whole answer: cut, not JSON, not an object, or not of the schema."""
    if cut:
        return CUT
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Verdict(False, _short(f"the answer is not JSON: {exc}"))
    if not isinstance(value, dict):
        return Verdict(False, "the answer is JSON but not an object")
    schema = schema_of(fmt)
    error = best_match(validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return Verdict(True)
    return Verdict(
        False, _short(f"the answer does not match the schema{_at(error.path)}: {error.message}")
    )


def _at(path: Iterable[Any]) -> str:
    """Where in the answer, as a JSONPath (` at $.items[2].name`), or nothing at its root."""
    steps = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return f" at ${steps}" if steps else ""


def _depth(value: Any) -> int:
    """How deep `value`'s containers nest, iteratively (a hostile schema cannot recurse)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, Mapping) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, Mapping | list))
    return deepest


def _short(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"
