"""Conversations in Redis, so that a chat continues on whichever node the user reaches.

One key per conversation (in its user's slot) holds its turns as JSON
(`turn_as_json`: text, tool calls, tool results, images), trimmed exactly as in
memory (`Conversation`: the oldest turns go first past `max_tokens` or the image
bounds) and expiring after `idle_seconds` unused, as the memory store forgets it.
An index of the deployment's conversations by last use keeps at most
`max_conversations`, the least recently used dropped first. The total bytes of
images is bounded per conversation only; Redis's `maxmemory` bounds the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog
from redis.exceptions import WatchError

from tokenwire.backends.redis.availability import RedisAvailability
from tokenwire.backends.redis.client import RedisBackend, redis_errors
from tokenwire.core.conversations import Conversation, turn_as_json, turn_from_json
from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import Message

logger = structlog.get_logger("tokenwire.redis")

FORMAT = 1
# Two nodes extending one conversation at once: the loser of the race reads again.
MAX_ATTEMPTS = 5


class RedisConversationStore:
    """A `ConversationStore` shared by every node on one Redis."""

    def __init__(
        self,
        backend: RedisBackend,
        availability: RedisAvailability,
        max_tokens: int,
        max_conversations: int = 10_000,
        idle_seconds: float = 3600.0,
        images: ImageBounds | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = backend.client
        self._backend = backend
        self._available = availability
        self._max_tokens = max_tokens
        self._max_conversations = max_conversations
        self._idle_ms = max(1, int(idle_seconds * 1000))
        self._images = images
        self._clock = clock
        self._index = backend.key("conversations")

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        self._available.check()
        key = self.key(user_id, conversation_id)
        try:
            # Reading it counts as using it, as in memory: its idle time starts again.
            raw = await self._redis.getex(key, px=self._idle_ms)
        except redis_errors as exc:
            raise self._available.failed(exc) from None
        return self._decoded(raw)

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        self._available.check()
        key = self.key(user_id, conversation_id)
        try:
            await self._write(key, turns)
            await self._bound(key)
        except redis_errors as exc:
            raise self._available.failed(exc) from None

    def key(self, user_id: str, conversation_id: str) -> str:
        # The client's id, hashed: any length or character makes one short key.
        digest = hashlib.blake2b(conversation_id.encode(), digest_size=12).hexdigest()
        return self._backend.user_key(user_id, f"conversation:{digest}")

    async def _write(self, key: str, turns: Sequence[Message]) -> None:
        """Read, trim and write back under WATCH: a concurrent extend elsewhere makes
        this one read again rather than lose that one's turns."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    await pipe.watch(key)
                    conversation = Conversation(self._max_tokens, self._images)
                    conversation.extend(self._decoded(await pipe.get(key)))
                    conversation.extend(turns)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    pipe.set(key, _encoded(conversation.turns), px=self._idle_ms)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        logger.warning("conversation write lost its race repeatedly", attempts=MAX_ATTEMPTS)

    async def _bound(self, key: str) -> None:
        """Index the conversation by last use; forget the index's expired entries and,
        past `max_conversations`, the least recently used conversations."""
        now = self._clock()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._index, {key: now})
            pipe.zremrangebyscore(self._index, "-inf", now - self._idle_ms / 1000)
            pipe.zcard(self._index)
            *_, count = await pipe.execute()
        if count <= self._max_conversations:
            return
        popped = await self._redis.zpopmin(self._index, count - self._max_conversations)
        oldest = cast(list[tuple[bytes, float]], popped)
        # One DEL per key: under Redis Cluster they live in different slots.
        async with self._redis.pipeline(transaction=False) as pipe:
            for member, _ in oldest:
                pipe.delete(member)
            await pipe.execute()

    def _decoded(self, raw: bytes | str | None) -> tuple[Message, ...]:
        if raw is None:
            return ()
        try:
            data: dict[str, Any] = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return tuple(turn_from_json(turn) for turn in data["turns"])
        except (ValueError, KeyError, TypeError) as exc:
            # Written by another version, or damaged: forgotten, as an expired one is.
            logger.warning("conversation unreadable, forgotten", error=str(exc))
            return ()


def _encoded(turns: Sequence[Message]) -> str:
    return json.dumps(
        {"format": FORMAT, "turns": [turn_as_json(turn) for turn in turns]},
        separators=(",", ":"),
    )
