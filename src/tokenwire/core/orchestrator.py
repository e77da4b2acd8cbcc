"""One request, start to end: provider stream in, events out into the request's log.

The run writes stream_start, typing on, metadata, text (chunks or tokens) with
progress and tool-call events, then on any outcome: an error event if it failed,
typing off and exactly one stream_end. It knows nothing about sockets.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from tokenwire.core.attempts import AttemptPolicy, Attempts
from tokenwire.core.chunking import Coalescer
from tokenwire.core.deadlines import Timeouts
from tokenwire.core.eventlog import EventLog
from tokenwire.core.provider import Usage, estimate_tokens, estimated_completion_tokens
from tokenwire.core.route import AttemptObserver, NoObserver, ProviderSlot, Route
from tokenwire.core.spec import RequestSpec
from tokenwire.core.stats import StreamOutcome
from tokenwire.core.structured import Verdict, judge
from tokenwire.core.telemetry import NO_PROBE, StreamProbe
from tokenwire.core.tool_calls import CallEnded, CallStarted, ToolCallEvent
from tokenwire.core.tools import ToolCallPart
from tokenwire.protocol.errors import (
    InternalError,
    InvalidOutput,
    TokenwireError,
    error_payload,
)
from tokenwire.protocol.events import EventType, StreamStatus
from tokenwire.protocol.messages import Granularity

logger = structlog.get_logger("tokenwire.stream")

# Where the answer's length is unknown, progress approaches 100 along 1 - e^(-n/expected).
DEFAULT_EXPECTED_DELTAS = 256
# Deltas per second assumed for `estimated_duration`.
TYPICAL_DELTAS_PER_SECOND = 50.0


@dataclass(frozen=True, slots=True)
class StreamTuning:
    chunk_max_chars: int = 256
    chunk_flush_seconds: float = 0.04
    default_timeout: float = 600.0
    """The whole request's deadline where the request sets none (core/deadlines.py)."""
    first_token_timeout: float = 60.0
    silence_timeout: float = 60.0
    max_timeout: float = 3600.0
    """The longest deadline of any kind a request may ask for."""
    default_progress_every: int = 10
    attempts: AttemptPolicy = field(default_factory=AttemptPolicy)

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(self.default_timeout, self.first_token_timeout, self.silence_timeout)


