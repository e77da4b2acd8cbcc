"""Limits that protect the server and meter its use, the same on every transport.

`Quotas` is the gateway's `Admission`: before a request starts it checks the
prompt's length, bounds `max_tokens` by `max_tokens_cap`, counts the user's
running streams, takes one request from the user's per-minute bucket, and
refuses when the user's token bucket or today's budget is spent; when the
request ends it releases the stream and charges the tokens and the spend.
`Connections` counts open connections (a WebSocket, or an SSE response) in all
and per user; `AddressThrottle` bounds handshakes and failed authentications
per client address. Protective limits have finite defaults; metering limits
(requests and tokens per minute, the daily budget, the max_tokens cap) are off
at 0 (CONTRACT.md).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from tokenwire.core.images import ImageBounds
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import (
    BudgetExceeded,
    ImageLimitExceeded,
    InvalidRequest,
    PromptTooLong,
    RequestRateLimited,
    TooManyConnections,
    TooManyStreams,
)
from tokenwire.security.audit import audit

# Per-user and per-address state is kept for this many keys; the least recently used
# goes first (state that goes is forgiving: a full bucket, a spend counted again).
MAX_TRACKED = 100_000
DAY_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class LimitPolicy:
    max_prompt_chars: int = 200_000
    images: ImageBounds = field(default_factory=ImageBounds)
    max_tokens_cap: int = 0
    max_streams_per_user: int = 64
    requests_per_minute_per_user: int = 0
    tokens_per_minute_per_user: int = 0
    budget_usd_per_user_per_day: float = 0.0
    max_connections: int = 10_000
    max_connections_per_user: int = 32
    handshakes_per_minute_per_address: int = 600
    auth_failures_per_minute_per_address: int = 30


class TokenBucket:
    """Holds at most `capacity`, refilled at `capacity` per minute."""

    __slots__ = ("_capacity", "_level", "_rate", "_updated")

    def __init__(self, capacity: float, now: float) -> None:
        self._capacity = capacity
        self._rate = capacity / 60.0
        self._level = capacity
        self._updated = now

    def level(self, now: float) -> float:
        # A wall clock stepped back refills nothing, rather than owing the step.
        elapsed = max(0.0, now - self._updated)
        self._level = min(self._capacity, self._level + elapsed * self._rate)
        self._updated = now
        return self._level

    def take(self, amount: float, now: float) -> bool:
        if self.level(now) < amount:
            return False
        self._level -= amount
        return True

    def give_back(self, amount: float, now: float) -> None:
        """Return what was taken for something that did not happen (never past full)."""
        self._level = min(self._capacity, self.level(now) + amount)

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` even past empty: what was used is owed."""
        self._level = self.level(now) - amount

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken."""
        missing = amount - self.level(now)
        return max(0.0, missing / self._rate) if self._rate else math.inf


T = TypeVar("T")


class _Keyed(Generic[T]):
    """State per key, bounded in number (least recently used first)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._items: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T:
        item = self._items.pop(key, None)
        if item is None:
            item = self._make()
        self._items[key] = item
        while len(self._items) > MAX_TRACKED:
            self._items.popitem(last=False)
        return item


