"""Followers on this node of requests that run on another node.

A request runs on its owner; a follower here (a session, an SSE response) receives
it through a copy of its log that the store keeps in step. The owner counts such
followers for the resume grace through the `Cluster`; this node tells the cluster
who follows, who left and how, and stops counting them when the copy ends (its
`stream_end`, or it can no longer be followed).
"""

from __future__ import annotations

from collections.abc import Callable

from tokenwire.core.cluster import Cluster
from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.sessions import Session, SessionRegistry
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import TokenwireError
from tokenwire.protocol.events import EventType


class _EndWatch:
    """A subscriber that only waits for its log's end."""

    __slots__ = ("_on_end",)

    def __init__(self, on_end: Callable[[], None]) -> None:
        self._on_end = on_end

    def deliver(self, record: Record) -> None:
        if record.event_type is EventType.STREAM_END:
            self._on_end()

    def lost(self, error: TokenwireError) -> None:
        self._on_end()


class _Followed:
    __slots__ = ("followers", "log", "watch")

    def __init__(self, log: EventLog, watch: _EndWatch, followers: set[str]) -> None:
        self.log = log
        self.watch = watch
        self.followers = followers


class RemoteFollows:
    def __init__(self, cluster: Cluster, sessions: SessionRegistry, grace_seconds: float) -> None:
        self._cluster = cluster
        self._sessions = sessions
        self._grace = grace_seconds
        self._followed: dict[RequestKey, _Followed] = {}

    def follow(self, key: RequestKey, log: EventLog, follower: Session | str) -> None:
        """`follower` here receives `key` through `log` (not finished)."""
        if isinstance(follower, Session):
            if self._sessions.get(follower.session_id) is not follower:
                return  # the session is already gone
            follower_id = follower.session_id
        else:
            follower_id = follower
        followed = self._followed.get(key)
        if followed is None or followed.log is not log:
            # A new copy of the log (the store made another): watch that one's end.
            if followed is not None:
                followed.log.unsubscribe(followed.watch)
            followers = followed.followers if followed is not None else set()
            watch = _EndWatch(lambda: self._ended(key))
            followed = self._followed[key] = _Followed(log, watch, followers)
            log.attach(watch, ())
        followed.followers.add(follower_id)
        if isinstance(follower, Session):
            follower.follow(key.request_id)
        self._cluster.follow(key, follower_id)

    def leave(self, key: RequestKey, follower: str, lost: bool) -> None:
        """`follower` left: on purpose, or `lost` (it keeps the resume grace there)."""
        followed = self._followed.get(key)
        if followed is None or follower not in followed.followers:
            return
        followed.followers.discard(follower)
        self._cluster.unfollow(key, follower, lost and self._grace > 0)
        if not followed.followers:
            followed.log.unsubscribe(followed.watch)
            del self._followed[key]

    def _ended(self, key: RequestKey) -> None:
        followed = self._followed.pop(key, None)
        if followed is None:
            return
        for follower in followed.followers:
            session = self._sessions.get(follower)
            if session is not None:
                session.unfollow(key.request_id)
            # Not for the grace: the request ended, or this copy of it can go no further
            # (then the owner must not wait for followers it no longer serves).
            self._cluster.unfollow(key, follower, False)

    def __len__(self) -> int:
        return len(self._followed)
