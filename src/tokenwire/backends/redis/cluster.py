"""Cancels and followers across nodes, through Redis (`core.cluster.Cluster`).

A request runs on its owner. Redis holds, per request (one hash tag each):
- `request_key(key, "owner")`: the owner's node id, while it runs (and at most
  `max_run_seconds + retention_seconds` if its owner died);
- `request_key(key, "followers")`: followers on other nodes, field
  `<node>:<follower>`, value `live` or, for one that left without closing on
  purpose, the end of its resume grace (Unix seconds).

A cancel on any node is published on the owner's control channel
(backends/redis/control.py); the owner cancels within one message's time. When
the last follower on the owner goes, it asks `followed_elsewhere`: entries of
nodes whose lease (`node_key(node, "lease")`) is gone do not count, so a dead
node keeps nothing alive. A follower elsewhere that leaves for good, or whose
grace ends, has its node publish `reconsider` to the owner; and the owner checks
again every third of a lease while only other nodes keep a request alive, which
covers a message lost while it was resubscribing and a follower's node that died.

Writes that nobody waits for (follow, unfollow, a run's end) go through one
`WriteQueue` in order, so that a follow and the unfollow after it cannot land
reversed, and none is lost while Redis is away. This part's `NodeLease` renews the
node's lease; when it finds that Redis lost this part's marker (a restart, or a
stall past the lease), the owners and followers of this node are written again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from tokenwire.backends.redis.availability import RedisAvailability
from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.control import ControlListener, ControlMessage
from tokenwire.backends.redis.node_lease import NodeLease
from tokenwire.backends.redis.nodes import NodeBoard, text
from tokenwire.backends.redis.tasks import stop_tasks
from tokenwire.backends.redis.write_queue import WriteQueue, unavailable_errors
from tokenwire.core.cluster import LocalRuns, NodeReport
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import BackendUnavailable

logger = structlog.get_logger("tokenwire.cluster")

LIVE = "live"
# How long a closing node waits for its queued writes.
CLOSE_WAIT_SECONDS = 2.0


class RedisCluster:
    def __init__(
        self,
        backend: RedisBackend,
        *,
        resume_grace_seconds: float = 10.0,
        retention_seconds: float = 300.0,
        max_run_seconds: float = 3600.0,
        availability: RedisAvailability | None = None,
        clock: Callable[[], float] = time.time,
        owner_recorded_by_logs: bool = False,
    ) -> None:
        """`owner_recorded_by_logs`: the log store writes a request's owner record as it
        creates the log (`RedisLogStore(owner_record_seconds=owner_record_seconds(...))`),
        so that `started` needs no round trip of its own."""
        if ":" in backend.node_id:
            raise ValueError(f"a node id may not hold ':' (got {backend.node_id!r})")
        self.node_id = backend.node_id
        self.backend = backend
        self._availability = availability
        """The node's watch on Redis, if it has one: while Redis is down, what needs it
        is refused at once rather than after a command's timeout."""
        self._grace = resume_grace_seconds
        self._clock = clock
        # A request's keys outlive its longest run and then its log's retention.
        self._ttl_ms = max(1, int(owner_record_seconds(max_run_seconds, retention_seconds) * 1000))
        self._owner_recorded_by_logs = owner_recorded_by_logs
        self.period = backend.lease_seconds / 3
        self.board = NodeBoard(backend, clock)
        self.control = ControlListener(backend, self._take, poll=self.period)
        self._local: LocalRuns | None = None
        self._owned: set[RequestKey] = set()
        self._following: dict[RequestKey, dict[str, str]] = {}
        """What this node wrote in other nodes' requests' followers (field to value)."""
        self._graces: dict[tuple[RequestKey, str], asyncio.TimerHandle] = {}
        self._watched: set[RequestKey] = set()
        """Requests of this node's that only other nodes' followers keep alive."""
        self._writes = WriteQueue("cluster")
        self.lease = NodeLease(backend, "cluster", lambda: self._writes.put(self._write_again))
        self._tasks: list[asyncio.Task[None]] = []
        self._out_of_reach = False

    @property
    def shared(self) -> bool:
        return True

    # -- lifecycle ------------------------------------------------------------

    async def start(self, local: LocalRuns) -> None:
        """Hold the lease, subscribe and report, in tasks of this object's until `close`.
        Never waits for Redis: out of reach, they keep trying. A second call does nothing."""
        if self._local is not None:
            return
        self._local = local
        try:
            await self.lease.held()
        except unavailable_errors as exc:
            self._unreached(exc)  # the lease's own task keeps renewing it
        self._tasks = [
            asyncio.create_task(self.control.run(), name="cluster control"),
            asyncio.create_task(self._report(), name="cluster reports"),
        ]

    async def close(self) -> None:
        for timer in self._graces.values():
            timer.cancel()
        self._graces.clear()
        await self._writes.aclose(within=CLOSE_WAIT_SECONDS)
        await stop_tasks(self._tasks)
        self._tasks = []
        # The lease is left to lapse: other parts of this node may still need it.
        await self.lease.aclose()
        try:
            await self.board.leave()
        except unavailable_errors:
            logger.warning("could not leave the cluster cleanly: Redis out of reach")

    # -- requests this node runs ----------------------------------------------

    async def started(self, key: RequestKey) -> None:
        self._owned.add(key)
        if self._owner_recorded_by_logs:
            return  # written with the log, in the same script
        try:
            await self.backend.client.set(self._owner(key), self.node_id, px=self._ttl_ms)
        except unavailable_errors as exc:
            # Refusing is the log store's decision; here the request runs node-locally
            # until the owners are written again (when Redis is back).
            logger.warning("owner not recorded", request_id=key.request_id, error=str(exc))

    def ended(self, key: RequestKey) -> None:
        self._owned.discard(key)
        self._watched.discard(key)
        self._writes.put(lambda: self._forget_owner(key))

    async def _forget_owner(self, key: RequestKey) -> None:
        await self.backend.client.delete(self._owner(key))

    async def followed_elsewhere(self, key: RequestKey) -> bool:
        self._check()
        try:
            entries = await self.backend.client.hgetall(self._followers(key))
            by_node: dict[str, list[str]] = {}
            for field, value in entries.items():
                node, _, _ = text(field).partition(":")
                if node != self.node_id:
                    by_node.setdefault(node, []).append(text(value))
            if not by_node:
                return False
            dead = set(await self.lease.dead_among(by_node))
        except unavailable_errors as exc:
            raise self._failed(exc, "followers elsewhere unknown") from exc
        now = self._clock()
        followed = any(
            _counts(value, now)
            for node, values in by_node.items()
            if node not in dead
            for value in values
        )
        if followed:
            self._watched.add(key)
        return followed

    def _take(self, message: ControlMessage) -> None:
        if self._local is None:
            return
        if message.kind == "cancel":
            self._local.cancel_here(message.key, message.reason)
        else:
            self._local.reconsider(message.key)

    # -- requests other nodes run ---------------------------------------------

    async def cancel(self, key: RequestKey, reason: str) -> bool:
        self._check()
        client = self.backend.client
        try:
            owner = await client.get(self._owner(key))
            if owner is None or text(owner) == self.node_id:
                return False  # none runs it (this node's own runs are the gateway's)
            channel = self.backend.node_key(text(owner), "control")
            message = ControlMessage("cancel", key, reason).encoded()
            if await client.publish(channel, message):
                return True
            dead = await self.lease.dead_among([text(owner)])
        except unavailable_errors as exc:
            raise self._failed(exc, "cannot cancel there") from exc
        if dead:
            return False  # its owner died: nothing runs it any more
        # Alive but not listening (resubscribing after losing Redis): say so, never
        # answer "cancelling" for a cancel that reached nobody.
        raise BackendUnavailable("the node running the request cannot be reached now")

    def follow(self, key: RequestKey, follower: str) -> None:
        field = self._field(follower)
        self._stop_grace(key, field)
        self._following.setdefault(key, {})[field] = LIVE
        self._writes.put(lambda: self._write_follower(key, field, LIVE))

    def unfollow(self, key: RequestKey, follower: str, lost: bool) -> None:
        field = self._field(follower)
        self._stop_grace(key, field)
        if lost and self._grace > 0:
            until = repr(self._clock() + self._grace)
            self._following.setdefault(key, {})[field] = until
            self._writes.put(lambda: self._write_follower(key, field, until))
            loop = asyncio.get_running_loop()
            self._graces[key, field] = loop.call_later(
                self._grace, self._grace_over, key, field, until
            )
        else:
            self._forget_follower(key, field)

    def _grace_over(self, key: RequestKey, field: str, until: str) -> None:
        self._graces.pop((key, field), None)
        if self._following.get(key, {}).get(field) == until:
            self._forget_follower(key, field)

    def _forget_follower(self, key: RequestKey, field: str) -> None:
        fields = self._following.get(key, {})
        fields.pop(field, None)
        if not fields:
            self._following.pop(key, None)
        self._writes.put(lambda: self._remove_follower(key, field))

    def _stop_grace(self, key: RequestKey, field: str) -> None:
        timer = self._graces.pop((key, field), None)
        if timer is not None:
            timer.cancel()

    async def _write_follower(self, key: RequestKey, field: str, value: str) -> None:
        pipe = self.backend.client.pipeline(transaction=False)
        pipe.hset(self._followers(key), field, value)
        pipe.pexpire(self._followers(key), self._ttl_ms)
        await pipe.execute()

    async def _remove_follower(self, key: RequestKey, field: str) -> None:
        client = self.backend.client
        await client.hdel(self._followers(key), field)
        owner = await client.get(self._owner(key))
        if owner is not None and text(owner) != self.node_id:
            channel = self.backend.node_key(text(owner), "control")
            await client.publish(channel, ControlMessage("reconsider", key).encoded())

    # -- the other nodes ------------------------------------------------------

    async def others(self) -> list[NodeReport]:
        self._check()
        try:
            return await self.board.others()
        except unavailable_errors as exc:
            raise self._failed(exc, "other nodes unknown") from exc

    # -- internals ------------------------------------------------------------

    def _check(self) -> None:
        if self._availability is not None:
            self._availability.check()

    def _failed(self, exc: BaseException, what: str) -> BackendUnavailable:
        if self._availability is not None:
            return self._availability.failed(exc)
        return BackendUnavailable(f"Redis is out of reach: {what}")

    def _owner(self, key: RequestKey) -> str:
        return self.backend.request_key(key, "owner")

    def _followers(self, key: RequestKey) -> str:
        return self.backend.request_key(key, "followers")

    def _field(self, follower: str) -> str:
        return f"{self.node_id}:{follower}"

    async def _report(self) -> None:
        """Every third of a lease: report this node, and re-check the requests only
        other nodes keep alive."""
        assert self._local is not None
        while True:
            try:
                await self.board.publish(self._local.report())
                self._reached()
            except unavailable_errors as exc:
                self._unreached(exc)
            except Exception:
                logger.exception("cluster report failed")
            watched, self._watched = self._watched, set()
            for key in watched:
                self._local.reconsider(key)
            await asyncio.sleep(self.period)

    async def _write_again(self) -> None:
        """Redis lost this node's keys (or never had them): the owners of its runs, its
        followers elsewhere and its sessions, once more."""
        self.board.forget()
        if not self._owned and not self._following:
            return
        pipe = self.backend.client.pipeline(transaction=False)
        for key in self._owned:
            pipe.set(self._owner(key), self.node_id, px=self._ttl_ms)
        for key, fields in self._following.items():
            pipe.hset(self._followers(key), mapping=dict(fields))  # type: ignore[arg-type]
            pipe.pexpire(self._followers(key), self._ttl_ms)
        await pipe.execute()
        logger.info("cluster state written again", owned=len(self._owned))

    def _reached(self) -> None:
        if self._out_of_reach:
            logger.info("Redis reachable again")
            self._out_of_reach = False

    def _unreached(self, exc: BaseException) -> None:
        if not self._out_of_reach:
            logger.warning("Redis out of reach", error=str(exc))
            self._out_of_reach = True


def owner_record_seconds(max_run_seconds: float, retention_seconds: float) -> float:
    """How long a request's owner record (and followers) live: its longest run, then its
    log's retention (an owner that died leaves them behind)."""
    return max_run_seconds + retention_seconds


def _counts(value: str, now: float) -> bool:
    """Whether a follower entry still counts: live, or its grace not yet over."""
    if value == LIVE:
        return True
    try:
        return float(value) > now
    except ValueError:
        return False
