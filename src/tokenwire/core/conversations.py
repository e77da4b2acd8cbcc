"""Server-kept chat history, so that a client continues a chat without resending it.

A conversation belongs to its user, not to a connection: a reconnect or a
second device with the same `conversation_id` continues it. Only completed
answers become history; a cancelled or failed one leaves no trace.

An answer that called tools is kept with its calls (`ToolCallPart`s), which stay
pending until a request brings exactly their results (a "tool" turn); nothing else
may continue the conversation meanwhile. Trimming drops a call and its results
together, so that no history holds one without the other.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, get_args

from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import (
    ImagePart,
    Message,
    Part,
    Role,
    TextPart,
    estimate_tokens,
    images_of,
)
from tokenwire.core.tools import ToolCallPart, ToolResultPart
from tokenwire.protocol.errors import InvalidRequest, excerpt


class Conversation:
    """Turns of one conversation, the oldest dropped first past `max_tokens`, or past
    `images` (its images, in count and bytes, as one request may carry them)."""

    def __init__(self, max_tokens: int, images: ImageBounds | None = None) -> None:
        self._max_tokens = max_tokens
        self._images = images
        self._turns: deque[tuple[Message, int]] = deque()
        self._tokens = 0
        self.image_bytes = 0
        """Bytes of the images its turns hold (what a store bounds in all)."""

    @property
    def turns(self) -> tuple[Message, ...]:
        return tuple(message for message, _ in self._turns)

    @property
    def tokens(self) -> int:
        return self._tokens

    def extend(self, messages: Iterable[Message]) -> None:
        for message in messages:
            cost = turn_tokens(message)
            self._turns.append((message, cost))
            self._tokens += cost
        while self._turns and (self._tokens > self._max_tokens or not self._images_fit()):
            self._drop_oldest()
        self.image_bytes = sum(image.size for image in images_of(self.turns))

    def _drop_oldest(self) -> None:
        """The oldest turn, and with it the results of its calls (the "tool" turns that
        follow it), which mean nothing without them."""
        _, cost = self._turns.popleft()
        self._tokens -= cost
        while self._turns and self._turns[0][0].role == "tool":
            _, cost = self._turns.popleft()
            self._tokens -= cost

    def _images_fit(self) -> bool:
        return self._images is None or self._images.fits(self.turns)


class ConversationStore(Protocol):
    """Where conversations live (a backend); asynchronous so that a shared store fits.
    A store outside this process keeps turns as `turn_as_json` gives them."""

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        """The turns kept so far; empty for a conversation not (or no longer) kept."""

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        """Add turns that completed, starting the conversation if it is new."""


def turn_tokens(message: Message) -> int:
    """A turn's estimated tokens: its text, and its calls and results, which a provider is
    shown as well."""
    extra = "".join(call.name + call.arguments for call in message.tool_calls)
    extra += "".join(result.content for result in message.tool_results)
    return estimate_tokens(message.content + extra)


def answer_turn(text: str, calls: Sequence[ToolCallPart]) -> Message:
    """The assistant's turn of a completed answer: its text, then the calls it made."""
    if not calls:
        return Message(role="assistant", content=text)
    parts = ((TextPart(text),) if text else ()) + tuple(calls)
    return Message(role="assistant", content=text, parts=parts)


def pending_calls(history: Sequence[Message]) -> tuple[ToolCallPart, ...]:
    """The calls of the conversation's last answer, when no results have followed them."""
    if history and history[-1].role == "assistant":
        return history[-1].tool_calls
    return ()


def check_results(history: Sequence[Message], new: Sequence[Message], conversation: str) -> None:
    """Refuse (`InvalidRequest`) new turns that do not answer exactly the pending calls of
    the conversation's last answer: results for no call, missing results, or a new prompt
    while calls wait for their results."""
    pending = pending_calls(history)
    results = new[0].tool_results if new and new[0].role == "tool" else ()
    named = excerpt(conversation)
    if not pending and results:
        raise InvalidRequest(f"tool_results: conversation {named} has no pending tool calls")
    if pending and not results:
        raise InvalidRequest(
            f"conversation_id: the last answer of conversation {named} called tools whose "
            f"results are pending ({_listed(pending)}): send them as tool_results"
        )
    pending_ids = {call.id for call in pending}
    for i, result in enumerate(results):
        if result.tool_call_id not in pending_ids:
            raise InvalidRequest(
                f"tool_results[{i}].tool_call_id: {excerpt(result.tool_call_id)} is not a "
                f"pending call of conversation {named} (pending: {_listed(pending)})"
            )
    answered = {result.tool_call_id for result in results}
    missing = [call for call in pending if call.id not in answered]
    if missing:
        raise InvalidRequest(f"tool_results: missing the results of {_listed(missing)}")


def with_pending_exchange(
    history: tuple[Message, ...], fitted: tuple[Message, ...]
) -> tuple[Message, ...]:
    """`fitted` (the newest turns of `history` that fit a request's bounds), or, where it
    lost the pending calls that the request answers, the exchange that made them: results
    are never sent without their calls."""
    if fitted or not pending_calls(history):
        return fitted
    users = [i for i, message in enumerate(history) if message.role == "user"]
    return history[users[-1] if users else len(history) - 1 :]


def _listed(calls: Sequence[ToolCallPart]) -> str:
    return ", ".join(f"{call.id} ({call.name})" for call in calls)


def turn_as_json(message: Message) -> dict[str, Any]:
    """A turn as JSON values (what a shared store such as Redis keeps), calls and results
    included; `turn_from_json` gives it back equal."""
    return {
        "role": message.role,
        "content": message.content,
        "parts": [_part_as_json(part) for part in message.parts],
    }


def turn_from_json(data: Mapping[str, Any]) -> Message:
    role = data["role"]
    if role not in get_args(Role):
        raise ValueError(f"not a role: {role!r}")
    parts = tuple(_part_from_json(part) for part in data["parts"])
    return Message(role=role, content=str(data["content"]), parts=parts)


def _part_as_json(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text, "cache_control": part.cache_control}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    if isinstance(part, ToolResultPart):
        return {
            "type": "tool_result",
            "tool_call_id": part.tool_call_id,
            "content": part.content,
            "is_error": part.is_error,
        }
    data = base64.b64encode(part.data).decode("ascii") if part.data is not None else None
    return {
        "type": "image",
        "media_type": part.media_type,
        "data": data,
        "url": part.url,
        "detail": part.detail,
    }


def _part_from_json(data: Mapping[str, Any]) -> Part:
    kind = data["type"]
    if kind == "text":
        return TextPart(data["text"], data["cache_control"])
    if kind == "tool_call":
        return ToolCallPart(data["id"], data["name"], data["arguments"])
    if kind == "tool_result":
        return ToolResultPart(data["tool_call_id"], data["content"], data["is_error"])
    if kind == "image":
        raw = data["data"]
        return ImagePart(
            media_type=data["media_type"],
            data=base64.b64decode(raw) if raw is not None else None,
            url=data["url"],
            detail=data["detail"],
        )
    raise ValueError(f"not a part type: {kind!r}")
