"""The per-request append-only event log, the one place a request's events go.

The orchestrator appends; transports subscribe and receive records, replayed
from any sequence number still held and then live. The log holds events
(type, data, seq, time), not any transport's frames: each transport encodes
its own, and a record caches the last encoding asked of it, so that one live
event is encoded once for all the connections that follow it. The log is
bounded in bytes: past `max_bytes` it drops its oldest events, and a
subscriber that needs one of those is told so (`NotRecovered`).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson
from orjson import JSONEncodeError, dumps

from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import NotRecovered, TokenwireError
from tokenwire.protocol.events import EventType, encode_json

# What an event's envelope adds to its data, roughly, when counting a log's bytes.
ENVELOPE_BYTES = 128


class Record:
    """One event of a request as delivered: made per delivery, not kept."""

    __slots__ = ("_encoder", "_text", "data_json", "event_type", "log", "seq", "timestamp")

    def __init__(
        self, log: EventLog, seq: int, event_type: EventType, timestamp: float, data_json: str
    ) -> None:
        self.log = log
        self.seq = seq
        self.event_type = event_type
        self.timestamp = timestamp
        self.data_json = data_json
        self._encoder: Callable[[Record], str] | None = None
        self._text = ""

    @property
    def key(self) -> RequestKey:
        return self.log.key

    @property
    def origin(self) -> str | None:
        return self.log.origin

    @property
    def data(self) -> dict[str, Any]:
        decoded: dict[str, Any] = orjson.loads(self.data_json)
        return decoded

    def encoded(self, encoder: Callable[[Record], str]) -> str:
        """`encoder(self)`, computed once for every subscriber that asks with the same one."""
        if self._encoder is not encoder:
            self._text = encoder(self)
            self._encoder = encoder
        return self._text


class Subscriber(Protocol):
    def deliver(self, record: Record) -> None:
        """Take one record; must not block (buffer it and send it from elsewhere)."""

    def lost(self, error: TokenwireError) -> None:
        """The log can no longer be followed here (a replica of a log kept on another node
        found events it cannot get): tell the client `error` for the request and stop
        following it. No record follows; a resume finds what can still be served."""


class LogSink(Protocol):
    """Where an owner's log is mirrored (a shared store): told of every change, it reads
    the log itself, later and in batches (`records` after what it has, `annotations`)."""

    def changed(self, log: EventLog) -> None:
        """`log` gained records or annotations; must not block."""


class EventLog:
    def __init__(
        self,
        key: RequestKey,
        origin: str | None,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
        conversation_id: str | None = None,
        *,
        sink: LogSink | None = None,
        first_seq: int = 1,
        created_at: float | None = None,
        replica: bool = False,
    ) -> None:
        self.key = key
        self.origin = origin
        self.conversation_id = conversation_id
        self._max_bytes = max_bytes
        self._clock = clock
        self.sink = sink
        """Told of every change (the owner's mirror to a shared store); None in memory."""
        self.created_at = clock() if created_at is None else created_at
        self.status: str | None = None
        """The `stream_end` status once there is one; None while the request runs."""
        # Held as plain values side by side, not as objects: strings, floats and shared
        # enum members are nothing to the garbage collector, where one object per
        # retained event made full collections crawl.
        self._types: deque[EventType] = deque()
        self._times: deque[float] = deque()
        self._data: deque[str] = deque()
        # A replica (a copy of a log another node owns) starts where its store holds it.
        self._first_seq = first_seq
        self._bytes = 0
        self._next_seq = first_seq
        self._subscribers: list[Subscriber] = []
        self.replica = replica
        """A copy of a log another node owns, filled as its store gets the owner's events:
        it may lag behind what a client saw on the owner."""
        # Subscribers (by id) that already hold events this copy has not got yet, with the
        # last seq each holds: those events are not sent to them again when they come.
        self._ahead: dict[int, int] = {}
        self.finished = False
        self.memo: dict[str, str] = {}
        """Per-request constants a transport's encoder keeps (its frame's fixed parts)."""
        self.annotations: dict[str, Any] = {}
        """What a transport notes about its request (a dialect's own parameters), kept
        with the log for as long as it is: JSON values only, so that a store shared
        between nodes can keep them too. Set them with `annotate`, which the sink sees."""

    @property
    def request_id(self) -> str:
        return self.key.request_id

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def held_bytes(self) -> int:
        return self._bytes

    @property
    def first_held_seq(self) -> int:
        return self._first_seq

    def annotate(self, name: str, value: Any) -> None:
        """Note `value` (JSON values only) under `name`, replacing what was there."""
        self.annotations[name] = value
        if self.sink is not None:
            self.sink.changed(self)

    def append(self, event_type: EventType, data: dict[str, Any]) -> Record:
        if self.finished:
            raise RuntimeError(f"log of {self.key.request_id} is finished; nothing may follow")
        try:
            data_json = dumps(data).decode()
        except (JSONEncodeError, TypeError):
            data_json = encode_json(data)  # what orjson refuses (integers past 64 bits)
        record = self.ingest(self._next_seq, event_type, self._clock(), data_json)
        if self.sink is not None:
            self.sink.changed(self)
        return record

    def ingest(self, seq: int, event_type: EventType, timestamp: float, data_json: str) -> Record:
        """Add an event made elsewhere (a replica's, read from the owner's mirror): it
        must be the next one, `last_seq + 1`."""
        if self.finished:
            raise RuntimeError(f"log of {self.key.request_id} is finished; nothing may follow")
        if seq != self._next_seq:
            expected = self._next_seq
            raise ValueError(f"seq {seq} of {self.key.request_id} is not the next, {expected}")
        self._next_seq = seq + 1
        self._types.append(event_type)
        self._times.append(timestamp)
        self._data.append(data_json)
        self._bytes += len(data_json) + ENVELOPE_BYTES
        if self._bytes > self._max_bytes:
            self._drop_oldest()
        record = Record(self, seq, event_type, timestamp, data_json)
        if event_type is EventType.STREAM_END:
            self.finished = True
            self.status = str(orjson.loads(data_json).get("status"))
            subscribers, self._subscribers = self._subscribers, []
        else:
            subscribers = self._subscribers
        if self._ahead:
            self._deliver_past_held(record, subscribers)
        else:
            for subscriber in subscribers:
                subscriber.deliver(record)
        return record

    def _deliver_past_held(self, record: Record, subscribers: list[Subscriber]) -> None:
        for subscriber in subscribers:
            held = self._ahead.get(id(subscriber))
            if held is None:
                subscriber.deliver(record)
            elif record.seq > held:
                del self._ahead[id(subscriber)]
                subscriber.deliver(record)
            elif record.event_type is EventType.STREAM_END:
                # It saw more on the owner than the owner got into the shared store before
                # the request ended (the owner died): what this copy holds is not what it saw.
                del self._ahead[id(subscriber)]
                subscriber.lost(
                    NotRecovered(
                        f"events up to seq {held} of request {self.key.request_id}"
                        " were lost with the node that ran it"
                    )
                )

    def _drop_oldest(self) -> None:
        while self._bytes > self._max_bytes and len(self._data) > 1:
            self._bytes -= len(self._data.popleft()) + ENVELOPE_BYTES
            self._types.popleft()
            self._times.popleft()
            self._first_seq += 1

    def check_held(self, after_seq: int) -> None:
        """Raise `NotRecovered` if an event after `after_seq` was dropped."""
        if after_seq + 1 < self._first_seq:
            raise NotRecovered(
                f"events after seq {after_seq} of request {self.key.request_id} are no longer held"
            )

    def records(self, after_seq: int = 0) -> Iterator[Record]:
        """The held records after `after_seq` (`check_held` first: this is a generator).

        Iterate without awaiting in between: an append would change what is held."""
        self.check_held(after_seq)
        skip = max(0, after_seq + 1 - self._first_seq)
        count = len(self._data) - skip
        held: Iterable[tuple[EventType, float, str]]
        if count < skip:
            # A tail (what a mirror or a live resume asks for): walked from the end, since
            # skipping to it from the front costs the whole log each time.
            held = zip(
                _last(self._types, count),
                _last(self._times, count),
                _last(self._data, count),
                strict=True,
            )
        else:
            held = itertools.islice(
                zip(self._types, self._times, self._data, strict=True), skip, None
            )
        for seq, (event_type, timestamp, data_json) in enumerate(
            held, start=self._first_seq + skip
        ):
            yield Record(self, seq, event_type, timestamp, data_json)

    def subscribe(self, subscriber: Subscriber, after_seq: int = 0) -> None:
        """Replay the records after `after_seq`, then deliver new ones as they come."""
        self.attach(subscriber, self.records(after_seq), after_seq)

    def attach(self, subscriber: Subscriber, replay: Iterable[Record], after_seq: int = 0) -> None:
        """Deliver `replay` (records of this log, in seq order), then new ones as they come.

        Synchronous, so that no event can fall between the replay and the live ones. A
        subscriber attached already (a connection resuming what it follows) is attached
        anew from the replay's point: it gets each record once. `after_seq` is the last
        seq the subscriber holds: a replica behind it sends none of those again."""
        self.unsubscribe(subscriber)
        for record in replay:
            subscriber.deliver(record)
        if not self.finished:
            self._subscribers.append(subscriber)
            if self.replica and after_seq > self.last_seq:
                self._ahead[id(subscriber)] = after_seq

    def fail(self, error: TokenwireError) -> None:
        """This copy of the log cannot go on (see `Subscriber.lost`): every subscriber is
        told and let go; the log takes nothing more."""
        self.finished = True
        subscribers, self._subscribers = self._subscribers, []
        self._ahead.clear()
        for subscriber in subscribers:
            subscriber.lost(error)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._ahead.pop(id(subscriber), None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


def _last(values: deque[Any], count: int) -> list[Any]:
    """The last `count` values, in order (from the right end: a deque's cheap side)."""
    tail = list(itertools.islice(reversed(values), max(count, 0)))
    tail.reverse()
    return tail


class LogStore(Protocol):
    """Where logs live while their request runs and for a while after (a backend).

    Asynchronous, so that a store shared between nodes (Redis) fits behind it;
    appends stay synchronous on the log, which a shared store mirrors.
    """

    async def create(
        self, key: RequestKey, origin: str | None, conversation_id: str | None = None
    ) -> EventLog:
        """A new log; raises `InvalidRequest` if the key is taken (running or retained)."""

    async def get(self, key: RequestKey) -> EventLog | None:
        """The log, while its request runs or its retention lasts; else None."""

    async def finished(self, log: EventLog) -> None:
        """The request ended: keep its log for the retention time, then drop it."""

    async def discard(self, key: RequestKey) -> None:
        """Forget at once the log of a request that never started."""

    async def of_user(self, user_id: str) -> list[EventLog]:
        """The user's logs, running and retained, newest first."""

    async def close(self) -> None: ...
