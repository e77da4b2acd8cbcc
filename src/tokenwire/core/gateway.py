"""The core's front door: sessions, requests and their streams, for every transport.

The gateway owns every stream task: streams outlive the connection that
started them (a later resume may pick them up), so no connection owns them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import structlog

from tokenwire.core.eventlog import EventLog, LogStore
from tokenwire.core.orchestrator import StreamRun, StreamTuning, answer_text
from tokenwire.core.request import ProviderSlot, RequestSpec, Router
from tokenwire.core.sessions import Session, SessionCloser, SessionRegistry
from tokenwire.core.stats import StreamingStats
from tokenwire.protocol.errors import InvalidRequest, TokenwireError, UnknownRequest
from tokenwire.protocol.events import StreamStatus
from tokenwire.protocol.messages import AiRequest, ChatMessage
from tokenwire.settings import Settings

logger = structlog.get_logger("tokenwire.gateway")


class Gateway:
    def __init__(
        self,
        settings: Settings,
        slots: Mapping[str, ProviderSlot],
        router: Router,
        logs: LogStore,
    ) -> None:
        self.settings = settings
        self.slots = dict(slots)
        self.router = router
        self.logs = logs
        self.sessions = SessionRegistry(settings.streams.conversation_max_tokens)
        self.stats = StreamingStats()
        self._tuning = StreamTuning(
            chunk_max_chars=settings.streams.chunk_max_chars,
            chunk_flush_seconds=settings.streams.chunk_flush_ms / 1000,
            default_timeout=settings.streams.request_timeout_seconds,
        )
        self._runs: dict[str, tuple[StreamRun, asyncio.Task[None]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False

    # -- sessions -------------------------------------------------------------

    def open_session(
        self, user_id: str, preferences: dict[str, Any], closer: SessionCloser | None = None
    ) -> Session:
        session = self.sessions.open(user_id, preferences, closer)
        logger.info("session opened", session_id=session.session_id, user_id=user_id)
        return session

    def close_session(self, session: Session, reason: str) -> None:
        """Forget a session and cancel the streams it started."""
        for request_id in list(session.active_requests):
            self._cancel_run(request_id, reason)
        if self.sessions.remove(session.session_id) is not None:
            logger.info(
                "session closed",
                session_id=session.session_id,
                user_id=session.user_id,
                reason=reason,
                duration=round(session.duration, 3),
            )

    # -- requests -------------------------------------------------------------

    def start(self, session: Session, message: AiRequest) -> EventLog:
        """Validate, route and start a request; its events go to the returned log."""
        try:
            spec = self._spec(session, message)
            route = self.router.choose(spec)
            route.slot.provider.validate(route.slot.provider_request(spec))
            log = self.logs.create(spec.request_id, session.session_id)
        except TokenwireError as exc:
            exc.request_id = exc.request_id or message.request_id
            raise
        run = StreamRun(spec, route, log, self._tuning)
        task = asyncio.create_task(self._drive(run, session), name=f"stream {spec.request_id}")
        self._runs[spec.request_id] = (run, task)
        session.request_started(spec.request_id)
        self.stats.stream_started()
        return log

    def cancel(self, request_id: str, user_id: str, reason: str = "cancelled by client") -> None:
        entry = self._runs.get(request_id)
        if entry is None or entry[0].spec.user_id != user_id:
            raise UnknownRequest(f"no running request with id {request_id!r}")
        self._cancel_run(request_id, reason)

    def is_running(self, request_id: str) -> bool:
        return request_id in self._runs

    @property
    def running(self) -> int:
        return len(self._runs)

    # -- lifecycle ------------------------------------------------------------

    def start_background(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_idle_sessions(), name="idle sweeper")

    async def shutdown(self, grace_seconds: float) -> None:
        """End every stream as cancelled (reason shutdown), then close every connection."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = [task for _, task in self._runs.values()]
        for request_id in list(self._runs):
            self._cancel_run(request_id, "shutdown")
        if tasks:
            await asyncio.wait(tasks, timeout=grace_seconds)
        await self._close_connections(
            list(self.sessions), 1001, "server shutting down", within=grace_seconds
        )
        for provider_slot in self.slots.values():
            await provider_slot.provider.aclose()
        self.logs.close()

    # -- internals ------------------------------------------------------------

    def _spec(self, session: Session, message: AiRequest) -> RequestSpec:
        request_id = message.request_id or str(uuid.uuid4())
        if request_id in self._runs or self.logs.get(request_id) is not None:
            raise InvalidRequest(f"request_id {request_id!r} is already in use")
        fresh: list[ChatMessage] = list(message.messages or ())
        if message.prompt is not None:
            fresh.append(ChatMessage(role="user", content=message.prompt))
        history: tuple[ChatMessage, ...] = ()
        if message.conversation_id is not None:
            history = session.conversations.get(message.conversation_id).turns
        progress_every = message.stream_config.progress_every
        return RequestSpec(
            request_id=request_id,
            user_id=session.user_id,
            session_id=session.session_id,
            messages=history + tuple(fresh),
            prompt_length=len(message.prompt)
            if message.prompt is not None
            else sum(len(m.content) for m in fresh),
            config=message.config,
            granularity=message.stream_config.granularity,
            progress_every=self.settings.streams.progress_every
            if progress_every is None
            else progress_every,
            conversation_id=message.conversation_id,
            history_turns=len(history),
        )

    async def _drive(self, run: StreamRun, session: Session) -> None:
        try:
            outcome = await run.run()
        finally:
            self._runs.pop(run.spec.request_id, None)
            session.request_ended(run.spec.request_id)
            self.logs.finished(run.log)
        self.stats.stream_ended(outcome)
        if outcome.status is StreamStatus.COMPLETED and run.spec.conversation_id is not None:
            self._remember_turn(session, run)
        logger.info(
            "stream ended",
            request_id=run.spec.request_id,
            session_id=session.session_id,
            provider=outcome.provider,
            status=outcome.status.value,
            duration=round(outcome.duration, 4),
            ttft=None if outcome.ttft is None else round(outcome.ttft, 4),
            chunks=outcome.chunks,
            reason=run.cancel_reason,
        )

    def _remember_turn(self, session: Session, run: StreamRun) -> None:
        assert run.spec.conversation_id is not None
        conversation = session.conversations.get(run.spec.conversation_id)
        new_turns = run.spec.messages[run.spec.history_turns :]
        answer = ChatMessage(role="assistant", content=answer_text(run))
        conversation.extend((*new_turns, answer))

    def _cancel_run(self, request_id: str, reason: str) -> None:
        entry = self._runs.get(request_id)
        if entry is not None:
            run, task = entry
            run.cancel(reason, task)

    async def _sweep_idle_sessions(self) -> None:
        streams = self.settings.streams
        while True:
            await asyncio.sleep(streams.session_sweep_seconds)
            idle = self.sessions.idle_since(streams.session_idle_seconds)
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
