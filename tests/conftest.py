"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, redis_server

# Each `xdist_group` on one worker under `make test`'s `--dist loadgroup`.
pytest_plugins = ["tests.support.xdist_groups"]


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server per test process, for tests that never kill it (each
    takes its own key prefix: `private_prefix()`)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill and restart."""
    with redis_server(tmp_path_factory.mktemp("redis-own")) as server:
        yield server
