"""A request's three deadlines, and the bound a request may ask for.

- `request`: the whole request, from its start to its `stream_end`: time queued
  for a provider's concurrency slot, retries, fallbacks and the answer itself.
  Its passing is the client's budget running out, not a provider's fault: it
  ends the request with `timeout` (`deadline: "request"`) and counts nothing
  against the provider that was answering.
- `first_token`: how long each provider tried may take to send its first text.
  It is counted per attempt, from the moment the provider is asked (after any
  wait for its concurrency slot, which `queue_timeout_seconds` bounds), so that
  when one provider never answers the next still gets its full window, and so
  that only the provider's own slowness is counted against its health. It fails
  the attempt with `timeout` (`deadline: "first_token"`): not retried on the
  same provider, the next candidate takes over (no text has gone out yet), and
  the provider's health counts a failure.
- `silence`: the longest wait for the next text once text flows, re-armed by
  every delta, so that an answer may flow for as long as the request's deadline
  allows. Its passing ends the request with `timeout` (`deadline: "silence"`)
  and counts against the provider; text has gone out, so there is no fallback.

A provider's own `timeout` (`ProviderProfile.silence_timeout`) bounds both of
its waits (first token and silence) further: the shorter one applies. A
request may ask for each deadline up to the server's maximum; more is
`invalid_request` naming the maximum, never silently clamped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tokenwire.protocol.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The deadlines in force for one request, in seconds."""

    request: float = 600.0
    first_token: float = 60.0
    silence: float = 60.0


@dataclass(frozen=True, slots=True)
class Deadlines:
    """What a request asks for, in seconds; None leaves the server's default."""

    request: float | None = None
    first_token: float | None = None
    silence: float | None = None

    def over(self, defaults: Timeouts) -> Timeouts:
        """The deadlines in force: the request's own where it set them, else the defaults."""
        return Timeouts(
            request=defaults.request if self.request is None else self.request,
            first_token=defaults.first_token if self.first_token is None else self.first_token,
            silence=defaults.silence if self.silence is None else self.silence,
        )

    def check(self, maximum: float) -> None:
        """Refuse a deadline above the server's maximum, naming the field and the maximum."""
        check_deadline("timeout", self.request, maximum)
        check_deadline("first_token_timeout", self.first_token, maximum)
        check_deadline("silence_timeout", self.silence, maximum)


def check_deadline(name: str, seconds: float | None, maximum: float) -> None:
    if seconds is not None and seconds > maximum:
        raise InvalidRequest(f"{name}: at most {maximum:g} seconds on this server")


class Silence:
    """The `silence` deadline kept on an `asyncio.timeout`, re-armed lazily.

    `Timeout.reschedule` on every delta cancels one timer and makes another each time
    (flat out, 13% of the server's CPU per token). Here a delta only notes its time in
    `last`; the one timer, when it fires, re-arms itself for the time still left, and
    expires the timeout only once `seconds` have passed since the last delta.
    """

    def __init__(self, timeout: asyncio.Timeout, seconds: float) -> None:
        self._timeout = timeout
        self._seconds = seconds
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The first output came: from now on only silence ends the wait."""
        self._timeout.reschedule(None)
        self._handle = self._loop.call_at(self.last + self._seconds, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._loop.time()
        due = self.last + self._seconds
        # Within a millisecond counts as due: uvloop's timers are in whole milliseconds,
        # and re-arming for less would only spin.
        if due - now < 0.001:
            self._handle = None
            self._timeout.reschedule(now)  # expires now: the task gets its TimeoutError
        else:
            self._handle = self._loop.call_at(due, self._check)
