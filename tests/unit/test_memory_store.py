"""The in-process log store: retention in time, and in bytes overall."""

import asyncio

import pytest

from tokenwire.backends.memory import MemoryLogStore
from tokenwire.core.eventlog import EventLog
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.events import EventType


def finish(store: MemoryLogStore, request_id: str, chunks: int = 10) -> EventLog:
    log = store.create(request_id, "s")
    for n in range(chunks):
        log.append(EventType.CHUNK, {"chunk": "x" * 100, "n": n})
    log.append(EventType.STREAM_END, {"status": "completed"})
    store.finished(log)
    return log


async def test_a_finished_log_is_kept_for_the_retention_time_then_dropped() -> None:
    store = MemoryLogStore(
        retention_seconds=0.05, max_log_bytes=1 << 20, max_retained_bytes=1 << 20
    )
    finish(store, "r1")
    assert store.get("r1") is not None
    await asyncio.sleep(0.1)
    assert store.get("r1") is None
    assert store.retained_bytes == 0


async def test_retained_logs_past_the_byte_bound_drop_oldest_first() -> None:
    size = finish(MemoryLogStore(60, 1 << 20, 1 << 20), "probe").held_bytes
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=3 * size)
    for n in range(5):
        finish(store, f"r{n}")
    assert [store.get(f"r{n}") is not None for n in range(5)] == [False, False, True, True, True]
    assert store.retained_bytes <= 3 * size
    store.close()


async def test_zero_retention_drops_a_log_as_soon_as_it_ends() -> None:
    store = MemoryLogStore(retention_seconds=0, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    finish(store, "r1")
    assert store.get("r1") is None


async def test_an_id_held_by_a_retained_log_cannot_be_reused() -> None:
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    finish(store, "r1")
    with pytest.raises(InvalidRequest):
        store.create("r1", "s")
    store.close()
