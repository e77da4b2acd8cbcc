"""Provider doubles for tests that need to watch what the core does to a provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from tokenwire.core.provider import ProviderEvent, ProviderRequest, Usage
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.settings import ProviderSettings


class WatchedProvider:
    """The simulated provider, recording each request and when its stream was closed."""

    kind = "simulated"

    def __init__(self, name: str = "watched") -> None:
        self._inner = SimulatedProvider(ProviderSettings(name=name, kind="simulated"))
        self.name = name
        self.model = self._inner.model
        self.requests: list[ProviderRequest] = []
        self.closed_at: list[float] = []
        self.deltas_sent = 0
        self.closed = asyncio.Event()

    def readiness(self) -> str | None:
        return None

    def validate(self, request: ProviderRequest) -> None:
        self._inner.validate(request)

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return self._inner.expected_deltas(request)

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.requests.append(request)
        try:
            async for item in self._inner.stream(request):
                if not isinstance(item, Usage):
                    self.deltas_sent += 1
                yield item
        finally:
            self.closed_at.append(time.monotonic())
            self.closed.set()

    async def aclose(self) -> None:
        return None
