"""The nodes of a deployment as each reports itself: alive, streams running, sessions.

Every node writes, every third of its lease: a hash of counts (`node_key(node,
"stats")`), its sessions (`node_key(node, "sessions")`: session id to its
description, written only when it changed) and its name in the sorted set
`key("nodes")` (scored by when it last wrote). A node counts as alive while its
lease (`node_key(node, "lease")`, renewed by `NodeLease`) and its stats hold; both
expire with the lease, so a node that dies drops out within a lease, and one that
stops deletes its stats and drops out at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.core.cluster import NodeReport

# A node silent this long (seconds) leaves the set of nodes for good.
FORGET_AFTER_SECONDS = 3600.0


def text(value: bytes | str) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


class NodeBoard:
    def __init__(self, backend: RedisBackend, clock: Callable[[], float] = time.time) -> None:
        self._backend = backend
        self._clock = clock
        self._lease_ms = max(1, int(backend.lease_seconds * 1000))
        node = backend.node_id
        self._stats = backend.node_key(node, "stats")
        self._sessions = backend.node_key(node, "sessions")
        self._nodes = backend.key("nodes")
        self._written: dict[str, bytes] = {}
        """The sessions as last written, by id: only changes are written again."""

    def forget(self) -> None:
        """Redis lost what this node wrote: write every session again next time."""
        self._written = {}

    async def publish(self, report: NodeReport) -> None:
        """Write this node's report."""
        now = self._clock()
        client = self._backend.client
        pipe = client.pipeline(transaction=False)
        pipe.hset(
            self._stats,
            mapping={"running": report.running, "sessions": len(report.sessions), "at": now},
        )
        pipe.pexpire(self._stats, self._lease_ms)
        pipe.zadd(self._nodes, {self._backend.node_id: now})
        pipe.zremrangebyscore(self._nodes, "-inf", now - FORGET_AFTER_SECONDS)
        await pipe.execute()
        await self._write_sessions(report.sessions)

    async def _write_sessions(self, sessions: dict[str, dict[str, Any]]) -> None:
        # The duration grows by itself: what is kept is when the session began.
        current = {
            sid: orjson.dumps({k: v for k, v in about.items() if k != "duration"})
            for sid, about in sessions.items()
        }
        changed = {sid: data for sid, data in current.items() if self._written.get(sid) != data}
        gone = [sid for sid in self._written if sid not in current]
        pipe = self._backend.client.pipeline(transaction=False)
        if changed:
            pipe.hset(self._sessions, mapping=changed)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self._sessions, *gone)
        pipe.pexpire(self._sessions, self._lease_ms)
        replies = await pipe.execute()
        if current and replies[-1] == 0:
            self._written = {}  # the hash went (expired) under us: all again next time
        else:
            self._written = current

    async def others(self) -> list[NodeReport]:
        """The other nodes whose lease holds, as they last reported."""
        client = self._backend.client
        members = await client.zrange(self._nodes, 0, -1)
        names = [text(n) for n in members if isinstance(n, bytes | str)]
        names = [n for n in names if n != self._backend.node_id]
        if not names:
            return []
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.exists(self._backend.node_key(name, "lease"))
            pipe.hgetall(self._backend.node_key(name, "stats"))
            pipe.hgetall(self._backend.node_key(name, "sessions"))
        replies = await pipe.execute()
        now = self._clock()
        reports = []
        for i, name in enumerate(names):
            alive, stats, sessions = replies[3 * i : 3 * i + 3]
            if alive and stats:
                reports.append(_report(name, stats, sessions, now))
        return reports

    async def leave(self) -> None:
        """This node stops: out of the stats at once rather than after its lease (which
        is left to lapse: other parts of the node may still need it)."""
        pipe = self._backend.client.pipeline(transaction=False)
        pipe.delete(self._stats, self._sessions)
        pipe.zrem(self._nodes, self._backend.node_id)
        await pipe.execute()


def _report(name: str, stats: dict[Any, Any], sessions: dict[Any, Any], now: float) -> NodeReport:
    counts = {text(k): text(v) for k, v in stats.items()}
    described = {}
    for sid, data in sessions.items():
        about: dict[str, Any] = orjson.loads(data)
        created = about.pop("created_at", None)
        if isinstance(created, int | float):
            about["duration"] = max(0.0, now - created)
        described[text(sid)] = about
    return NodeReport(node_id=name, running=int(counts.get("running", 0)), sessions=described)
