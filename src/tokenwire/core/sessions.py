"""Sessions: one per client connection, indexed by id and by user.

A session follows requests; it does not own them. Requests belong to their
user (the gateway keeps them), so that a stream can outlive the connection
that started it and be followed from another one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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
    closer: SessionCloser | None = None
    state: SessionState = SessionState.CONNECTING
    created_at: float = field(default_factory=time.time)
    last_activity: float = field(default_factory=time.monotonic)
    following: set[str] = field(default_factory=set)
    """Ids of the running requests of this session's user that it receives."""

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    @property
    def duration(self) -> float:
        return time.time() - self.created_at

    def follow(self, request_id: str) -> None:
        self.following.add(request_id)
        if self.state in (SessionState.CONNECTED, SessionState.IDLE):
            self.state = SessionState.PROCESSING
        self.touch()

    def unfollow(self, request_id: str) -> None:
        self.following.discard(request_id)
        if not self.following and self.state is SessionState.PROCESSING:
            self.state = SessionState.IDLE
        self.touch()

    def update_preferences(
        self, changes: dict[str, Any], max_bytes: int = MAX_PREFERENCE_BYTES
    ) -> dict[str, Any]:
        """Merge `changes` in; refused whole if the result would pass the bounds."""
        merged = {**self.preferences, **changes}
        # Bytes, not characters: multibyte text would otherwise hold four times the bound.
        size = len(encode_json(merged).encode())
        if len(merged) > MAX_PREFERENCE_KEYS or size > max_bytes:
            raise InvalidMessage(
                f"preferences: at most {MAX_PREFERENCE_KEYS} keys and "
                f"{max_bytes} bytes of JSON in all"
            )
        self.preferences = merged
        self.touch()
        return dict(merged)

    def describe(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "state": self.state.value,
            "duration": self.duration,
            "active_requests": len(self.following),
            "preferences": dict(self.preferences),
        }


class SessionRegistry:
    def __init__(self) -> None:
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
        return [s for s in self._sessions.values() if s.last_activity < cutoff and not s.following]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def user_count(self) -> int:
        return len(self._by_user)
