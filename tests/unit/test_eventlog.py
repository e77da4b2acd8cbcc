"""The per-request event log: sequence numbers, replay, fan-out, bounds."""

import json

import pytest

from tokenwire.core.eventlog import EventLog, NotRecovered, Record
from tokenwire.protocol.events import EventType


class Inbox:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def deliver(self, record: Record) -> None:
        self.records.append(record)

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.records]


def make_log(max_bytes: int = 1 << 20) -> EventLog:
    return EventLog("req-1", "sess-1", max_bytes, clock=lambda: 100.0)


def test_appended_events_are_numbered_from_one_and_encoded_once() -> None:
    log = make_log()
    first = log.append(EventType.STREAM_START, {"request_id": "req-1"})
    second = log.append(EventType.CHUNK, {"chunk": "hi"})
    assert (first.seq, second.seq) == (1, 2)
    frame = json.loads(second.frame)
    assert frame == {
        "event_type": "chunk",
        "data": {"chunk": "hi"},
        "timestamp": 100.0,
        "request_id": "req-1",
        "session_id": "sess-1",
        "metadata": {},
        "seq": 2,
    }


def test_subscriber_gets_the_past_after_its_seq_then_live_events() -> None:
    log = make_log()
    for n in range(3):
        log.append(EventType.CHUNK, {"n": n})
    inbox = Inbox()
    log.subscribe(inbox, after_seq=1)
    log.append(EventType.CHUNK, {"n": 3})
    assert inbox.seqs == [2, 3, 4]


def test_nothing_may_follow_stream_end_and_subscribers_are_released() -> None:
    log = make_log()
    inbox = Inbox()
    log.subscribe(inbox)
    log.append(EventType.STREAM_END, {"status": "completed"})
    assert log.finished
    assert log.subscriber_count == 0
    with pytest.raises(RuntimeError):
        log.append(EventType.CHUNK, {})


def test_a_finished_log_replays_to_late_subscribers() -> None:
    log = make_log()
    log.append(EventType.CHUNK, {})
    log.append(EventType.STREAM_END, {})
    inbox = Inbox()
    log.subscribe(inbox)
    assert inbox.seqs == [1, 2]


def test_log_past_its_byte_bound_drops_oldest_and_says_so_on_resume() -> None:
    log = make_log(max_bytes=2048)
    for n in range(100):
        log.append(EventType.CHUNK, {"chunk": "x" * 50, "n": n})
    assert log.first_held_seq > 1
    assert sum(len(r.frame) for r in _held(log)) <= 2048
    with pytest.raises(NotRecovered):
        log.subscribe(Inbox(), after_seq=0)
    inbox = Inbox()
    log.subscribe(inbox, after_seq=log.first_held_seq - 1)
    assert inbox.seqs[-1] == 100


def test_unsubscribed_inbox_gets_nothing_more() -> None:
    log = make_log()
    inbox = Inbox()
    log.subscribe(inbox)
    log.unsubscribe(inbox)
    log.append(EventType.CHUNK, {})
    assert inbox.records == []


def _held(log: EventLog) -> list[Record]:
    inbox = Inbox()
    log.subscribe(inbox, after_seq=log.first_held_seq - 1)
    log.unsubscribe(inbox)
    return inbox.records