class Quotas:
    """The per-user limits on requests (the gateway's `Admission`)."""

    def __init__(self, policy: LimitPolicy, clock: Callable[[], float] = time.time) -> None:
        self._policy = policy
        self._clock = clock
        # Each user's requests that hold a stream slot, by id: admitted, not yet ended
        # nor cancelled. By id, so that a cancel and the end that follows free it once.
        self._streams: dict[str, set[str]] = {}
        self._requests = _Keyed(lambda: TokenBucket(policy.requests_per_minute_per_user, clock()))
        self._tokens = _Keyed(lambda: TokenBucket(policy.tokens_per_minute_per_user, clock()))
        self._spend = _Keyed(lambda: [0.0, 0.0])  # [day, usd spent that day]

    async def admit(self, spec: RequestSpec) -> RequestSpec:
        with audited_refusal(spec):
            spec = self._bounded(spec)
            self._check_rates(spec.user_id)
        self._streams.setdefault(spec.user_id, set()).add(slot_of(spec))
        return spec

    def cancelled(self, spec: RequestSpec) -> None:
        running = self._streams.get(spec.user_id)
        if running is not None:
            running.discard(slot_of(spec))
            if not running:
                del self._streams[spec.user_id]

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        self.cancelled(spec)
        user = spec.user_id
        now = self._clock()
        policy = self._policy
        if outcome is None:
            # Refused before a generation started (no such provider, an open circuit):
            # rate limits count what costs (CONTRACT.md), so its request is given back.
            if policy.requests_per_minute_per_user:
                self._requests.get(user).give_back(1, now)
            return
        if policy.tokens_per_minute_per_user and outcome.usage is not None:
            self._tokens.get(user).charge(outcome.usage.total_tokens, now)
        if policy.budget_usd_per_user_per_day and outcome.cost_usd:
            spent = self._spent_today(user, now)
            spent[1] += outcome.cost_usd

    def running(self, user_id: str) -> int:
        return len(self._streams.get(user_id, ()))

    # -- internals ------------------------------------------------------------

    def _bounded(self, spec: RequestSpec) -> RequestSpec:
        check_prompt(self._policy, spec)
        if self.running(spec.user_id) >= self._policy.max_streams_per_user:
            raise too_many_streams(self._policy)
        return capped(self._policy, spec)

    def _check_rates(self, user: str) -> None:
        policy, now = self._policy, self._clock()
        if policy.budget_usd_per_user_per_day:
            spent = self._spent_today(user, now)
            if spent[1] >= policy.budget_usd_per_user_per_day:
                raise budget_spent(policy, retry_after=DAY_SECONDS - now % DAY_SECONDS)
        if policy.tokens_per_minute_per_user:
            tokens = self._tokens.get(user)
            if tokens.level(now) <= 0:
                raise tokens_spent(policy, retry_after=tokens.wait_for(1, now))
        if policy.requests_per_minute_per_user:
            requests = self._requests.get(user)
            if not requests.take(1, now):
                raise requests_spent(policy, retry_after=requests.wait_for(1, now))

    def _spent_today(self, user: str, now: float) -> list[float]:
        spent = self._spend.get(user)
        day = now // DAY_SECONDS
        if spent[0] != day:
            spent[0], spent[1] = day, 0.0
        return spent


def slot_of(spec: RequestSpec) -> str:
    """The name of the stream slot a request holds."""
    # The gateway names every request before admitting it; the fallback keeps the count
    # right for a caller that does not (each such request then holds its own slot).
    return spec.request_id or f"unnamed-{id(spec)}"


# -- what every `Admission` of these limits shares, wherever it keeps its counts -------


def check_prompt(policy: LimitPolicy, spec: RequestSpec) -> None:
    """Refuse a prompt past `max_prompt_chars` or the image bounds (no shared state)."""
    # A tool's results are shown to the model as much as a prompt is.
    chars = sum(len(m.content) + sum(len(r.content) for r in m.tool_results) for m in spec.messages)
    if chars > policy.max_prompt_chars:
        raise PromptTooLong(f"the prompt is {chars} characters; at most {policy.max_prompt_chars}")
    policy.images.check(spec.messages)


def capped(policy: LimitPolicy, spec: RequestSpec) -> RequestSpec:
    """The request with its `max_tokens` bounded by `max_tokens_cap` (refused above it)."""
    cap = policy.max_tokens_cap
    if not cap:
        return spec
    asked = spec.generation.max_tokens
    if asked is not None and asked > cap:
        raise InvalidRequest(f"max_tokens: at most {cap} on this server")
    if asked is None:
        spec = replace(spec, generation=replace(spec.generation, max_tokens=cap))
    return spec


@contextmanager
def audited_refusal(spec: RequestSpec) -> Iterator[None]:
    """Audit a request refused by a limit as it passes."""
    try:
        yield
    except (
        PromptTooLong,
        ImageLimitExceeded,
        InvalidRequest,
        TooManyStreams,
        TooManyConnections,
    ) as exc:
        audit("limit hit", user=spec.user_id, reason=exc.error_type, client=spec.client)
        raise


def too_many_streams(policy: LimitPolicy) -> TooManyStreams:
    return TooManyStreams(f"at most {policy.max_streams_per_user} streams at once per user")


