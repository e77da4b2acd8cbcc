"""What each provider is doing lately: speed, errors, load, and its circuit breaker.

The core reports every attempt at a provider (`attempt_started`, `first_text`,
`attempt_ended`); the router reads the result. Times to first token and
tokens/s are exponential moving averages; the error rate is over the last
`window` finished attempts. The circuit breaker opens after
`failure_threshold` failures in a row, refuses the provider for
`cooldown_seconds`, then lets exactly one real request through as a probe
(half open): success closes it, failure opens it again. Cancelled attempts and
requests the upstream refused as malformed (a 4xx other than 401/403/429) say
nothing about the provider's health and count neither way.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenwire.core.route import AttemptOutcome


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    failure_threshold: int = 3
    cooldown_seconds: float = 30.0
    window: int = 20
    smoothing: float = 0.3
    """Weight of the newest sample in the moving averages."""


class ProviderHealth:
    def __init__(
        self,
        name: str,
        max_concurrency: int | None,
        policy: HealthPolicy,
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self._policy = policy
        self._clock = clock
        self.ttft_ms: float | None = None
        self.tokens_per_s: float | None = None
        self._outcomes: deque[bool] = deque(maxlen=policy.window)
        self._failed_in_window = 0
        """Failures among `_outcomes`, kept as they come and go: every request's routing
        reads the error rate, and counting the window each time cost it a loop."""
        self.in_flight = 0
        self._failures_in_a_row = 0
        self._opened_at: float | None = None
        self._probing = False
        self.attempts = 0

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at < self._policy.cooldown_seconds:
            return CircuitState.OPEN
        return CircuitState.HALF_OPEN

    @property
    def available(self) -> bool:
        """May a request be sent now: closed, or half open with no probe out yet."""
        state = self.state
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and not self._probing
        )

    @property
    def at_capacity(self) -> bool:
        return self.max_concurrency is not None and self.in_flight >= self.max_concurrency

    @property
    def error_rate(self) -> float:
        if not self._outcomes:
            return 0.0
        return self._failed_in_window / len(self._outcomes)

    @property
    def measured(self) -> bool:
        return self.ttft_ms is not None

    @property
    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._policy.cooldown_seconds - (self._clock() - self._opened_at))

    def started(self) -> None:
        self.in_flight += 1
        self.attempts += 1
        if self.state is CircuitState.HALF_OPEN:
            self._probing = True

    def first_text(self, seconds: float) -> None:
        self.ttft_ms = self._average(self.ttft_ms, seconds * 1000)

    def ended(self, outcome: AttemptOutcome, deltas: int, streaming_seconds: float) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        probe, self._probing = self._probing, False
        if outcome is AttemptOutcome.OK:
            self._record(True)
            self._failures_in_a_row = 0
            self._opened_at = None
            if deltas > 1 and streaming_seconds > 0:
                self.tokens_per_s = self._average(
                    self.tokens_per_s, (deltas - 1) / streaming_seconds
                )
        elif outcome is AttemptOutcome.FAILED:
            self._record(False)
            self._failures_in_a_row += 1
            if probe or self._failures_in_a_row >= self._policy.failure_threshold:
                self._opened_at = self._clock()

    def _record(self, ok: bool) -> None:
        outcomes = self._outcomes
        if outcomes and len(outcomes) == outcomes.maxlen and not outcomes[0]:
            self._failed_in_window -= 1  # the oldest, a failure, leaves the window
        outcomes.append(ok)
        if not ok:
            self._failed_in_window += 1

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            "error_rate": round(self.error_rate, 3),
            "in_flight": self.in_flight,
        }

    def _average(self, current: float | None, sample: float) -> float:
        if current is None:
            return sample
        weight = self._policy.smoothing
        return weight * sample + (1 - weight) * current


class HealthBook:
    """Every provider's health; what the core reports attempts to (an `AttemptObserver`)."""

    def __init__(
        self,
        providers: Iterable[tuple[str, int | None]],
        policy: HealthPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = policy or HealthPolicy()
        self._health = {
            name: ProviderHealth(name, concurrency, policy, clock)
            for name, concurrency in providers
        }

    def __getitem__(self, provider: str) -> ProviderHealth:
        return self._health[provider]

    def describe(self, provider: str) -> dict[str, Any]:
        return self._health[provider].describe()

    def attempt_started(self, provider: str) -> None:
        self._health[provider].started()

    def first_text(self, provider: str, seconds: float) -> None:
        self._health[provider].first_text(seconds)

    def attempt_ended(
        self, provider: str, outcome: AttemptOutcome, deltas: int, streaming_seconds: float
    ) -> None:
        self._health[provider].ended(outcome, deltas, streaming_seconds)
