"""A Responses request's `input` items: their models, the turns they make, and how
`input_items` lists them.

Items are messages (`type` may be left out), `function_call` (a call the model
made: the client sends it back, as it got it in a response's `output`) and
`function_call_output` (what the client's tool returned for a call). Every
output answers a call made before it: in this input, or by the response named
in `previous_response_id`; and every call is answered before the next message,
so that history never holds a call without its result. A call and the message
item just before it (the text the model wrote first) are one assistant turn;
consecutive outputs are one "tool" turn.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tokenwire.core.images import image_from_url
from tokenwire.core.provider import ImagePart, Message, Part, Role, TextPart
from tokenwire.core.tools import CALL_ID_PREFIX, ToolCallPart, ToolResultPart
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.transports.v1.response_events import function_call_item_id
from tokenwire.transports.v1.running import ImageUrl, Text

ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""A function's name as every provider takes it."""
CallId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
"""A call's id: tokenwire's own `call_...`, or another's that every provider takes."""
ItemId = Annotated[str, Field(min_length=1, max_length=160)]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class Body(BaseModel):
    """A part of a request body: keys no official API defines are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InputText(Body):
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class InputImage(Body):
    type: Literal["input_image"]
    image_url: ImageUrl | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _by_url(self) -> InputImage:
        if self.file_id is not None:
            raise ValueError(
                "file_id is not supported here (tokenwire keeps no files): "
                "send the image as image_url, a data URL or an https URL"
            )
        if self.image_url is None:
            raise ValueError("image_url is required (a data URL or an https URL)")
        return self


InputPart = Annotated[InputText | InputImage, Field(discriminator="type")]


class InputMessage(Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | Annotated[list[InputPart], Field(max_length=1000)]
    # What a response's output message carries when the client sends it back.
    id: ItemId | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCall(Body):
    """A call the model made, sent back as history."""

    type: Literal["function_call"]
    call_id: CallId
    name: ToolName
    arguments: Annotated[str, Field(max_length=1_048_576)]
    id: ItemId | None = None
    status: ItemStatus | None = None

    @field_validator("arguments")
    @classmethod
    def _an_object(cls, arguments: str) -> str:
        # Every provider takes a call's arguments as an object (Anthropic's `input`).
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("must be the JSON text of an object")
        return arguments


class OutputText(Body):
    type: Literal["input_text"]
    text: Text


class FunctionCallOutput(Body):
    """What the client's tool returned for the call `call_id` (text only here)."""

    type: Literal["function_call_output"]
    call_id: CallId
    output: Text | Annotated[list[OutputText], Field(max_length=1000)]
    id: ItemId | None = None
    status: ItemStatus | None = None

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


class ItemReference(Body):
    """An item of a stored response, by its id (the AI SDK sends the model's earlier
    text so); resolved to that item before the input makes turns."""

    type: Literal["item_reference"]
    id: ItemId


def typed_items(items: Any) -> Any:
    """`input` with each message item's `type`, which a client may leave out (OpenAI's
    easy input message); for the body's validator before the items are told apart."""
    if isinstance(items, list):
        return [
            {"type": "message", **item} if isinstance(item, dict) and "type" not in item else item
            for item in items
        ]
    return items


InputItem = Annotated[
    InputMessage | FunctionCall | FunctionCallOutput | ItemReference,
    Field(discriminator="type"),
]
Item = InputMessage | FunctionCall | FunctionCallOutput
"""An input item as it makes turns: references resolved."""
Input = Text | Annotated[list[InputItem], Field(min_length=1, max_length=10_000)]


def check_input(items: str | list[Item]) -> None:
    """An input with nothing to answer is refused, as an empty prompt is on the WebSocket."""
    if isinstance(items, str):
        if not items.strip():
            raise InvalidRequest("input: must contain more than whitespace")
        return
    if any(isinstance(item, FunctionCallOutput) for item in items):
        return
    messages = [item for item in items if isinstance(item, InputMessage)]
    if not any(_has_content(item.content) for item in messages):
        raise InvalidRequest("input: at least one message must contain more than whitespace")


def turns_of(
    items: str | list[Item],
    instructions: str | None,
    calls_before: Mapping[str, str],
) -> tuple[Message, ...]:
    """The conversation's new turns. `calls_before`: the calls (id to name) of the
    response this one continues, which the first items must answer. The instructions
    come after those answers, so that the results follow their calls."""
    turns = _Turns(calls_before).of(items)
    answers = next((i for i, turn in enumerate(turns) if turn.role != "tool"), len(turns))
    system = [Message(role="system", content=instructions)] if instructions else []
    return (*turns[:answers], *system, *turns[answers:])


