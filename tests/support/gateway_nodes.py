"""Several gateways in one test process, each a node of one Redis deployment (for
nodes as separate processes, see tests/support/cluster.py).

Each node has its own Redis connection, node id and `RedisCluster` on a private key
prefix; their logs are shared in process (`SharedLogs`), so that a node finds a
request another node runs, as the Redis log store lets it, while what this module's
tests are about (cancels, followers, reports) goes through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.asyncio import Redis

from tests.support.providers import WatchedProvider
from tests.support.redis_nodes import node_client
from tests.support.redis_server import RedisServer, private_prefix
from tests.support.server import RunningServer, gateway_with, running_server, simulated_settings
from tests.support.stores import SharedLogs
from tokenwire.backends.memory import MemoryLogStore
from tokenwire.backends.redis import RedisBackend
from tokenwire.backends.redis.availability import RedisAvailability
from tokenwire.backends.redis.cluster import RedisCluster
from tokenwire.core.cluster import Cluster
from tokenwire.core.gateway import Gateway
from tokenwire.core.spec import RequestKey


class RecordingCluster(RedisCluster):
    """A `RedisCluster` that tells the test each answer of `followed_elsewhere`: the
    gateway decides on it in the same step, so once the test has the answer it can
    look at what the gateway did."""

    def __init__(
        self, backend: RedisBackend, resume_grace_seconds: float, availability: RedisAvailability
    ) -> None:
        super().__init__(
            backend, resume_grace_seconds=resume_grace_seconds, availability=availability
        )
        self.answers: asyncio.Queue[tuple[RequestKey, bool]] = asyncio.Queue()

    async def followed_elsewhere(self, key: RequestKey) -> bool:
        answer = await super().followed_elsewhere(key)
        self.answers.put_nowait((key, answer))
        return answer

    async def answer(self, timeout: float = 10.0) -> bool:
        _, answer = await asyncio.wait_for(self.answers.get(), timeout)
        return answer


@dataclass
class Node:
    server: RunningServer
    cluster: RecordingCluster
    provider: WatchedProvider
    redis: Redis
    availability: RedisAvailability

    @property
    def gateway(self) -> Gateway:
        return self.server.gateway


def with_cluster(gateway: Gateway, cluster: Cluster, logs: SharedLogs) -> Gateway:
    """`gateway` as built from settings, with a cluster and shared logs instead."""
    return Gateway(
        gateway.config,
        gateway.slots,
        gateway.router,
        logs,
        gateway.conversations,
        gateway.observer,
        gateway.admission,
        cluster=cluster,
    )


@contextlib.asynccontextmanager
async def cluster_nodes(
    redis_server: RedisServer, count: int = 2, grace: float = 10.0, lease: float = 1.5
) -> AsyncIterator[list[Node]]:
    """`count` nodes (`n0`, `n1`...) on one private prefix, each subscribed to its
    control channel when yielded."""
    prefix = private_prefix()
    store = MemoryLogStore(300.0, 8 << 20, 64 << 20)
    settings = simulated_settings(streams={"resume_grace_seconds": grace})
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        nodes = []
        for n in range(count):
            redis = node_client(redis_server)
            stack.push_async_callback(redis.aclose)
            availability = RedisAvailability(redis.ping)
            await availability.start()
            stack.push_async_callback(availability.close)
            backend = RedisBackend(redis, prefix=prefix, node_id=f"n{n}", lease_seconds=lease)
            cluster = RecordingCluster(backend, grace, availability)
            provider = WatchedProvider()
            gateway = with_cluster(
                gateway_with(provider, settings=settings), cluster, SharedLogs(store)
            )
            server = await stack.enter_async_context(running_server(settings, gateway=gateway))
            await asyncio.wait_for(cluster.control.listening.wait(), 10)
            nodes.append(Node(server, cluster, provider, redis, availability))
        yield nodes
