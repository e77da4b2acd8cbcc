"""What tests of several nodes on one Redis share: a node's client, and polling an
async condition (a node that must see Redis back, a lease that must lapse)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.support.redis_server import RedisServer


def node_client(server: RedisServer) -> Redis:
    """A client as a node holds one: no retries of its own, so that a lost Redis is
    told at once (the node backs off itself)."""
    return Redis.from_url(
        server.url, socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Seconds until `await check()` held, polling; fails the test after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started
