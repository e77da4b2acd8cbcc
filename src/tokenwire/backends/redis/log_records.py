"""A request's log as Redis holds it, read back into the core's terms (no I/O).

What Redis answers (a meta hash, stream entries) becomes a `LogMeta` and a
replica `EventLog`; what an owner's log holds becomes the flat arguments of a
script. The stream entry of seq N has id `0-N` and the fields seq, type, ts, data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenwire.backends.redis.log_scripts import text
from tokenwire.core.eventlog import EventLog, Record
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import NotRecovered
from tokenwire.protocol.events import EventType

Entry = tuple[int, EventType, float, str]
"""One stored event: seq, type, timestamp, data JSON."""


@dataclass(frozen=True)
class LogMeta:
    epoch: str
    owner: str
    origin: str | None
    conversation_id: str | None
    created_at: float
    status: str | None
    """The `stream_end` status; None while the request runs."""
    first_seq: int
    last_seq: int
    annotations: dict[str, Any]
    ends_at: float | None
    discarded: bool

    def gone(self, now: float) -> bool:
        """Forgotten, or kept past its retention: `unknown_request` from now on."""
        return self.discarded or (self.ends_at is not None and now >= self.ends_at)


def meta_of(reply: Mapping[Any, Any]) -> LogMeta | None:
    """The meta hash as HGETALL answers it; None if there is none."""
    fields = {text(name): text(value) for name, value in reply.items()}
    if not fields.get("epoch"):
        return None
    ends_at = fields.get("ends_at", "")
    return LogMeta(
        epoch=fields["epoch"],
        owner=fields.get("owner", ""),
        origin=json.loads(fields.get("origin") or "null"),
        conversation_id=json.loads(fields.get("conversation_id") or "null"),
        created_at=float(fields.get("created_at") or 0.0),
        status=fields.get("status") or None,
        first_seq=int(fields.get("first_seq") or 1),
        last_seq=int(fields.get("last_seq") or 0),
        annotations=json.loads(fields.get("annotations") or "{}"),
        ends_at=float(ends_at) if ends_at else None,
        discarded=fields.get("discarded") == "1",
    )


def entry_of(entry_id: Any, fields: Mapping[Any, Any]) -> Entry:
    """One stream entry as XRANGE or XREAD answers it."""
    values = {text(name): text(value) for name, value in fields.items()}
    seq = int(text(entry_id).partition("-")[2])
    return seq, EventType(values["type"]), float(values["ts"]), values["data"]


def replica_of(
    key: RequestKey, meta: LogMeta, entries: Sequence[Entry], max_bytes: int
) -> EventLog:
    """A copy of an owner's log, as Redis holds it now.

    Redis's copy must run without a hole up to `meta.last_seq` (what the owner last
    wrote): a copy that does not (a key evicted, writes lost) cannot be served exactly."""
    held = _contiguous_tail(entries)
    if (held[-1][0] if held else 0) != meta.last_seq:
        raise NotRecovered(f"the events of request {key.request_id} are no longer held whole")
    first_seq = held[0][0] if held else meta.last_seq + 1
    log = EventLog(
        key,
        meta.origin,
        max_bytes,
        conversation_id=meta.conversation_id,
        first_seq=first_seq,
        created_at=meta.created_at,
        replica=True,
    )
    for seq, event_type, timestamp, data_json in held:
        log.ingest(seq, event_type, timestamp, data_json)
    log.annotations = dict(meta.annotations)
    return log


def summary_of(key: RequestKey, meta: LogMeta) -> EventLog:
    """A log without its events, for listing: what `of_user` tells of a request."""
    log = EventLog(
        key,
        meta.origin,
        0,
        conversation_id=meta.conversation_id,
        first_seq=meta.last_seq + 1,
        created_at=meta.created_at,
    )
    log.status = meta.status
    log.finished = meta.status is not None
    log.annotations = dict(meta.annotations)
    return log


def _contiguous_tail(entries: Sequence[Entry]) -> Sequence[Entry]:
    """The entries after the last hole in their seqs (normally all of them)."""
    start = 0
    for i in range(1, len(entries)):
        if entries[i][0] != entries[i - 1][0] + 1:
            start = i
    return entries[start:]


def record_args(records: Iterable[Record]) -> list[str]:
    """Records as a script takes them: seq, type, ts, data, one after the other."""
    args: list[str] = []
    for record in records:
        args += (str(record.seq), record.event_type.value, repr(record.timestamp), record.data_json)
    return args


def optional_json(value: str | None) -> str:
    return json.dumps(value)
