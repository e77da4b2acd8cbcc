"""What the core knows about one request, and where it is sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from tokenwire.protocol.messages import ChatMessage, Granularity, RequestConfig, RoutingStrategy
from tokenwire.providers.base import Provider, ProviderRequest, Usage
from tokenwire.settings import ProviderSettings


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """A validated request, transport-independent."""

    request_id: str
    user_id: str
    session_id: str | None
    messages: tuple[ChatMessage, ...]
    prompt_length: int
    config: RequestConfig
    granularity: Granularity = Granularity.CHUNK
    progress_every: int = 10
    conversation_id: str | None = None
    history_turns: int = 0

    @property
    def latest_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content


class ProviderSlot:
    """A configured provider with its prices and its concurrency gate."""

    def __init__(self, provider: Provider, settings: ProviderSettings) -> None:
        self.provider = provider
        self.settings = settings
        self.gate = (
            asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency else None
        )

    @property
    def name(self) -> str:
        return self.provider.name

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.prompt_tokens * self.settings.input_cost_per_mtok
            + usage.completion_tokens * self.settings.output_cost_per_mtok
        ) / 1_000_000

    def provider_request(self, spec: RequestSpec) -> ProviderRequest:
        return ProviderRequest(
            messages=spec.messages,
            model=spec.config.model,
            max_tokens=spec.config.max_tokens,
            temperature=spec.config.temperature,
            options=spec.config.options,
        )


@dataclass(frozen=True, slots=True)
class Route:
    slot: ProviderSlot
    task_type: str
    strategy: RoutingStrategy


class Router(Protocol):
    def choose(self, spec: RequestSpec) -> Route:
        """Pick a provider; raise `InvalidRequest` for a provider name that does not exist."""
