"""One user's entries of one kind (stream slots, connections) held by this node in Redis.

Each entry lives in the user's hash `user_key(user, part)` as id -> "attempt node"
(limit_scripts.py): a script takes it, atomically with the limit it counts
against; the attempt that took it drops it, through a queue that keeps the
order and outlasts Redis's absence; an attempt whose answer was lost is voided.
When a user is found at the limit, the entries of dead nodes are dropped and the
count is taken again. When this node's marker was lost (its lease lapsed, or
Redis restarted empty) every entry it holds is written again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.limit_scripts import DROP, VOID
from tokenwire.backends.redis.node_lease import NodeLease
from tokenwire.backends.redis.write_queue import WriteQueue, unavailable_errors
from tokenwire.protocol.errors import BackendUnavailable

# A user's hash outlives its last write by this much: long past any stream, so that
# only a user gone for a day leaves nothing behind.
ENTRIES_TTL_MS = 86_400_000
# How long a voided attempt is remembered: far past any answer Redis could still run.
VOID_TTL_MS = 600_000
CLOSE_WITHIN_SECONDS = 5.0

# Runs the taking script with the dead nodes whose entries it must drop first; its reply.
Take = Callable[[Sequence[str]], Awaitable[list[str]]]


class NodeEntries:
    def __init__(self, backend: RedisBackend, part: str) -> None:
        self._backend = backend
        self._part = part
        self._drop_script = backend.client.register_script(DROP)
        self._void_script = backend.client.register_script(VOID)
        self._writes = WriteQueue(part)
        self._lease = NodeLease(backend, part, lambda: self._writes.put(self._restore))
        # user -> entry id -> attempt, for the entries this node holds.
        self._held: dict[str, dict[str, str]] = {}

    @property
    def node_id(self) -> str:
        return self._backend.node_id

    def key(self, user_id: str) -> str:
        return self._backend.user_key(user_id, self._part)

    def void_key(self, user_id: str) -> str:
        return self._backend.user_key(user_id, "limit:void")

    async def take(self, user_id: str, entry: str, attempt: str, run: Take) -> list[str]:
        """Run the taking script; the entry is held from its 'ok'. Raises
        `BackendUnavailable` when Redis cannot be reached."""
        try:
            await self._lease.held()
        except unavailable_errors as exc:
            raise unavailable() from exc
        try:
            reply = await run(())
            if reply[0] == "full":
                dead = await self._lease.dead_among(reply[1:])
                if dead:
                    reply = await run(dead)
        except BaseException as exc:
            # The script may yet run, or have run with its answer lost: void it.
            self._writes.put(partial(self._void, user_id, entry, attempt))
            if isinstance(exc, unavailable_errors):
                raise unavailable() from exc
            raise
        if reply[0] == "ok":
            self._held.setdefault(user_id, {})[entry] = attempt
        return reply

    def let_go(self, user_id: str, entry: str) -> str | None:
        """Forget a held entry here; the attempt that holds it, if it was held."""
        held = self._held.get(user_id)
        if held is None:
            return None
        attempt = held.pop(entry, None)
        if not held:
            del self._held[user_id]
        return attempt

    def drop(self, user_id: str, entry: str) -> None:
        """Let go of an entry and remove it from Redis, in order (never blocks)."""
        attempt = self.let_go(user_id, entry)
        if attempt is not None:
            self._writes.put(partial(self._drop, user_id, entry, attempt))

    def put(self, write: Callable[[], Awaitable[object]]) -> None:
        """Queue another write behind those already queued."""
        self._writes.put(write)

    def count(self, user_id: str | None = None) -> int:
        """Entries held here: of one user, or of all."""
        if user_id is not None:
            return len(self._held.get(user_id, ()))
        return sum(len(held) for held in self._held.values())

    async def settled(self) -> None:
        await self._writes.settled()

    async def aclose(self) -> None:
        await self._writes.aclose(CLOSE_WITHIN_SECONDS)
        await self._lease.aclose()

    async def _drop(self, user_id: str, entry: str, attempt: str) -> None:
        await self._drop_script(keys=[self.key(user_id)], args=[entry, attempt])

    async def _void(self, user_id: str, entry: str, attempt: str) -> None:
        keys = [self.key(user_id), self.void_key(user_id)]
        await self._void_script(keys=keys, args=[entry, attempt, VOID_TTL_MS])

    async def _restore(self) -> None:
        if not self._held:
            return
        async with self._backend.client.pipeline(transaction=False) as pipe:
            for user_id, held in self._held.items():
                items = [x for e, a in held.items() for x in (e, f"{a} {self.node_id}")]
                pipe.hset(self.key(user_id), items=items)
                pipe.pexpire(self.key(user_id), ENTRIES_TTL_MS)
            await pipe.execute()


def new_attempt() -> str:
    return uuid.uuid4().hex


def unavailable() -> BackendUnavailable:
    return BackendUnavailable("the limits store (Redis) cannot be reached from this node")


def texts(reply: object) -> list[str]:
    """A script's array reply as text, whether the client decodes answers or not."""
    assert isinstance(reply, list), reply
    return [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
