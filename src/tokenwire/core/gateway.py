"""The core's front door: sessions, requests and their streams, for every transport.

A request belongs to its user and is addressed by (user, request id). The
gateway owns every stream task, because a stream may outlive the connection
that started it; connections (sessions) only follow requests. When the last
follower of a running request goes, the request is cancelled; a follower that left
without closing on purpose still counts until its resume grace ends. With other nodes
(a `Cluster`), followers there count too, and a cancel may reach a request that runs
on another node.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from tokenwire.core.admission import Admission, AdmitAll
from tokenwire.core.cluster import Cluster, NodeReport, SingleNode
from tokenwire.core.conversations import (
    ConversationStore,
    answer_turn,
    check_results,
    with_pending_exchange,
)
from tokenwire.core.eventlog import EventLog, LogStore, Subscriber
from tokenwire.core.hydration import compacted
from tokenwire.core.images import ImageBounds
from tokenwire.core.orchestrator import StreamRun, StreamTuning
from tokenwire.core.provider import count_tokens
from tokenwire.core.remote import RemoteFollows
from tokenwire.core.route import AttemptObserver, NoObserver, ProviderSlot, Router
from tokenwire.core.sessions import Session, SessionCloser, SessionRegistry
from tokenwire.core.spec import RequestKey, RequestSpec
from tokenwire.core.stats import StreamingStats, StreamOutcome
from tokenwire.core.telemetry import NoTelemetry, ResumeOutcome, Telemetry
from tokenwire.protocol.errors import (
    BackendUnavailable,
    InvalidRequest,
    NotRecovered,
    PastTheEnd,
    ShuttingDown,
    TokenwireError,
    UnknownRequest,
)

logger = structlog.get_logger("tokenwire.gateway")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The plain values the core runs by (built from the settings by the app)."""

    tuning: StreamTuning = field(default_factory=StreamTuning)
    session_idle_seconds: float = 3600.0
    session_sweep_seconds: float = 300.0
    resume_grace_seconds: float = 10.0
    """How long a request whose last follower was lost (not closed) waits for one."""
    images: ImageBounds = field(default_factory=ImageBounds)
    """A request's images, its conversation's included (older turns give way)."""


