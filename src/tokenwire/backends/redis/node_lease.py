"""This node's lease, kept alive for a part that tags its Redis entries with the node.

A node's lease is the key `node_key(node, "lease")`, set with an expiry of
`lease_seconds` and renewed every third of it; any part of a node may renew it
(a SET with PX is idempotent). Entries tagged with a node whose lease is gone
belong to a dead node, and other nodes may reclaim them.

Each part also keeps a marker of its own beside the lease. The marker is found
missing when this part starts, when its renewals stopped for longer than the
lease (Redis unreachable: others may have reclaimed its entries meanwhile), and
when Redis lost everything (restarted without persistence); then `restore` is
called, so that the entries of what still runs here are written again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import structlog

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.tasks import stop_tasks
from tokenwire.backends.redis.write_queue import unavailable_errors

log = structlog.get_logger("tokenwire.redis")


class NodeLease:
    def __init__(self, backend: RedisBackend, part: str, restore: Callable[[], None]) -> None:
        self._backend = backend
        self._restore = restore
        self._lease_key = backend.node_key(backend.node_id, "lease")
        self._marker_key = backend.node_key(backend.node_id, part)
        self._renewed_at = -float("inf")
        self._task: asyncio.Task[None] | None = None
        self._unreachable = False

    @property
    def node_id(self) -> str:
        return self._backend.node_id

    async def held(self) -> None:
        """Make sure the lease holds for a while yet, renewing it now if it may not
        (raises a Redis error when Redis cannot be reached); and keep it renewed."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._renew_forever(), name=f"lease {self._marker_key}"
            )
        # Renewed within two thirds of the lease: a third of it at least is left.
        if time.monotonic() - self._renewed_at > self._backend.lease_seconds * 2 / 3:
            await self._renew()

    async def dead_among(self, nodes: Iterable[str]) -> list[str]:
        """The nodes of `nodes` whose lease is gone (never this one)."""
        others = sorted({node for node in nodes if node != self.node_id})
        if not others:
            return []
        async with self._backend.client.pipeline(transaction=False) as pipe:
            for node in others:
                pipe.exists(self._backend.node_key(node, "lease"))
            alive = await pipe.execute()
        return [node for node, exists in zip(others, alive, strict=True) if not exists]

    async def aclose(self) -> None:
        # The lease itself is left to lapse: other parts of this node may still need it.
        if self._task is not None:
            await stop_tasks([self._task])
            self._task = None

    async def _renew(self) -> None:
        lease_ms = int(self._backend.lease_seconds * 1000)
        async with self._backend.client.pipeline(transaction=False) as pipe:
            pipe.set(self._lease_key, "1", px=lease_ms)
            pipe.set(self._marker_key, "1", px=lease_ms, get=True)
            _, marker = await pipe.execute()
        self._renewed_at = time.monotonic()
        if marker is None:
            self._restore()

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._renew()
                if self._unreachable:
                    log.info("redis lease renewed again", part=self._marker_key)
                self._unreachable = False
            except unavailable_errors as exc:
                if not self._unreachable:
                    log.warning("redis lease not renewed", part=self._marker_key, error=str(exc))
                self._unreachable = True
            await asyncio.sleep(self._backend.lease_seconds / 3)
