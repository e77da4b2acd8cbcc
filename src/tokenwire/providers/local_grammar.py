"""Structured output on the local model: a llama.cpp grammar built from the schema.

llama-cpp-python's converter (`json_schema_to_gbnf`) honours some JSON Schema
keywords and silently drops the rest: a schema with `minimum` would be "answered"
by JSON that breaks it. So a schema is first walked, and one that uses a keyword the
converter does not honour is refused (`unsupported_feature`), naming the keyword
and where it is, rather than given a grammar that promises less than the schema.
Keywords that only annotate (`title`, `description`, `format`, ...) are taken:
the gateway's own check does not enforce them either.

A grammar is built once per schema (the same schema comes with every request of
an application) and kept in a small cache.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from llama_cpp import llama_grammar

from tokenwire.core.tools import ResponseFormat
from tokenwire.protocol.errors import UnsupportedFeature

HONOURED = frozenset(
    {
        "type",
        "enum",
        "const",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
        "$ref",
        "anyOf",
        "oneOf",
        "$defs",
        "definitions",
    }
)
"""What the converter turns into grammar (llama-cpp-python 0.3.36)."""
ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "format",
        "$schema",
        "$id",
        "$comment",
        "readOnly",
        "writeOnly",
        "deprecated",
    }
)
"""What constrains nothing (as the gateway validates: `format` is an annotation)."""
CACHED_GRAMMARS = 64


def grammar_for(fmt: ResponseFormat) -> llama_grammar.LlamaGrammar:
    """The grammar for `fmt`: any JSON object for `json_object`, else the schema's; raises
    `UnsupportedFeature` for a schema the grammar cannot express."""
    if fmt.schema is None:
        return _json_object()
    return _schema_grammar(orjson.dumps(fmt.schema, option=orjson.OPT_SORT_KEYS).decode())


@functools.cache
def _json_object() -> llama_grammar.LlamaGrammar:
    return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)


@functools.lru_cache(maxsize=CACHED_GRAMMARS)
def _schema_grammar(schema_text: str) -> llama_grammar.LlamaGrammar:
    # A refusal is an exception, so it is not cached: it costs a walk each time it is asked.
    schema = orjson.loads(schema_text)
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise UnsupportedFeature("the local model's grammar answers only a schema of an object")
    for path, keyword in _keywords(schema, "schema"):
        if keyword not in HONOURED and keyword not in ANNOTATIONS:
            raise UnsupportedFeature(
                f"{path}.{keyword}: the local model's grammar cannot express {keyword!r}"
            )
    try:
        gbnf = llama_grammar.json_schema_to_gbnf(schema_text)
    except Exception as exc:  # the converter asserts and raises what it cannot take
        raise UnsupportedFeature(
            f"schema: the local model's grammar cannot express it ({exc})"
        ) from None
    return llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)


def _keywords(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """Every keyword of `schema` and of its subschemas, with where it is."""
    stack: list[tuple[Mapping[str, Any], str]] = [(schema, path)]
    while stack:
        node, where = stack.pop()
        for keyword, value in node.items():
            yield where, keyword
            stack.extend(_subschemas(keyword, value, f"{where}.{keyword}"))


def _subschemas(keyword: str, value: Any, where: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    if keyword in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
        yield from ((v, f"{where}.{k}") for k, v in value.items() if isinstance(v, Mapping))
    elif keyword in ("items", "additionalProperties") and isinstance(value, Mapping):
        yield value, where
    elif keyword in ("items", "prefixItems", "anyOf", "oneOf") and isinstance(value, list):
        yield from ((v, f"{where}[{i}]") for i, v in enumerate(value) if isinstance(v, Mapping))
