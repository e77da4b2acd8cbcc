"""`/metrics` under `--workers 2`: whichever worker answers the scrape counts them all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import NodeProcess, gateway_cluster
from tests.support.redis_server import RedisServer
from tests.support.server import WsClient, dropping_client
from tokenwire.observability.metrics import MULTIPROCESS_VARIABLE
from tokenwire.workers import shared_metrics

# A connection is taken by whichever worker accepts first: enough tries to reach both.
MAX_CONNECTIONS = 20


async def scrape(node: NodeProcess) -> list[tuple[str, dict[str, str], float]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(node.url + "/metrics")
    assert response.status_code == 200
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


async def test_any_worker_s_scrape_sums_the_streams_and_connections_of_both(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with (
        gateway_cluster(
            tmp_path, shared_redis.url, nodes=1, tokens=3, delay_ms=0, args=["--workers", "2"]
        ) as (node,),
        contextlib.AsyncExitStack() as stack,
    ):
        # One connection on each worker (the handshake names the worker's node).
        clients: dict[str, WsClient] = {}
        opened = 0  # every connection made, on either worker
        for _ in range(MAX_CONNECTIONS):
            client = await stack.enter_async_context(dropping_client(node.ws_url))
            opened += 1
            clients.setdefault(client.ws.response.headers["tokenwire-node"], client)
            if len(clients) == 2:
                break
        assert len(clients) == 2, "every connection landed on one worker"
        for number, client in enumerate(clients.values()):
            await client.send({"type": "ai_request", "prompt": "hi", "request_id": f"w{number}"})
            await client.until_end(f"w{number}")
        # Two scrapes in a row, most likely answered by different workers: both see all.
        scrapes = [await scrape(node), await scrape(node)]

    for samples in scrapes:
        completed = [
            v
            for name, labels, v in samples
            if name == "tokenwire_streams_ended_total" and labels["status"] == "completed"
        ]
        connections = [
            v
            for name, labels, v in samples
            if name == "tokenwire_connections" and labels["transport"] == "websocket"
        ]
        nodes = {labels["node"] for name, labels, _ in samples if name == "tokenwire_node_info"}
        assert sum(completed) == 2
        assert connections == [opened]
        assert nodes == set(clients)


def test_the_workers_share_a_private_directory_that_goes_with_the_supervisor() -> None:
    before = os.environ.get(MULTIPROCESS_VARIABLE)
    with shared_metrics() as directory:
        assert os.environ[MULTIPROCESS_VARIABLE] == directory
        assert Path(directory).is_dir()
    assert os.environ.get(MULTIPROCESS_VARIABLE) == before
    assert not Path(directory).exists()
