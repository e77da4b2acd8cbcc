"""How a node tells whether it reaches Redis, and that the watch itself never dies."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.waiting import eventually
from tokenwire.backends.redis.availability import (
    UNREACHABLE,
    AdmitWhileReachable,
    Backoff,
    RedisAvailability,
)
from tokenwire.core.admission import AdmitAll
from tokenwire.core.provider import Message
from tokenwire.core.spec import RequestSpec
from tokenwire.protocol.errors import BackendUnavailable


class FakeRedis:
    """A PING that answers, fails as a lost Redis does, or fails as a defect would."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.failure is not None:
            raise self.failure
        return True


def test_the_backoff_doubles_from_a_tenth_of_a_second_up_to_its_maximum() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1


async def test_a_node_that_starts_without_redis_is_not_ready_and_says_why() -> None:
    redis = FakeRedis()
    redis.failure = RedisConnectionError("refused")
    availability = RedisAvailability(redis.ping)
    await availability.start()
    try:
        assert not availability.up
        assert availability.reason == UNREACHABLE == "redis unreachable"
        with pytest.raises(BackendUnavailable):
            availability.check()
    finally:
        await availability.close()


async def test_redis_counts_as_up_again_at_the_first_answer_after_a_loss() -> None:
    redis = FakeRedis()
    availability = RedisAvailability(redis.ping, interval_seconds=0.05, reconnect_max_seconds=0.2)
    await availability.start()
    try:
        assert availability.up
        redis.failure = RedisConnectionError("lost")
        await eventually(lambda: not availability.up)
        redis.failure = None
        await eventually(lambda: availability.up)
        availability.check()
    finally:
        await availability.close()


async def test_a_defect_in_the_ping_counts_as_down_and_the_watch_goes_on() -> None:
    redis = FakeRedis()
    availability = RedisAvailability(redis.ping, interval_seconds=0.05, reconnect_max_seconds=0.2)
    await availability.start()
    try:
        redis.failure = RuntimeError("a bug, not a lost Redis")
        await eventually(lambda: not availability.up)
        pings = redis.pings
        await eventually(lambda: redis.pings > pings + 2)  # still watching
        redis.failure = None
        await eventually(lambda: availability.up)
    finally:
        await availability.close()


async def test_a_store_s_failed_command_makes_redis_down_at_once_and_wakes_the_watch() -> None:
    redis = FakeRedis()
    # A watch that would not PING again for an hour on its own while Redis is up.
    availability = RedisAvailability(redis.ping, interval_seconds=3600, reconnect_max_seconds=0.2)
    await availability.start()
    try:
        await asyncio.sleep(0)  # the watch runs, and waits out its hour
        redis.failure = RedisConnectionError("lost")
        error = availability.failed(RedisConnectionError("lost"))
        assert isinstance(error, BackendUnavailable)
        assert not availability.up
        redis.failure = None
        await eventually(lambda: availability.up)  # the backoff began at once
    finally:
        await availability.close()


async def test_new_requests_are_refused_while_redis_is_down() -> None:
    redis = FakeRedis()
    availability = RedisAvailability(redis.ping)
    admission = AdmitWhileReachable(AdmitAll(), availability)
    spec = RequestSpec(user_id="ada", messages=(Message(role="user", content="hi"),))
    assert await admission.admit(spec) is spec
    availability.failed(RedisConnectionError("lost"))
    with pytest.raises(BackendUnavailable) as refused:
        await admission.admit(spec)
    assert refused.value.error_type == "backend_unavailable"
