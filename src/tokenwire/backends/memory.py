"""The in-process log store: logs live in this process and expire after retention."""

from __future__ import annotations

import asyncio

from tokenwire.core.eventlog import EventLog
from tokenwire.protocol.errors import InvalidRequest


class MemoryLogStore:
    def __init__(self, retention_seconds: float, max_log_bytes: int) -> None:
        self._retention = retention_seconds
        self._max_log_bytes = max_log_bytes
        self._logs: dict[str, EventLog] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}

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
        self._expiries[log.request_id] = loop.call_later(
            self._retention, self._drop, log.request_id
        )

    def __len__(self) -> int:
        return len(self._logs)

    def close(self) -> None:
        for handle in self._expiries.values():
            handle.cancel()
        self._expiries.clear()
        self._logs.clear()

    def _drop(self, request_id: str) -> None:
        self._logs.pop(request_id, None)
        self._expiries.pop(request_id, None)
