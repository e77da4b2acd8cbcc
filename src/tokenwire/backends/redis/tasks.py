"""Stopping the background tasks that talk to Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def stop_tasks(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for their end. Cancelled again until they end: redis-py
    may swallow a cancellation that arrives while it drops a connection, and the task
    would then run on (seen with a pipeline cancelled mid-reply), leaving a close
    waiting for it for ever."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
