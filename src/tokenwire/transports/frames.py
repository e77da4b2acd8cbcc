"""How a request's events look on the wire, per transport (encoded once per live event).

The WebSocket sends the v1 envelope as a text frame; SSE sends the same envelope
as one event (`id:` the seq, `event:` the event type, `data:` the envelope).
"""

from __future__ import annotations

from orjson import dumps

from tokenwire.core.eventlog import Record
from tokenwire.protocol.events import envelope_ids


def ws_frame(record: Record) -> str:
    """A request's event as the v1 envelope: `encode_event`'s bytes, built around the
    event's already encoded data (the per-token path: one function, no dict)."""
    memo = record.log.memo
    ids = memo.get("ws")
    if ids is None:
        log = record.log
        ids = memo["ws"] = envelope_ids(log.key.request_id, log.origin)
    # orjson, not repr, for the float: `encode_event`'s spelling, and 3x faster.
    stamp = dumps(record.timestamp).decode()
    return (
        f'{{"event_type":"{record.event_type.value}","data":{record.data_json},'
        f'"timestamp":{stamp},{ids},"metadata":{{}},"seq":{record.seq}}}'
    )


def sse_event(record: Record) -> str:
    """A request's event as one Server-Sent Event (the envelope has no newline in it)."""
    return f"id: {record.seq}\nevent: {record.event_type.value}\ndata: {ws_frame(record)}\n\n"
