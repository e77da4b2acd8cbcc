"""Tool calls in the Messages dialect: Anthropic's `tools`, `tool_choice`, `tool_use`
and `tool_result` blocks, as the core's neutral types, and the answer's calls back
as `tool_use` blocks.

A call's id on this dialect is tokenwire's own call id, unchanged (`call_...`): no
prefix to add or strip, so an id a client sends back is the id the core knows. Ids a
client made elsewhere (Anthropic's `toolu_...`) pass through as they are.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenwire.core.provider import Message, Part
from tokenwire.core.tools import NamedTool, ToolCallPart, ToolChoice, ToolResultPart, ToolSpec
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.transports.v1.fields import refusing
from tokenwire.transports.v1.running import Text

NO_TOOLSETS = "toolsets are not offered"
# A call's caller as the SDK may send it back: {"type": "direct"} asks for nothing.
Caller = Annotated[None, refusing("programmatic tool calling is not offered", {"type": "direct"})]

ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ToolUseId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,256}$")]


class Body(BaseModel):
    """A part of a request body: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CacheControl(Body):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class ToolParam(Body):
    """A client tool (Anthropic's server tools are not offered)."""

    name: ToolName
    description: Annotated[str, Field(max_length=100_000)] | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None


class ToolChoiceAuto(Body):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Body):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Body):
    type: Literal["tool"]
    name: ToolName
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Body):
    type: Literal["none"]


ToolChoiceParam = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ToolUseBlockParam(Body):
    """A call of an earlier answer, in an assistant turn."""

    type: Literal["tool_use"]
    id: ToolUseId
    name: ToolName
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: Caller = None
    toolset_name: Annotated[None, refusing(NO_TOOLSETS)] = None


class ResultText(Body):
    type: Literal["text"]
    text: Text
    cache_control: CacheControl | None = None


class ToolResultBlockParam(Body):
    """What a tool returned for a call, in the user turn after the call's."""

    type: Literal["tool_result"]
    tool_use_id: ToolUseId
    content: Text | Annotated[list[ResultText], Field(max_length=1000)] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: Annotated[None, refusing(NO_TOOLSETS)] = None


class ToolUseBlock(BaseModel):
    """A call of the answer, in the message object's content."""

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


def tool_specs(tools: list[ToolParam] | None) -> tuple[ToolSpec, ...]:
    specs = tuple(
        ToolSpec(tool.name, tool.description or "", tool.input_schema, tool.strict)
        for tool in tools or ()
    )
    for index, tool in enumerate(tools or ()):
        if tool.input_schema.get("type") != "object":
            raise InvalidRequest(f"tools[{index}].input_schema: type must be 'object'")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: tool names must be unique")
    return specs


def tool_choice(choice: ToolChoiceParam | None) -> tuple[ToolChoice | None, bool | None]:
    """The core's choice and its parallel_tool_calls (None: the provider's default)."""
    if choice is None:
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return "none", None
    serial = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceTool):
        return NamedTool(choice.name), serial
    return ("required" if isinstance(choice, ToolChoiceAny) else "auto"), serial


def call_part(block: ToolUseBlockParam) -> ToolCallPart:
    return ToolCallPart(block.id, block.name, json.dumps(block.input, separators=(",", ":")))


def result_part(block: ToolResultBlockParam) -> ToolResultPart:
    content = block.content
    text = "".join(t.text for t in content) if isinstance(content, list) else content or ""
    return ToolResultPart(block.tool_use_id, text, bool(block.is_error))


def split_results(role: Literal["user", "assistant"], parts: list[Part]) -> list[Message]:
    """A user turn's results become a tool turn before the rest of it (the core keeps
    results in turns of their own)."""
    results = tuple(p for p in parts if isinstance(p, ToolResultPart))
    if role != "user" or not results:
        return []
    return [Message.of_parts("tool", results)]


def check_answers(messages: tuple[Message, ...], where: list[str]) -> None:
    """Each turn's calls are answered, exactly, by results in the turn after it (as
    Anthropic has it); `where[i]` names the client's message of `messages[i]`."""
    pending: dict[str, str] = {}
    for message, name in zip(messages, where, strict=True):
        if message.role == "tool":
            _check_results(message, name, pending)
            pending = {}
            continue
        _refuse_unanswered(pending)
        ids = [call.id for call in message.tool_calls]
        if len(set(ids)) != len(ids):
            raise InvalidRequest(f"{name}: tool_use ids must be unique")
        pending = dict.fromkeys(ids, name)
    _refuse_unanswered(pending)


def _check_results(message: Message, name: str, pending: dict[str, str]) -> None:
    answered = [result.tool_call_id for result in message.tool_results]
    unknown = [i for i in answered if i not in pending]
    if unknown:
        raise InvalidRequest(
            f"{name}: unexpected tool_use_id found in tool_result blocks: {', '.join(unknown)}."
            " Each tool_result block must have a corresponding tool_use block in the"
            " previous message"
        )
    if len(set(answered)) != len(answered):
        raise InvalidRequest(f"{name}: each tool_use_id may be answered once only")
    _refuse_unanswered({i: where for i, where in pending.items() if i not in answered})


def _refuse_unanswered(pending: dict[str, str]) -> None:
    if pending:
        raise InvalidRequest(
            f"{next(iter(pending.values()))}: tool_use ids were found without tool_result"
            f" blocks immediately after: {', '.join(pending)}"
        )


def tool_use_blocks(calls: object) -> list[ToolUseBlock]:
    """The answer's calls (`stream_end`'s `tool_calls`) as tool_use blocks."""
    if not isinstance(calls, list):
        return []
    return [
        ToolUseBlock(id=str(c["id"]), name=str(c["name"]), input=json.loads(c["arguments"]))
        for c in calls
        if isinstance(c, dict)
    ]
