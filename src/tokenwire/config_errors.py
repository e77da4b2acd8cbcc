"""A configuration error in one line that says where the bad value came from.

A setting comes from a flag, an environment variable or the TOML file (strongest
first, as `settings.py` merges them). The message keeps its recognisable form,
`limits.max_prompt_chars: expected an integer`, and puts before it the variable
(`TOKENWIRE_LIMITS__MAX_PROMPT_CHARS: ...`) or the file and line (`tokenwire.toml:7:
...`, the form editors jump to) that gave the value; an unknown key gets the
nearest known one (`did you mean 'resume_grace_seconds'?`).

tomllib reports no positions, so the line is found by reading the file: table
headers and `key =` lines, nothing cleverer. Where that is not certain (a key
set twice, a dotted key, an inline table), the message names the file alone.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

ENV_PREFIX = "TOKENWIRE_"
PROVIDERS_VARIABLE = "TOKENWIRE_PROVIDERS"

Loc = tuple[str | int, ...]

_FRIENDLY = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}
# What a model-level check puts before its message: `providers[1].name: ...`.
_LEADING_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): ")


def nearest(name: str, known: Collection[str]) -> str | None:
    """The known name that `name` was most probably meant to be, if one is close."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def variable(table: str, key: str | None = None) -> str:
    """The environment variable of a setting: `TOKENWIRE_SERVER__PORT`."""
    return f"{ENV_PREFIX}{table.upper()}" + (f"__{key.upper()}" if key else "")


@dataclass(frozen=True)
class Sources:
    """What the settings were built from, to find where a value came from."""

    flags: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict)
    file: Path | None = None
    file_text: str = ""

    def origin(self, loc: Loc, missing: bool = False) -> str | None:
        """`TOKENWIRE_...`, `FILE:LINE` or `FILE`; None for a flag or a default."""
        if not loc or _holds(self.flags, loc):
            return None
        for name in _variables_for(loc):
            present = next((v for v in self.environ if v.upper() == name), None)
            if present is not None:
                return present
        if self.file is None:
            return None
        line = TomlLines(self.file_text).line_of(loc, missing)
        return f"{self.file}:{line}" if line else str(self.file)


def describe(exc: ValidationError, model: type[BaseModel], sources: Sources | None = None) -> str:
    """One error of `exc` in one line, with its origin and a suggestion: an unknown key
    first, since a key reported missing is often that key misspelt."""
    errors = exc.errors(include_url=False, include_input=False)
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc: Loc = tuple(err["loc"])
    message = _FRIENDLY.get(err["type"], err["msg"].removeprefix("Value error, "))
    if err["type"] == "extra_forbidden":
        message = _unknown(loc, model, sources)
    if not loc:
        # A check across keys names its key at the start of its message.
        found = _LEADING_PATH.match(message)
        text, loc = message, _parse_path(found.group(1)) if found else ()
    else:
        text = f"{dotted(loc)}: {message}"
    origin = sources.origin(loc, missing=err["type"] == "missing") if sources else None
    return f"{origin}: {text}" if origin else text


def dotted(loc: Loc) -> str:
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return where


def _parse_path(path: str) -> Loc:
    parts: list[str | int] = []
    for name, index in re.findall(r"([A-Za-z_]\w*)|\[(\d+)\]", path):
        parts.append(name if name else int(index))
    return tuple(parts)


def _unknown(loc: Loc, model: type[BaseModel], sources: Sources | None) -> str:
    known = _keys_at(model, loc[:-1])
    name = str(loc[-1])
    what = "unknown key"
    if len(loc) == 1 and sources is not None and _is_table(sources, name):
        what = "unknown table"
    guess = nearest(name, known)
    return f"{what}; did you mean {guess!r}?" if guess else what


def _is_table(sources: Sources, name: str) -> bool:
    headers = TomlLines(sources.file_text).blocks
    return any(block.name == name for block in headers)


def _keys_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts at `loc` (list indexes skipped)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return []
        current = _model_in(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X`, `list[X]` or `X | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _holds(data: Any, loc: Loc) -> bool:
    for part in loc:
        in_list = isinstance(part, int) and isinstance(data, list) and part < len(data)
        in_table = isinstance(part, str) and isinstance(data, Mapping) and part in data
        if not (in_list or in_table):
            return False
        data = data[part]
    return True


def _variables_for(loc: Loc) -> Iterator[str]:
    """The environment variables that could have given the value at `loc`."""
    table = loc[0]
    if table == "providers":
        yield PROVIDERS_VARIABLE
    elif isinstance(table, str):
        if len(loc) > 1 and isinstance(loc[1], str):
            yield variable(table, loc[1])
        yield variable(table)  # a whole table, as JSON


@dataclass
class Block:
    """A table of the file: `[name]` or the `index`th `[[name]]`, with its key lines."""

    name: str
    index: int | None
    line: int | None
    keys: dict[str, list[int]] = field(default_factory=dict)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_MULTILINE_STRING = re.compile(r'"""|\'\'\'')


class TomlLines:
    """Where tables and keys are in a TOML file's text, by line number."""

    def __init__(self, text: str) -> None:
        root = Block("", None, None)
        self.blocks: list[Block] = []
        arrays: dict[str, int] = {}
        current, in_string = root, False
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                in_string = len(_MULTILINE_STRING.findall(line)) % 2 == 0
                continue
            header = _HEADER.match(line)
            if header:
                name = header.group(2)
                index = None
                if header.group(1) == "[[":
                    index = arrays[name] = arrays.get(name, -1) + 1
                current = Block(name, index, number)
                self.blocks.append(current)
                continue
            key = _KEY.match(line)
            if key:
                current.keys.setdefault(key.group(1), []).append(number)
            in_string = len(_MULTILINE_STRING.findall(line)) % 2 == 1
        self.root = root

    def line_of(self, loc: Loc, missing: bool = False) -> int | None:
        """The line that set `loc`'s value (its table's header for a missing key), or
        None when the file does not say for certain."""
        table = loc[0]
        if not isinstance(table, str):
            return None
        if len(loc) == 1:
            if table in self.root.keys:
                return _only(self.root.keys[table])
            headers = [b.line for b in self.blocks if b.name == table]
            return headers[0] if headers else None
        index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
        rest = loc[2:] if index is not None else loc[1:]
        blocks = [b for b in self.blocks if b.name == table and b.index == index]
        if len(blocks) != 1:
            return None
        block = blocks[0]
        if not rest or (missing and len(rest) == 1):
            return block.line
        key = rest[0]
        return _only(block.keys.get(key, [])) if isinstance(key, str) else None


def _only(lines: list[int]) -> int | None:
    return lines[0] if len(lines) == 1 else None
