"""Whether this node reaches Redis now, and what it does while it does not.

A node never exits for want of Redis. `RedisAvailability` PINGs Redis about once a
second while it answers; once a PING or any store's command fails, Redis counts as
down: `/readyz` says so, and the stores refuse at once (`check`) with
`backend_unavailable` rather than each waiting out a socket timeout. While down it
PINGs with a backoff from 0.1 s doubling to `reconnect_max_seconds`, and the first
PING answered makes Redis up again: nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from tokenwire.backends.redis.client import redis_errors
from tokenwire.backends.redis.tasks import stop_tasks
from tokenwire.core.admission import Admission
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import BackendUnavailable

logger = structlog.get_logger("tokenwire.redis")

UNREACHABLE = "redis unreachable"
FIRST_BACKOFF_SECONDS = 0.1


class RedisAvailability:
    """Up or down, as the last PING or command found Redis; `run` keeps it current."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        interval_seconds: float = 1.0,
        reconnect_max_seconds: float = 5.0,
    ) -> None:
        self._ping = ping
        self._interval = interval_seconds
        self._reconnect_max = reconnect_max_seconds
        self._up = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self._up

    @property
    def reason(self) -> str | None:
        """Why this node cannot serve what needs Redis (None while it can)."""
        return None if self._up else UNREACHABLE

    def check(self) -> None:
        """Raise `BackendUnavailable` while Redis is down: what needs it fails fast."""
        if not self._up:
            raise BackendUnavailable("Redis cannot be reached from this node; try again shortly")

    def failed(self, exc: BaseException) -> BackendUnavailable:
        """A command failed for want of Redis (`exc` is one of `redis_errors`): count
        Redis as down, PING it back with backoff, and give the error to raise."""
        if self._up:
            self._mark(up=False, cause=exc)
            self._wake.set()
        return BackendUnavailable("Redis cannot be reached from this node; try again shortly")

    async def start(self) -> None:
        """Learn whether Redis answers (at most one command timeout), then keep watching."""
        await self.probe()
        self._task = asyncio.create_task(self.run(), name="redis availability")

    async def close(self) -> None:
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def probe(self) -> bool:
        """One PING; True if Redis answered. Never raises but for cancellation."""
        try:
            await self._ping()
        except redis_errors as exc:
            self._mark(up=False, cause=exc)
        except Exception as exc:  # a defect must not stop the watch: log it, count as down
            logger.exception("redis ping failed unexpectedly")
            self._mark(up=False, cause=exc)
        else:
            self._mark(up=True)
        return self._up

    async def run(self) -> None:
        backoff = Backoff(FIRST_BACKOFF_SECONDS, self._reconnect_max)
        while True:
            pause = self._interval if self._up else backoff.next()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # A store's failure wakes the watch early, to start the backoff at once.
                await asyncio.wait_for(self._wake.wait(), pause)
                backoff.reset()
                continue
            if await self.probe():
                backoff.reset()

    def _mark(self, up: bool, cause: BaseException | None = None) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            logger.info("redis reachable again")
        else:
            logger.warning("redis unreachable", error=type(cause).__name__ if cause else None)


class Backoff:
    """Pauses between attempts: `first`, doubling up to `most`; `reset` starts again."""

    def __init__(self, first: float, most: float) -> None:
        self._first = first
        self._most = most
        self._next = first

    def next(self) -> float:
        pause = min(self._next, self._most)
        self._next = pause * 2
        return pause

    def reset(self) -> None:
        self._next = self._first


class AdmitWhileReachable:
    """The gateway's `Admission` while Redis may be lost: a new request is refused with
    `backend_unavailable` while Redis is down (no other node could resume, list, cancel
    or count it), else admitted by `admission`."""

    def __init__(self, admission: Admission, availability: RedisAvailability) -> None:
        self._admission = admission
        self._availability = availability

    async def admit(self, spec: RequestSpec) -> RequestSpec:
        self._availability.check()
        return await self._admission.admit(spec)

    def cancelled(self, spec: RequestSpec) -> None:
        self._admission.cancelled(spec)

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        self._admission.release(spec, outcome)
