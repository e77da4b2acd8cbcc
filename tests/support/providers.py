"""Provider doubles for tests that need to watch what the core does to a provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from tests.support.clock import run_on_virtual_clock
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.protocol.errors import ProviderError
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.settings import ProviderSettings


class WatchedProvider:
    """The simulated provider, recording each request and when its stream was closed."""

    kind = "simulated"

    def __init__(self, name: str = "watched", **options: Any) -> None:
        settings = ProviderSettings(name=name, kind="simulated", options=options)
        self._inner = SimulatedProvider(settings)
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


async def simulated_answer(prompt: str, **options: Any) -> str:
    """The whole answer of the simulated provider with these options to a request of one
    user turn, as a gateway asks it: the reference that a stream resumed anywhere must
    equal. Computed in-process with the very options the nodes use (`delay_ms` among
    them: the options seed the words) on a virtual clock, in a thread of its own beside
    the test's loop, so that its pauses take no time."""
    provider = SimulatedProvider(ProviderSettings(name="simulated", kind="simulated"))
    request = ProviderRequest(messages=(Message(role="user", content=prompt),), options=options)

    async def answer() -> str:
        return "".join([e async for e in provider.stream(request) if isinstance(e, str)])

    return await asyncio.to_thread(lambda: run_on_virtual_clock(answer()))


class TroubledProvider(WatchedProvider):
    """The simulated provider, with trouble on demand: `before_first` raises that error
    before any text; `wait_first` holds the first delta back that many seconds;
    `fail_after` raises `ProviderError` after that many deltas."""

    def __init__(
        self,
        name: str = "troubled",
        *,
        before_first: Exception | None = None,
        wait_first: float = 0.0,
        fail_after: int | None = None,
    ) -> None:
        super().__init__(name)
        self.before_first = before_first
        self.wait_first = wait_first
        self.fail_after = fail_after

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.requests.append(request)
        try:
            if self.before_first is not None:
                raise self.before_first
            if self.wait_first:
                await asyncio.sleep(self.wait_first)
            sent = 0
            async for item in self._inner.stream(request):
                if not isinstance(item, Usage):
                    if self.fail_after is not None and sent >= self.fail_after:
                        raise ProviderError("the upstream failed mid-answer")
                    sent += 1
                    self.deltas_sent += 1
                yield item
        finally:
            self.closed_at.append(time.monotonic())
            self.closed.set()


class Scripted:
    """A provider that plays a script of (delay, event) steps and records its closing:
    text deltas, or tool-call news (`ToolCallDelta`, `ToolCallEnd`)."""

    kind = "scripted"
    model = "script-1"

    def __init__(
        self,
        steps: Sequence[tuple[float, ProviderEvent]],
        usage: Usage | None = None,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.steps = steps
        self.usage = usage
        self.streams = 0
        """Times it was asked for an answer."""
        self.closed_at: float | None = None
        self.taken = 0
        """Deltas the run has taken and asked past."""

    def readiness(self) -> str | None:
        return None

    def validate(self, request: ProviderRequest) -> None:
        return None

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.streams += 1
        try:
            for delay, delta in self.steps:
                await asyncio.sleep(delay)
                yield delta
                self.taken += 1
            if self.usage is not None:
                yield self.usage
        finally:
            self.closed_at = time.monotonic()

    async def aclose(self) -> None:
        return None