def budget_spent(policy: LimitPolicy, retry_after: float) -> BudgetExceeded:
    return BudgetExceeded(
        f"today's budget of ${policy.budget_usd_per_user_per_day:g} is spent",
        retry_after=retry_after,
    )


def tokens_spent(policy: LimitPolicy, retry_after: float) -> RequestRateLimited:
    return RequestRateLimited(
        f"at most {policy.tokens_per_minute_per_user} tokens a minute", retry_after=retry_after
    )


def requests_spent(policy: LimitPolicy, retry_after: float) -> RequestRateLimited:
    return RequestRateLimited(
        f"at most {policy.requests_per_minute_per_user} requests a minute",
        retry_after=retry_after,
    )


def user_connections_full(
    policy: LimitPolicy, user_id: str, client: str | None
) -> TooManyConnections:
    """The refusal of a connection past `max_connections_per_user` (audited)."""
    audit("limit hit", user=user_id, reason="max_connections_per_user", client=client)
    return TooManyConnections(
        f"at most {policy.max_connections_per_user} connections per user", retry_after=5
    )


def server_connections_full(user_id: str, client: str | None) -> TooManyConnections:
    """The refusal of a connection past `max_connections`, this node's own (audited)."""
    audit("limit hit", user=user_id, reason="max_connections", client=client)
    return TooManyConnections("the server is at its connection limit", retry_after=5)


class ConnectionLimit(Protocol):
    """Counts open connections (a WebSocket, an SSE response) against the limits."""

    async def open(self, user_id: str, client: str | None) -> Callable[[], None]:
        """Count a connection, or raise the error that refuses it; the returned function
        uncounts it (once), and never blocks."""


class Connections:
    """Open connections in all and per user; `open` refuses past the limits."""

    def __init__(self, policy: LimitPolicy) -> None:
        self._policy = policy
        self._total = 0
        self._per_user: dict[str, int] = {}

    async def open(self, user_id: str, client: str | None) -> Callable[[], None]:
        """Count a connection; the returned function uncounts it (once)."""
        mine = self._per_user.get(user_id, 0)
        if self._total >= self._policy.max_connections:
            raise server_connections_full(user_id, client)
        if mine >= self._policy.max_connections_per_user:
            raise user_connections_full(self._policy, user_id, client)
        self._total += 1
        self._per_user[user_id] = mine + 1
        released = False

        def close() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._total -= 1
            left = self._per_user.get(user_id, 1) - 1
            if left > 0:
                self._per_user[user_id] = left
            else:
                self._per_user.pop(user_id, None)

        return close

    @property
    def total(self) -> int:
        return self._total


class AddressThrottle:
    """Handshakes and failed authentications per client address, per minute."""

    def __init__(self, policy: LimitPolicy, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._handshakes = _Keyed(
            lambda: TokenBucket(policy.handshakes_per_minute_per_address, clock())
        )
        self._failures = _Keyed(
            lambda: TokenBucket(policy.auth_failures_per_minute_per_address, clock())
        )

    def check(self, address: str) -> None:
        """Refuse an address whose failed authentications are spent for now."""
        now = self._clock()
        failures = self._failures.get(throttled_as(address))
        if failures.level(now) < 1:
            audit("limit hit", reason="auth_failures_per_address", client=address)
            raise TooManyConnections(
                "too many failed authentications from this address",
                retry_after=failures.wait_for(1, now),
            )

    def handshake(self, address: str) -> None:
        """Count a WebSocket handshake from `address`; refused past the rate, or while
        its failed authentications are spent."""
        self.check(address)
        now = self._clock()
        bucket = self._handshakes.get(throttled_as(address))
        if not bucket.take(1, now):
            audit("limit hit", reason="handshakes_per_address", client=address)
            raise TooManyConnections(
                "too many connections from this address", retry_after=bucket.wait_for(1, now)
            )

    def failed_authentication(self, address: str) -> None:
        self._failures.get(throttled_as(address)).charge(1, self._clock())


def throttled_as(address: str) -> str:
    """The key an address is counted under: an IPv6 address by its /64, the block one
    client holds (it could otherwise take a fresh address for every attempt)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address
