"""Server-kept chat history, so that a client continues a chat without resending it.

A conversation belongs to its user, not to a connection: a reconnect or a
second device with the same `conversation_id` continues it. Only completed
answers become history; a cancelled or failed one leaves no trace.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol

from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import Message, estimate_tokens, images_of


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
            cost = estimate_tokens(message.content)
            self._turns.append((message, cost))
            self._tokens += cost
        while self._turns and (self._tokens > self._max_tokens or not self._images_fit()):
            _, cost = self._turns.popleft()
            self._tokens -= cost
        self.image_bytes = sum(image.size for image in images_of(self.turns))

    def _images_fit(self) -> bool:
        return self._images is None or self._images.fits(self.turns)


class ConversationStore(Protocol):
    """Where conversations live (a backend); asynchronous so that a shared store fits."""

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        """The turns kept so far; empty for a conversation not (or no longer) kept."""

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        """Add turns that completed, starting the conversation if it is new."""
