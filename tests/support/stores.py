"""Conversation-store doubles for tests that need a request held in its set-up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tokenwire.core.provider import Message


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
