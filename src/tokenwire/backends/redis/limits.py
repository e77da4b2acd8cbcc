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

Each keeps two tasks (its lease's renewal, its write queue), started by its first
use and ended by `aclose()`, to be awaited after the gateway's shutdown (which
still cancels and ends requests) and before the Redis client closes.

Refused with `backend_unavailable` while Redis cannot be reached; nothing here
needs a restart once it is back. Forgiving where Redis forgets: a restart
without persistence refills buckets and forgets today's spend (this node's
running streams and connections are written again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.limit_scripts import ADMIT, CONNECT, RELEASE
from tokenwire.backends.redis.node_entries import (
    ENTRIES_TTL_MS,
    NodeEntries,
    new_attempt,
    texts,
)
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import TokenwireError
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


class RedisQuotas:
    """The per-user limits on requests over every node (the gateway's `Admission`)."""

    def __init__(self, backend: RedisBackend, policy: LimitPolicy) -> None:
        self._backend = backend
        self._policy = policy
        self._admit_script = backend.client.register_script(ADMIT)
        self._release_script = backend.client.register_script(RELEASE)
        self._slots = NodeEntries(backend, "limit:streams")

    async def admit(self, spec: RequestSpec) -> RequestSpec:
        with audited_refusal(spec):
            check_prompt(self._policy, spec)
            spec = capped(self._policy, spec)
            slot, attempt = slot_of(spec), new_attempt()
            reply = await self._slots.take(
                spec.user_id, slot, attempt, partial(self._run_admit, spec, slot, attempt)
            )
            if reply[0] != "ok":
                raise self._refusal(reply)
        return spec

    def cancelled(self, spec: RequestSpec) -> None:
        self._slots.drop(spec.user_id, slot_of(spec))

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        policy = self._policy
        if outcome is None:
            owed = bool(policy.requests_per_minute_per_user)
        else:
            owed = bool(
                (policy.tokens_per_minute_per_user and outcome.usage is not None)
                or (policy.budget_usd_per_user_per_day and outcome.cost_usd)
            )
        if not owed:
            self._slots.drop(spec.user_id, slot_of(spec))
            return
        # After a cancel the slot is gone already: only what is owed is left to settle.
        attempt = self._slots.let_go(spec.user_id, slot_of(spec)) or ""
        self._slots.put(partial(self._settle, spec, attempt, outcome))

    def running(self, user_id: str) -> int:
        """The user's streams running on this node."""
        return self._slots.count(user_id)

    async def settled(self) -> None:
        """Return once every cancel and end so far is written to Redis."""
        await self._slots.settled()

    async def aclose(self) -> None:
        """Write what is queued (for a few seconds at most), then stop renewing."""
        await self._slots.aclose()

    # -- internals ------------------------------------------------------------

    def _keys(self, user_id: str) -> list[str]:
        user_key = self._backend.user_key
        return [
            self._slots.key(user_id),
            user_key(user_id, "limit:requests"),
            user_key(user_id, "limit:tokens"),
            user_key(user_id, "limit:spend"),
        ]

    async def _run_admit(
        self, spec: RequestSpec, slot: str, attempt: str, dead: Sequence[str]
    ) -> list[str]:
        policy = self._policy
        reply = await self._admit_script(
            keys=[*self._keys(spec.user_id), self._slots.void_key(spec.user_id)],
            args=[
                self._backend.node_id,
                slot,
                attempt,
                policy.max_streams_per_user,
                policy.requests_per_minute_per_user,
                policy.tokens_per_minute_per_user,
                repr(float(policy.budget_usd_per_user_per_day)),
                ENTRIES_TTL_MS,
                *dead,
            ],
        )
        return texts(reply)

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

    async def _settle(self, spec: RequestSpec, attempt: str, outcome: StreamOutcome | None) -> None:
        policy = self._policy
        used, cost = "", "0"
        if outcome is not None:
            used = str(outcome.usage.total_tokens) if outcome.usage is not None else ""
            cost = repr(float(outcome.cost_usd or 0.0))
        await self._release_script(
            keys=self._keys(spec.user_id),
            args=[
                slot_of(spec),
                attempt,
                "give_back" if outcome is None else "charge",
                policy.requests_per_minute_per_user,
                policy.tokens_per_minute_per_user,
                used,
                repr(float(policy.budget_usd_per_user_per_day)),
                cost,
            ],
        )


class RedisConnections:
    """Open connections: per user over every node, in all on this node (`max_connections`
    protects this node's own sockets and memory)."""

    def __init__(self, backend: RedisBackend, policy: LimitPolicy) -> None:
        self._backend = backend
        self._policy = policy
        self._connect_script = backend.client.register_script(CONNECT)
        self._connections = NodeEntries(backend, "limit:connections")
        # Connections waiting for Redis's answer: counted in all, not yet held.
        self._opening = 0

    async def open(self, user_id: str, client: str | None) -> Callable[[], None]:
        """Count a connection; the returned function uncounts it (once)."""
        if self.total >= self._policy.max_connections:
            raise server_connections_full(user_id, client)
        # A connection is its own attempt: its id is new.
        connection = new_attempt()
        self._opening += 1
        try:
            reply = await self._connections.take(
                user_id, connection, connection, partial(self._run_connect, user_id, connection)
            )
        finally:
            self._opening -= 1
        if reply[0] != "ok":
            raise user_connections_full(self._policy, user_id, client)
        return partial(self._connections.drop, user_id, connection)

    @property
    def total(self) -> int:
        """Connections open (or opening) on this node."""
        return self._connections.count() + self._opening

    async def settled(self) -> None:
        """Return once every close so far is written to Redis."""
        await self._connections.settled()

    async def aclose(self) -> None:
        """Write what is queued (for a few seconds at most), then stop renewing."""
        await self._connections.aclose()

    async def _run_connect(self, user_id: str, connection: str, dead: Sequence[str]) -> list[str]:
        reply = await self._connect_script(
            keys=[self._connections.key(user_id), self._connections.void_key(user_id)],
            args=[
                self._backend.node_id,
                connection,
                self._policy.max_connections_per_user,
                ENTRIES_TTL_MS,
                *dead,
            ],
        )
        return texts(reply)
