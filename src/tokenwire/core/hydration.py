"""Compact hydration: what a client that reloads mid-answer receives instead of a replay.

The text events after `last_seq` that the log still holds arrive as one `chunk`
event, whose `seq` is that of the last text event it stands for and whose
`data.compacted` says how many it stands for; the other held events keep their
own records, except that progress is given only as its latest; all in `seq`
order. `seq` only increases, so the client's `last_seq` stays valid for the
live events that follow.

Tool-call events are never compacted; text on either side of one is merged
separately (text, then calls, then text merges into two chunks), so that the
merged events keep the order in which the answer was written.
"""

from __future__ import annotations

from tokenwire.core.eventlog import EventLog, Record
from tokenwire.protocol.events import TEXT_EVENTS, TOOL_CALL_EVENTS, EventType, encode_json


def compacted(log: EventLog, after_seq: int) -> list[Record]:
    """The held records after `after_seq`, text merged; `NotRecovered` if some were dropped."""
    records = list(log.records(after_seq))
    progress = [r.seq for r in records if r.event_type is EventType.PROGRESS]
    latest_progress = progress[-1] if progress else None
    merged = {m.seq: m for m in (_merge(log, run) for run in _text_runs(records))}
    out: list[Record] = []
    for record in records:
        if record.event_type in TEXT_EVENTS:
            if record.seq in merged:
                out.append(merged[record.seq])
            continue
        if record.event_type is EventType.PROGRESS and record.seq != latest_progress:
            continue
        out.append(record)
    return out


def _text_runs(records: list[Record]) -> list[list[Record]]:
    """The text records, in runs that tool-call events separate."""
    runs: list[list[Record]] = [[]]
    for record in records:
        if record.event_type in TEXT_EVENTS:
            runs[-1].append(record)
        elif record.event_type in TOOL_CALL_EVENTS and runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _merge(log: EventLog, texts: list[Record]) -> Record:
    pieces = [r.data for r in texts]
    text = "".join(p["chunk"] if "chunk" in p else p["token"] for p in pieces)
    last = pieces[-1]
    if "chunk" in last:
        number = last["chunk_number"]
        accumulated = last["accumulated_length"]
    else:  # tokens count from 0; the text before `after_seq` is the client's already
        number = last["index"] + 1
        accumulated = None
    data = {
        "chunk": text,
        "chunk_number": number,
        "accumulated_length": accumulated,
        "compacted": len(texts),
    }
    final = texts[-1]
    return Record(log, final.seq, EventType.CHUNK, final.timestamp, encode_json(data))