class StreamRun:
    """The state of one running request; `run()` is its whole life.

    `run()` writes exactly one `stream_end` whatever happens and whenever: a
    cancel that comes before its first step is seen at that step (the task is
    never cancelled before its body runs, which would skip every `finally`), a
    cancel during the stream interrupts it, and any failure, even in writing the
    opening events, becomes an error event and a `stream_end` with status error.
    Whoever starts the run calls `open()` first, before it answers anything else.
    """

    def __init__(
        self,
        spec: RequestSpec,
        route: Route,
        log: EventLog,
        tuning: StreamTuning,
        observer: AttemptObserver | None = None,
        before_end: Callable[[StreamRun], Awaitable[None]] | None = None,
        probe: StreamProbe = NO_PROBE,
    ) -> None:
        self.spec = spec
        self.probe = probe
        # Awaited once a run has completed, before its `stream_end`: what a client may rely
        # on as soon as it has the end (its conversation's new turn) is saved by then.
        self._before_end = before_end
        self.route = route
        self.log = log
        self._tuning = tuning
        self._attempts = Attempts(
            spec,
            route,
            tuning.attempts,
            observer or NoObserver(),
            self._on_text,
            self._on_fallback,
            self._on_tool,
            probe,
        )
        self.cancel_reason: str | None = None
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.usage: Usage | None = None
        # The answer's text is kept for its conversation, and to judge structured output.
        keep = spec.conversation_id is not None or spec.generation.response_format is not None
        self.answer_parts: list[str] | None = [] if keep else None
        self.verdict: Verdict | None = None
        self._coalescer = Coalescer(tuning.chunk_max_chars, tuning.chunk_flush_seconds)
        self._flush_timer: asyncio.TimerHandle | None = None
        self._progress_every = (
            tuning.default_progress_every
            if spec.delivery.progress_every is None
            else spec.delivery.progress_every
        )
        self._deltas = 0
        self._deltas_reported = 0
        self._last_text_at: float | None = None
        self._text_events = 0
        self._text_length = 0
        self._text_bytes = 0
        self._known_total: int | None = None
        self._expected = spec.generation.max_tokens or DEFAULT_EXPECTED_DELTAS
        self._last_progress = 0.0
        self._token_mode = spec.delivery.granularity is Granularity.TOKEN
        self._task: asyncio.Task[Any] | None = None
        self._closing = False
        self.interrupted = False
        self._opened = False
        self._opening_error: Exception | None = None

    async def run(self) -> StreamOutcome:
        self._task = asyncio.current_task()
        status = StreamStatus.COMPLETED
        error: TokenwireError | None = None
        try:
            self.open()
            if self._opening_error is not None:
                raise self._opening_error
            if self.cancel_reason is None:
                await self._pump()
            else:
                status = StreamStatus.CANCELLED
        except asyncio.CancelledError:
            if self.cancel_reason is None:
                # Cancelled by something other than `cancel()` (the loop closing): still
                # end the stream; the caller lets the cancellation go on (`interrupted`).
                self.cancel_reason = "interrupted"
                self.interrupted = True
            elif self._task is not None:
                self._task.uncancel()
            status = StreamStatus.CANCELLED
        except TokenwireError as exc:
            status, error = StreamStatus.ERROR, exc
        except Exception:
            logger.exception("stream failed", request_id=self.spec.request_id)
            status, error = StreamStatus.ERROR, InternalError("internal error while streaming")
        finally:
            self._closing = True
            self._stop_flush_timer()
        if status is StreamStatus.COMPLETED and self._before_end is not None:
            # Shielded: the run is complete, and a cancel now must not lose its end.
            try:
                await asyncio.shield(self._before_end(self))
            except asyncio.CancelledError:
                self.interrupted = True  # the loop is closing: end, then let it go on
        return self._close(status, error)

    def cancel(self, reason: str) -> None:
        """End the run as cancelled; the first reason given is the one reported."""
        if self.cancel_reason is not None or self._closing:
            return
        self.cancel_reason = reason
        self._attempts.cancelled_by_client = True
        # Before its first step the run has no task to interrupt: it sees the reason there.
        if self._task is not None:
            self._task.cancel()

    @property
    def answer_text(self) -> str:
        return "".join(self.answer_parts or ())

    @property
    def tool_calls(self) -> tuple[ToolCallPart, ...]:
        """The calls of an answer that completed, by index (none otherwise)."""
        return self._attempts.tool_calls

    def open(self) -> None:
        """Write the opening events (stream_start, typing indicator, routing metadata).

        Called when the request is accepted, before its task takes a step: a client
        then gets its request's stream_start before the answer to anything it sent
        after the request (a ping, a cancel, a close), whatever the load. A failure here
        is the run's to report, as its first step.
        """
        if self._opened:
            return
        self._opened = True
        try:
            self._emit_opening()
        except Exception as exc:
            self._opening_error = exc

    # -- phases ---------------------------------------------------------------

    def _emit_opening(self) -> None:
        spec, route = self.spec, self.route
        provider = route.slot.provider
        self._known_total = provider.expected_deltas(route.slot.provider_request(spec))
        if self._known_total:
            self._expected = self._known_total
        self.log.append(
            EventType.STREAM_START,
            {
                "request_id": spec.request_id,
                "prompt_length": self._prompt_length(),
                "estimated_duration": self._estimated_duration(),
            },
        )
        self.log.append(EventType.TYPING_INDICATOR, {"is_typing": True})
        self.log.append(
            EventType.METADATA,
            {
                "task_type": route.task_type,
                "task_reason": route.task_reason,
                "recommended_provider": route.slot.name,
                "routing_strategy": route.strategy.value,
                "model": spec.generation.model or provider.model,
                "candidates": [candidate.describe() for candidate in route.candidates],
            },
        )

    async def _pump(self) -> None:
        await self._attempts.run(self.spec.deadlines.over(self._tuning.timeouts))
        self._judge()

    def _judge(self) -> None:
        """Check a whole structured answer. One cut by max_tokens ends as it is, reported
        invalid in `stream_end` (its `finish_reason` already says `length`); a finished one
        that misses its schema ends as `invalid_output`, so that no transport or dialect
        can pass it off as a valid answer."""
        fmt = self.spec.generation.response_format
        usage = self._attempts.usage
        if fmt is None or (usage is not None and usage.finish_reason == "tool_calls"):
            return
        cut = usage is not None and usage.finish_reason == "length"
        self.verdict = judge(fmt, self.answer_text, cut)
        if not self.verdict.valid and not cut:
            raise InvalidOutput(self.verdict.error or "the answer does not meet its format")

    def _on_text(self, item: str, slot: ProviderSlot) -> None:
        """One delta from the provider: coalesced into chunks, or sent as a token."""
        now = time.monotonic()
        if self.ttft is None:
            self.ttft = now - self.started
            self.probe.first_output(slot.name, self.ttft)
        self._deltas += 1
        if self.answer_parts is not None:
            self.answer_parts.append(item)
        if self._token_mode:
            self._emit_text(item)
            return
        chunk = self._coalescer.push(item, now)
        if chunk is not None:
            self._stop_flush_timer()
            self._emit_text(chunk)
        elif self._flush_timer is None and self._coalescer.due_at is not None:
            self._start_flush_timer(self._coalescer.due_at - now)

    def _on_tool(self, event: ToolCallEvent) -> None:
        """One tool-call event: after the text that came before it, in its own frame."""
        if self.ttft is None:
            self.ttft = time.monotonic() - self.started
            self.probe.first_output(self._attempts.slot.name, self.ttft)
        if isinstance(event, CallStarted):
            self._stop_flush_timer()
            self._flush_held_text()
            data = {"index": event.index, "id": event.id, "name": event.name}
            self.log.append(EventType.TOOL_CALL_START, data)
        elif isinstance(event, CallEnded):
            data = {
                "index": event.index,
                "id": event.id,
                "name": event.name,
                "arguments": event.arguments,
            }
            self.log.append(EventType.TOOL_CALL_END, data)
        else:
            data = {"index": event.index, "arguments": event.arguments}
            self.log.append(EventType.TOOL_CALL_DELTA, data)

    def _on_fallback(
        self, failed: ProviderSlot, error: TokenwireError, next_slot: ProviderSlot
    ) -> None:
        logger.info(
            "provider fallback",
            request_id=self.spec.request_id,
            failed=failed.name,
            error_type=error.error_type,
            next=next_slot.name,
        )
        self.log.append(
            EventType.METADATA,
            {
                "fallback_from": failed.name,
                "fallback_reason": f"{error.error_type}: {error.message[:200]}",
                "recommended_provider": next_slot.name,
                "routing_strategy": self.route.strategy.value,
                "task_type": self.route.task_type,
                "model": self.spec.generation.model or next_slot.provider.model,
            },
        )

    def _close(self, status: StreamStatus, error: TokenwireError | None) -> StreamOutcome:
        try:
            if status is not StreamStatus.CANCELLED:
                # Text already produced goes out before the end; on cancel it is dropped.
                self._flush_held_text()
            return self._emit_closing(status, error)
        except Exception:
            # A defect in the closing itself must still not leave the stream without its end.
            logger.exception("closing a stream failed", request_id=self.spec.request_id)
            if not self.log.finished:
                self.log.append(
                    EventType.STREAM_END,
                    {
                        "request_id": self.spec.request_id,
                        "status": StreamStatus.ERROR.value,
                        "error_type": InternalError.error_type,
                    },
                )
            return self._outcome(StreamStatus.ERROR, None, 0.0)

    def _emit_closing(self, status: StreamStatus, error: TokenwireError | None) -> StreamOutcome:
        spec = self.spec
        if error is not None:
            self.log.append(EventType.ERROR, error_payload(error, spec.request_id))
        self.log.append(EventType.TYPING_INDICATOR, {"is_typing": False})
        slot = self._attempts.slot
        usage = self._attempts.usage or self._estimated_usage()
        cost = slot.cost_usd(usage)
        duration = time.monotonic() - self.started
        end: dict[str, Any] = {
            "request_id": spec.request_id,
            "status": status.value,
            "total_chunks": self._text_events,
            "total_length": self._text_length,
            "duration": duration,
            "provider_used": slot.name,
            "model": spec.generation.model or slot.provider.model,
            "cache_hit": False,
            "ttft": self.ttft,
            "usage": usage.as_dict(),
            "cost_usd": cost,
        }
        calls = self.tool_calls if status is StreamStatus.COMPLETED else ()
        if status is StreamStatus.COMPLETED:
            end["finish_reason"] = usage.finish_reason
            if self.verdict is not None:
                end["structured"] = self.verdict.as_dict()
            if usage.stop_sequence is not None:
                end["stop_sequence"] = usage.stop_sequence
            if calls:
                end["tool_calls"] = [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls
                ]
        if status is StreamStatus.CANCELLED:
            end["reason"] = self.cancel_reason
        elif error is not None:
            end["error_type"] = error.error_type
        self.log.append(EventType.STREAM_END, end)
        self.usage = usage
        return self._outcome(status, usage, cost, calls)

    def _estimated_usage(self) -> Usage:
        """Usage where the provider reported none: what reached us, and the prompt only if
        the upstream evidently took it (some text came back). A request that failed before
        any text (a refused connection, a DNS failure) costs nothing."""
        if not self._deltas and not self._attempts.tool_events:
            return Usage(prompt_tokens=0, completion_tokens=0, estimated=True)
        prompt = "".join(m.content for m in self.spec.conversation)
        calls = "".join(call.name + call.arguments for call in self.tool_calls)
        answer = estimated_completion_tokens(self._deltas, self.spec.generation.max_tokens)
        answer += estimate_tokens(calls)
        return Usage(
            prompt_tokens=estimate_tokens(prompt), completion_tokens=answer, estimated=True
        )

    def _outcome(
        self,
        status: StreamStatus,
        usage: Usage | None,
        cost: float,
        tool_calls: tuple[ToolCallPart, ...] = (),
    ) -> StreamOutcome:
        return StreamOutcome(
            provider=self._attempts.slot.name,
            status=status,
            duration=time.monotonic() - self.started,
            ttft=self.ttft,
            chunks=self._text_events,
            text_bytes=self._text_bytes,
            usage=usage,
            cost_usd=cost,
            user_id=self.spec.user_id,
            tool_calls=tool_calls,
        )

    # -- text -----------------------------------------------------------------

    def _emit_text(self, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode())
        self._text_length += len(text)
        self._text_bytes += size
        # Counted per text event (a chunk holds many deltas), never per delta.
        now = time.monotonic()
        gap = None if self._last_text_at is None else now - self._last_text_at
        self._last_text_at = now
        self.probe.text(self._deltas - self._deltas_reported, size, gap)
        self._deltas_reported = self._deltas
        if self.spec.delivery.granularity is Granularity.TOKEN:
            self.log.append(EventType.TOKEN, {"token": text, "index": self._text_events})
        else:
            self.log.append(
                EventType.CHUNK,
                {
                    "chunk": text,
                    "chunk_number": self._text_events + 1,
                    "accumulated_length": self._text_length,
                },
            )
        self._text_events += 1
        every = self._progress_every
        if every and self._text_events % every == 0:
            self.log.append(
                EventType.PROGRESS,
                {"progress": self._progress(), "chunks_sent": self._text_events},
            )

    def _progress(self) -> float:
        """Exact where the answer's length is known, else approaching but never reaching 100."""
        if self._known_total and self._deltas <= self._known_total:
            value = 100.0 * self._deltas / self._known_total
        else:
            value = 99.0 * (1.0 - math.exp(-self._deltas / self._expected))
        self._last_progress = max(self._last_progress, min(100.0, round(value, 2)))
        return self._last_progress

    def _flush_held_text(self) -> None:
        chunk = self._coalescer.take()
        if chunk is not None:
            self._emit_text(chunk)

    def _start_flush_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._flush_timer = loop.call_later(max(0.0, delay), self._on_flush_timer)

    def _on_flush_timer(self) -> None:
        self._flush_timer = None
        if not self.log.finished:
            self._flush_held_text()

    def _stop_flush_timer(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    # -- helpers --------------------------------------------------------------

    def _prompt_length(self) -> int:
        if self.spec.prompt_length is not None:
            return self.spec.prompt_length
        return sum(len(m.content) for m in self.spec.messages)

    def _estimated_duration(self) -> float:
        # A guess from the expected answer length at a typical rate; the expected length
        # is bounded (max_tokens has a ceiling), so this stays a small finite number.
        return round(max(0.5, self._expected / TYPICAL_DELTAS_PER_SECOND), 2)
