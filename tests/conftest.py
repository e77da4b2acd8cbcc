"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _pytest.nodeid import NodeId

from tests.support.redis_server import RedisServer, redis_server


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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make `--dist loadgroup` keep an `xdist_group` on one worker.

    pytest-xdist 3.8 tags a grouped test by rewriting `item._nodeid`, which pytest 9 no
    longer reads (the id lives in `item._id`): the tag never reached the scheduler, and a
    module meant to load the local model or start a llama.cpp server once did so on every
    worker. The same tag, where pytest 9 keeps it."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted(
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        )
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")  # type: ignore[attr-defined]
