"""The per-request event log: sequence numbers, replay, fan-out, bounds, encodings."""

import json

import pytest

from tests.support.recording import Inbox
from tokenwire.core.eventlog import ENVELOPE_BYTES, EventLog, Record
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import NotRecovered
from tokenwire.protocol.events import EventType, encode_event
from tokenwire.transports.frames import ws_frame

KEY = RequestKey("ada", "req-1")


def make_log(max_bytes: int = 1 << 20) -> EventLog:
    return EventLog(KEY, "sess-1", max_bytes, clock=lambda: 1764471234.125)


def test_appended_events_are_numbered_from_one_and_hold_their_data() -> None:
    log = make_log()
    first = log.append(EventType.STREAM_START, {"request_id": "req-1"})
    second = log.append(EventType.CHUNK, {"chunk": "hi"})
    assert (first.seq, second.seq) == (1, 2)
    assert (second.event_type, second.data, second.timestamp) == (
        EventType.CHUNK,
        {"chunk": "hi"},
        1764471234.125,
    )
    assert second.key == KEY


def test_the_websocket_frame_is_the_v1_envelope_with_the_origin_session() -> None:
    record = make_log().append(EventType.CHUNK, {"chunk": "hé", "n": 1})
    assert json.loads(ws_frame(record)) == {
        "event_type": "chunk",
        "data": {"chunk": "hé", "n": 1},
        "timestamp": 1764471234.125,
        "request_id": "req-1",
        "session_id": "sess-1",
        "metadata": {},
        "seq": 1,
    }


@pytest.mark.parametrize("timestamp", [1764471234.125, 1764471234.0, 1e-7, 1.5e16, 17.0])
def test_the_fast_frame_is_byte_identical_to_the_generic_encoding(timestamp: float) -> None:
    log = EventLog(KEY, None, 1 << 20, clock=lambda: timestamp)
    data = {"chunk": 'quote " and \\ and \u2028 and 😀', "chunk_number": 3}
    record = log.append(EventType.CHUNK, data)
    generic = encode_event(EventType.CHUNK, data, timestamp, None, "req-1", 1)
    assert ws_frame(record) == generic


def test_one_live_event_is_encoded_once_for_all_its_subscribers() -> None:
    calls: list[int] = []

    def encoder(record: Record) -> str:
        calls.append(record.seq)
        return f"frame {record.seq}"

    class Encoding(Inbox):
        def deliver(self, record: Record) -> None:
            super().deliver(record)
            self.texts = [*getattr(self, "texts", []), record.encoded(encoder)]

    log = make_log()
    inboxes = [Encoding() for _ in range(3)]
    for inbox in inboxes:
        log.subscribe(inbox)
    log.append(EventType.CHUNK, {"chunk": "x"})
    assert calls == [1]
    assert all(inbox.texts == ["frame 1"] for inbox in inboxes)


def test_subscriber_gets_the_past_after_its_seq_then_live_events() -> None:
    log = make_log()
    for n in range(3):
        log.append(EventType.CHUNK, {"n": n})
    inbox = Inbox()
    log.subscribe(inbox, after_seq=1)
    log.append(EventType.CHUNK, {"n": 3})
    assert inbox.seqs == [2, 3, 4]
    assert [d["n"] for d in inbox.of("chunk")] == [1, 2, 3]


def test_replayed_events_keep_their_original_time() -> None:
    now = [100.0]
    log = EventLog(KEY, None, 1 << 20, clock=lambda: now[0])
    log.append(EventType.CHUNK, {})
    now[0] = 200.0
    inbox = Inbox()
    log.subscribe(inbox)
    assert inbox.records[0].timestamp == 100.0


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
    assert log.subscriber_count == 0


def test_log_past_its_byte_bound_drops_oldest_and_says_so_on_resume() -> None:
    log = make_log(max_bytes=2048)
    for n in range(100):
        log.append(EventType.CHUNK, {"chunk": "x" * 50, "n": n})
    assert log.first_held_seq > 1
    held = list(log.records(log.first_held_seq - 1))
    assert sum(len(r.data_json) + ENVELOPE_BYTES for r in held) == log.held_bytes <= 2048
    assert [r.seq for r in held] == list(range(log.first_held_seq, 101))
    with pytest.raises(NotRecovered):
        log.subscribe(Inbox(), after_seq=0)
    inbox = Inbox()
    log.subscribe(inbox, after_seq=log.first_held_seq - 1)
    assert inbox.seqs[-1] == 100


