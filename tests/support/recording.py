"""A log subscriber for tests that records what a request's log delivers."""

from __future__ import annotations

import time
from typing import Any

from tokenwire.core.eventlog import Record


class Inbox:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.frames: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.errors: list[Exception] = []
        """What `lost` was told: the log could no longer be followed."""

    def deliver(self, record: Record) -> None:
        self.records.append(record)
        self.frames.append(
            {"event_type": record.event_type.value, "data": record.data, "seq": record.seq}
        )
        self.arrived.append(time.monotonic())

    def lost(self, error: Exception) -> None:
        self.errors.append(error)

    @property
    def seqs(self) -> list[int]:
        return [r.seq for r in self.records]

    def kinds(self) -> list[str]:
        return [f["event_type"] for f in self.frames]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames if f["event_type"] == kind]
