"""How each routing strategy ranks the providers that may serve a request.

Every strategy sees the same `Option`s (a provider with its task fit, estimated
cost and live health) and returns them best first, each with a score and a
one-line reason; the core tries them in that order. docs/routing.md explains
the scores with a worked example.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from tokenwire.core.route import Candidate, ProviderSlot
from tokenwire.routing.health import CircuitState

# The intelligent score's parts, and what shifts them.
FIT_WEIGHT = 2.0
SPEED_WEIGHT, SPEED_PRIORITY_WEIGHT = 0.5, 1.5
RELIABILITY_WEIGHT, RELIABILITY_PRIORITY_WEIGHT = 1.0, 2.0
COST_WEIGHT = 1.0
LOAD_WEIGHT = 1.0
DEFAULT_BONUS = 0.25
UNMEASURED_SPEED = 0.5
# A time to first token of this many ms counts half as fast as an instant one.
HALF_SPEED_TTFT_MS = 1000.0


@dataclass(frozen=True, slots=True)
class Option:
    slot: ProviderSlot
    fit: bool
    cost_usd: float
    ttft_ms: float | None
    error_rate: float
    state: CircuitState
    load: float
    """In flight over the concurrency limit (0 without a limit)."""
    is_default: bool

    def facts(self) -> str:
        speed = "unmeasured" if self.ttft_ms is None else f"ttft {self.ttft_ms:.0f} ms"
        parts = [
            "fits the task" if self.fit else "",
            speed,
            f"{self.error_rate:.0%} errors",
            f"est. ${self.cost_usd:.6f}",
            "circuit half open (probe)" if self.state is CircuitState.HALF_OPEN else "",
            f"load {self.load:.0%}" if self.load else "",
        ]
        return "; ".join(part for part in parts if part)


def _ranked(
    options: Sequence[Option], scores: Sequence[float], reasons: Sequence[str]
) -> list[Candidate]:
    rows = [
        Candidate(option.slot, score, reason)
        for option, score, reason in zip(options, scores, reasons, strict=True)
    ]
    # Stable: equal scores keep the configuration's order.
    return sorted(rows, key=lambda c: -c.score)


def intelligent(
    options: Sequence[Option], speed_priority: bool, reliability_priority: bool
) -> list[Candidate]:
    speed_weight = SPEED_PRIORITY_WEIGHT if speed_priority else SPEED_WEIGHT
    reliability_weight = RELIABILITY_PRIORITY_WEIGHT if reliability_priority else RELIABILITY_WEIGHT
    costs = [o.cost_usd for o in options if o.cost_usd > 0]
    cheapest = min(costs) if costs else 0.0
    scores = []
    for o in options:
        speed = (
            UNMEASURED_SPEED if o.ttft_ms is None else 1.0 / (1.0 + o.ttft_ms / HALF_SPEED_TTFT_MS)
        )
        reliability = (1.0 - o.error_rate) * (0.5 if o.state is CircuitState.HALF_OPEN else 1.0)
        cost = 1.0 if o.cost_usd <= 0 else cheapest / o.cost_usd
        scores.append(
            FIT_WEIGHT * o.fit
            + speed_weight * speed
            + reliability_weight * reliability
            + COST_WEIGHT * cost
            - LOAD_WEIGHT * o.load
            + DEFAULT_BONUS * o.is_default
        )
    return _ranked(options, scores, [o.facts() for o in options])


def performance_based(options: Sequence[Option]) -> list[Candidate]:
    # Unmeasured providers come first, so that every one gets measured.
    scores = [float("inf") if o.ttft_ms is None else -o.ttft_ms for o in options]
    reasons = [
        "unmeasured: tried first" if o.ttft_ms is None else f"ttft {o.ttft_ms:.0f} ms"
        for o in options
    ]
    ranked = _ranked(options, scores, reasons)
    return [
        Candidate(c.slot, 1e6 if c.score == float("inf") else c.score, c.reason) for c in ranked
    ]


def cost_optimized(options: Sequence[Option]) -> list[Candidate]:
    scores = [-o.cost_usd - o.error_rate * 1e-9 for o in options]
    return _ranked(options, scores, [f"est. ${o.cost_usd:.6f}" for o in options])


def reliability_based(options: Sequence[Option]) -> list[Candidate]:
    scores = [(2.0 if o.state is CircuitState.CLOSED else 1.0) - o.error_rate for o in options]
    reasons = [f"{o.error_rate:.0%} errors, circuit {o.state.value}" for o in options]
    return _ranked(options, scores, reasons)


class RoundRobin:
    """Each request starts one provider further along; the rest follow as fallbacks."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def __call__(self, options: Sequence[Option]) -> list[Candidate]:
        if not options:
            return []
        start = next(self._turn) % len(options)
        order = [*options[start:], *options[:start]]
        return [
            Candidate(o.slot, float(len(order) - i), "its turn" if i == 0 else "next in turn")
            for i, o in enumerate(order)
        ]
