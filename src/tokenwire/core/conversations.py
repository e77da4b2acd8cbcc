"""Server-kept chat history, so that a client continues a chat without resending it."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from tokenwire.protocol.messages import ChatMessage
from tokenwire.providers.base import estimate_tokens


class Conversation:
    """Turns of one conversation, the oldest dropped first past `max_tokens`."""

    def __init__(self, max_tokens: int) -> None:
        self._max_tokens = max_tokens
        self._turns: deque[tuple[ChatMessage, int]] = deque()
        self._tokens = 0

    @property
    def turns(self) -> tuple[ChatMessage, ...]:
        return tuple(message for message, _ in self._turns)

    @property
    def tokens(self) -> int:
        return self._tokens

    def extend(self, messages: Iterable[ChatMessage]) -> None:
        for message in messages:
            cost = estimate_tokens(message.content)
            self._turns.append((message, cost))
            self._tokens += cost
        while self._tokens > self._max_tokens and self._turns:
            _, cost = self._turns.popleft()
            self._tokens -= cost


class ConversationBook:
    """A session's conversations; the least recently used goes when there are too many."""

    def __init__(self, max_tokens: int, max_conversations: int = 32) -> None:
        self._max_tokens = max_tokens
        self._max_conversations = max_conversations
        self._conversations: OrderedDict[str, Conversation] = OrderedDict()

    def get(self, conversation_id: str) -> Conversation:
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            conversation = Conversation(self._max_tokens)
            self._conversations[conversation_id] = conversation
            while len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(conversation_id)
        return conversation

    def __len__(self) -> int:
        return len(self._conversations)
