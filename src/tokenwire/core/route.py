"""Providers as the core drives them, the router's seam, and what the core reports back."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from tokenwire.core.provider import Provider, ProviderRequest, Usage
from tokenwire.core.spec import RequestSpec
from tokenwire.core.tools import Capabilities
from tokenwire.protocol.messages import RoutingStrategy


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What the core needs to know of a configured provider besides the provider itself."""

    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    max_concurrency: int | None = None
    silence_timeout: float | None = None
    """The provider's own `timeout`: its wait for the first text and for each next one is
    the request's deadline for it, or this where shorter (core/deadlines.py)."""
    strengths: tuple[str, ...] = field(default_factory=tuple)
    auto: bool = True
    """Whether routing may choose it; else it answers only when named (`config.provider`)."""
    capabilities: Capabilities = field(default_factory=Capabilities)
    """What it can do beyond text: a request that needs more is routed only to one that can."""

    @property
    def vision(self) -> bool:
        return self.capabilities.vision


class ProviderSlot:
    """A configured provider with its prices and its concurrency gate."""

    def __init__(self, provider: Provider, profile: ProviderProfile) -> None:
        self.provider = provider
        self.profile = profile
        self.gate = asyncio.Semaphore(profile.max_concurrency) if profile.max_concurrency else None
        self.waiting = 0
        """Requests queued for this provider's gate."""
        self._last: tuple[RequestSpec, ProviderRequest] | None = None
        """The last request built, and the spec it was built from (both frozen)."""

    @property
    def name(self) -> str:
        return self.provider.name

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.profile.input_cost_per_mtok
            + usage.completion_tokens * self.profile.output_cost_per_mtok
        ) / 1_000_000

    def estimated_cost_usd(self, prompt_tokens: int, answer_tokens: int) -> float:
        """The most a request can cost here: its prompt, and its whole answer budget
        (`cost_usd`'s sum, with no `Usage` built for it on every request's routing)."""
        profile = self.profile
        return (
            prompt_tokens * profile.input_cost_per_mtok
            + answer_tokens * profile.output_cost_per_mtok
        ) / 1_000_000

    def provider_request(self, spec: RequestSpec) -> ProviderRequest:
        # Asked for the same spec two or three times per request (validation, the
        # expected length, the attempt): built once while no other request came between.
        last = self._last
        if last is not None and last[0] is spec:
            return last[1]
        request = self._build_request(spec)
        self._last = (spec, request)
        return request

    def _build_request(self, spec: RequestSpec) -> ProviderRequest:
        generation = spec.generation
        parallel = generation.parallel_tool_calls
        if generation.tools and not self.profile.capabilities.parallel_tool_calls:
            # Routing may send a request that allows parallel calls to a provider that
            # makes one at a time: it is told so, rather than left to its default.
            parallel = False
        return ProviderRequest(
            messages=spec.conversation,
            model=generation.model,
            max_tokens=generation.max_tokens,
            temperature=generation.temperature,
            top_p=generation.top_p,
            stop=generation.stop,
            options=generation.options,
            hints=generation.hints,
            option_names=generation.option_names,
            tools=generation.tools,
            tool_choice=generation.tool_choice,
            parallel_tool_calls=parallel,
            response_format=generation.response_format,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    slot: ProviderSlot
    score: float
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"provider": self.slot.name, "score": round(self.score, 3), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Route:
    """The router's decision: candidates best first; the core falls back down the list."""

    candidates: tuple[Candidate, ...]
    task_type: str
    strategy: RoutingStrategy
    forced: bool = False
    task_reason: str = ""

    @property
    def slot(self) -> ProviderSlot:
        return self.candidates[0].slot


class Router(Protocol):
    def choose(self, spec: RequestSpec) -> Route:
        """Rank the providers for a request, or raise the error that refuses it
        (`InvalidRequest`, `ProviderUnavailable`, `CostLimitExceeded`)."""


class AttemptOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    """The provider failed (5xx, a cut stream, a timeout, refused credentials, 429)."""
    NEUTRAL = "neutral"
    """Cancelled, or the upstream refused the request itself: nothing about its health."""


class AttemptObserver(Protocol):
    """Where the core reports what providers do (the router's health book)."""

    def attempt_started(self, provider: str) -> None: ...

    def first_text(self, provider: str, seconds: float) -> None: ...

    def attempt_ended(
        self, provider: str, outcome: AttemptOutcome, deltas: int, streaming_seconds: float
    ) -> None: ...


class NoObserver:
    def attempt_started(self, provider: str) -> None:
        return None

    def first_text(self, provider: str, seconds: float) -> None:
        return None

    def attempt_ended(
        self, provider: str, outcome: AttemptOutcome, deltas: int, streaming_seconds: float
    ) -> None:
        return None
