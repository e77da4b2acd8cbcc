"""The gateway without sockets: every accepted request ends exactly once, whatever
arrives when; requests belong to users; shutdown refuses before it cancels."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import structlog

from tests.support.clock import LoopClock
from tests.support.providers import WatchedProvider
from tests.support.recording import Inbox
from tests.support.server import gateway_with, simulated_settings
from tests.support.stores import SlowHistory, SlowWrites
from tests.support.waiting import eventually
from tokenwire.app import backends_for
from tokenwire.backends.memory import MemoryLogStore
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.orchestrator import StreamRun
from tokenwire.core.provider import Message, ProviderRequest
from tokenwire.core.spec import Generation, RequestKey, RequestSpec
from tokenwire.protocol.errors import InvalidRequest, ShuttingDown, UnknownRequest
from tokenwire.protocol.events import EventType

SLOW = {"tokens": 5000, "delay_ms": 5}
GRACE = 10.0
FAST = {"tokens": 20, "delay_ms": 0}


def ask(
    prompt: str = "hello",
    *,
    user: str = "ada",
    request_id: str | None = None,
    options: dict[str, Any] | None = None,
    conversation_id: str | None = None,
) -> RequestSpec:
    return RequestSpec(
        user_id=user,
        messages=(Message(role="user", content=prompt),),
        request_id=request_id,
        conversation_id=conversation_id,
        generation=Generation(options=FAST if options is None else options),
    )


async def finished(gateway: Gateway) -> None:
    """Wait until every stream task of the gateway has ended."""
    await eventually(lambda: not (gateway.running or gateway._tasks))


async def started(gateway: Gateway, spec: RequestSpec) -> Inbox:
    inbox = Inbox()
    (await gateway.start(spec)).subscribe(inbox)
    return inbox


def ends(inbox: Inbox) -> list[dict[str, Any]]:
    return inbox.of("stream_end")


async def test_a_cancel_right_behind_its_request_ends_it_with_exactly_one_stream_end() -> None:
    gateway = gateway_with(WatchedProvider())
    inbox = await started(gateway, ask(request_id="r1", options=SLOW))
    gateway.cancel(RequestKey("ada", "r1"))  # before the run's task has taken a step
    await finished(gateway)
    assert inbox.kinds()[0] == "stream_start"
    assert [e["status"] for e in ends(inbox)] == ["cancelled"]
    assert inbox.kinds()[-1] == "stream_end"
    assert gateway.stats.active_streams == 0
    assert gateway.stats.snapshot(gateway.sessions)["streams"]["by_status"]["cancelled"] == 1


async def test_a_hundred_immediate_cancels_leave_nothing_running_or_counted() -> None:
    provider = WatchedProvider()
    settings = simulated_settings(limits={"max_streams_per_user": 100})
    gateway = gateway_with(provider, settings=settings)
    inboxes = []
    for n in range(100):
        inboxes.append(await started(gateway, ask("x" * 10_000, request_id=f"r{n}", options=SLOW)))
        gateway.cancel(RequestKey("ada", f"r{n}"))
    await finished(gateway)
    assert all([e["status"] for e in ends(inbox)] == ["cancelled"] for inbox in inboxes)
    assert (gateway.running, gateway.stats.active_streams) == (0, 0)
    assert provider.deltas_sent == 0


async def test_a_cancel_during_the_first_token_and_later_ends_once() -> None:
    provider = WatchedProvider()
    gateway = gateway_with(provider)
    early = await started(gateway, ask(request_id="early", options=SLOW))
    late = await started(gateway, ask(request_id="late", options=SLOW))
    await asyncio.sleep(0)  # both runs took their first step and wait for a delta
    gateway.cancel(RequestKey("ada", "early"))
    await eventually(lambda: provider.deltas_sent >= 20)
    gateway.cancel(RequestKey("ada", "late"))
    await finished(gateway)
    for inbox in (early, late):
        assert [e["status"] for e in ends(inbox)] == ["cancelled"]
        assert inbox.seqs == list(range(1, len(inbox.seqs) + 1))


async def test_an_error_while_writing_the_opening_events_still_ends_the_stream() -> None:
    class Broken(WatchedProvider):
        def expected_deltas(self, request: ProviderRequest) -> int | None:
            raise OverflowError("int too large to convert to float")

    gateway = gateway_with(Broken())
    inbox = await started(gateway, ask())
    await finished(gateway)
    assert inbox.of("error")[0]["error_type"] == "internal_error"
    assert "too large" not in inbox.of("error")[0]["error"]
    assert [e["status"] for e in ends(inbox)] == ["error"]
    assert gateway.stats.active_streams == 0


async def test_requests_belong_to_their_user() -> None:
    gateway = gateway_with(WatchedProvider())
    mine = await started(gateway, ask(user="ada", request_id="same", options=SLOW))
    theirs = await started(gateway, ask(user="bob", request_id="same", options=SLOW))
    with pytest.raises(UnknownRequest):
        gateway.cancel(RequestKey("mallory", "same"))
    gateway.cancel(RequestKey("bob", "same"))
    await asyncio.sleep(0.05)
    assert gateway.is_running(RequestKey("ada", "same"))
    assert not gateway.is_running(RequestKey("bob", "same"))
    gateway.cancel(RequestKey("ada", "same"))
    await finished(gateway)
    assert len(ends(mine)) == len(ends(theirs)) == 1


async def test_an_id_in_use_by_the_same_user_is_refused_even_while_starting() -> None:
    gateway = gateway_with(WatchedProvider())
    store = SlowHistory()
    gateway.conversations = store
    first = asyncio.ensure_future(gateway.start(ask(request_id="dup", conversation_id="c")))
    await store.reading.wait()  # the first start waits inside the gateway
    with pytest.raises(InvalidRequest, match="already in use") as refused:
        await gateway.start(ask(request_id="dup"))
    assert refused.value.request_id == "dup"  # the client learns which of its requests
    store.release.set()
    await first
    await finished(gateway)


async def test_a_session_s_requests_are_cancelled_when_it_closes_unless_another_follows() -> None:
    gateway = gateway_with(WatchedProvider())
    phone = gateway.open_session("ada", {})
    laptop = gateway.open_session("ada", {})
    alone = await gateway.start(ask(request_id="alone", options=SLOW), follower=phone)
    shared = await gateway.start(ask(request_id="shared", options=SLOW), follower=phone)
    assert gateway.follow(laptop, RequestKey("ada", "shared"))
    gateway.close_session(phone, "client disconnected")
    await asyncio.sleep(0.05)
    assert not gateway.is_running(alone.key)
    assert gateway.is_running(shared.key)
    assert phone.following == set()
    gateway.close_session(laptop, "client disconnected")
    await finished(gateway)


async def test_another_user_s_session_cannot_follow_a_request() -> None:
    gateway = gateway_with(WatchedProvider())
    owner = gateway.open_session("ada", {})
    other = gateway.open_session("bob", {})
    log = await gateway.start(ask(request_id="r", options=SLOW), follower=owner)
    assert not gateway.follow(other, log.key)
    gateway.close_session(owner, "client disconnected")
    await finished(gateway)


async def test_a_request_whose_session_left_while_it_was_set_up_is_cancelled() -> None:
    gateway = gateway_with(WatchedProvider())
    session = gateway.open_session("ada", {})
    gateway.close_session(session, "client disconnected")
    log = await gateway.start(ask(request_id="r", options=SLOW), follower=session)
    inbox = Inbox()
    log.subscribe(inbox)
    await finished(gateway)
    assert [e["status"] for e in ends(inbox)] == ["cancelled"]


def with_grace(seconds: float = GRACE) -> Gateway:
    settings = simulated_settings(streams={"resume_grace_seconds": seconds})
    return gateway_with(WatchedProvider(), settings=settings)


async def test_nobody_re_attaching_cancels_the_stream_when_the_grace_ends_not_before() -> None:
    gateway = with_grace()
    with LoopClock() as clock:
        phone = gateway.open_session("ada", {})
        log = await gateway.start(ask(request_id="r", options=SLOW), follower=phone)
        inbox = Inbox()
        log.subscribe(inbox)
        gateway.close_session(phone, "connection lost", lost=True)
        await clock.advance(GRACE - 1)
        assert gateway.is_running(log.key)
        assert gateway.in_grace == 1
        await clock.advance(1)
        assert gateway.in_grace == 0
        await finished(gateway)
    assert [(e["status"], e["reason"]) for e in ends(inbox)] == [
        ("cancelled", "nobody re-attached within the resume grace")
    ]


async def test_a_re_attach_ends_the_grace_and_a_second_loss_gets_a_whole_grace_again() -> None:
    gateway = with_grace()
    with LoopClock() as clock:
        phone = gateway.open_session("ada", {})
        log = await gateway.start(ask(request_id="r", options=SLOW), follower=phone)
        inbox = Inbox()
        log.subscribe(inbox)
        gateway.close_session(phone, "connection lost", lost=True)
        await clock.advance(GRACE / 2)
        reloaded = gateway.open_session("ada", {})
        await gateway.resume(log.key, Inbox(), log.last_seq, follower=reloaded)
        assert gateway.in_grace == 0
        await clock.advance(GRACE / 4)
        gateway.close_session(reloaded, "connection lost", lost=True)
        assert gateway.in_grace == 1
        await clock.advance(GRACE - 1)  # past the first loss's grace, within the second's
        assert gateway.is_running(log.key)
        await clock.advance(1)
        assert gateway.in_grace == 0
        await finished(gateway)
    assert [e["status"] for e in ends(inbox)] == ["cancelled"]


async def test_each_lost_follower_keeps_the_stream_for_its_own_whole_grace() -> None:
    gateway = with_grace()
    with LoopClock() as clock:
        phone = gateway.open_session("ada", {})
        log = await gateway.start(ask(request_id="r", options=SLOW), follower=phone)
        tablet = gateway.open_session("ada", {})
        await gateway.resume(log.key, Inbox(), log.last_seq, follower=tablet)
        inbox = Inbox()
        log.subscribe(inbox)
        gateway.close_session(phone, "connection lost", lost=True)
        await clock.advance(GRACE / 2)
        gateway.close_session(tablet, "connection lost", lost=True)
        await clock.advance(GRACE / 2 + 1)  # the phone's grace is over, not the tablet's
        assert gateway.is_running(log.key)
        await clock.advance(GRACE / 2)
        await finished(gateway)
    assert [e["status"] for e in ends(inbox)] == ["cancelled"]


async def test_with_a_zero_grace_a_lost_connection_cancels_its_stream_at_once() -> None:
    gateway = with_grace(0)
    phone = gateway.open_session("ada", {})
    log = await gateway.start(ask(request_id="r", options=SLOW), follower=phone)
    inbox = Inbox()
    log.subscribe(inbox)
    gateway.close_session(phone, "connection lost", lost=True)
    assert gateway.in_grace == 0
    await finished(gateway)
    assert [(e["status"], e["reason"]) for e in ends(inbox)] == [("cancelled", "connection lost")]


async def test_shutdown_refuses_new_requests_before_it_cancels_running_ones() -> None:
    gateway = gateway_with(WatchedProvider())
    running = await started(gateway, ask(request_id="running", options=SLOW))
    store = SlowHistory()
    gateway.conversations = store
    setting_up = asyncio.ensure_future(
        gateway.start(ask(request_id="late", conversation_id="c", options=SLOW))
    )
    await store.reading.wait()
    shutting = asyncio.ensure_future(gateway.shutdown(grace_seconds=5))
    await asyncio.sleep(0)
    with pytest.raises(ShuttingDown):
        await gateway.start(ask(request_id="new"))
    store.release.set()
    with pytest.raises(ShuttingDown):
        await setting_up
    await shutting
    assert gateway.running == 0
    assert [(e["status"], e["reason"]) for e in ends(running)] == [("cancelled", "shutdown")]
    assert not gateway.is_running(RequestKey("ada", "late"))


async def test_finished_logs_are_released_after_their_retention() -> None:
    settings = simulated_settings(streams={"log_retention_seconds": 0.1})
    gateway = gateway_with(WatchedProvider(), settings=settings)
    await started(gateway, ask(request_id="r1"))
    await finished(gateway)
    logs = gateway.logs
    assert isinstance(logs, MemoryLogStore)
    assert await logs.get(RequestKey("ada", "r1")) is not None
    await asyncio.sleep(0.15)
    assert len(logs) == 0
    await started(gateway, ask(request_id="r1"))  # the id is free again
    await finished(gateway)


async def test_a_completed_answer_joins_the_user_s_conversation_a_cancelled_one_does_not() -> None:
    provider = WatchedProvider()
    gateway = gateway_with(provider)
    first = await started(gateway, ask("I am Ada", request_id="a", conversation_id="c"))
    await finished(gateway)
    answer = "".join(c["chunk"] for c in first.of("chunk"))
    await started(
        gateway, ask("tell me a long story", request_id="b", conversation_id="c", options=SLOW)
    )
    await eventually(lambda: provider.deltas_sent >= 25)
    gateway.cancel(RequestKey("ada", "b"))
    await finished(gateway)
    # Another connection of the same user continues the conversation.
    await started(gateway, ask("who am I?", request_id="c", conversation_id="c"))
    await finished(gateway)
    assert [(m.role, m.content) for m in provider.requests[-1].messages] == [
        ("user", "I am Ada"),
        ("assistant", answer),
        ("user", "who am I?"),
    ]
    await started(gateway, ask("who am I?", user="bob", conversation_id="c"))
    await finished(gateway)
    assert len(provider.requests[-1].messages) == 1


async def test_the_idle_sweeper_survives_its_own_errors() -> None:
    settings = simulated_settings(
        streams={"session_idle_seconds": 0.05, "session_sweep_seconds": 0.02}
    )
    gateway = gateway_with(WatchedProvider(), settings=settings)
    failures = 0
    real = gateway.sessions.idle_since

    def flaky(threshold: float) -> list[Any]:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RuntimeError("sweep broke")
        return real(threshold)

    gateway.sessions.idle_since = flaky  # type: ignore[method-assign]
    gateway.open_session("ada", {})
    with structlog.testing.capture_logs() as logs:
        gateway.start_background()
        await eventually(lambda: len(gateway.sessions) == 0, timeout=2)
    assert failures == 2
    assert [e["event"] for e in logs].count("idle session sweep failed") == 2
    await gateway.shutdown(1)


async def test_a_failure_after_the_stream_is_logged_not_lost() -> None:
    class BrokenStore(SlowHistory):
        async def history(self, user_id: str, conversation_id: str) -> tuple[Message, ...]:
            return ()

        async def extend(
            self, user_id: str, conversation_id: str, turns: Sequence[Message]
        ) -> None:
            raise ConnectionError("store is down")

    gateway = gateway_with(WatchedProvider())
    gateway.conversations = BrokenStore()
    with structlog.testing.capture_logs() as logs:
        inbox = await started(gateway, ask(conversation_id="c"))
        await finished(gateway)
    assert [e["status"] for e in ends(inbox)] == ["completed"]
    assert any(e["event"] == "saving a conversation turn failed" for e in logs)


async def test_a_stream_task_cancelled_from_outside_still_ends_its_stream() -> None:
    gateway = gateway_with(WatchedProvider())
    inbox = await started(gateway, ask(request_id="r", options=SLOW))
    await asyncio.sleep(0.02)
    (task,) = gateway._tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(e["status"], e["reason"]) for e in ends(inbox)] == [("cancelled", "interrupted")]
    assert (gateway.running, gateway.stats.active_streams) == (0, 0)


class CountingAdmission:
    def __init__(self) -> None:
        self.running = 0

    async def admit(self, spec: RequestSpec) -> RequestSpec:
        self.running += 1
        return spec

    def cancelled(self, spec: RequestSpec) -> None:
        return None

    def release(self, spec: RequestSpec, outcome: object) -> None:
        self.running -= 1


async def test_a_run_that_fails_on_a_defect_still_gives_its_admission_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = gateway_with(WatchedProvider())
    admission = CountingAdmission()
    gateway.admission = admission

    async def broken(self: object) -> None:
        raise RuntimeError("a defect in the run")

    monkeypatch.setattr(StreamRun, "run", broken)
    await gateway.start(ask())
    await finished(gateway)
    assert admission.running == 0


async def test_a_completed_turn_is_saved_before_its_stream_end_goes_out() -> None:
    # With Redis a client may continue at once on another node: the turn must be in the
    # store by the time the client has the end (it was saved just after, and could be
    # missed there).
    backends = backends_for(simulated_settings())
    assert isinstance(backends.logs, MemoryLogStore)
    conversations = SlowWrites(backends.logs)
    gateway = gateway_with(
        WatchedProvider(), backends=dataclasses.replace(backends, conversations=conversations)
    )
    inbox = await started(gateway, ask("I am Ada", request_id="a", conversation_id="c"))
    await finished(gateway)

    assert ends(inbox)[0]["status"] == "completed"
    assert conversations.log_had_ended == [False]
    assert [m.role for m in conversations.turns] == ["user", "assistant"]


class OneCopy:
    """A log store holding one copy of another node's log, as a node finds it in Redis."""

    def __init__(self, log: Any) -> None:
        self.log = log

    async def get(self, key: RequestKey) -> Any:
        return self.log if key == self.log.key else None


