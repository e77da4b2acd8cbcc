"""A request's three deadlines in the core, on a virtual clock: the whole request (600 s
by default), each provider's first token (60 s) and the longest silence between tokens
(60 s). Every test runs its minutes of provider time in milliseconds, and asserts the
virtual moment a deadline passed, so none depends on this machine's speed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.clock import run_on_virtual_clock
from tests.support.providers import Scripted
from tests.support.recording import Inbox
from tokenwire.app import gateway_config
from tokenwire.core.attempts import AttemptPolicy
from tokenwire.core.deadlines import Deadlines, Timeouts
from tokenwire.core.eventlog import EventLog
from tokenwire.core.orchestrator import StreamRun, StreamTuning
from tokenwire.core.provider import Message
from tokenwire.core.route import AttemptOutcome, Candidate, ProviderProfile, ProviderSlot, Route
from tokenwire.core.spec import Delivery, RequestKey, RequestSpec
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import (
    AiRequest,
    Granularity,
    RoutingStrategy,
    parse_client_message,
)
from tokenwire.settings import ConfigError, load_settings
from tokenwire.transports.requests import spec_from_ai_request

DEFAULTS = StreamTuning()  # 600 s for the request, 60 s to the first token, 60 s of silence
NEVER = 10_000_000.0  # a provider that waits this long never answers within any deadline


@dataclass
class Outcomes:
    """An `AttemptObserver` that records how each attempt ended."""

    ended: list[tuple[str, AttemptOutcome]] = field(default_factory=list)

    def attempt_started(self, provider: str) -> None:
        return None

    def first_text(self, provider: str, seconds: float) -> None:
        return None

    def attempt_ended(
        self, provider: str, outcome: AttemptOutcome, deltas: int, streaming_seconds: float
    ) -> None:
        self.ended.append((provider, outcome))


@dataclass
class Ended:
    """What a request came to, and when on the virtual clock."""

    inbox: Inbox
    outcomes: Outcomes
    at: float

    @property
    def end(self) -> dict[str, Any]:
        return self.inbox.of("stream_end")[0]

    @property
    def error(self) -> dict[str, Any]:
        [error] = self.inbox.of("error")
        return error

    @property
    def tokens(self) -> list[str]:
        return [t["token"] for t in self.inbox.of("token")]


def every(seconds: float, count: int) -> list[tuple[float, str]]:
    """A script of `count` deltas, one every `seconds`."""
    return [(seconds, f"t{i} ") for i in range(count)]


def slot(provider: Any, timeout: float | None = None, concurrency: int | None = None) -> Any:
    return ProviderSlot(
        provider, ProviderProfile(silence_timeout=timeout, max_concurrency=concurrency)
    )


def run_for(
    *slots: ProviderSlot,
    deadlines: Deadlines | None = None,
    tuning: StreamTuning = DEFAULTS,
    forced: bool = False,
    request_id: str = "r1",
) -> tuple[StreamRun, Inbox, Outcomes]:
    spec = RequestSpec(
        request_id=request_id,
        user_id="u",
        messages=(Message(role="user", content="hello"),),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines or Deadlines(),
    )
    route = Route(
        tuple(Candidate(s, 0.0, "test") for s in slots),
        "conversation",
        RoutingStrategy.INTELLIGENT,
        forced=forced,
    )
    log = EventLog(RequestKey("u", request_id), None, 1 << 20)
    inbox, outcomes = Inbox(), Outcomes()
    log.subscribe(inbox)
    return StreamRun(spec, route, log, tuning, outcomes), inbox, outcomes


def ask(*slots: ProviderSlot, **options: Any) -> Ended:
    """Run one request to its end on a fresh virtual clock."""

    async def scenario() -> Ended:
        run, inbox, outcomes = run_for(*slots, **options)
        await run.run()
        return Ended(inbox, outcomes, asyncio.get_running_loop().time())

    return run_on_virtual_clock(scenario())


# -- silence ---------------------------------------------------------------------------


def test_an_answer_that_flows_for_longer_than_the_silence_timeout_is_not_cut_off() -> None:
    # 15 deltas 30 s apart: 450 s of answer, each gap well inside the 60 s of silence
    # allowed, the whole far past both the first-token and the silence deadlines.
    flowing = Scripted(every(30.0, 15))

    ended = ask(slot(flowing))

    assert ended.end["status"] == "completed"
    assert len(ended.tokens) == 15
    assert ended.at == pytest.approx(450.0)


def test_silence_is_counted_from_the_latest_delta_not_the_first() -> None:
    # Text at 5, 10, ..., 30 s, then nothing: the silence deadline (20 s) passes at 50 s.
    stalls = Scripted([*every(5.0, 6), (NEVER, "never")])

    ended = ask(slot(stalls), deadlines=Deadlines(first_token=10.0, silence=20.0))

    assert ended.error["error_type"] == "timeout"
    assert ended.error["deadline"] == "silence"
    assert "sent nothing for 20 s" in ended.error["error"]
    assert ended.at == pytest.approx(50.0)
    assert len(ended.tokens) == 6
    assert stalls.closed_at is not None
    assert ended.outcomes.ended == [("scripted", AttemptOutcome.FAILED)]


def test_after_text_went_out_a_silent_provider_ends_the_request_without_fallback() -> None:
    stalls = Scripted([(1.0, "half "), (NEVER, "never")], name="stalls")
    spare = Scripted(every(1.0, 3), name="spare")

    ended = ask(slot(stalls), slot(spare))

    assert ended.error["deadline"] == "silence"
    assert ended.end["status"] == "error"
    assert ended.end["provider_used"] == "stalls"
    assert spare.streams == 0
    assert ended.at == pytest.approx(61.0)


# -- the first token -------------------------------------------------------------------


def test_a_provider_that_never_sends_a_first_token_fails_after_60_s() -> None:
    mute = Scripted([(NEVER, "never")], name="mute")

    ended = ask(slot(mute))

    assert ended.error["error_type"] == "timeout"
    assert ended.error["deadline"] == "first_token"
    assert "mute sent no text within 60 s" in ended.error["error"]
    assert ended.at == pytest.approx(60.0)
    assert mute.closed_at is not None
    assert mute.streams == 1  # not retried on the same provider
    assert ended.outcomes.ended == [("mute", AttemptOutcome.FAILED)]


def test_the_next_provider_gets_a_first_token_window_of_its_own() -> None:
    # The spare's first token comes 50 s after it is asked: 110 s after the request
    # started, past a first-token deadline counted from the start.
    mute = Scripted([(NEVER, "never")], name="mute")
    spare = Scripted([(50.0, "late "), (1.0, "but whole")], name="spare")

    ended = ask(slot(mute), slot(spare))

    assert ended.end["status"] == "completed"
    assert ended.end["provider_used"] == "spare"
    assert ended.tokens == ["late ", "but whole"]
    [fallback] = [m for m in ended.inbox.of("metadata") if "fallback_from" in m]
    assert fallback["fallback_from"] == "mute"
    assert fallback["fallback_reason"].startswith("timeout: provider mute sent no text")
    assert ended.outcomes.ended == [
        ("mute", AttemptOutcome.FAILED),
        ("spare", AttemptOutcome.OK),
    ]
    assert ended.at == pytest.approx(111.0)


def test_time_queued_for_a_provider_s_slot_is_not_first_token_time() -> None:
    # One place at the provider, held 50 s by the first request; the second waits for it,
    # then gets its first token 40 s after being let in: 90 s after it started.
    provider = Scripted([(40.0, "first "), (10.0, "second")])
    shared = slot(provider, concurrency=1)
    tuning = StreamTuning(attempts=AttemptPolicy(queue_timeout_seconds=100.0))

    async def scenario() -> tuple[Inbox, float]:
        first, _, _ = run_for(shared, tuning=tuning, request_id="first")
        second, inbox, _ = run_for(shared, tuning=tuning, request_id="second")
        async with asyncio.TaskGroup() as group:
            group.create_task(first.run())
            await asyncio.sleep(0)  # the first takes the place
            waiting = group.create_task(second.run())
        assert waiting.done()
        return inbox, asyncio.get_running_loop().time()

    inbox, at = run_on_virtual_clock(scenario())

    assert inbox.of("stream_end")[0]["status"] == "completed"
    assert at == pytest.approx(100.0)


# -- the whole request -----------------------------------------------------------------


def test_the_request_deadline_ends_a_flowing_answer_without_blaming_the_provider() -> None:
    flowing = Scripted(every(10.0, 100))

    ended = ask(slot(flowing), deadlines=Deadlines(request=95.0))

    assert ended.error["error_type"] == "timeout"
    assert ended.error["deadline"] == "request"
    assert "no complete answer within 95 s" in ended.error["error"]
    assert ended.at == pytest.approx(95.0)
    assert len(ended.tokens) == 9
    assert flowing.closed_at is not None
    assert ended.outcomes.ended == [("scripted", AttemptOutcome.NEUTRAL)]


def test_the_request_deadline_bounds_the_fallbacks_too() -> None:
    mute = Scripted([(NEVER, "never")], name="mute")
    slow = Scripted([(50.0, "too late")], name="slow")

    ended = ask(slot(mute), slot(slow), deadlines=Deadlines(request=90.0))

    assert ended.error["deadline"] == "request"
    assert ended.at == pytest.approx(90.0)
    assert ended.outcomes.ended == [
        ("mute", AttemptOutcome.FAILED),
        ("slow", AttemptOutcome.NEUTRAL),
    ]


def test_an_answer_may_flow_for_longer_than_the_old_30_s_deadline_by_default() -> None:
    flowing = Scripted(every(1.0, 500))

    ended = ask(slot(flowing))

    assert ended.end["status"] == "completed"
    assert ended.at == pytest.approx(500.0)


# -- a request's own values, and the provider's timeout -----------------------------------


@pytest.mark.parametrize(
    ("asked", "first_token_at", "status"),
    [
        (Deadlines(first_token=5.0), 10.0, "error"),
        (Deadlines(first_token=120.0), 90.0, "completed"),
        (Deadlines(silence=5.0), 10.0, "completed"),  # silence starts after the first token
    ],
)
def test_a_request_s_own_deadlines_replace_the_defaults(
    asked: Deadlines, first_token_at: float, status: str
) -> None:
    ended = ask(slot(Scripted([(first_token_at, "hello")])), deadlines=asked)

    assert ended.end["status"] == status


def test_a_provider_s_own_timeout_shortens_both_of_its_waits_but_never_lengthens_them() -> None:
    mute = Scripted([(NEVER, "never")], name="mute")
    stalls = Scripted([(1.0, "a "), (NEVER, "never")], name="stalls")

    quick = ask(slot(mute, timeout=5.0))
    patient = ask(slot(stalls, timeout=300.0))

    assert quick.error["deadline"] == "first_token"
    assert quick.at == pytest.approx(5.0)
    assert patient.error["deadline"] == "silence"
    assert patient.at == pytest.approx(61.0)


def test_deadlines_asked_for_resolve_over_the_defaults_and_are_bounded() -> None:
    defaults = Timeouts(request=600.0, first_token=60.0, silence=60.0)

    assert Deadlines(silence=5.0).over(defaults) == Timeouts(600.0, 60.0, 5.0)
    Deadlines(request=3600.0, first_token=3600.0, silence=3600.0).check(3600.0)
    with pytest.raises(InvalidRequest, match="first_token_timeout: at most 3600 seconds"):
        Deadlines(first_token=3600.5).check(3600.0)


# -- where the values come from ------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"first_token_timeout": 0},
        {"silence_timeout": -1},
        {"timeout": 86_400.5},
        {"silence_timeout": "60"},
    ],
)
def test_a_websocket_deadline_is_a_number_of_seconds_within_the_wire_s_bound(
    config: dict[str, Any],
) -> None:
    frame = json.dumps({"type": "ai_request", "prompt": "hi", "config": config})

    with pytest.raises(InvalidRequest, match=f"config.{next(iter(config))}"):
        parse_client_message(frame)


def test_the_websocket_s_three_deadlines_reach_the_request() -> None:
    config = {"timeout": 900, "first_token_timeout": 120.5, "silence_timeout": 30}
    message = parse_client_message(
        json.dumps({"type": "ai_request", "prompt": "hi", "config": config})
    )
    assert isinstance(message, AiRequest)

    spec = spec_from_ai_request(message, "u", None)

    assert spec.deadlines == Deadlines(request=900, first_token=120.5, silence=30)


@pytest.mark.parametrize(
    "key", ["request_timeout_seconds", "first_token_timeout_seconds", "silence_timeout_seconds"]
)
def test_a_server_default_above_the_server_s_maximum_stops_start_up(key: str) -> None:
    streams = {"request_timeout_seconds": 50, "max_request_timeout_seconds": 100, key: 120}

    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"streams": streams})

    assert str(caught.value) == (
        f"streams.{key}: 120 is above streams.max_request_timeout_seconds (100)"
    )


def test_the_server_s_deadlines_reach_the_core() -> None:
    streams = {
        "request_timeout_seconds": 1200,
        "first_token_timeout_seconds": 90,
        "silence_timeout_seconds": 45,
        "max_request_timeout_seconds": 7200,
    }
    tuning = gateway_config(load_settings(None, {"streams": streams})).tuning

    assert tuning.timeouts == Timeouts(request=1200, first_token=90, silence=45)
    assert tuning.max_timeout == 7200
    assert StreamTuning().timeouts == Timeouts(request=600, first_token=60, silence=60)
