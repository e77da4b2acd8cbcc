"""The seam where a deployment's limits decide whether a request may start.

The gateway asks before every request, whatever the transport, so that the same
limits hold on the WebSocket, SSE and every HTTP dialect; and it tells when the
request ended (with what it cost), or that it never started.
"""

from __future__ import annotations

from typing import Protocol

from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome


class Admission(Protocol):
    async def admit(self, spec: RequestSpec) -> RequestSpec:
        """The request as it may run (a limit may bound its max_tokens), or raise the
        error that refuses it (`prompt_too_long`, `too_many_streams`, `rate_limited`,
        `budget_exceeded`)."""

    def cancelled(self, spec: RequestSpec) -> None:
        """An admitted request was cancelled: its stream slot is free from now, though it
        may take a moment to wind down; `release` still follows when it ends."""

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        """An admitted request ended (`outcome`), or never started (None)."""


class AdmitAll:
    async def admit(self, spec: RequestSpec) -> RequestSpec:
        return spec

    def cancelled(self, spec: RequestSpec) -> None:
        return None

    def release(self, spec: RequestSpec, outcome: StreamOutcome | None) -> None:
        return None