async def test_a_resume_on_a_copy_behind_the_client_sends_nothing_it_already_has() -> None:
    # The client saw seq 1-5 on the owner; this node's copy holds 1-4 so far.
    gateway = gateway_with(WatchedProvider())
    key = RequestKey("ada", "elsewhere")
    copy = EventLog(key, None, 1 << 20, replica=True)
    for seq in range(1, 5):
        copy.ingest(seq, EventType.TOKEN, 1.0, json.dumps({"token": str(seq)}))
    gateway.logs = OneCopy(copy)  # type: ignore[assignment]
    inbox = Inbox()

    await gateway.resume(key, inbox, after_seq=5)
    for seq in (5, 6):
        copy.ingest(seq, EventType.TOKEN, 1.0, json.dumps({"token": str(seq)}))

    assert inbox.seqs == [6]


async def test_a_request_keeps_its_own_id_and_one_without_is_given_a_uuid() -> None:
    gateway = gateway_with(WatchedProvider())
    named = await gateway.start(ask(request_id="mine"))
    unnamed = await gateway.start(ask())
    blank = await gateway.start(ask(request_id=""))
    await finished(gateway)
    assert named.key.request_id == "mine"
    for log in (unnamed, blank):
        assert uuid.UUID(log.key.request_id).version == 4
    assert unnamed.key.request_id != blank.key.request_id
