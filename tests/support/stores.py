"""Conversation-store doubles for tests that need a request held in its set-up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tokenwire.backends.memory import MemoryLogStore
from tokenwire.core.eventlog import EventLog
from tokenwire.core.provider import Message
from tokenwire.core.spec import RequestKey


class SlowHistory:
    """A conversation store whose reads wait until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reading = asyncio.Event()

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        self.reading.set()
        await self.release.wait()
        return ()

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        return None


class SharedLogs:
    """One in-process log store that several gateways share, standing in for the Redis
    log store: each node finds the logs of requests that run on another, as a node
    reads another node's log through Redis. Closing it through one gateway closes
    nothing: the test closes the store it wraps."""

    def __init__(self, store: MemoryLogStore) -> None:
        self._store = store

    async def create(
        self, key: RequestKey, origin: str | None, conversation_id: str | None = None
    ) -> EventLog:
        return await self._store.create(key, origin, conversation_id)

    async def get(self, key: RequestKey) -> EventLog | None:
        return await self._store.get(key)

    async def finished(self, log: EventLog) -> None:
        await self._store.finished(log)

    async def discard(self, key: RequestKey) -> None:
        await self._store.discard(key)

    async def of_user(self, user_id: str) -> list[EventLog]:
        return await self._store.of_user(user_id)

    async def close(self) -> None:
        return None


class SlowWrites:
    """A conversation store whose writes take a while (as Redis's do), and that notes
    what the request's log held when each write landed."""

    def __init__(self, logs: MemoryLogStore) -> None:
        self._logs = logs
        self.turns: list[Message] = []
        self.log_had_ended: list[bool] = []

    async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
        return tuple(self.turns)

    async def extend(self, user_id: str, conversation_id: str, turns: Sequence[Message]) -> None:
        await asyncio.sleep(0.05)
        logs = await self._logs.of_user(user_id)
        self.log_had_ended.append(any(log.finished for log in logs))
        self.turns = list(turns)