class _Turns:
    """Input items gathered into turns, checking that each call gets its output."""

    def __init__(self, calls_before: Mapping[str, str]) -> None:
        self._turns: list[tuple[Role, list[Part]]] = []
        self._pending = dict.fromkeys(calls_before, "previous_response_id")
        """The calls still waiting for their output, and where each was made."""
        self._seen = set(calls_before)

    def of(self, items: str | list[Item]) -> list[Message]:
        if isinstance(items, str):
            self._message(InputMessage(role="user", content=items), "input")
        for i, item in enumerate(() if isinstance(items, str) else items):
            where = f"input[{i}]"
            if isinstance(item, FunctionCall):
                self._call(item, where)
            elif isinstance(item, FunctionCallOutput):
                self._output(item, where)
            else:
                self._message(item, where)
        if self._pending:
            raise InvalidRequest(f"input: no function_call_output for {self._unanswered()}")
        return [Message.of_parts(role, tuple(parts)) for role, parts in self._turns]

    def _call(self, item: FunctionCall, where: str) -> None:
        if item.call_id in self._seen:
            raise InvalidRequest(f"{where}.call_id: a call with this call_id came before")
        if not self._last_is("assistant"):
            self._new_turn("assistant", where)
        self._seen.add(item.call_id)
        self._pending[item.call_id] = where
        self._turns[-1][1].append(ToolCallPart(item.call_id, item.name, item.arguments))

    def _output(self, item: FunctionCallOutput, where: str) -> None:
        if self._pending.pop(item.call_id, None) is None:
            raise InvalidRequest(
                f"{where}.call_id: answers no function call waiting for its output"
            )
        if not self._last_is("tool"):
            self._turns.append(("tool", []))
        self._turns[-1][1].append(ToolResultPart(item.call_id, item.text))

    def _message(self, item: InputMessage, where: str) -> None:
        role: Role = "system" if item.role == "developer" else item.role
        parts = _parts(item.content, f"{where}.content")
        if role != "user" and any(isinstance(p, ImagePart) for p in parts):
            raise InvalidRequest(f"{where}.content: images go in user messages only")
        if not (role == "assistant" and self._pending and self._last_is("assistant")):
            self._new_turn(role, where)
        # Else the model wrote this after its calls, in the same answer: the same turn.
        self._turns[-1][1].extend(parts)

    def _new_turn(self, role: Role, where: str) -> None:
        if self._pending:
            raise InvalidRequest(
                f"{where}: comes before the function_call_output of {self._unanswered()}"
            )
        self._turns.append((role, []))

    def _last_is(self, role: Role) -> bool:
        return bool(self._turns) and self._turns[-1][0] == role

    def _unanswered(self) -> str:
        return ", ".join(
            f"{call_id} (made {'by' if made == 'previous_response_id' else 'at'} {made})"
            for call_id, made in self._pending.items()
        )


def _parts(content: str | list[InputText | InputImage], where: str) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (TextPart(content),)
    parts: list[Part] = []
    for i, part in enumerate(content):
        if isinstance(part, InputText):
            parts.append(TextPart(part.text))
        else:
            assert part.image_url is not None  # the model's validator saw to it
            parts.append(image_from_url(part.image_url, f"{where}[{i}].image_url", part.detail))
    return tuple(parts)


def listed_items(
    items: str | list[Item],
) -> list[dict[str, Any]]:
    """The request's input as the items `input_items` lists, each with its id."""
    if isinstance(items, str):
        return [_message_item("user", [{"type": "input_text", "text": items}])]
    return [_listed(item) for item in items]


def _listed(item: Item) -> dict[str, Any]:
    if isinstance(item, FunctionCall):
        fallback = (
            function_call_item_id(item.call_id)
            if item.call_id.startswith(CALL_ID_PREFIX)
            else f"fc_{uuid.uuid4().hex}"
        )
        listed = item.model_dump(exclude_none=True)
        return {**listed, "id": item.id or fallback, "status": "completed"}
    if isinstance(item, FunctionCallOutput):
        listed = item.model_dump(exclude_none=True)
        return {**listed, "id": item.id or f"fco_{uuid.uuid4().hex}", "status": "completed"}
    content = item.content
    parts: list[dict[str, Any]]
    if isinstance(content, str):
        kind = "output_text" if item.role == "assistant" else "input_text"
        parts = [{"type": kind, "text": content}]
    else:
        parts = [_listed_part(part) for part in content]
    if item.role == "assistant":
        parts = [{"annotations": [], **part} for part in parts]
    return _message_item(item.role, parts)


def _listed_part(part: InputText | InputImage) -> dict[str, Any]:
    listed = part.model_dump(exclude_none=True)
    # A data URL's bytes are not kept for the listing: each retained response would
    # hold up to `max_image_request_bytes` more, outside every bound on images.
    if isinstance(part, InputImage) and (part.image_url or "").startswith("data:"):
        listed["image_url"] = None
    return listed


def _message_item(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }


def _text(content: str | list[InputText | InputImage]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, InputText))


def _has_content(content: str | list[InputText | InputImage]) -> bool:
    """More than whitespace, or an image to look at."""
    if not isinstance(content, str) and any(isinstance(p, InputImage) for p in content):
        return True
    return bool(_text(content).strip())
