"""The in-process log store: logs live in this process and expire after retention.

Finished logs are kept for `retention_seconds` so that clients can re-attach,
but never more than `max_retained_bytes` of them in all: past that the oldest
finished logs go first, whatever their age. Memory thus stays bounded at any
request rate.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from tokenwire.core.eventlog import EventLog
from tokenwire.protocol.errors import InvalidRequest


class MemoryLogStore:
    def __init__(
        self, retention_seconds: float, max_log_bytes: int, max_retained_bytes: int
    ) -> None:
        self._retention = retention_seconds
        self._max_log_bytes = max_log_bytes
        self._max_retained_bytes = max_retained_bytes
        self._logs: dict[str, EventLog] = {}
        self._retained: OrderedDict[str, tuple[int, asyncio.TimerHandle]] = OrderedDict()
        self.retained_bytes = 0

    def create(self, request_id: str, session_id: str | None) -> EventLog:
        if request_id in self._logs:
            raise InvalidRequest(f"request_id {request_id!r} is already in use")
        log = EventLog(request_id, session_id, self._max_log_bytes)
        self._logs[request_id] = log
        return log

    def get(self, request_id: str) -> EventLog | None:
        return self._logs.get(request_id)

    def finished(self, log: EventLog) -> None:
        if self._retention <= 0:
            self._drop(log.request_id)
            return
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(self._retention, self._drop, log.request_id)
        self._retained[log.request_id] = (log.held_bytes, expiry)
        self.retained_bytes += log.held_bytes
        while self.retained_bytes > self._max_retained_bytes and self._retained:
            self._drop(next(iter(self._retained)))

    def __len__(self) -> int:
        return len(self._logs)

    def close(self) -> None:
        for _, expiry in self._retained.values():
            expiry.cancel()
        self._retained.clear()
        self._logs.clear()
        self.retained_bytes = 0

    def _drop(self, request_id: str) -> None:
        self._logs.pop(request_id, None)
        retained = self._retained.pop(request_id, None)
        if retained is not None:
            size, expiry = retained
            expiry.cancel()
            self.retained_bytes -= size
