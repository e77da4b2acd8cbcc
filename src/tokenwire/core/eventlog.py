"""The per-request append-only event log, the one place a request's events go.

The orchestrator appends; transports subscribe and receive records, replayed
from any sequence number still held and then live. A record is encoded once
and the same frame goes to every subscriber. The log is bounded in bytes: past
`max_bytes` it drops its oldest records, and a subscriber that needs one of
those is told so (`NotRecovered`).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from tokenwire.protocol.errors import TokenwireError
from tokenwire.protocol.events import EventType, encode_event


class NotRecovered(TokenwireError):
    error_type = "not_recovered"


class Record(NamedTuple):
    """One event of a request as delivered: made per delivery, not kept."""

    seq: int
    event_type: EventType
    frame: str


class Subscriber(Protocol):
    def deliver(self, record: Record) -> None:
        """Take one record; must not block (buffer it and send it from elsewhere)."""


class EventLog:
    def __init__(
        self,
        request_id: str,
        session_id: str | None,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request_id = request_id
        self.session_id = session_id
        self._max_bytes = max_bytes
        self._clock = clock
        # Held as frames and event types side by side, not as records: a retained log
        # of strings and shared enum members is two containers to the garbage
        # collector, where one record object per event made full collections crawl.
        self._frames: deque[str] = deque()
        self._types: deque[EventType] = deque()
        self._first_seq = 1
        self._bytes = 0
        self._next_seq = 1
        self._subscribers: list[Subscriber] = []
        self.finished = False

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def held_bytes(self) -> int:
        return self._bytes

    @property
    def first_held_seq(self) -> int:
        return self._first_seq

    def append(self, event_type: EventType, data: dict[str, Any]) -> Record:
        if self.finished:
            raise RuntimeError(f"log of {self.request_id} is finished; nothing may follow")
        seq = self._next_seq
        frame = encode_event(event_type, data, self._clock(), self.session_id, self.request_id, seq)
        self._next_seq += 1
        self._frames.append(frame)
        self._types.append(event_type)
        self._bytes += len(frame)
        while self._bytes > self._max_bytes and len(self._frames) > 1:
            self._bytes -= len(self._frames.popleft())
            self._types.popleft()
            self._first_seq += 1
        if event_type is EventType.STREAM_END:
            self.finished = True
        record = Record(seq, event_type, frame)
        for subscriber in self._subscribers:
            subscriber.deliver(record)
        if self.finished:
            self._subscribers.clear()
        return record

    def subscribe(self, subscriber: Subscriber, after_seq: int = 0) -> None:
        """Replay the records after `after_seq`, then deliver new ones as they come."""
        if after_seq + 1 < self._first_seq:
            raise NotRecovered(
                f"events after seq {after_seq} of request {self.request_id} are no longer held"
            )
        skip = max(0, after_seq + 1 - self._first_seq)
        held = zip(self._types, self._frames, strict=True)
        for offset, (event_type, frame) in enumerate(itertools.islice(held, skip, None)):
            subscriber.deliver(Record(self._first_seq + skip + offset, event_type, frame))
        if not self.finished:
            self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


class LogStore(Protocol):
    """Where logs live while their request runs and for a while after (a backend)."""

    def create(self, request_id: str, session_id: str | None) -> EventLog:
        """A new log; raises `InvalidRequest` if the id is taken."""

    def get(self, request_id: str) -> EventLog | None: ...

    def finished(self, log: EventLog) -> None:
        """The request ended: keep its log for the retention time, then drop it."""

    def close(self) -> None: ...
