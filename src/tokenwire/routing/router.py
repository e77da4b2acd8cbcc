"""The router: the request's task, the providers' live health, and a strategy's ranking.

A forced provider (`config.provider`) bypasses ranking but not its circuit: an
open one refuses the request (`provider_unavailable`) before it starts. Otherwise
every provider that takes part in routing (`auto`), whose circuit lets a request
through, and whose estimated cost fits `config.cost_limit`, is ranked by the
strategy; the core tries them in that order, falling back down the list while no
text has reached the client. A provider with `auto` off is never a candidate nor
a fallback: when every other one is out, the request is refused, not answered by it.
A request goes only to providers with the capabilities it needs: images (in its new
turns or its history) need `vision`; tools, or calls and results in the history, need
`tools`; a response format needs structured output. One forced on a provider that
lacks one is `unsupported_feature` before it starts. A provider that calls tools only
one at a time still takes a request that allows parallel calls (it is told not to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tokenwire.core.provider import estimate_tokens, images_of
from tokenwire.core.route import Candidate, ProviderSlot, Route
from tokenwire.core.spec import RequestSpec
from tokenwire.core.tools import Capabilities
from tokenwire.protocol.errors import (
    CostLimitExceeded,
    InvalidRequest,
    ProviderUnavailable,
    UnsupportedFeature,
    excerpt,
)
from tokenwire.protocol.messages import RoutingStrategy
from tokenwire.routing import strategies
from tokenwire.routing.classify import Classifier, classify
from tokenwire.routing.health import HealthBook
from tokenwire.routing.strategies import Option


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    default_provider: str
    default_strategy: RoutingStrategy = RoutingStrategy.INTELLIGENT
    default_max_tokens: int = 512
    """The answer budget assumed in cost estimates when a request sets no max_tokens."""


class StrategyRouter:
    def __init__(
        self,
        slots: Mapping[str, ProviderSlot],
        health: HealthBook,
        policy: RoutingPolicy,
        classifier: Classifier = classify,
    ) -> None:
        if policy.default_provider not in slots:
            raise ValueError(f"default provider {policy.default_provider!r} is not configured")
        self._slots = dict(slots)
        self._health = health
        self._policy = policy
        self._classify = classifier
        self._round_robin = strategies.RoundRobin()

    def choose(self, spec: RequestSpec) -> Route:
        classification = self._classify(spec.latest_user_text)
        task = classification.task.value
        strategy = spec.routing.strategy or self._policy.default_strategy
        forced = spec.routing.provider
        if forced is not None:
            candidate = self._forced(forced, spec)
            return Route(
                (candidate,), task, strategy, forced=True, task_reason=classification.reason
            )
        options = self._options(spec, task)
        ranked = self._rank(strategy, options, spec)
        return Route(tuple(ranked), task, strategy, task_reason=classification.reason)

    # -- internals ------------------------------------------------------------

    def _forced(self, name: str, spec: RequestSpec) -> Candidate:
        slot = self._slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self._slots))
            raise InvalidRequest(
                f"config.provider: unknown provider {excerpt(name)}; known: {known}"
            )
        health = self._health[name]
        if not health.available:
            raise ProviderUnavailable(
                f"provider {name} is out of service (circuit {health.state.value})",
                retry_after=health.retry_in or None,
            )
        limit = spec.routing.cost_limit
        cost = slot.estimated_cost_usd(*self._budget(spec))
        if limit is not None and cost > limit:
            raise CostLimitExceeded(
                f"provider {name} may cost ${cost:.6f} for this request, over the limit ${limit:g}"
            )
        lacking = _lacking(slot, _needs(spec))
        if lacking is not None:
            raise UnsupportedFeature(
                f"provider {name} {lacking.lacks}; name one that does or use auto"
            )
        return Candidate(slot, 0.0, "forced by config.provider")

    def _budget(self, spec: RequestSpec) -> tuple[int, int]:
        """Tokens the request may cost: its prompt (estimated) and its answer budget."""
        prompt = sum(estimate_tokens(m.content) for m in spec.conversation)
        return prompt, spec.generation.max_tokens or self._policy.default_max_tokens

    def _options(self, spec: RequestSpec, task: str) -> list[Option]:
        options = []
        closed_out: dict[str, float] = {}
        budget = self._budget(spec)
        needs = _needs(spec)
        unable: list[_Need] = []
        for name, slot in self._slots.items():
            if not slot.profile.auto:
                continue  # reachable by name only, never a stand-in for the others
            lacking = _lacking(slot, needs)
            if lacking is not None:
                unable.append(lacking)
                continue
            health = self._health[name]
            if not health.available:
                closed_out[name] = health.retry_in
                continue
            load = 0.0
            if health.max_concurrency:
                load = min(1.0, health.in_flight / health.max_concurrency)
            options.append(
                Option(
                    slot=slot,
                    fit=task in slot.profile.strengths,
                    cost_usd=slot.estimated_cost_usd(*budget),
                    ttft_ms=health.ttft_ms,
                    error_rate=health.error_rate,
                    state=health.state,
                    load=load,
                    is_default=name == self._policy.default_provider,
                )
            )
        if not closed_out and not options and unable:
            raise UnsupportedFeature(unable[0].nobody)
        if not closed_out and not options:
            known = ", ".join(sorted(self._slots))
            raise InvalidRequest(
                f"no provider may be chosen automatically (each has auto = false): "
                f"name one ({known})"
            )
        if not options:
            raise ProviderUnavailable(
                "every provider that routing may choose is out of service "
                f"(circuits open: {', '.join(closed_out)})",
                retry_after=min(closed_out.values()),
            )
        limit = spec.routing.cost_limit
        if limit is None:
            return options
        affordable = [o for o in options if o.cost_usd <= limit]
        if not affordable:
            cheapest = min(o.cost_usd for o in options)
            raise CostLimitExceeded(
                f"the cheapest provider may cost ${cheapest:.6f} for this request, "
                f"over the limit ${limit:g}"
            )
        return affordable

    def _rank(
        self, strategy: RoutingStrategy, options: list[Option], spec: RequestSpec
    ) -> list[Candidate]:
        if strategy is RoutingStrategy.PERFORMANCE_BASED:
            return strategies.performance_based(options)
        if strategy is RoutingStrategy.COST_OPTIMIZED:
            return strategies.cost_optimized(options)
        if strategy is RoutingStrategy.RELIABILITY_BASED:
            return strategies.reliability_based(options)
        if strategy is RoutingStrategy.ROUND_ROBIN:
            return self._round_robin(options)
        return strategies.intelligent(
            options, spec.routing.speed_priority, spec.routing.reliability_priority
        )


@dataclass(frozen=True, slots=True)
class _Need:
    """A capability a request needs: whether a provider has it, and the words for it."""

    has: Callable[[Capabilities], bool]
    lacks: str
    nobody: str


_VISION = _Need(
    lambda c: c.vision,
    "does not see images",
    "the request has images and no provider that routing may choose sees them",
)
_TOOLS = _Need(
    lambda c: c.tools,
    "does not call tools",
    "the request has tools (or tool calls in its history) and no provider that routing "
    "may choose calls tools",
)
_STRUCTURED = _Need(
    lambda c: c.structured_output != "none",
    "does not produce structured output",
    "the request asks for a response format and no provider that routing may choose "
    "produces structured output",
)


def _needs(spec: RequestSpec) -> tuple[_Need, ...]:
    turns = spec.conversation
    needs = []
    if images_of(turns):
        needs.append(_VISION)
    if spec.generation.tools or any(m.tool_calls or m.tool_results for m in turns):
        needs.append(_TOOLS)
    if spec.generation.response_format is not None:
        needs.append(_STRUCTURED)
    return tuple(needs)


def _lacking(slot: ProviderSlot, needs: tuple[_Need, ...]) -> _Need | None:
    """The first of `needs` that the provider lacks, if any."""
    return next((need for need in needs if not need.has(slot.profile.capabilities)), None)
