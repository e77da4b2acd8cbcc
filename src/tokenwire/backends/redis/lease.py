"""This node's lease: a key other nodes read to know that it is alive.

Renewed every `lease_seconds / 3`, expiring after `lease_seconds`: a node that
stops (killed, frozen, cut off from Redis) loses it within `lease_seconds`, and
the requests it ran are ended for their followers elsewhere. Renewal is a plain
`SET ... PX`, so that any part of the node may renew it too.

The renewal also notices a Redis that is not the one written to before (its
`run_id` changed: restarted, or failed over to a replica): what it held may be
gone, and `on_changed` is called so that the node checks what it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import structlog

from tokenwire.backends.redis.client import RedisBackend, redis_errors

logger = structlog.get_logger(__name__)


class NodeLease:
    def __init__(self, backend: RedisBackend, on_changed: Callable[[], None]) -> None:
        self._backend = backend
        self._on_changed = on_changed
        self._run_id: str | None = None
        self.key = backend.node_key(backend.node_id, "lease")

    @property
    def millis(self) -> int:
        return max(1, int(self._backend.lease_seconds * 1000))

    def renewal(self) -> Sequence[str | int]:
        """The command that renews the lease, to send along with others."""
        return ("SET", self.key, self._backend.node_id, "PX", self.millis)

    async def renew(self) -> None:
        pipe = self._backend.client.pipeline(transaction=False)
        pipe.execute_command(*self.renewal())
        pipe.info("server")
        _, info = await pipe.execute()
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            logger.warning("redis changed: checking what this node wrote", node=self.key)
            self._on_changed()
        self._run_id = run_id

    async def keep(self) -> None:
        """Renew until cancelled; Redis lost is waited out, never raised."""
        while True:
            try:
                await self.renew()
            except redis_errors:
                logger.debug("lease not renewed: redis unreachable")
            except Exception:
                logger.exception("lease renewal failed")
            await asyncio.sleep(self._backend.lease_seconds / 3)

    async def release(self) -> None:
        """Give the lease up at once (a node that stops on purpose)."""
        with contextlib.suppress(*redis_errors):
            await self._backend.client.delete(self.key)