def test_the_newest_event_stays_replayable_even_when_it_alone_exceeds_the_bound() -> None:
    log = make_log(max_bytes=1024)
    for n in range(3):
        log.append(EventType.CHUNK, {"chunk": "x", "n": n})
    big = log.append(EventType.CHUNK, {"chunk": "y" * 4096})
    assert log.first_held_seq == big.seq
    inbox = Inbox()
    log.subscribe(inbox, after_seq=big.seq - 1)
    assert inbox.seqs == [big.seq]
    with pytest.raises(NotRecovered):
        log.subscribe(Inbox(), after_seq=big.seq - 2)
    after = log.append(EventType.CHUNK, {"chunk": "z"})
    assert log.first_held_seq == after.seq  # then it is the oldest, and goes
    assert log.held_bytes == len(after.data_json) + ENVELOPE_BYTES


def test_unsubscribed_inbox_gets_nothing_more() -> None:
    log = make_log()
    inbox = Inbox()
    log.subscribe(inbox)
    log.unsubscribe(inbox)
    log.append(EventType.CHUNK, {})
    assert inbox.records == []


# -- a replica behind what its subscriber saw (found by bench/chaos.py) -----------------


def replica_holding(last_seq: int) -> EventLog:
    log = EventLog(KEY, "sess-1", 1 << 20, replica=True)
    for seq in range(1, last_seq + 1):
        log.ingest(seq, EventType.TOKEN, 1.0, json.dumps({"token": f"t{seq}"}))
    return log


def test_a_replica_sends_none_of_what_a_subscriber_holds_when_it_catches_up() -> None:
    # A client saw seq 1-5 on the owner and resumed elsewhere, where the copy holds 1-4.
    log, inbox = replica_holding(4), Inbox()
    log.subscribe(inbox, after_seq=5)
    for seq in (5, 6):
        log.ingest(seq, EventType.TOKEN, 1.0, json.dumps({"token": f"t{seq}"}))
    log.ingest(7, EventType.STREAM_END, 1.0, json.dumps({"status": "completed"}))

    assert inbox.seqs == [6, 7]
    assert inbox.errors == []


def test_a_replica_that_ends_below_what_a_subscriber_saw_says_it_cannot_serve_it() -> None:
    # The owner died after sending seq 5 and 6 that never reached the shared store: the
    # copy ends at 6 with the interruption, which is not what the client holds as 6.
    log, inbox = replica_holding(4), Inbox()
    log.subscribe(inbox, after_seq=6)
    log.ingest(5, EventType.ERROR, 1.0, json.dumps({"error_type": "stream_interrupted"}))
    log.ingest(6, EventType.STREAM_END, 1.0, json.dumps({"status": "error"}))

    assert inbox.seqs == []
    assert [type(e) for e in inbox.errors] == [NotRecovered]


def test_a_log_of_this_node_delivers_live_events_whatever_seq_a_subscriber_claims() -> None:
    log, inbox = make_log(), Inbox()
    log.append(EventType.TOKEN, {"token": "a"})
    log.subscribe(inbox, after_seq=10)
    log.append(EventType.TOKEN, {"token": "b"})

    assert inbox.seqs == [2]


@pytest.mark.parametrize("max_bytes", [1 << 20, 40 * (ENVELOPE_BYTES + 20)])
def test_records_after_any_seq_are_exactly_the_held_ones_after_it(max_bytes: int) -> None:
    """From the front or (a short tail) from the end: the same records either way."""
    log = make_log(max_bytes)
    for i in range(100):
        log.append(EventType.TOKEN, {"token": f"t{i:03}"})
    first = log.first_held_seq
    everything = [(r.seq, r.data["token"]) for r in log.records(first - 1)]
    assert everything == [(seq, f"t{seq - 1:03}") for seq in range(first, 101)]
    for after in range(first - 1, 103):
        got = [(r.seq, r.data["token"]) for r in log.records(after)]
        assert got == [e for e in everything if e[0] > after], after
