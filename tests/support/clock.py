"""The running event loop's clock, moved forward by the test.

Timers (`call_later`, `asyncio.sleep`, `asyncio.timeout`) fall due when the test
says that their time has come, not after real seconds, and never before: a test
of a 10 s window takes milliseconds and does not depend on the machine's speed.
The clock still runs with real time in between, so everything else in the loop
(servers, clients, providers) goes on as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType


class LoopClock:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._real: Callable[[], float] = self._loop.time
        self._ahead = 0.0

    def time(self) -> float:
        return self._real() + self._ahead

    async def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on, and let what fell due by then run."""
        self._ahead += seconds
        # This task's wake-up is queued before the timers that fell due, which run in the
        # same turn of the loop: one turn runs them, a few more what they set off.
        for _ in range(5):
            await asyncio.sleep(0)

    def __enter__(self) -> LoopClock:
        self._loop.time = self.time  # type: ignore[method-assign]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        del self._loop.time  # back to the loop class's own clock
