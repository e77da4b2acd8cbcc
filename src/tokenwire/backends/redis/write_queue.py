"""Redis writes handed over by code that cannot await, done in order by one task."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import OutOfMemoryError, ReadOnlyError

from tokenwire.backends.redis.client import redis_errors
from tokenwire.backends.redis.tasks import stop_tasks

log = structlog.get_logger("tokenwire.redis")

Write = Callable[[], Awaitable[object]]

# Redis cannot take a write now, though it may soon: unreachable, a replica after a
# failover (read-only), full under `noeviction`.
unavailable_errors = (*redis_errors, ReadOnlyError, OutOfMemoryError)


class WriteQueue:
    """Writes done one at a time, in the order they were put.

    A write that finds Redis unreachable is tried again, backing off, until it is
    done: none is lost while the process lives, and none overtakes one put before
    it (a slot freed after it was restored stays free). The queue holds what was
    put while Redis is away; that is bounded by what was admitted before it went.
    A write that fails for another reason (a defect) is logged and dropped, so
    that it cannot hold up the rest for good.
    """

    def __init__(self, name: str, first_backoff: float = 0.1, max_backoff: float = 2.0) -> None:
        self._name = name
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._pending: deque[Write] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def put(self, write: Write) -> None:
        if self._closed:
            log.warning("redis write after close dropped", writes=self._name)
            return
        self._pending.append(write)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"redis writes: {self._name}"
            )

    def __len__(self) -> int:
        return len(self._pending)

    async def settled(self) -> None:
        """Return once every write put so far is done."""
        await self._idle.wait()

    async def aclose(self, within: float = 5.0) -> None:
        """Finish what is queued (for at most `within` seconds), then stop."""
        self._closed = True
        try:
            await asyncio.wait_for(self.settled(), within)
        except TimeoutError:
            log.warning(
                "redis writes left undone at close", writes=self._name, left=len(self._pending)
            )
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def _drain(self) -> None:
        backoff = self._first_backoff
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._pending[0]()
            except unavailable_errors as exc:
                if backoff == self._first_backoff:
                    log.warning("redis writes retrying", writes=self._name, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:
                log.exception("redis write failed and dropped", writes=self._name)
            self._pending.popleft()
            backoff = self._first_backoff
