"""Sessions: one per client connection, indexed by id and by user."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tokenwire.core.conversations import ConversationBook
from tokenwire.protocol.errors import InvalidMessage
from tokenwire.protocol.events import encode_json


class SessionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    PROCESSING = "processing"
    IDLE = "idle"
    DISCONNECTING = "disconnecting"
    DISCONNECTED = "disconnected"


# A session's preferences live as long as it does: bounded, so no client can grow them.
MAX_PREFERENCE_KEYS = 64
MAX_PREFERENCE_BYTES = 16 * 1024

# How the core asks a transport to end a session's connection (idle, shutdown).
SessionCloser = Callable[[int, str], Awaitable[None]]


@dataclass(eq=False)
class Session:
    session_id: str
    user_id: str
    preferences: dict[str, Any]
    conversations: ConversationBook
    closer: SessionCloser | None = None
    state: SessionState = SessionState.CONNECTING
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    active_requests: set[str] = field(default_factory=set)

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def duration(self) -> float:
        return time.time() - self.created_at

    def request_started(self, request_id: str) -> None:
        self.active_requests.add(request_id)
        self.state = SessionState.PROCESSING
        self.touch()

    def request_ended(self, request_id: str) -> None:
        self.active_requests.discard(request_id)
        if not self.active_requests and self.state is SessionState.PROCESSING:
            self.state = SessionState.IDLE
        self.touch()

    def update_preferences(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge `changes` in; refused whole if the result would pass the bounds."""
        merged = {**self.preferences, **changes}
        if len(merged) > MAX_PREFERENCE_KEYS or len(encode_json(merged)) > MAX_PREFERENCE_BYTES:
            raise InvalidMessage(
                f"preferences: at most {MAX_PREFERENCE_KEYS} keys and "
                f"{MAX_PREFERENCE_BYTES} bytes of JSON in all"
            )
        self.preferences = merged
        self.touch()
        return dict(merged)

    def describe(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "state": self.state.value,
            "duration": self.duration,
            "active_requests": len(self.active_requests),
            "preferences": dict(self.preferences),
        }


class SessionRegistry:
    def __init__(self, conversation_max_tokens: int = 4096) -> None:
        self._conversation_max_tokens = conversation_max_tokens
        self._sessions: dict[str, Session] = {}
        self._by_user: dict[str, set[str]] = {}
        self.total_opened = 0

    def open(
        self, user_id: str, preferences: dict[str, Any], closer: SessionCloser | None = None
    ) -> Session:
        session = Session(
            session_id=str(uuid.uuid4()),
            user_id=user_id,
            preferences=dict(preferences),
            conversations=ConversationBook(self._conversation_max_tokens),
            closer=closer,
        )
        self._sessions[session.session_id] = session
        self._by_user.setdefault(user_id, set()).add(session.session_id)
        self.total_opened += 1
        return session

    def remove(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return None
        session.state = SessionState.DISCONNECTED
        ids = self._by_user.get(session.user_id)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del self._by_user[session.user_id]
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def of_user(self, user_id: str) -> list[Session]:
        return [self._sessions[sid] for sid in self._by_user.get(user_id, ())]

    def idle_since(self, threshold_seconds: float) -> list[Session]:
        """Sessions with nothing running and no activity for `threshold_seconds`."""
        cutoff = time.monotonic() - threshold_seconds
        return [
            s for s in self._sessions.values() if s.last_activity < cutoff and not s.active_requests
        ]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def user_count(self) -> int:
        return len(self._by_user)
