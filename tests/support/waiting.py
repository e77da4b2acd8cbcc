"""Waiting in tests for something that happens in another task or process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], object], timeout: float = 10.0) -> float:
    """Seconds until `condition()` held, polling; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


AT_ONCE = 5.0
"""How long a test gives something that happens "at once" (a cancel closing an upstream,
a close cancelling a stream): generous, so that no test depends on the machine's speed
or load, yet short beside what it is told apart from (a stream of 10 s or more running
to its end, a grace or timeout of 10 s or more, never). How fast is for bench/."""
