"""Tool calls and structured output, in no provider's or dialect's terms.

A request may offer `ToolSpec`s and say how the model may use them
(`ToolChoice`); an answer may then call tools instead of (or after) writing
text. Providers report a call as `ToolCallDelta` events, correlated by the
upstream's own key (an id or an index: never a position in a chunk), and end
each with `ToolCallEnd`; the core's assembler numbers the calls densely from 0,
mints tokenwire's own ids and writes `tool_call_start` / `tool_call_delta` /
`tool_call_end` events to the log (CONTRACT.md, "Tool calls and structured
output"). A finished call is a `ToolCallPart` of the assistant's turn; its
answer comes back as a `ToolResultPart` in a turn of role "tool".

Structured output (`ResponseFormat`) asks for an answer that is JSON text,
optionally matching a JSON Schema; the answer is still text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

CALL_ID_PREFIX = "call_"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: `parameters` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None
    """OpenAI's strict schema adherence, where the client asked for it."""


@dataclass(frozen=True, slots=True)
class NamedTool:
    """A tool choice that forces one tool."""

    name: str


ToolMode = Literal["auto", "none", "required"]
ToolChoice = ToolMode | NamedTool


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A call the assistant made: tokenwire's id, the tool, its arguments as JSON text
    (which parses to an object)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResultPart:
    """What a tool returned for the call `tool_call_id`."""

    tool_call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """An answer that is JSON: of `schema` (`json_schema`), or any object (`json_object`)."""

    type: Literal["json_schema", "json_object"]
    name: str | None = None
    schema: Mapping[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A provider's news of one call: any of its upstream id, its name, a fragment of its
    arguments' JSON text. `key` is what the upstream correlates fragments by (its call id,
    or its index); ids and names may repeat on every fragment, or arrive late."""

    key: str | int
    upstream_id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The call `key` is complete: its arguments are final (the upstream said so)."""

    key: str | int


StructuredOutput = Literal["native", "tool", "grammar", "none"]
"""How a provider produces structured output: natively, through a forced tool, through
a grammar, or not at all."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do beyond text (CONTRACT.md's defaults per kind)."""

    tools: bool = False
    parallel_tool_calls: bool = False
    vision: bool = False
    structured_output: StructuredOutput = "none"
