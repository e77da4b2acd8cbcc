"""The in-process stores: log retention in time and in bytes, conversations per user."""

import asyncio

import pytest

from tokenwire.backends.memory import MemoryConversationStore, MemoryLogStore
from tokenwire.core.eventlog import EventLog
from tokenwire.core.provider import Message
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.events import EventType


def key(request_id: str, user: str = "ada") -> RequestKey:
    return RequestKey(user, request_id)


async def finish(store: MemoryLogStore, request_id: str, chunks: int = 10) -> EventLog:
    log = await store.create(key(request_id), "s")
    for n in range(chunks):
        log.append(EventType.CHUNK, {"chunk": "x" * 100, "n": n})
    log.append(EventType.STREAM_END, {"status": "completed"})
    await store.finished(log)
    return log


async def test_a_finished_log_is_kept_for_the_retention_time_then_dropped() -> None:
    store = MemoryLogStore(
        retention_seconds=0.05, max_log_bytes=1 << 20, max_retained_bytes=1 << 20
    )
    await finish(store, "r1")
    assert await store.get(key("r1")) is not None
    await asyncio.sleep(0.1)
    assert await store.get(key("r1")) is None
    assert store.retained_bytes == 0


async def test_a_log_past_its_retention_is_gone_on_lookup_even_before_its_timer_runs() -> None:
    now = [0.0]
    store = MemoryLogStore(60, 1 << 20, 1 << 20, clock=lambda: now[0])
    await finish(store, "r1")
    now[0] = 59.9
    assert await store.get(key("r1")) is not None
    now[0] = 60.0
    assert await store.get(key("r1")) is None
    assert store.retained_bytes == 0
    await store.close()


async def test_retained_logs_past_the_byte_bound_drop_oldest_first() -> None:
    size = (await finish(MemoryLogStore(60, 1 << 20, 1 << 20), "probe")).held_bytes
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=3 * size)
    for n in range(5):
        await finish(store, f"r{n}")
    kept = [await store.get(key(f"r{n}")) is not None for n in range(5)]
    assert kept == [False, False, True, True, True]
    assert store.retained_bytes <= 3 * size
    await store.close()


async def test_zero_retention_drops_a_log_as_soon_as_it_ends() -> None:
    store = MemoryLogStore(retention_seconds=0, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    await finish(store, "r1")
    assert await store.get(key("r1")) is None
    assert len(store) == 0


async def test_an_id_held_by_a_retained_log_cannot_be_reused_by_its_user() -> None:
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    await finish(store, "r1")
    with pytest.raises(InvalidRequest):
        await store.create(key("r1"), "s")
    await store.close()


async def test_two_users_may_use_the_same_request_id() -> None:
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    mine = await store.create(key("same", "ada"), None)
    theirs = await store.create(key("same", "bob"), None)
    assert mine is not theirs
    assert await store.get(key("same", "bob")) is theirs
    await store.close()


async def test_a_discarded_log_frees_its_id() -> None:
    store = MemoryLogStore(retention_seconds=60, max_log_bytes=1 << 20, max_retained_bytes=1 << 20)
    await store.create(key("r1"), None)
    await store.discard(key("r1"))
    assert await store.get(key("r1")) is None
    await store.create(key("r1"), None)
    await store.close()


def turn(text: str, role: str = "user") -> Message:
    return Message(role=role, content=text)  # type: ignore[arg-type]


async def test_a_conversation_belongs_to_its_user() -> None:
    store = MemoryConversationStore(max_tokens=1000)
    await store.extend("ada", "c1", [turn("hi"), turn("hello", "assistant")])
    assert [m.content for m in await store.history("ada", "c1")] == ["hi", "hello"]
    assert await store.history("bob", "c1") == ()


async def test_a_conversation_drops_its_oldest_turns_past_its_token_bound() -> None:
    store = MemoryConversationStore(max_tokens=6)  # 20 characters are 5 tokens
    await store.extend("ada", "c1", [turn("a" * 20), turn("b" * 20), turn("c" * 20)])
    assert [m.content[0] for m in await store.history("ada", "c1")] == ["c"]


async def test_conversations_are_bounded_in_number_least_recently_used_first() -> None:
    store = MemoryConversationStore(max_tokens=100, max_conversations=2)
    for cid in ("c1", "c2"):
        await store.extend("ada", cid, [turn(cid)])
    await store.history("ada", "c1")  # c1 is now the more recently used
    await store.extend("ada", "c3", [turn("c3")])
    assert len(store) == 2
    assert await store.history("ada", "c2") == ()
    assert await store.history("ada", "c1") != ()


async def test_an_idle_conversation_is_forgotten() -> None:
    now = [0.0]
    store = MemoryConversationStore(max_tokens=100, idle_seconds=10, clock=lambda: now[0])
    await store.extend("ada", "old", [turn("x")])
    now[0] = 9.0
    assert await store.history("ada", "old") != ()
    now[0] = 19.5
    await store.extend("bob", "new", [turn("y")])
    assert len(store) == 1  # "old", unused for 10.5 s, went when another was written
    assert await store.history("ada", "old") == ()