class _Running:
    """A running request: its run, the task that drives it, and who follows it."""

    __slots__ = ("absent", "followers", "run", "task")

    def __init__(self, run: StreamRun) -> None:
        self.run = run
        self.task: asyncio.Task[None] | None = None
        self.followers: set[str] = set()
        self.absent: dict[str, asyncio.TimerHandle] = {}
        """Followers that left without closing on purpose (a reload, a lost link), each
        with the timer of its resume grace: until it ends they still count, so that a
        device that reloads keeps the stream whatever the other followers do meanwhile."""

    @property
    def followed(self) -> bool:
        return bool(self.followers or self.absent)

    def stop_grace(self) -> None:
        for timer in self.absent.values():
            timer.cancel()
        self.absent.clear()


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        slots: Mapping[str, ProviderSlot],
        router: Router,
        logs: LogStore,
        conversations: ConversationStore,
        observer: AttemptObserver | None = None,
        admission: Admission | None = None,
        cluster: Cluster | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.telemetry: Telemetry = telemetry or NoTelemetry()
        self.cluster: Cluster = cluster or SingleNode()
        self.observer = observer or NoObserver()
        self.admission = admission or AdmitAll()
        self.slots = dict(slots)
        self.router = router
        self.logs = logs
        self.conversations = conversations
        self.sessions = SessionRegistry()
        self.stats = StreamingStats()
        self._runs: dict[RequestKey, _Running] = {}
        self._remote = RemoteFollows(self.cluster, self.sessions, config.resume_grace_seconds)
        # Keys between the first check and the run's registration (start awaits in between).
        self._starting: set[RequestKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._cluster_start: asyncio.Task[None] | None = None
        self.closing = False

    # -- sessions -------------------------------------------------------------

    def open_session(
        self, user_id: str, preferences: dict[str, Any], closer: SessionCloser | None = None
    ) -> Session:
        session = self.sessions.open(user_id, preferences, closer)
        logger.info("session opened", session_id=session.session_id, user_id=user_id)
        return session

    def close_session(self, session: Session, reason: str, lost: bool = False) -> None:
        """Forget a session. The requests nobody else follows are cancelled with `reason`,
        or, when the connection was `lost` (not closed on purpose), wait for the grace."""
        for request_id in list(session.following):
            self.unfollow(session, RequestKey(session.user_id, request_id), reason, lost)
        if self.sessions.remove(session.session_id) is not None:
            logger.info(
                "session closed",
                session_id=session.session_id,
                user_id=session.user_id,
                reason=reason,
                duration=round(session.duration, 3),
            )

    def follow(self, session: Session, key: RequestKey) -> bool:
        """Let a session follow a running request of its user; False if it cannot."""
        running = self._runs.get(key)
        if running is None or key.user_id != session.user_id:
            return False
        if self.sessions.get(session.session_id) is not session:
            return False  # the session is already gone
        self.add_follower(key, session.session_id)
        session.follow(key.request_id)
        return True

    def unfollow(self, session: Session, key: RequestKey, reason: str, lost: bool = False) -> None:
        session.unfollow(key.request_id)
        self.remove_follower(key, session.session_id, reason, lost)

    def add_follower(self, key: RequestKey, follower: str) -> bool:
        """Count `follower` (a session or an SSE response) as receiving a running request."""
        running = self._runs.get(key)
        if running is None:
            return False
        running.followers.add(follower)
        timer = running.absent.pop(follower, None)
        if timer is not None:
            timer.cancel()
        return True

    def remove_follower(self, key: RequestKey, follower: str, reason: str, lost: bool) -> None:
        """`follower` left: on purpose (`lost` False), or in a way that leaves it the
        resume grace, during which it still counts as following."""
        running = self._runs.get(key)
        if running is None:
            self._remote.leave(key, follower, lost)
            return
        if follower not in running.followers:
            return
        running.followers.discard(follower)
        grace = self.config.resume_grace_seconds
        if lost and grace > 0:
            loop = asyncio.get_running_loop()
            running.absent[follower] = loop.call_later(grace, self._grace_over, running, follower)
        elif not running.followed:
            self._unfollowed(running, reason)

    def _grace_over(self, running: _Running, follower: str) -> None:
        running.absent.pop(follower, None)
        if not running.followed:
            self._unfollowed(running, "nobody re-attached within the resume grace")

    def _unfollowed(self, running: _Running, reason: str) -> None:
        """Nobody here follows `running` any more: cancel it, unless (with other nodes)
        someone there still does, which asks Redis first."""
        if not self.cluster.shared:
            self._cancel(running, reason)
            return
        task = asyncio.create_task(
            self._cancel_unless_followed_elsewhere(running, reason),
            name=f"followers of {running.run.spec.request_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _cancel_unless_followed_elsewhere(self, running: _Running, reason: str) -> None:
        key = running.run.spec.key
        try:
            elsewhere = await self.cluster.followed_elsewhere(key)
        except BackendUnavailable:
            # Other nodes' followers read the request through Redis: out of reach, they
            # receive nothing, so the request is cancelled as on one node.
            logger.warning("followers elsewhere unknown, cancelling", request_id=key.request_id)
            elsewhere = False
        # Someone may have come back here, or the run ended, while Redis answered.
        if not elsewhere and not running.followed and self._runs.get(key) is running:
            self._cancel(running, reason)

    # -- the cluster's view of this node (LocalRuns) ----------------------------

    def cancel_here(self, key: RequestKey, reason: str) -> bool:
        running = self._runs.get(key)
        if running is None:
            return False
        self._cancel(running, reason)
        return True

    def reconsider(self, key: RequestKey) -> None:
        running = self._runs.get(key)
        if running is not None and not running.followed and running.run.cancel_reason is None:
            self._unfollowed(running, "nobody follows the request on any node")

    def report(self) -> NodeReport:
        return NodeReport(
            node_id=self.cluster.node_id,
            running=len(self._runs),
            sessions={
                s.session_id: {**s.describe(), "created_at": s.created_at} for s in self.sessions
            },
        )

    async def nodes(self) -> tuple[list[NodeReport], bool]:
        """Every node (this one first) and whether the others could be asked."""
        try:
            return [self.report(), *await self.cluster.others()], True
        except BackendUnavailable:
            return [self.report()], False

    @property
    def in_grace(self) -> int:
        """Running requests that nobody follows, waiting for someone to re-attach."""
        return sum(1 for r in self._runs.values() if r.absent and not r.followers)

    async def resume(
        self,
        key: RequestKey,
        subscriber: Subscriber,
        after_seq: int,
        *,
        compact: bool = False,
        follower: Session | str | None = None,
    ) -> EventLog:
        """Re-attach to a request of the caller's (running or finished and kept): its events
        after `after_seq` (merged, with `compact`), then live ones until its `stream_end`."""
        log = await self.logs.get(key)
        if log is None:
            self.telemetry.resumed(ResumeOutcome.UNKNOWN)
            raise _about(UnknownRequest(f"no request with id {key.request_id!r} to resume"), key)
        if log.finished and after_seq > log.last_seq:
            raise _about(
                PastTheEnd(
                    f"last_seq {after_seq} is past the end of the request: "
                    f"its stream_end is seq {log.last_seq}"
                ),
                key,
            )
        try:
            log.check_held(after_seq)
            replay = compacted(log, after_seq) if compact else log.records(after_seq)
        except NotRecovered as exc:
            self.stats.not_recovered += 1
            self.telemetry.resumed(ResumeOutcome.NOT_RECOVERED)
            raise _about(exc, key) from None
        log.attach(subscriber, replay, after_seq)
        if not log.finished and follower is not None:
            if key not in self._runs and self.cluster.shared:
                self._remote.follow(key, log, follower)
            elif isinstance(follower, Session):
                self.follow(follower, key)
            else:
                self.add_follower(key, follower)
        self.stats.resumes_served += 1
        self.telemetry.resumed(ResumeOutcome.REPLAYED)
        return log

    async def requests_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's running and kept requests, newest first."""
        return [
            {
                "request_id": log.key.request_id,
                "status": log.status or "running",
                "started": log.created_at,
                "conversation_id": log.conversation_id,
            }
            for log in await self.logs.of_user(user_id)
        ]

    # -- requests -------------------------------------------------------------

    async def start(self, spec: RequestSpec, follower: Session | None = None) -> EventLog:
        """Validate, route and start a request; its events go to the returned log.

        A refused request raises the error the client should see and leaves nothing
        behind; an accepted one ends with exactly one `stream_end` in its log.
        """
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        if not spec.request_id:  # a copy only to name it: replace() is not cheap
            spec = replace(spec, request_id=str(uuid.uuid4()))
        key = spec.key
        self._reserve(key)
        try:
            spec.deadlines.check(self.config.tuning.max_timeout)
            spec = await self.admission.admit(spec)
        except TokenwireError as exc:
            self._starting.discard(key)
            exc.request_id = exc.request_id or key.request_id
            self.telemetry.refused(exc)
            raise
        try:
            return await self._start(spec, key, follower)
        except BaseException as exc:
            self.admission.release(spec, None)
            if isinstance(exc, TokenwireError):
                exc.request_id = exc.request_id or key.request_id
            raise
        finally:
            self._starting.discard(key)

    async def count_tokens(self, spec: RequestSpec) -> tuple[str, int]:
        """The provider a request would go to first (a named one, or routing's pick), and
        the prompt tokens it would cost there, counted exactly by that provider; nothing
        is started. Raises `UnsupportedFeature` where that provider cannot count."""
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        slot = self.router.choose(spec).slot
        request = slot.provider_request(spec)
        slot.provider.validate(request)
        return slot.name, await count_tokens(slot.provider, request)

    def cancel(self, key: RequestKey, reason: str = "cancelled by client") -> None:
        """Cancel a request running on this node (`cancel_anywhere` for any node)."""
        if not self.cancel_here(key, reason):
            raise _about(UnknownRequest(f"no running request with id {key.request_id!r}"), key)

    async def cancel_anywhere(self, key: RequestKey, reason: str = "cancelled by client") -> None:
        """Cancel a request running on this node or on another; `UnknownRequest` if none
        runs it, `BackendUnavailable` if the other nodes cannot be asked."""
        # Here first, synchronously: a local cancel waits for nothing, as on one node.
        if self.cancel_here(key, reason):
            return
        try:
            if self.cluster.shared and await self.cluster.cancel(key, reason):
                return
        except BackendUnavailable as exc:
            raise _about(exc, key) from None
        raise _about(UnknownRequest(f"no running request with id {key.request_id!r}"), key)

    def is_cancelled(self, key: RequestKey) -> bool:
        """A running request that was cancelled and is winding down: it holds no stream
        slot any more (per user, per connection)."""
        running = self._runs.get(key)
        return running is not None and running.run.cancel_reason is not None

    def unready_providers(self) -> dict[str, str]:
        """Providers that cannot serve yet, with the reason of each."""
        waiting = {name: slot.provider.readiness() for name, slot in self.slots.items()}
        return {name: reason for name, reason in waiting.items() if reason is not None}

    def is_running(self, key: RequestKey) -> bool:
        return key in self._runs

    @property
    def running(self) -> int:
        return len(self._runs)

    # -- lifecycle ------------------------------------------------------------

    def start_background(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_idle_sessions(), name="idle sweeper")
        if self.cluster.shared:
            self._cluster_start = asyncio.create_task(self.cluster.start(self), name="cluster")
            self._cluster_start.add_done_callback(self._task_done)

    def begin_shutdown(self) -> None:
        """Refuse new requests from now on (and so answer /readyz 503); `shutdown` ends
        what runs."""
        self.closing = True

    async def shutdown(self, grace_seconds: float) -> None:
        """Refuse new requests, end every stream as cancelled (reason shutdown), then
        close every connection and release providers and stores."""
        self.begin_shutdown()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for running in list(self._runs.values()):
            running.stop_grace()
            self._cancel(running, "shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)
        await self._close_connections(
            list(self.sessions), 1001, "server shutting down", within=grace_seconds
        )
        for provider_slot in self.slots.values():
            await provider_slot.provider.aclose()
        await self.logs.close()
        # After the logs: their last events reach the other nodes before this node leaves.
        if self._cluster_start is not None:
            await asyncio.gather(self._cluster_start, return_exceptions=True)
        await self.cluster.close()

    # -- internals ------------------------------------------------------------

    def _cancel(self, running: _Running, reason: str) -> None:
        """Cancel a run and give its stream slot back at once: winding down (closing the
        upstream) must not keep a user who cancels and asks again from the next stream."""
        running.run.cancel(reason)
        self.admission.cancelled(running.run.spec)

    def _reserve(self, key: RequestKey) -> None:
        if key in self._runs or key in self._starting:
            raise _about(InvalidRequest(f"request_id {key.request_id!r} is already in use"), key)
        self._starting.add(key)

    async def _start(
        self, spec: RequestSpec, key: RequestKey, follower: Session | None
    ) -> EventLog:
        source = spec.history_from or spec.conversation_id
        if source is not None:
            history = await self.conversations.history(spec.user_id, source)
            check_results(history, spec.messages, source)
            fitted = self.config.images.fitted_history(history, spec.messages)
            history = with_pending_exchange(history, fitted)
            spec = replace(spec, history=history)
        route = self.router.choose(spec)
        route.slot.provider.validate(route.slot.provider_request(spec))
        log = await self.logs.create(key, spec.origin, spec.conversation_id)
        await self.cluster.started(key)
        if self.closing:
            self.cluster.ended(key)
            await self.logs.discard(key)
            raise ShuttingDown("the server is shutting down")
        before_end = self._remember_turn if spec.conversation_id is not None else None
        probe = self.telemetry.stream_started(key.request_id)
        probe.routed(
            route.slot.name,
            route.strategy.value,
            route.task_type,
            spec.generation.model or route.slot.provider.model,
        )
        run = StreamRun(spec, route, log, self.config.tuning, self.observer, before_end, probe)
        # Its stream_start is in the log before the caller answers the client's next message.
        run.open()
        running = _Running(run)
        self._runs[key] = running
        task = asyncio.create_task(self._drive(key, running), name=f"stream {key.request_id}")
        running.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        self.stats.stream_started()
        if follower is not None and not self.follow(follower, key):
            # Its connection went while the request was being set up.
            self._cancel(running, "client disconnected")
        return log

    async def _drive(self, key: RequestKey, running: _Running) -> None:
        run = running.run
        outcome: StreamOutcome | None = None
        try:
            outcome = await run.run()
        except BaseException:
            # A run ends with its outcome even on errors; this is a defect, and the
            # user's stream slot must not go with it.
            self.admission.release(run.spec, None)
            raise
        finally:
            running.stop_grace()
            self._runs.pop(key, None)
            self.cluster.ended(key)
            for session_id in running.followers:
                session = self.sessions.get(session_id)
                if session is not None:
                    session.unfollow(key.request_id)
            # Here, not below: a defect that ends the run must not leave it counted active.
            run.probe.ended(outcome)
        assert outcome is not None
        self.stats.stream_ended(outcome)
        self.admission.release(run.spec, outcome)
        self._log_end(run, outcome)
        await self.logs.finished(run.log)
        if run.interrupted:
            raise asyncio.CancelledError

    async def _remember_turn(self, run: StreamRun) -> None:
        """Keep a completed answer in its conversation, before its `stream_end` goes out:
        a client that continues at once, on any node, finds it there."""
        spec = run.spec
        assert spec.conversation_id is not None
        # Only finished calls are kept: one cut short is never.
        answer = answer_turn(run.answer_text, run.tool_calls)
        # Continued from another conversation: that one's turns start this one.
        earlier = spec.history if spec.history_from is not None else ()
        try:
            await self.conversations.extend(
                spec.user_id, spec.conversation_id, (*earlier, *spec.messages, answer)
            )
        except Exception:
            logger.exception("saving a conversation turn failed", request_id=spec.request_id)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("stream task failed", task=task.get_name(), exc_info=task.exception())

    @staticmethod
    def _log_end(run: StreamRun, outcome: StreamOutcome) -> None:
        logger.info(
            "stream ended",
            request_id=run.spec.request_id,
            user_id=run.spec.user_id,
            session_id=run.spec.origin,
            provider=outcome.provider,
            status=outcome.status.value,
            duration=round(outcome.duration, 4),
            ttft=None if outcome.ttft is None else round(outcome.ttft, 4),
            chunks=outcome.chunks,
            reason=run.cancel_reason,
        )

    async def _sweep_idle_sessions(self) -> None:
        while True:
            await asyncio.sleep(self.config.session_sweep_seconds)
            try:
                await self._close_idle_sessions()
            except Exception:
                # The sweeper outlives its own failures: one bad sweep must not end them all.
                logger.exception("idle session sweep failed")

    async def _close_idle_sessions(self) -> None:
        idle = self.sessions.idle_since(self.config.session_idle_seconds)
        for session in idle:
            logger.info("closing idle session", session_id=session.session_id)
        # A client that does not read must not hold up the others: close in parallel.
        await self._close_connections(idle, 1000, "idle timeout", within=5.0)
        for session in idle:
            self.close_session(session, "idle")

    @staticmethod
    async def _close_connections(
        sessions: list[Session], code: int, reason: str, within: float
    ) -> None:
        closing = [
            asyncio.ensure_future(s.closer(code, reason)) for s in sessions if s.closer is not None
        ]
        if closing:
            _, late = await asyncio.wait(closing, timeout=within)
            for future in late:
                future.cancel()
            await asyncio.gather(*closing, return_exceptions=True)


def _about(error: TokenwireError, key: RequestKey) -> TokenwireError:
    """`error`, saying which of the caller's own requests it is about."""
    error.request_id = key.request_id
    return error
