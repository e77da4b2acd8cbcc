"""Per-user limits counted over every node, in Redis.

`RedisQuotas` is the gateway's `Admission` and `RedisConnections` its connection
limit, as `Quotas` and `Connections` (security/limits.py) are on one node: a user
who spreads requests or connections over nodes bypasses none of
`max_streams_per_user`, `requests_per_minute_per_user`,
`tokens_per_minute_per_user`, `budget_usd_per_user_per_day` or
`max_connections_per_user`. Each decision is one Lua script (limit_scripts.py),
atomic in Redis and timed by Redis's clock. What needs no shared state (the
prompt's size, images, the max_tokens cap) is checked here with the same code
as on one node, and `max_connections` stays this node's own.

Stream slots and connections are entries tagged with the node that holds them;
a dead node's (its lease gone) are reclaimed by the next node that finds the
user at the limit. What cannot await (a cancel, the end of a request, a closed
connection) is queued and written in order, retried until Redis takes it.

Refused with `backend_unavailable` while Redis cannot be reached; nothing here
needs a restart once it is back. Forgiving where Redis forgets: a restart
without persistence refills buckets and forgets today's spend (this node's
running streams and connections are written again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial

from tokenwire.backends.redis.client import RedisBackend, redis_errors
from tokenwire.backends.redis.limit_scripts import ADMIT, CONNECT, RELEASE
from tokenwire.backends.redis.node_lease import NodeLease
from tokenwire.backends.redis.write_queue import WriteQueue
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import BackendUnavailable, TokenwireError
from tokenwire.security.limits import (
    LimitPolicy,
    audited_refusal,
    budget_spent,
    capped,
    check_prompt,
    requests_spent,
    server_connections_full,
    slot_of,
    tokens_spent,
    too_many_streams,
    user_connections_full,
)

# A user's slot and connection hashes outlive their last write by this much: long
# past any stream, so that only a user gone for a day leaves nothing behind.
ENTRIES_TTL_MS = 86_400_000
CLOSE_WITHIN_SECONDS = 5.0


class RedisQuotas:
    """The per-user limits on requests over every node (the gateway's `Admission`)."""

    def __init__(self, backend: RedisBackend, policy: LimitPolicy) -> None:
        self._backend = backend
        self._policy = policy
        self._admit_script = backend.client.register_script(ADMIT)
        self._release_script = backend.client.register_script(RELEASE)
        self._writes = WriteQueue("stream slots")
        self._lease = NodeLease(
            backend, "limits:streams", lambda: self._writes.put(self._restore_slots)
        )
        # The slots held by requests admitted here and not yet ended nor cancelled.
        self._held: dict[str, set[str]] = {}

    async def admit(self, spec: RequestSpec) -> RequestSpec:
        with audited_refusal(spec):
            check_prompt(self._policy, spec)
            spec = capped(self._policy, spec)
            reply = await self._take_slot(spec)
            if reply[0] != "ok":
                raise self._refusal(reply)
        self._held.setdefault(spec.user_id, set()).add(slot_of(spec))
        return spec

    def cancelled(self, spec: RequestSpec) -> None:
        if self._let_go(spec):
            self._writes.put(partial(self._drop_slot, spec.user_id, slot_of(spec)))

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        held = self._let_go(spec)
        policy = self._policy
        if outcome is None:
            owed = bool(policy.requests_per_minute_per_user)
        else:
            owed = bool(
                (policy.tokens_per_minute_per_user and outcome.usage is not None)
                or (policy.budget_usd_per_user_per_day and outcome.cost_usd)
            )
        if owed:
            self._writes.put(partial(self._settle, spec, outcome))
        elif held:
            self._writes.put(partial(self._drop_slot, spec.user_id, slot_of(spec)))

    def running(self, user_id: str) -> int:
        """The user's streams running on this node."""
        return len(self._held.get(user_id, ()))

    async def settled(self) -> None:
        """Return once every cancel and end so far is written to Redis."""
        await self._writes.settled()

    async def aclose(self) -> None:
        await self._writes.aclose(CLOSE_WITHIN_SECONDS)
        await self._lease.aclose()

    # -- internals ------------------------------------------------------------

    def _keys(self, user_id: str) -> list[str]:
        user_key = self._backend.user_key
        return [
            user_key(user_id, "limit:streams"),
            user_key(user_id, "limit:requests"),
            user_key(user_id, "limit:tokens"),
            user_key(user_id, "limit:spend"),
        ]

    async def _take_slot(self, spec: RequestSpec) -> list[str]:
        slot = slot_of(spec)
        try:
            await self._lease.held()
        except redis_errors as exc:
            raise _unavailable() from exc
        try:
            reply = await self._run_admit(spec, slot, dead=())
            if reply[0] == "full":
                dead = await self._lease.dead_among(reply[1:])
                if dead:
                    reply = await self._run_admit(spec, slot, dead)
            return reply
        except BaseException as exc:
            # The script may have run before its answer was lost: the slot must not stay.
            self._writes.put(partial(self._drop_slot, spec.user_id, slot))
            if isinstance(exc, redis_errors):
                raise _unavailable() from exc
            raise

    async def _run_admit(self, spec: RequestSpec, slot: str, dead: Sequence[str]) -> list[str]:
        policy = self._policy
        reply = await self._admit_script(
            keys=self._keys(spec.user_id),
            args=[
                self._backend.node_id,
                slot,
                policy.max_streams_per_user,
                policy.requests_per_minute_per_user,
                policy.tokens_per_minute_per_user,
                repr(float(policy.budget_usd_per_user_per_day)),
                ENTRIES_TTL_MS,
                *dead,
            ],
        )
        return _texts(reply)

    def _refusal(self, reply: list[str]) -> TokenwireError:
        reason, policy = reply[0], self._policy
        if reason == "full":
            return too_many_streams(policy)
        wait = float(reply[1])
        if reason == "budget":
            return budget_spent(policy, retry_after=wait)
        if reason == "tokens":
            return tokens_spent(policy, retry_after=wait)
        return requests_spent(policy, retry_after=wait)

    def _let_go(self, spec: RequestSpec) -> bool:
        """Forget the request's slot here; whether it was held."""
        held = self._held.get(spec.user_id)
        if held is None or slot_of(spec) not in held:
            return False
        held.discard(slot_of(spec))
        if not held:
            del self._held[spec.user_id]
        return True

    async def _drop_slot(self, user_id: str, slot: str) -> None:
        await self._backend.client.hdel(self._keys(user_id)[0], slot)

    async def _settle(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        policy = self._policy
        used = cost = ""
        if outcome is not None:
            used = str(outcome.usage.total_tokens) if outcome.usage is not None else ""
            cost = repr(float(outcome.cost_usd or 0.0))
        await self._release_script(
            keys=self._keys(spec.user_id),
            args=[
                slot_of(spec),
                "give_back" if outcome is None else "charge",
                policy.requests_per_minute_per_user,
                policy.tokens_per_minute_per_user,
                used,
                repr(float(policy.budget_usd_per_user_per_day)),
                cost or "0",
            ],
        )

    async def _restore_slots(self) -> None:
        await _restore(self._backend, "limit:streams", dict(self._held))


class RedisConnections:
    """Open connections: per user over every node, in all on this node (`max_connections`
    protects this node's own sockets and memory)."""

    def __init__(self, backend: RedisBackend, policy: LimitPolicy) -> None:
        self._backend = backend
        self._policy = policy
        self._connect_script = backend.client.register_script(CONNECT)
        self._writes = WriteQueue("connections")
        self._lease = NodeLease(
            backend, "limits:connections", lambda: self._writes.put(self._restore_connections)
        )
        # Connection id -> user, for every connection open on this node.
        self._open: dict[str, str] = {}
        # Connections waiting for Redis's answer: counted in all, not restored.
        self._opening = 0

    async def open(self, user_id: str, client: str | None) -> Callable[[], None]:
        """Count a connection; the returned function uncounts it (once)."""
        if self.total >= self._policy.max_connections:
            raise server_connections_full(user_id, client)
        connection = uuid.uuid4().hex
        # Counted before Redis answers, so that opens meanwhile see it.
        self._opening += 1
        try:
            reply = await self._take(user_id, connection)
        finally:
            self._opening -= 1
        if reply[0] != "ok":
            raise user_connections_full(self._policy, user_id, client)
        self._open[connection] = user_id
        released = False

        def close() -> None:
            nonlocal released
            if not released:
                released = True
                self._forget(user_id, connection)

        return close

    @property
    def total(self) -> int:
        """Connections open (or opening) on this node."""
        return len(self._open) + self._opening

    async def settled(self) -> None:
        """Return once every close so far is written to Redis."""
        await self._writes.settled()

    async def aclose(self) -> None:
        await self._writes.aclose(CLOSE_WITHIN_SECONDS)
        await self._lease.aclose()

    # -- internals ------------------------------------------------------------

    def _key(self, user_id: str) -> str:
        return self._backend.user_key(user_id, "limit:connections")

    async def _take(self, user_id: str, connection: str) -> list[str]:
        try:
            await self._lease.held()
        except redis_errors as exc:
            raise _unavailable() from exc
        try:
            reply = await self._run_connect(user_id, connection, dead=())
            if reply[0] == "full":
                dead = await self._lease.dead_among(reply[1:])
                if dead:
                    reply = await self._run_connect(user_id, connection, dead)
            return reply
        except BaseException as exc:
            # The script may have run before its answer was lost: the entry must not stay.
            self._writes.put(partial(self._drop, user_id, connection))
            if isinstance(exc, redis_errors):
                raise _unavailable() from exc
            raise

    async def _run_connect(self, user_id: str, connection: str, dead: Sequence[str]) -> list[str]:
        reply = await self._connect_script(
            keys=[self._key(user_id)],
            args=[
                self._backend.node_id,
                connection,
                self._policy.max_connections_per_user,
                ENTRIES_TTL_MS,
                *dead,
            ],
        )
        return _texts(reply)

    def _forget(self, user_id: str, connection: str) -> None:
        self._open.pop(connection, None)
        self._writes.put(partial(self._drop, user_id, connection))

    async def _drop(self, user_id: str, connection: str) -> None:
        await self._backend.client.hdel(self._key(user_id), connection)

    async def _restore_connections(self) -> None:
        by_user: dict[str, set[str]] = {}
        for connection, user_id in self._open.items():
            by_user.setdefault(user_id, set()).add(connection)
        await _restore(self._backend, "limit:connections", by_user)


async def _restore(backend: RedisBackend, part: str, entries: dict[str, set[str]]) -> None:
    """Write again the entries this node holds, per user (after its marker was lost)."""
    if not entries:
        return
    async with backend.client.pipeline(transaction=False) as pipe:
        for user_id, ids in entries.items():
            if ids:
                key = backend.user_key(user_id, part)
                pipe.hset(key, mapping=dict.fromkeys(ids, backend.node_id))
                pipe.pexpire(key, ENTRIES_TTL_MS)
        await pipe.execute()


def _unavailable() -> BackendUnavailable:
    return BackendUnavailable("the limits store (Redis) cannot be reached from this node")


def _texts(reply: object) -> list[str]:
    assert isinstance(reply, list), reply
    return [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
