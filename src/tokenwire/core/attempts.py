"""Getting an answer out of the route's providers: capacity, retries, fallback, deadlines.

The candidates are tried best first, all within the request's deadline. Each
attempt waits for a place under the provider's concurrency limit (in a bounded
queue, for at most the queue timeout: then `provider_busy`), streams the answer
into the run, and fails if the provider sends no first text within the
first-token deadline or falls silent between texts for longer than the silence
deadline (core/deadlines.py). Tool-call news counts as output as text does:
it meets the first-token deadline and re-arms the silence one. Before any
output (text or a tool event) has reached the client, a retryable failure
(5xx, a dropped connection, 429) is retried on the same provider with jittered
exponential backoff (honouring `retry_after`; not when that asks for more than
`max_retry_wait_seconds`, and never past the deadline), then the next
candidate takes over; a first-token timeout goes to the next
candidate at once. After output has gone out, a failure ends the stream. Every
attempt is reported to the `AttemptObserver`, which is how the router learns
the providers' health.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from tokenwire.core.deadlines import Silence, Timeouts
from tokenwire.core.provider import Usage, estimate_tokens
from tokenwire.core.route import AttemptObserver, AttemptOutcome, ProviderSlot, Route
from tokenwire.core.spec import RequestSpec
from tokenwire.core.telemetry import NO_PROBE, StreamProbe
from tokenwire.core.tool_calls import ToolCallAssembler, ToolCallEvent
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd, ToolCallPart
from tokenwire.protocol.errors import (
    CostLimitExceeded,
    ProviderBusy,
    ProviderError,
    RateLimited,
    RequestTimeout,
    TokenwireError,
)


@dataclass(frozen=True, slots=True)
class AttemptPolicy:
    max_retries: int = 2
    """Retries per provider before the next candidate (0: none)."""
    retry_backoff_seconds: float = 0.25
    max_retry_wait_seconds: float = 5.0
    """A provider that asks to be left alone longer (`retry_after`) is not retried."""
    queue_timeout_seconds: float = 10.0
    max_queued: int = 100
    """Requests that may wait for one provider's capacity; more are `provider_busy` at once."""


# What the run does with each piece of text, each tool-call event, and the news of a fallback.
TextSink = Callable[[str, ProviderSlot], None]
ToolSink = Callable[[ToolCallEvent], None]
FallbackSink = Callable[[ProviderSlot, TokenwireError, ProviderSlot], None]


