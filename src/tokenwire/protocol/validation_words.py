"""Pydantic's validation errors in words a client can act on (no I/O).

Pydantic's locations carry its own bookkeeping: each branch of a plain union adds
a label (`constrained-str`, `list[TextPart]`, `function-after[...]`), each branch
of a discriminated union its tag. Walking the location along the validated type
tells those apart from field names, so that the path named is the client's own
(`messages[0].content[1].type`) and the union's branches can be judged together.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from tokenwire.protocol.errors import excerpt

Part = str | int

# Errors that say only "not this type": when every branch of a union says so, the
# value fits none of them, and one message lists what would have fitted.
_KINDS = {
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
}


@dataclass(frozen=True, slots=True)
class Problem:
    path: tuple[Part, ...]
    message: str
    kind: str | None = None
    """What the value should have been, where the error says only that (see `_KINDS`)."""
    forks: tuple[int, ...] = ()
    """Where in `path` branches of plain unions were taken, outermost first."""

    def describe(self, prefix: str) -> str:
        where = _joined(((prefix,) if prefix else ()) + self.path)
        return f"{where}: {self.message}" if where else self.message


def problem(error: Mapping[str, Any], model: Any) -> Problem:
    walk = _Walk(model)
    for part in error["loc"]:
        walk.step(part)
    kind = error["type"]
    message = _message(kind, str(error["msg"]))
    discriminator, tags = walk.tags_here()
    if kind in ("union_tag_invalid", "union_tag_not_found") and discriminator and tags:
        expected = " or ".join(repr(tag) for tag in tags)
        return Problem((*walk.path, discriminator), f"expected {expected}", forks=tuple(walk.forks))
    kind_words = _KINDS.get(kind)
    if kind_words is not None:
        # Pydantic's own words may name a class ("instance of ImageUrl").
        message = f"expected {kind_words}"
    return Problem(tuple(walk.path), message, kind_words, tuple(walk.forks))


def settled(problems: list[Problem]) -> list[Problem]:
    """Judge the branches of each plain union together, outermost union first.

    A value that got past a branch's type (a list, whose item 1 is wrong) was meant for
    that branch: only its problems count. Else a branch's constraint (too long) says
    more than another's type; and where every branch refused the type, one problem
    lists the types that would have fitted."""
    groups: dict[tuple[Part, ...], list[Problem]] = {}
    order: list[Problem | tuple[Part, ...]] = []
    for p in problems:
        if not p.forks:
            order.append(p)
            continue
        key = p.path[: p.forks[0]]
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(p)
    result: list[Problem] = []
    for item in order:
        if isinstance(item, Problem):
            result.append(item)
        else:
            result.extend(settled(_judged(item, groups[item])))
    return result


def _judged(where: tuple[Part, ...], branches: list[Problem]) -> list[Problem]:
    """One union's problems, judged; the survivors no longer fork there."""
    deeper = [p for p in branches if len(p.path) > p.forks[0]]
    constraints = [p for p in branches if p.kind is None]
    if deeper or constraints:
        return [replace(p, forks=p.forks[1:]) for p in deeper or constraints]
    kinds = dict.fromkeys(p.kind for p in branches if p.kind is not None)
    return [Problem(where, "must be " + " or ".join(kinds))]


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("Input should be "):
        return "expected " + msg.removeprefix("Input should be ")
    return msg


def _joined(path: Sequence[Part]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif len(part) <= 64 and all(p.isidentifier() for p in part.split(".")):
            text += f".{part}" if text else part
        else:
            # A key is client input too: an unknown 100 KB key is quoted, not repeated.
            text += f"[{excerpt(part)}]"
    return text


class _Walk:
    """A location, followed through the type it was validated against."""

    def __init__(self, root: Any) -> None:
        self.type: Any = root
        self.path: list[Part] = []
        self.forks: list[int] = []

    def step(self, part: Part) -> None:
        current, discriminator = _unwrapped(self.type)
        branches = _branches(current)
        # At a union, pydantic's next location part names the branch: a discriminator's
        # tag, or a label for a plain union's branch. Neither is the client's.
        if len(branches) > 1 and isinstance(part, str):
            if discriminator:
                self.type = _tagged(branches, discriminator, part)
            else:
                self.forks.append(len(self.path))
                self.type = _labelled(branches, part)
            return
        self.path.append(part)
        self.type = _inside(current, part)

    def tags_here(self) -> tuple[str | None, tuple[str, ...]]:
        """The discriminator of a discriminated union where the walk ends, and its tags."""
        current, discriminator = _unwrapped(self.type)
        if discriminator is None:
            return None, ()
        return discriminator, _tags(_branches(current), discriminator)


def _unwrapped(t: Any) -> tuple[Any, str | None]:
    """`t` without `Annotated` and `| None`, and the discriminator its metadata names."""
    discriminator = None
    while True:
        if get_origin(t) is Annotated:
            for meta in t.__metadata__:
                found = getattr(meta, "discriminator", None)
                discriminator = found if isinstance(found, str) else discriminator
            t = get_args(t)[0]
            continue
        branches = _branches(t)
        if len(branches) == 1 and branches[0] is not t:
            t = branches[0]
            continue
        return t, discriminator


def _branches(t: Any) -> list[Any]:
    if get_origin(t) in (Union, types.UnionType):
        return [a for a in get_args(t) if a is not type(None)]
    return [t]


def _inside(t: Any, part: Part) -> Any:
    """The type at `part` of a value of type `t` (Any where not known)."""
    if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
        field = t.model_fields.get(part) or next(
            (f for f in t.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return Any
        if isinstance(field.discriminator, str):
            return Annotated[field.annotation, _Discriminated(field.discriminator)]
        return field.annotation
    origin, args = get_origin(t), get_args(t)
    if origin in (list, tuple, set, frozenset, Sequence) and args:
        return args[0]
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return Any


@dataclass(frozen=True, slots=True)
class _Discriminated:
    discriminator: str


def _tags(branches: list[Any], discriminator: str) -> tuple[str, ...]:
    found: list[str] = []
    for branch in branches:
        found += _literals(branch, discriminator)
    return tuple(found)


def _literals(branch: Any, discriminator: str) -> list[str]:
    if not (isinstance(branch, type) and issubclass(branch, BaseModel)):
        return []
    field = branch.model_fields.get(discriminator)
    if field is None or get_origin(field.annotation) is not Literal:
        return []
    return [str(v) for v in get_args(field.annotation)]


def _tagged(branches: list[Any], discriminator: str, tag: str) -> Any:
    return next((b for b in branches if tag in _literals(b, discriminator)), Any)


def _labelled(branches: list[Any], label: str) -> Any:
    """The branch pydantic labelled so: a model by its class name, a list by `list[...]`
    (scalars' labels, such as `constrained-str`, lead nowhere deeper)."""
    for branch in branches:
        t, _ = _unwrapped(branch)
        if isinstance(t, type) and issubclass(t, BaseModel) and t.__name__ == label:
            return branch
        origin = get_origin(t) or t
        if origin in (list, tuple, set, frozenset) and label.startswith(origin.__name__):
            return branch
        if origin is dict and label.startswith("dict"):
            return branch
    return Any
