"""Compact hydration without sockets: what a client that reloads mid-answer receives
(CONTRACT "Disconnects, cancel and resume", `"compact": true`)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.hydration import compacted
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import NotRecovered
from tokenwire.protocol.events import TEXT_EVENTS, EventType


def answer_log(pieces: list[str], *, tokens: bool, progress_every: int = 2) -> EventLog:
    """A running request's log, shaped as the orchestrator writes it: opening events,
    then text (tokens indexed from 0, or chunks numbered from 1), progress every few."""
    log = EventLog(RequestKey("ada", "r1"), "s", 1 << 20)
    log.append(EventType.STREAM_START, {"request_id": "r1"})
    log.append(EventType.TYPING_INDICATOR, {"is_typing": True})
    log.append(EventType.METADATA, {"recommended_provider": "simulated"})
    for piece in pieces:
        add_text(log, piece, tokens=tokens, progress_every=progress_every)
    return log


def add_text(log: EventLog, piece: str, *, tokens: bool, progress_every: int = 2) -> None:
    held = [r.data for r in log.records() if r.event_type in TEXT_EVENTS]
    if tokens:
        log.append(EventType.TOKEN, {"token": piece, "index": len(held)})
    else:
        length = sum(len(d["chunk"]) for d in held) + len(piece)
        log.append(
            EventType.CHUNK,
            {"chunk": piece, "chunk_number": len(held) + 1, "accumulated_length": length},
        )
    sent = len(held) + 1
    if progress_every and sent % progress_every == 0:
        log.append(EventType.PROGRESS, {"progress": 10.0 * sent, "chunks_sent": sent})


def seq_of(log: EventLog, event_type: EventType, data: dict[str, Any]) -> int:
    (seq,) = [r.seq for r in log.records() if r.event_type is event_type and r.data == data]
    return seq


def kinds(records: list[Record]) -> list[str]:
    return [r.event_type.value for r in records]


def text_after(log: EventLog, after_seq: int) -> str:
    pieces = [r.data for r in log.records(after_seq) if r.event_type in TEXT_EVENTS]
    return "".join(d.get("chunk", d.get("token", "")) for d in pieces)


def test_the_text_so_far_is_one_chunk_with_the_seq_of_the_last_text_event() -> None:
    log = answer_log(["Once", " upon", " a", " time"], tokens=True)
    last_token = seq_of(log, EventType.TOKEN, {"token": " time", "index": 3})
    replay = compacted(log, 0)
    (merged,) = [r for r in replay if r.event_type in TEXT_EVENTS]
    assert merged.event_type is EventType.CHUNK
    assert merged.seq == last_token
    assert merged.data == {
        "chunk": "Once upon a time",
        "chunk_number": 4,
        "accumulated_length": None,
        "compacted": 4,
    }


def test_only_the_latest_progress_is_sent_and_everything_in_seq_order() -> None:
    log = answer_log(["a", "b", "c", "d", "e"], tokens=True, progress_every=2)
    replay = compacted(log, 0)
    assert kinds(replay) == [
        "stream_start",
        "typing_indicator",
        "metadata",
        "progress",
        "chunk",
    ]
    progress = replay[3]
    assert progress.data == {"progress": 40.0, "chunks_sent": 4}
    assert progress.seq == seq_of(log, EventType.PROGRESS, progress.data)
    assert [r.seq for r in replay] == sorted(r.seq for r in replay)


def test_a_resume_after_some_text_merges_only_the_text_after_it() -> None:
    log = answer_log(["a", "b", "c", "d"], tokens=True, progress_every=0)
    had = seq_of(log, EventType.TOKEN, {"token": "b", "index": 1})
    (merged,) = compacted(log, had)
    assert merged.data == {
        "chunk": "cd",
        "chunk_number": 4,
        "accumulated_length": None,
        "compacted": 2,
    }


def test_merged_chunks_keep_the_last_chunk_s_number_and_the_length_so_far() -> None:
    log = answer_log(["Hel", "lo ", "world"], tokens=False, progress_every=0)
    first = seq_of(
        log, EventType.CHUNK, {"chunk": "Hel", "chunk_number": 1, "accumulated_length": 3}
    )
    (whole,) = [r for r in compacted(log, 0) if r.event_type is EventType.CHUNK]
    assert whole.data == {
        "chunk": "Hello world",
        "chunk_number": 3,
        "accumulated_length": 11,
        "compacted": 3,
    }
    (rest,) = compacted(log, first)
    assert rest.data == {
        "chunk": "lo world",
        "chunk_number": 3,
        "accumulated_length": 11,
        "compacted": 2,
    }


def test_a_chunk_that_follows_a_merged_one_continues_its_numbering() -> None:
    log = answer_log(["Hel", "lo "], tokens=False, progress_every=0)
    (merged,) = [r for r in compacted(log, 0) if r.event_type is EventType.CHUNK]
    add_text(log, "world", tokens=False, progress_every=0)
    (live,) = [r.data for r in log.records(merged.seq)]
    assert live["chunk_number"] == merged.data["chunk_number"] + 1
    assert live["accumulated_length"] == merged.data["accumulated_length"] + len("world")


@pytest.mark.parametrize("tokens", [True, False])
def test_a_client_that_goes_on_from_the_highest_seq_it_got_misses_and_repeats_nothing(
    tokens: bool,
) -> None:
    pieces = [f" w{n}" for n in range(12)]
    log = answer_log(pieces[:7], tokens=tokens, progress_every=3)
    for after in range(log.last_seq + 1):
        replay = compacted(log, after)
        reached = max((r.seq for r in replay), default=after)
        got = "".join(r.data["chunk"] for r in replay if r.event_type is EventType.CHUNK)
        assert got == text_after(log, after)
        # The answer goes on; the client resumes from the highest seq it received.
        grown = answer_log(pieces, tokens=tokens, progress_every=3)
        assert got + text_after(grown, reached) == text_after(grown, after)


def test_events_other_than_text_and_progress_keep_their_own_records() -> None:
    log = answer_log(["a", "b"], tokens=True, progress_every=0)
    log.append(EventType.METADATA, {"fallback_from": "x"})
    add_text(log, "c", tokens=True, progress_every=0)
    replay = compacted(log, 0)
    assert kinds(replay) == ["stream_start", "typing_indicator", "metadata", "metadata", "chunk"]
    assert replay[3].data == {"fallback_from": "x"}
    assert replay[-1].data["chunk"] == "abc"


def test_a_resume_that_needs_a_dropped_event_is_not_recovered() -> None:
    log = EventLog(RequestKey("ada", "r1"), None, max_bytes=600)
    for n in range(20):
        log.append(EventType.TOKEN, {"token": f" w{n}", "index": n})
    assert log.first_held_seq > 1
    with pytest.raises(NotRecovered):
        compacted(log, 0)
    replay = compacted(log, log.first_held_seq - 1)
    assert replay[-1].seq == log.last_seq
