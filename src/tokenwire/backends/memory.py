"""In-process stores: event logs and conversations live in this process.

Finished logs are kept for `retention_seconds` so that clients can re-attach,
but never more than `max_retained_bytes` of them in all: past that the oldest
finished logs go first, whatever their age. A log past its retention is gone
when it is looked up, whether or not its expiry timer has run yet. Memory
thus stays bounded at any request rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from tokenwire.core.conversations import Conversation
from tokenwire.core.eventlog import EventLog
from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import Message
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import InvalidRequest


class _Retained:
    __slots__ = ("expires_at", "size", "timer")

    def __init__(self, size: int, expires_at: float, timer: asyncio.TimerHandle) -> None:
        self.size = size
        self.expires_at = expires_at
        self.timer = timer


class MemoryLogStore:
    def __init__(
        self,
        retention_seconds: float,
        max_log_bytes: int,
        max_retained_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retention = retention_seconds
        self._max_log_bytes = max_log_bytes
        self._max_retained_bytes = max_retained_bytes
        self._clock = clock
        self._logs: dict[RequestKey, EventLog] = {}
        self._by_user: dict[str, dict[str, EventLog]] = {}
        self._retained: OrderedDict[RequestKey, _Retained] = OrderedDict()
        self.retained_bytes = 0

    async def create(
        self, key: RequestKey, origin: str | None, conversation_id: str | None = None
    ) -> EventLog:
        if await self.get(key) is not None:
            raise InvalidRequest(f"request_id {key.request_id!r} is already in use")
        log = EventLog(key, origin, self._max_log_bytes, conversation_id=conversation_id)
        self._logs[key] = log
        self._by_user.setdefault(key.user_id, {})[key.request_id] = log
        return log

    async def get(self, key: RequestKey) -> EventLog | None:
        retained = self._retained.get(key)
        if retained is not None and self._clock() >= retained.expires_at:
            self._drop(key)
        return self._logs.get(key)

    async def finished(self, log: EventLog) -> None:
        if self._retention <= 0:
            self._drop(log.key)
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._retention, self._drop, log.key)
        self._retained[log.key] = _Retained(log.held_bytes, self._clock() + self._retention, timer)
        self.retained_bytes += log.held_bytes
        while self.retained_bytes > self._max_retained_bytes and self._retained:
            self._drop(next(iter(self._retained)))

    async def discard(self, key: RequestKey) -> None:
        self._drop(key)

    async def of_user(self, user_id: str) -> list[EventLog]:
        logs = list(self._by_user.get(user_id, {}).values())
        for log in logs:
            await self.get(log.key)  # drops the expired ones
        kept = self._by_user.get(user_id, {}).values()
        return sorted(kept, key=lambda log: log.created_at, reverse=True)

    def __len__(self) -> int:
        return len(self._logs)

    async def close(self) -> None:
        for retained in self._retained.values():
            retained.timer.cancel()
        self._retained.clear()
        self._logs.clear()
        self._by_user.clear()
        self.retained_bytes = 0

    def _drop(self, key: RequestKey) -> None:
        self._logs.pop(key, None)
        mine = self._by_user.get(key.user_id)
        if mine is not None:
            mine.pop(key.request_id, None)
            if not mine:
                del self._by_user[key.user_id]
        retained = self._retained.pop(key, None)
        if retained is not None:
            retained.timer.cancel()
            self.retained_bytes -= retained.size


class MemoryConversationStore:
    """Conversations per user, bounded in number and expiring when left idle.

    At most `max_conversations` in all, holding images of at most `max_image_bytes`
    together; past either the least recently used go first. One unused for
    `idle_seconds` is forgotten when next looked up.
    """

    def __init__(
        self,
        max_tokens: int,
        max_conversations: int = 10_000,
        idle_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        images: ImageBounds | None = None,
        max_image_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._max_tokens = max_tokens
        self._images = images
        self._max_image_bytes = max_image_bytes
        self.image_bytes = 0
        """Bytes of images held by every kept conversation together."""
        self._max_conversations = max_conversations
        self._idle = idle_seconds
        self._clock = clock
        self._conversations: OrderedDict[tuple[str, str], tuple[Conversation, float]] = (
            OrderedDict()
        )

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        conversation = self._lookup((user_id, conversation_id))
        return conversation.turns if conversation is not None else ()

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        key = (user_id, conversation_id)
        conversation = self._lookup(key) or Conversation(self._max_tokens, self._images)
        before = conversation.image_bytes if key in self._conversations else 0
        conversation.extend(turns)
        self.image_bytes += conversation.image_bytes - before
        self._conversations[key] = (conversation, self._clock())
        self._conversations.move_to_end(key)
        self._forget_idle()
        while len(self._conversations) > self._max_conversations or (
            self.image_bytes > self._max_image_bytes and len(self._conversations) > 1
        ):
            self._drop_oldest()

    def __len__(self) -> int:
        return len(self._conversations)

    def _lookup(self, key: tuple[str, str]) -> Conversation | None:
        entry = self._conversations.get(key)
        if entry is None:
            return None
        conversation, used_at = entry
        now = self._clock()
        if now - used_at >= self._idle:
            del self._conversations[key]
            self.image_bytes -= conversation.image_bytes
            return None
        self._conversations[key] = (conversation, now)
        self._conversations.move_to_end(key)
        return conversation

    def _forget_idle(self) -> None:
        # Least recently used first: stop at the first one still in use.
        cutoff = self._clock() - self._idle
        while self._conversations:
            _, used_at = next(iter(self._conversations.values()))
            if used_at > cutoff:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (conversation, _) = self._conversations.popitem(last=False)
        self.image_bytes -= conversation.image_bytes
