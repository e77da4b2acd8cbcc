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

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import Message, TextPart, estimate_tokens, images_of
from tokenwire.core.tools import ToolCallPart
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
    """Where conversations live (a backend); asynchronous so that a shared store fits."""

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


def _listed(calls: Sequence[ToolCallPart]) -> str:
    return ", ".join(f"{call.id} ({call.name})" for call in calls)
