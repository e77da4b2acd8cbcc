"""Providers as the core drives them, and the router's seam."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from tokenwire.core.provider import Provider, ProviderRequest, Usage
from tokenwire.core.spec import RequestSpec
from tokenwire.protocol.messages import RoutingStrategy


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What the core needs to know of a configured provider besides the provider itself."""

    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    max_concurrency: int | None = None
    silence_timeout: float | None = None
    """Longest wait for the provider's next event before the request fails."""
    strengths: tuple[str, ...] = field(default_factory=tuple)


class ProviderSlot:
    """A configured provider with its prices and its concurrency gate."""

    def __init__(self, provider: Provider, profile: ProviderProfile) -> None:
        self.provider = provider
        self.profile = profile
        self.gate = asyncio.Semaphore(profile.max_concurrency) if profile.max_concurrency else None

    @property
    def name(self) -> str:
        return self.provider.name

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.profile.input_cost_per_mtok
            + usage.completion_tokens * self.profile.output_cost_per_mtok
        ) / 1_000_000

    def provider_request(self, spec: RequestSpec) -> ProviderRequest:
        generation = spec.generation
        return ProviderRequest(
            messages=spec.conversation,
            model=generation.model,
            max_tokens=generation.max_tokens,
            temperature=generation.temperature,
            options=generation.options,
        )


@dataclass(frozen=True, slots=True)
class Route:
    slot: ProviderSlot
    task_type: str
    strategy: RoutingStrategy


class Router(Protocol):
    def choose(self, spec: RequestSpec) -> Route:
        """Pick a provider; raise `InvalidRequest` for a provider name that does not exist."""
