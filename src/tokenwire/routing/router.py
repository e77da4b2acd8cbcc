"""The router: the request's task, the providers' live health, and a strategy's ranking.

A forced provider (`config.provider`) bypasses ranking but not its circuit: an
open one refuses the request (`provider_unavailable`) before it starts. Otherwise
every provider that takes part in routing (`auto`), whose circuit lets a request
through, and whose estimated cost fits `config.cost_limit`, is ranked by the
strategy; the core tries them in that order, falling back down the list while no
text has reached the client. A provider with `auto` off is never a candidate nor
a fallback: when every other one is out, the request is refused, not answered by it.
A request with images (in its new turns or its history) goes only to providers that
see them (`vision`); one forced on a provider that does not is `unsupported_feature`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tokenwire.core.provider import estimate_tokens, images_of
from tokenwire.core.route import Candidate, ProviderSlot, Route
from tokenwire.core.spec import RequestSpec
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
        if _has_images(spec) and not slot.profile.vision:
            raise UnsupportedFeature(
                f"provider {name} does not see images; name one that does or use auto"
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
        needs_vision = _has_images(spec)
        blind = 0
        for name, slot in self._slots.items():
            if not slot.profile.auto:
                continue  # reachable by name only, never a stand-in for the others
            if needs_vision and not slot.profile.vision:
                blind += 1
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
        if not closed_out and not options and blind:
            raise UnsupportedFeature(
                "the request has images and no provider that routing may choose sees them"
            )
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


def _has_images(spec: RequestSpec) -> bool:
    return bool(images_of(spec.conversation))
