"""Clocks that tests control, so that a deadline's test neither waits for it nor depends
on the machine's speed.

- `VirtualTimeLoop` / `run_on_virtual_clock`: a whole event loop on virtual time, which
  stands still while anything is ready and jumps to the next timer when the loop would
  wait. A 60-second deadline passes in microseconds, at exactly its virtual moment. Only
  for code whose waits are timers of this loop: no threads, no sockets.
- `LoopClock`: the running loop's clock moved forward by the test, on top of real time,
  for tests with real servers and sockets: timers fall due when the test says their time
  has come, and never before.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class _Clock:
    now = 0.0


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready: list[tuple[Any, int]] = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # no timer at all: only I/O (another thread) can wake the loop
            return list(super().select(None))
        self._clock.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _Clock()
        super().__init__(_JumpingSelector(self._clock))

    def time(self) -> float:
        return self._clock.now


def run_on_virtual_clock(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a `VirtualTimeLoop`; its loop time starts at 0."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


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
