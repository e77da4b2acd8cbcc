"""What the core and the transports tell an operator's instruments, and the silent default.

The gateway, the stream runs and the transports call these at the points that
matter; `observability/` implements them (Prometheus, OpenTelemetry). Nothing here
imports an instrument library, and the default (`NoTelemetry`) does nothing, so
that a gateway built without instruments costs what it cost before.

The per-stream side is a `StreamProbe`, made once per request: an implementation
binds what it can (labels, children) once there, and a text event costs it a few
additions, never a lookup by name.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from tokenwire.core.stats import StreamOutcome
from tokenwire.protocol.errors import (
    ImageLimitExceeded,
    MessageTooLarge,
    PromptTooLong,
    TokenwireError,
    TooManyConnections,
    TooManyStreams,
)

LIMIT_ERRORS: tuple[type[TokenwireError], ...] = (
    PromptTooLong,
    ImageLimitExceeded,
    MessageTooLarge,
    TooManyStreams,
    # Its kinds: rate_limited, budget_exceeded, and too_many_connections itself.
    TooManyConnections,
)
"""The refusals that are a limit doing its job (counted by their `error_type`)."""


class ResumeOutcome(StrEnum):
    REPLAYED = "replayed"
    NOT_RECOVERED = "not_recovered"
    UNKNOWN = "unknown"


class StreamProbe(Protocol):
    """One request's instruments, from its start to its end."""

    def routed(self, provider: str, strategy: str, task_type: str, model: str) -> None:
        """Routing chose `provider` first (attempts may fall back to others)."""

    def attempt_started(self, provider: str) -> None: ...

    def attempt_ended(self, provider: str, error_type: str | None) -> None:
        """An attempt at `provider` ended: well or cancelled (None), or failed with
        `error_type` (it may be retried, or fall back to the next provider)."""

    def first_output(self, provider: str, seconds: float) -> None:
        """The answer's first text (or tool call) came, `seconds` after the request began."""

    def text(self, deltas: int, size: int, gap: float | None) -> None:
        """A text event went into the log: `deltas` provider deltas, `size` UTF-8 bytes,
        `gap` seconds since the previous text event (None for the first)."""

    def ended(self, outcome: StreamOutcome | None) -> None:
        """The request ended (None: a defect ended its run without an outcome)."""


class Telemetry(Protocol):
    def stream_started(self, request_id: str) -> StreamProbe: ...

    def connection_opened(self, transport: str) -> None: ...

    def connection_closed(self, transport: str) -> None: ...

    def send_buffer_overflowed(self, transport: str) -> None:
        """A client too slow to read was disconnected."""

    def resumed(self, outcome: ResumeOutcome) -> None:
        """A re-attach was answered, or refused as `unknown` or `not_recovered`."""

    def refused(self, error: TokenwireError) -> None:
        """A request or connection was refused; counted if a limit refused it."""


class NoProbe:
    def routed(self, provider: str, strategy: str, task_type: str, model: str) -> None:
        return None

    def attempt_started(self, provider: str) -> None:
        return None

    def attempt_ended(self, provider: str, error_type: str | None) -> None:
        return None

    def first_output(self, provider: str, seconds: float) -> None:
        return None

    def text(self, deltas: int, size: int, gap: float | None) -> None:
        return None

    def ended(self, outcome: StreamOutcome | None) -> None:
        return None


NO_PROBE = NoProbe()


class NoTelemetry:
    def stream_started(self, request_id: str) -> StreamProbe:
        return NO_PROBE

    def connection_opened(self, transport: str) -> None:
        return None

    def connection_closed(self, transport: str) -> None:
        return None

    def send_buffer_overflowed(self, transport: str) -> None:
        return None

    def resumed(self, outcome: ResumeOutcome) -> None:
        return None

    def refused(self, error: TokenwireError) -> None:
        return None


class FanOut:
    """Several instruments as one (metrics and traces): each is told everything."""

    def __init__(self, *parts: Telemetry) -> None:
        self._parts = parts

    def stream_started(self, request_id: str) -> StreamProbe:
        return _FanOutProbe(tuple(part.stream_started(request_id) for part in self._parts))

    def connection_opened(self, transport: str) -> None:
        for part in self._parts:
            part.connection_opened(transport)

    def connection_closed(self, transport: str) -> None:
        for part in self._parts:
            part.connection_closed(transport)

    def send_buffer_overflowed(self, transport: str) -> None:
        for part in self._parts:
            part.send_buffer_overflowed(transport)

    def resumed(self, outcome: ResumeOutcome) -> None:
        for part in self._parts:
            part.resumed(outcome)

    def refused(self, error: TokenwireError) -> None:
        for part in self._parts:
            part.refused(error)


class _FanOutProbe:
    __slots__ = ("_probes",)

    def __init__(self, probes: tuple[StreamProbe, ...]) -> None:
        self._probes = probes

    def routed(self, provider: str, strategy: str, task_type: str, model: str) -> None:
        for probe in self._probes:
            probe.routed(provider, strategy, task_type, model)

    def attempt_started(self, provider: str) -> None:
        for probe in self._probes:
            probe.attempt_started(provider)

    def attempt_ended(self, provider: str, error_type: str | None) -> None:
        for probe in self._probes:
            probe.attempt_ended(provider, error_type)

    def first_output(self, provider: str, seconds: float) -> None:
        for probe in self._probes:
            probe.first_output(provider, seconds)

    def text(self, deltas: int, size: int, gap: float | None) -> None:
        for probe in self._probes:
            probe.text(deltas, size, gap)

    def ended(self, outcome: StreamOutcome | None) -> None:
        for probe in self._probes:
            probe.ended(outcome)