class Attempts:
    def __init__(
        self,
        spec: RequestSpec,
        route: Route,
        policy: AttemptPolicy,
        observer: AttemptObserver,
        on_text: TextSink,
        on_fallback: FallbackSink,
        on_tool: ToolSink,
        probe: StreamProbe = NO_PROBE,
    ) -> None:
        self._spec = spec
        self._probe = probe
        self._route = route
        self._policy = policy
        self._observer = observer
        self._on_text = on_text
        self._on_fallback = on_fallback
        self._on_tool = on_tool
        self.slot = route.slot
        """The provider answering (or last tried)."""
        self.deltas = 0
        """Text deltas that reached the run, over all attempts."""
        self.tool_events = 0
        """Tool-call events that reached the run, over all attempts."""
        self.tool_calls: tuple[ToolCallPart, ...] = ()
        """The finished calls of the answer that completed."""
        self.usage: Usage | None = None
        self.cancelled_by_client = False
        self._loop_turned = True
        self._prompt_tokens = estimate_tokens("".join(m.content for m in spec.conversation))
        self._timeouts = Timeouts()
        self._whole: asyncio.Timeout | None = None

    async def run(self, timeouts: Timeouts) -> None:
        """Stream an answer from the first candidate that gives one, or raise why none did,
        within the request's deadline from now (the loop's clock, as every wait here)."""
        self._timeouts = timeouts
        self._whole = whole = asyncio.timeout(timeouts.request)
        try:
            async with whole:
                await self._candidates()
        except TimeoutError:
            if not whole.expired():
                raise
            raise RequestTimeout(
                f"no complete answer within {timeouts.request:g} s", deadline="request"
            ) from None

    async def _candidates(self) -> None:
        candidates = [c.slot for c in self._route.candidates]
        # Providers with room first: the queue is only for when none has any.
        candidates.sort(key=lambda slot: slot.gate is not None and slot.gate.locked())
        for index, slot in enumerate(candidates):
            try:
                await self._with_retries(slot)
                return
            except (ProviderError, RequestTimeout) as failure:
                last = index == len(candidates) - 1
                if self.output_sent or self._route.forced or last:
                    raise
                self._on_fallback(slot, failure, candidates[index + 1])

    # -- one provider -----------------------------------------------------------

    async def _with_retries(self, slot: ProviderSlot) -> None:
        for retry in itertools.count():
            try:
                await self._attempt(slot)
                return
            except ProviderError as failure:
                if self.output_sent or not failure.retryable or retry >= self._policy.max_retries:
                    raise
                pause = self._backoff(retry, failure)
                if pause > self._policy.max_retry_wait_seconds or self._too_late(pause):
                    raise
                await asyncio.sleep(pause)

    def _backoff(self, retry: int, failure: ProviderError) -> float:
        pause = self._policy.retry_backoff_seconds * 2.0**retry * random.uniform(0.5, 1.5)
        if isinstance(failure, RateLimited) and failure.retry_after is not None:
            pause = max(pause, failure.retry_after)
        return pause

    async def _attempt(self, slot: ProviderSlot) -> None:
        async with self._capacity(slot):
            self.slot = slot
            self._observer.attempt_started(slot.name)
            self._probe.attempt_started(slot.name)
            outcome = AttemptOutcome.FAILED
            failure: str | None = None
            began = time.monotonic()
            first_at: float | None = None
            deltas_before = self.deltas
            try:
                first_at = await self._stream(slot, began)
                outcome = AttemptOutcome.OK
            except asyncio.CancelledError:
                # A client's cancel says nothing of the provider, nor does the request's own
                # deadline (the client's budget); the first-token and silence ones do.
                if self.cancelled_by_client or self._out_of_time():
                    outcome = AttemptOutcome.NEUTRAL
                raise
            except ProviderError as exc:
                failure = exc.error_type
                if not exc.counts_against_provider:
                    outcome = AttemptOutcome.NEUTRAL
                raise
            except RequestTimeout as exc:
                failure = exc.error_type
                raise
            except TokenwireError:
                outcome = AttemptOutcome.NEUTRAL
                raise
            finally:
                streaming = time.monotonic() - first_at if first_at is not None else 0.0
                self._observer.attempt_ended(
                    slot.name, outcome, self.deltas - deltas_before, streaming
                )
                self._probe.attempt_ended(slot.name, failure)

    @property
    def output_sent(self) -> bool:
        """Has any of the answer (text or a tool event) reached the run?"""
        return bool(self.deltas or self.tool_events)

    def _out_of_time(self) -> bool:
        return self._whole is not None and self._whole.expired()

    def _too_late(self, pause: float) -> bool:
        """Would a retry after `pause` start at or past the request's deadline?"""
        when = self._whole.when() if self._whole is not None else None
        return when is not None and asyncio.get_running_loop().time() + pause >= when

    def _waits(self, slot: ProviderSlot) -> tuple[float, float]:
        """This attempt's first-token and silence deadlines: the request's, or the
        provider's own `timeout` where that is shorter."""
        first_token, silence = self._timeouts.first_token, self._timeouts.silence
        limit = slot.profile.silence_timeout
        if limit is not None:
            first_token, silence = min(first_token, limit), min(silence, limit)
        return first_token, silence

    async def _stream(self, slot: ProviderSlot, began: float) -> float | None:
        """Feed one provider's answer to the run; when its first output came, if it did."""
        first_token, silence = self._waits(slot)
        limited = self._spec.routing.cost_limit is not None
        request = slot.provider_request(self._spec)
        first_at: float | None = None
        loop = asyncio.get_running_loop()
        on_text = self._on_text
        calls = ToolCallAssembler()
        usage: Usage | None = None
        # Armed for the first output; every delta (text or a call's) re-arms it for the
        # silence that may follow (`Silence`: a delta notes its time, the timer catches up).
        quiet = asyncio.timeout(first_token)
        silent = Silence(quiet, silence)
        try:
            async with contextlib.aclosing(slot.provider.stream(request)) as events, quiet:
                async for item in events:
                    if isinstance(item, Usage):
                        usage = item
                        continue
                    if not item:
                        continue
                    # SDKs hand out buffered deltas without suspending. If the loop has not
                    # turned since the last delta, yield first, so that it reaches the client
                    # (and other streams run) before the rest of a burst; a paced provider
                    # that already waited pays no extra task switch.
                    if not self._loop_turned:
                        await asyncio.sleep(0)
                    if first_at is None:
                        first_at = time.monotonic()
                        self._observer.first_text(slot.name, first_at - began)
                        silent.last = loop.time()
                        silent.start()
                    if isinstance(item, str):
                        self.deltas += 1
                        on_text(item, slot)
                    else:
                        self._relay_call(item, calls)
                    if limited:
                        self._check_cost(slot)
                    silent.last = loop.time()
                    self._loop_turned = False
                    loop.call_soon(self._note_loop_turn)
            self.usage = self._settled(usage, calls)
        except TimeoutError:
            if not quiet.expired():
                raise
            if first_at is None:
                raise RequestTimeout(
                    f"provider {slot.name} sent no text within {first_token:g} s",
                    deadline="first_token",
                ) from None
            raise RequestTimeout(
                f"provider {slot.name} sent nothing for {silence:g} s", deadline="silence"
            ) from None
        finally:
            silent.stop()
        return first_at

    def _relay_call(self, item: ToolCallDelta | ToolCallEnd, calls: ToolCallAssembler) -> None:
        for event in calls.feed(item):
            self.tool_events += 1
            self._on_tool(event)

    def _settled(self, usage: Usage | None, calls: ToolCallAssembler) -> Usage | None:
        """The answer's usage once its calls are known to be complete: an answer that
        called tools ended for that reason, whatever its provider calls it."""
        self.tool_calls = calls.finish()
        if usage is not None and self.tool_calls and usage.finish_reason != "tool_calls":
            return dataclasses.replace(usage, finish_reason="tool_calls")
        return usage

    def _note_loop_turn(self) -> None:
        self._loop_turned = True

    def _check_cost(self, slot: ProviderSlot) -> None:
        limit = self._spec.routing.cost_limit
        assert limit is not None
        so_far = slot.cost_usd(Usage(self._prompt_tokens, self.deltas + self.tool_events))
        if so_far > limit:
            raise CostLimitExceeded(
                f"the answer reached the cost limit ${limit:g} (about ${so_far:.6f} so far)"
            )

    @contextlib.asynccontextmanager
    async def _capacity(self, slot: ProviderSlot) -> AsyncIterator[None]:
        gate = slot.gate
        if gate is None:
            yield
            return
        if gate.locked():
            await self._queue_for(slot, gate)
        else:
            await gate.acquire()
        try:
            yield
        finally:
            gate.release()

    async def _queue_for(self, slot: ProviderSlot, gate: asyncio.Semaphore) -> None:
        timeout = self._policy.queue_timeout_seconds
        if slot.waiting >= self._policy.max_queued:
            raise ProviderBusy(
                f"provider {slot.name} is at its concurrency limit with a full queue",
                retry_after=timeout,
            )
        slot.waiting += 1
        try:
            await asyncio.wait_for(gate.acquire(), timeout)
        except TimeoutError:
            raise ProviderBusy(
                f"provider {slot.name} stayed at its concurrency limit for {timeout:g} s",
                retry_after=timeout,
            ) from None
        finally:
            slot.waiting -= 1
