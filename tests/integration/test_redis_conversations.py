"""Conversations kept in Redis: every kind of turn comes back equal, bounded as in memory."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from tests.support.redis_server import RedisServer, private_prefix
from tokenwire.backends.memory import MemoryConversationStore
from tokenwire.backends.redis.availability import RedisAvailability
from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.conversations import RedisConversationStore
from tokenwire.core.images import ImageBounds
from tokenwire.core.provider import ImagePart, Message, TextPart
from tokenwire.core.tools import ToolCallPart, ToolResultPart
from tokenwire.protocol.errors import BackendUnavailable

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
async def backend(shared_redis: RedisServer) -> AsyncIterator[RedisBackend]:
    handle = RedisBackend(Redis.from_url(shared_redis.url), prefix=private_prefix())
    yield handle
    await handle.aclose()


def store_on(
    backend: RedisBackend,
    max_tokens: int = 4096,
    max_conversations: int = 10_000,
    idle_seconds: float = 3600.0,
    images: ImageBounds | None = None,
    clock: Callable[[], float] = time.time,
) -> RedisConversationStore:
    return RedisConversationStore(
        backend,
        RedisAvailability(backend.client.ping),
        max_tokens=max_tokens,
        max_conversations=max_conversations,
        idle_seconds=idle_seconds,
        images=images,
        clock=clock,
    )


TURNS = {
    "plain text": Message(role="user", content="Hello there"),
    "text blocks with a cache breakpoint": Message(
        role="user",
        content="ab",
        parts=(TextPart("a", {"type": "ephemeral"}), TextPart("b")),
    ),
    "tool calls": Message(
        role="assistant",
        content="Looking.",
        parts=(
            TextPart("Looking."),
            ToolCallPart("call_1", "weather", '{"city": "Paris"}'),
            ToolCallPart("call_2", "time", "{}"),
        ),
    ),
    "tool results": Message(
        role="tool",
        content="",
        parts=(ToolResultPart("call_1", "18 C"), ToolResultPart("call_2", "boom", is_error=True)),
    ),
    "image bytes": Message(
        role="user",
        content="what is this?",
        parts=(TextPart("what is this?"), ImagePart("image/png", PNG, detail="high")),
    ),
    "image url": Message(
        role="user",
        content="and this?",
        parts=(TextPart("and this?"), ImagePart(url="https://example.com/cat.png")),
    ),
}


@pytest.mark.parametrize("kind", list(TURNS))
async def test_each_kind_of_turn_comes_back_equal(backend: RedisBackend, kind: str) -> None:
    store = store_on(backend)
    await store.extend("ada", "chat", [TURNS[kind]])
    assert await store.history("ada", "chat") == (TURNS[kind],)


async def test_a_conversation_belongs_to_its_user_and_id(backend: RedisBackend) -> None:
    store = store_on(backend)
    await store.extend("ada", "chat", [TURNS["plain text"]])
    assert await store.history("bob", "chat") == ()
    assert await store.history("ada", "other") == ()


async def test_turns_are_trimmed_exactly_as_in_memory(backend: RedisBackend) -> None:
    images = ImageBounds(max_images=1)
    in_redis = store_on(backend, max_tokens=40, images=images)
    in_memory = MemoryConversationStore(max_tokens=40, images=images)
    batches = [
        [Message(role="user", content="word " * 20), Message(role="assistant", content="ok " * 10)],
        [TURNS["tool calls"]],
        [TURNS["tool results"], Message(role="assistant", content="Paris is mild " * 5)],
        [TURNS["image bytes"]],
        [TURNS["image url"], Message(role="assistant", content="a cat")],
    ]
    for batch in batches:
        await in_redis.extend("ada", "chat", batch)
        await in_memory.extend("ada", "chat", batch)
        assert await in_redis.history("ada", "chat") == await in_memory.history("ada", "chat")
    assert len(await in_redis.history("ada", "chat")) < sum(map(len, batches))


async def test_an_idle_conversation_expires_in_redis(backend: RedisBackend) -> None:
    store = store_on(backend, idle_seconds=60)
    await store.extend("ada", "chat", [TURNS["plain text"]])
    left = await backend.client.pttl(store.key("ada", "chat"))
    assert 0 < left <= 60_000
    await backend.client.pexpire(store.key("ada", "chat"), 1)  # as if 60 s went by unused
    assert await _gone(backend, store.key("ada", "chat"))
    assert await store.history("ada", "chat") == ()


async def _gone(backend: RedisBackend, key: str) -> bool:
    for _ in range(200):
        if not await backend.client.exists(key):
            return True
        await backend.client.ping()
    return False


async def test_reading_a_conversation_restarts_its_idle_time(backend: RedisBackend) -> None:
    store = store_on(backend, idle_seconds=60)
    await store.extend("ada", "chat", [TURNS["plain text"]])
    await backend.client.pexpire(store.key("ada", "chat"), 5_000)
    await store.history("ada", "chat")
    assert await backend.client.pttl(store.key("ada", "chat")) > 5_000


async def test_past_max_conversations_the_least_recently_used_go(backend: RedisBackend) -> None:
    clock = iter(range(1_000, 2_000)).__next__
    store = store_on(backend, max_conversations=2, clock=lambda: float(clock()))
    for name in ("first", "second", "third"):
        await store.extend("ada", name, [TURNS["plain text"]])
    assert await store.history("ada", "first") == ()
    assert await store.history("ada", "second") == (TURNS["plain text"],)
    assert await store.history("ada", "third") == (TURNS["plain text"],)


async def test_a_damaged_conversation_is_forgotten_not_an_error(backend: RedisBackend) -> None:
    store = store_on(backend)
    await backend.client.set(store.key("ada", "chat"), b"{not json")
    assert await store.history("ada", "chat") == ()
    await store.extend("ada", "chat", [TURNS["plain text"]])
    assert await store.history("ada", "chat") == (TURNS["plain text"],)


async def test_without_redis_the_store_refuses_with_backend_unavailable(
    own_redis: RedisServer,
) -> None:
    backend = RedisBackend(
        Redis.from_url(own_redis.url, socket_timeout=2, socket_connect_timeout=2),
        prefix=private_prefix(),
    )
    store = store_on(backend)
    try:
        own_redis.kill()
        with pytest.raises(BackendUnavailable):
            await store.history("ada", "chat")
        # Counted as down now: the next call fails at once, without a round trip.
        with pytest.raises(BackendUnavailable):
            await store.extend("ada", "chat", [TURNS["plain text"]])
    finally:
        await backend.aclose()
