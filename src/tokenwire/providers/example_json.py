"""Example JSON for a schema: what the simulated provider answers for structured output.

Enough for tests and demos, not a general generator: types, `enum`, `const`,
`properties` (every one given), `items` with `minItems`, numeric and length
minimums, `anyOf`/`oneOf`/`allOf` (the first branch; allOf merged shallowly), and
local `$ref`s (`#/$defs/...`, as pydantic writes them). What it cannot satisfy
(a `pattern`, a `format`) it answers plainly, and the gateway's own check of the
answer then says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 16
"""A recursive schema stops here (with null) rather than recurse forever."""


def example(
    schema: Mapping[str, Any], root: Mapping[str, Any] | None = None, depth: int = 0
) -> Any:
    """A value that meets `schema` where this generator knows how; `root` resolves `$ref`s."""
    root = schema if root is None else root
    if depth > MAX_DEPTH:
        return None
    schema = _resolved(schema, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example(schema[key][0], root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolved(part, root))
        return example(merged, root, depth + 1)
    untyped = "object" if depth == 0 or "properties" in schema else "string"
    kind = schema.get("type", untyped)
    if isinstance(kind, list):
        kind = (
            "object"
            if depth == 0 and "object" in kind
            else next((k for k in kind if k != "null"), "null")
        )
    return _of_type(str(kind), schema, root, depth)


def _of_type(kind: str, schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> Any:
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: example(sub, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        items = schema.get("items", {})
        count = max(1, int(schema.get("minItems", 1)))
        return [example(items, root, depth + 1) for _ in range(count)] if items else []
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, int(low) + 1) if "exclusiveMinimum" in schema else max(1, low)
        value = min(value, schema.get("maximum", value))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = "example"
    return text * max(1, -(-int(schema.get("minLength", 0)) // len(text)))


def _resolved(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """A local `$ref` followed (JSON pointer into `root`); any other schema as it is."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#"):
        return schema
    node: Any = root
    for token in filter(None, ref[1:].split("/")):
        key = token.replace("~1", "/").replace("~0", "~")
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}
