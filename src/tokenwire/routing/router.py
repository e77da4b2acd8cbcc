"""The router: a forced provider, else one strong at the task, else the default."""

from __future__ import annotations

from collections.abc import Mapping

from tokenwire.core.route import ProviderSlot, Route
from tokenwire.core.spec import RequestSpec
from tokenwire.protocol.errors import InvalidRequest, excerpt
from tokenwire.protocol.messages import RoutingStrategy
from tokenwire.routing.classify import classify


class StrengthRouter:
    def __init__(
        self,
        slots: Mapping[str, ProviderSlot],
        default_provider: str,
        default_strategy: RoutingStrategy = RoutingStrategy.INTELLIGENT,
    ) -> None:
        if default_provider not in slots:
            raise ValueError(f"default provider {default_provider!r} is not configured")
        self._slots = dict(slots)
        self._default = slots[default_provider]
        self._default_strategy = default_strategy

    def choose(self, spec: RequestSpec) -> Route:
        task = classify(spec.latest_user_text)
        strategy = spec.routing.strategy or self._default_strategy
        forced = spec.routing.provider
        if forced is not None:
            slot = self._slots.get(forced)
            if slot is None:
                known = ", ".join(sorted(self._slots))
                raise InvalidRequest(
                    f"config.provider: unknown provider {excerpt(forced)}; known: {known}"
                )
            return Route(slot, task.value, strategy)
        if task.value in self._default.profile.strengths:
            return Route(self._default, task.value, strategy)
        for slot in self._slots.values():
            if task.value in slot.profile.strengths:
                return Route(slot, task.value, strategy)
        return Route(self._default, task.value, strategy)
