"""One request's run, without sockets: event order, outcomes, timeouts, cancel."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from tests.support.providers import Scripted
from tests.support.recording import Inbox
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.orchestrator import StreamRun, StreamTuning
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.core.route import Candidate, ProviderProfile, ProviderSlot, Route
from tokenwire.core.spec import Delivery, Generation, RequestKey, RequestSpec
from tokenwire.protocol.errors import ProviderError
from tokenwire.protocol.messages import Granularity, RoutingStrategy
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.settings import ProviderSettings

TUNING = StreamTuning(chunk_max_chars=64, chunk_flush_seconds=0.02, default_timeout=5.0)


def make_run(
    provider: Any,
    *,
    timeout: float | None = None,
    silence: float | None = None,
    granularity: Granularity = Granularity.CHUNK,
    progress_every: int = 10,
    options: dict[str, Any] | None = None,
    profile: ProviderProfile | None = None,
    max_tokens: int | None = None,
    tuning: StreamTuning = TUNING,
) -> tuple[StreamRun, Inbox]:
    slot = ProviderSlot(provider, profile or ProviderProfile(silence_timeout=silence))
    spec = RequestSpec(
        request_id="r1",
        user_id="u",
        origin="s",
        messages=(Message(role="user", content="hello there"),),
        deadlines=Deadlines(request=timeout),
        generation=Generation(options=options or {}, max_tokens=max_tokens),
        delivery=Delivery(granularity=granularity, progress_every=progress_every),
    )
    log = EventLog(RequestKey("u", "r1"), "s", 1 << 20)
    inbox = Inbox()
    log.subscribe(inbox)
    return StreamRun(
        spec,
        Route((Candidate(slot, 0.0, "only one"),), "conversation", RoutingStrategy.INTELLIGENT),
        log,
        tuning,
    ), inbox


def simulated() -> SimulatedProvider:
    return SimulatedProvider(ProviderSettings(name="sim", kind="simulated"))


async def test_completed_run_emits_the_contract_sequence() -> None:
    run, inbox = make_run(simulated(), options={"tokens": 25, "delay_ms": 0})
    outcome = await run.run()
    kinds = inbox.kinds()
    assert kinds[:3] == ["stream_start", "typing_indicator", "metadata"]
    assert kinds[-2:] == ["typing_indicator", "stream_end"]
    assert [f["seq"] for f in inbox.frames] == list(range(1, len(kinds) + 1))
    end = inbox.of("stream_end")[0]
    text = "".join(c["chunk"] for c in inbox.of("chunk"))
    assert end["status"] == "completed"
    assert end["total_length"] == len(text)
    assert end["total_chunks"] == len(inbox.of("chunk"))
    assert end["usage"]["completion_tokens"] == 25
    assert outcome.usage is not None
    assert outcome.usage.completion_tokens == 25
    assert len(text.split()) == 25


async def test_same_prompt_and_options_give_the_same_text() -> None:
    texts = []
    for _ in range(2):
        run, inbox = make_run(
            simulated(), granularity=Granularity.TOKEN, options={"tokens": 30, "delay_ms": 0}
        )
        await run.run()
        texts.append([t["token"] for t in inbox.of("token")])
    assert texts[0] == texts[1]
    assert len(texts[0]) == 30


async def test_token_granularity_sends_one_event_per_delta() -> None:
    provider = Scripted([(0, "a"), (0, "b"), (0, "c")])
    run, inbox = make_run(provider, granularity=Granularity.TOKEN)
    await run.run()
    assert inbox.of("token") == [
        {"token": "a", "index": 0},
        {"token": "b", "index": 1},
        {"token": "c", "index": 2},
    ]


async def test_chunks_are_numbered_from_one_with_the_length_so_far() -> None:
    # Each delta after the first reaches the chunk size (64): one chunk per delta.
    pieces = ["first", "x" * 64, "y" * 64, "z" * 70]
    run, inbox = make_run(Scripted([(0, piece) for piece in pieces]))
    await run.run()
    assert inbox.of("chunk") == [
        {"chunk": "first", "chunk_number": 1, "accumulated_length": 5},
        {"chunk": "x" * 64, "chunk_number": 2, "accumulated_length": 69},
        {"chunk": "y" * 64, "chunk_number": 3, "accumulated_length": 133},
        {"chunk": "z" * 70, "chunk_number": 4, "accumulated_length": 203},
    ]


async def test_first_text_is_not_delayed_and_held_text_flushes_within_the_interval() -> None:
    # Given a provider that sends two pieces at once, then nothing for a minute
    provider = Scripted([(0, "first"), (0.001, " second"), (60.0, " third")])
    run, inbox = make_run(provider)
    task = asyncio.create_task(run.run())

    # Then the first piece went out alone, without waiting for the flush interval (it
    # would have gone out with " second"), and " second" after the flush interval, not
    # with " third" a minute later
    await eventually(lambda: len(inbox.of("chunk")) == 2, AT_ONCE)
    assert [c["chunk"] for c in inbox.of("chunk")] == ["first", " second"]
    run.cancel("cancelled by client")
    await task


async def test_provider_failure_gives_error_then_typing_off_then_stream_end() -> None:
    run, inbox = make_run(simulated(), options={"tokens": 20, "delay_ms": 0, "fail_after": 5})
    await run.run()
    kinds = inbox.kinds()
    assert kinds[-3:] == ["error", "typing_indicator", "stream_end"]
    error = inbox.of("error")[0]
    assert error["error_type"] == "provider_error"
    assert error["request_id"] == "r1"
    end = inbox.of("stream_end")[0]
    text = "".join(c["chunk"] for c in inbox.of("chunk"))
    assert end["status"] == "error"
    assert len(text.split()) == 5
    assert end["total_length"] == len(text) > 0


async def test_request_deadline_gives_timeout() -> None:
    run, inbox = make_run(
        simulated(), timeout=0.2, options={"tokens": 10, "delay_ms": 0, "stall_after": 2}
    )
    started = time.monotonic()
    await run.run()
    # The provider stalls for ever: only the deadline (0.2 s) ends the run.
    assert 0.15 < time.monotonic() - started < 0.2 + AT_ONCE
    assert inbox.of("error")[0]["error_type"] == "timeout"
    assert inbox.of("stream_end")[0]["status"] == "error"


async def test_silence_between_deltas_gives_timeout_before_the_deadline() -> None:
    provider = Scripted([(0, "a"), (0.05, "b"), (2.0, "never")])
    run, inbox = make_run(provider, timeout=30.0, silence=0.2)
    started = time.monotonic()
    await run.run()
    assert time.monotonic() - started < 30.0  # before the deadline
    assert inbox.of("error")[0]["error_type"] == "timeout"
    assert provider.closed_at is not None


async def test_cancel_ends_with_cancelled_and_closes_the_provider_at_once() -> None:
    provider = Scripted([(0.01, "x")] * 1000)  # 10 s
    run, inbox = make_run(provider)
    task = asyncio.create_task(run.run())
    await eventually(lambda: provider.taken >= 2)
    run.cancel("cancelled by client")
    outcome = await task
    # Closed before the run ended, long before the script's end
    assert provider.closed_at is not None
    assert provider.taken < 1000
    assert inbox.kinds()[-2:] == ["typing_indicator", "stream_end"]
    end = inbox.of("stream_end")[0]
    assert end["status"] == "cancelled"
    assert end["reason"] == "cancelled by client"
    assert outcome.status.value == "cancelled"
    assert "error" not in inbox.kinds()


async def test_progress_is_non_decreasing_and_reaches_100_for_a_known_length() -> None:
    run, inbox = make_run(
        simulated(),
        granularity=Granularity.TOKEN,
        progress_every=10,
        options={"tokens": 60, "delay_ms": 0},
    )
    await run.run()
    progress = inbox.of("progress")
    values = [p["progress"] for p in progress]
    assert len(progress) == 6
    assert values == sorted(values)
    assert values[-1] == 100.0
    assert [p["chunks_sent"] for p in progress] == [10, 20, 30, 40, 50, 60]


async def test_progress_stays_below_100_while_the_length_is_unknown() -> None:
    provider = Scripted([(0, "w")] * 400)
    run, inbox = make_run(provider, granularity=Granularity.TOKEN, progress_every=50)
    await run.run()
    values = [p["progress"] for p in inbox.of("progress")]
    assert values == sorted(values)
    assert all(0 <= v < 100 for v in values)


async def test_usage_from_the_provider_is_reported_with_cost() -> None:
    provider = Scripted([(0, "hi")], usage=Usage(prompt_tokens=1000, completion_tokens=500))
    profile = ProviderProfile(input_cost_per_mtok=2.0, output_cost_per_mtok=10.0)
    run, inbox = make_run(provider, profile=profile)
    await run.run()
    end = inbox.of("stream_end")[0]
    assert end["usage"] == {
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "total_tokens": 1500,
        "estimated": False,
    }
    assert end["cost_usd"] == pytest.approx(0.002 + 0.005)


async def test_usage_the_provider_never_reported_is_estimated_within_max_tokens() -> None:
    # Ten deltas for a budget of four: a provider whose deltas are smaller than tokens.
    run, inbox = make_run(Scripted([(0, "x")] * 10), max_tokens=4)
    await run.run()
    usage = inbox.of("stream_end")[0]["usage"]
    assert (usage["completion_tokens"], usage["estimated"]) == (4, True)


async def test_unexpected_exception_is_an_internal_error_without_details() -> None:
    class Broken(Scripted):
        async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
            yield "a"
            raise KeyError("secret internals")

    run, inbox = make_run(Broken([]))
    await run.run()
    error = inbox.of("error")[0]
    assert error["error_type"] == "internal_error"
    assert "secret" not in error["error"]


async def test_provider_error_message_reaches_the_client() -> None:
    class Failing(Scripted):
        async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
            raise ProviderError("upstream said no")
            yield "unreachable"

    run, inbox = make_run(Failing([]))
    await run.run()
    assert inbox.of("error")[0]["error"] == "upstream said no"
    assert inbox.of("stream_end")[0]["total_length"] == 0


async def test_a_burst_of_deltas_lets_other_tasks_run_between_them() -> None:
    # SDKs hand out buffered deltas without suspending; the writer must not wait for
    # the whole burst before the first delta goes out.
    class Burst(Scripted):
        async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
            for n in range(20):
                yield f"d{n} "

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    run, inbox = make_run(Burst([]), granularity=Granularity.TOKEN)
    seen: list[int] = []
    original = inbox.deliver

    def deliver(record: Record) -> None:
        if record.event_type.value == "token":
            seen.append(ticks)
        original(record)

    inbox.deliver = deliver  # type: ignore[method-assign]
    ticker = asyncio.create_task(tick())
    try:
        await run.run()
    finally:
        ticker.cancel()
    assert len(seen) == 20
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


async def test_progress_on_a_known_length_is_exact_and_never_reaches_100_early() -> None:
    run, inbox = make_run(
        simulated(),
        granularity=Granularity.TOKEN,
        progress_every=7,
        options={"tokens": 30, "delay_ms": 0},
    )
    await run.run()
    progress = inbox.of("progress")
    assert [p["chunks_sent"] for p in progress] == [7, 14, 21, 28]
    assert [p["progress"] for p in progress] == [round(100 * n / 30, 2) for n in (7, 14, 21, 28)]


class ManualStream:
    """A provider stream that is a plain async iterator, not a generator: nothing closes it
    but an explicit `aclose()` (no generator finalizer can stand in for the core)."""

    def __init__(self) -> None:
        self.closed = False
        self.gate = asyncio.Event()
        self.sent = 0

    def __aiter__(self) -> ManualStream:
        return self

    async def __anext__(self) -> str:
        if self.sent:
            await self.gate.wait()
        self.sent += 1
        return "delta"

    async def aclose(self) -> None:
        self.closed = True


class ManualProvider(Scripted):
    def __init__(self) -> None:
        super().__init__([])
        self.streams: list[ManualStream] = []

    def stream(self, request: ProviderRequest) -> Any:
        self.streams.append(ManualStream())
        return self.streams[-1]


async def test_the_core_closes_the_provider_stream_on_cancel() -> None:
    provider = ManualProvider()
    run, inbox = make_run(provider)
    task = asyncio.create_task(run.run())
    await eventually(lambda: "chunk" in inbox.kinds())
    run.cancel("cancelled by client")
    await task
    assert provider.streams[0].closed


async def test_the_core_closes_the_provider_stream_on_timeout() -> None:
    provider = ManualProvider()
    run, _ = make_run(provider, timeout=0.05)
    await run.run()
    assert provider.streams[0].closed


async def test_a_cancel_before_the_first_step_never_opens_the_provider() -> None:
    provider = ManualProvider()
    run, inbox = make_run(provider)
    run.cancel("cancelled by client")
    outcome = await run.run()
    assert provider.streams == []
    assert inbox.kinds() == [
        "stream_start",
        "typing_indicator",
        "metadata",
        "typing_indicator",
        "stream_end",
    ]
    assert outcome.status.value == "cancelled"


async def test_a_second_cancel_keeps_the_first_reason() -> None:
    run, inbox = make_run(simulated(), options={"tokens": 1000, "delay_ms": 5})
    task = asyncio.create_task(run.run())
    await asyncio.sleep(0.02)
    run.cancel("cancelled by client")
    run.cancel("shutdown")
    await task
    assert inbox.of("stream_end")[0]["reason"] == "cancelled by client"


async def test_the_simulated_provider_lets_the_loop_turn_between_deltas_at_delay_zero() -> None:
    provider = simulated()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    seen: list[int] = []
    request = ProviderRequest(
        messages=(Message(role="user", content="x"),), options={"tokens": 50, "delay_ms": 0}
    )
    try:
        async for item in provider.stream(request):
            if isinstance(item, str):
                seen.append(ticks)
    finally:
        ticker.cancel()
    assert len(seen) == 50
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


async def test_a_cancel_from_a_subscriber_during_the_closing_events_does_not_cancel_the_run() -> (
    None
):
    # Given a short run and a subscriber that cancels it on seeing typing turned off
    run, inbox = make_run(Scripted([(0, "a"), (0, "b")]))

    class CancelsOnTypingOff:
        def deliver(self, record: Record) -> None:
            if record.event_type.value == "typing_indicator" and not record.data["is_typing"]:
                run.cancel("late")

    run.log.subscribe(CancelsOnTypingOff())

    # When the run runs to completion in its own task
    task = asyncio.create_task(run.run())
    outcome = await task

    # Then the late cancel was ignored: the run completed and its task was not cancelled
    assert outcome.status.value == "completed"
    assert not task.cancelled()
    assert run.cancel_reason is None
    assert inbox.of("stream_end")[0]["status"] == "completed"


async def test_a_cancelled_run_leaves_its_task_without_a_pending_cancellation() -> None:
    # Given a task running a run whose provider never finishes, reporting its own
    # pending cancellations once the run returns
    provider = ManualProvider()
    run, inbox = make_run(provider)

    async def run_then_report() -> int:
        await run.run()
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(run_then_report())
    await eventually(lambda: "chunk" in inbox.kinds())

    # When the run is cancelled mid-stream
    run.cancel("cancelled by client")

    # Then the run's own cancel is consumed: nothing is left pending on the task
    assert await task == 0
    assert inbox.of("stream_end")[0]["status"] == "cancelled"


async def test_text_held_at_cancel_is_dropped_not_flushed() -> None:
    # Given a provider that sends two pieces at once and then stalls: the first goes
    # out at once, the second is held for the flush interval (a minute here, so that
    # however slow the machine, the cancel comes first)
    tuning = StreamTuning(chunk_max_chars=64, chunk_flush_seconds=60.0, default_timeout=120.0)
    provider = Scripted([(0, "first"), (0, "held"), (100.0, "never")])
    run, inbox = make_run(provider, tuning=tuning)
    task = asyncio.create_task(run.run())
    await eventually(lambda: provider.taken == 2)
    assert [c["chunk"] for c in inbox.of("chunk")] == ["first"]  # "held" is held

    # When the run is cancelled
    run.cancel("cancelled by client")
    await task

    # Then the held text never goes out, and the end counts only what did
    assert [c["chunk"] for c in inbox.of("chunk")] == ["first"]
    end = inbox.of("stream_end")[0]
    assert end["status"] == "cancelled"
    assert end["total_length"] == 5


async def test_a_failure_while_writing_the_closing_events_still_ends_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given pricing that fails, so that only the closing of the run fails
    def broken_cost(self: ProviderSlot, usage: Usage) -> float:
        raise RuntimeError("pricing is broken")

    monkeypatch.setattr(ProviderSlot, "cost_usd", broken_cost)
    run, inbox = make_run(Scripted([(0, "only")]))

    # When a one-delta run completes
    outcome = await run.run()

    # Then the run still reports an error and its log holds exactly one stream_end
    assert outcome.status.value == "error"
    ends = inbox.of("stream_end")
    assert len(ends) == 1
    assert ends[0]["status"] == "error"
    assert inbox.kinds()[-1] == "stream_end"


async def test_an_answer_cut_by_its_token_budget_ends_with_finish_reason_length() -> None:
    run, inbox = make_run(simulated(), options={"tokens": 20, "delay_ms": 0}, max_tokens=5)
    await run.run()
    end = inbox.of("stream_end")[0]
    assert (end["finish_reason"], end["usage"]["completion_tokens"]) == ("length", 5)


async def test_a_stop_string_ends_the_answer_before_it() -> None:
    request = ProviderRequest(
        messages=(Message(role="user", content="x"),),
        stop=("stream",),
        options={"tokens": 500, "delay_ms": 0},
    )
    items = [item async for item in simulated().stream(request)]
    *words, usage = items
    assert isinstance(usage, Usage)
    assert "stream" not in "".join(words).split()
    assert usage.completion_tokens == len(words) < 500
    assert usage.finish_reason == "stop"
