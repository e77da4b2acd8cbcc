"""An event loop on a virtual clock, for testing deadlines without waiting for them.

The loop's time (what `asyncio.timeout`, `call_later` and `sleep` go by) stands
still while anything is ready to run and, when the loop would wait, jumps
straight to its next timer. A 60-second deadline then passes in microseconds
of real time, and at exactly the virtual moment it should, on any machine,
however busy. Only code whose waits are timers of this loop fits: no threads,
no sockets.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
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
