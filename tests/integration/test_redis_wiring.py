"""Choosing Redis at start-up, `--workers N`, `/readyz` while Redis is lost, and
conversations shared by the nodes of one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import cluster_config, gateway_cluster
from tests.support.process import run_cli
from tests.support.providers import WatchedProvider
from tests.support.redis_server import RedisServer, private_prefix
from tests.support.server import (
    RunningServer,
    gateway_with,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.app import backends_for
from tokenwire.settings import Settings

FAST = {"options": {"tokens": 20, "delay_ms": 0}}


def redis_settings(redis: RedisServer, prefix: str, **keys: Any) -> Settings:
    """Settings on this Redis and key prefix, with more `[redis]` keys."""
    return simulated_settings(redis={"url": redis.url, "key_prefix": prefix, **keys})


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://", "tcp://:hunter2@db:6379/0"]
)
async def test_a_url_that_is_not_redis_stops_start_up_with_one_line(url: str) -> None:
    code, out = await run_cli("serve", "--provider", "simulated", "--redis-url", url)
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "redis.url" in lines[0]
    assert "not a Redis URL" in lines[0]
    assert "hunter2" not in out  # a password in the URL is never echoed


async def test_the_environment_s_redis_url_is_checked_too() -> None:
    code, out = await run_cli(
        "serve", "--provider", "simulated", env={"TOKENWIRE_REDIS__URL": "mysql://db/0"}
    )
    assert code == 2
    assert "TOKENWIRE_REDIS__URL" in out
    assert "not a Redis URL" in out


async def test_workers_above_one_without_redis_are_refused_with_the_reason() -> None:
    code, out = await run_cli("serve", "--provider", "simulated", "--port", "0", "--workers", "2")
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "server.workers" in lines[0]
    assert "[redis] url" in lines[0]


# -- --workers --------------------------------------------------------------------------


async def test_two_workers_on_redis_both_serve_as_nodes_of_their_own(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(tmp_path, shared_redis.url, nodes=1, args=["--workers", "2"]) as (
        node,
    ):
        # Each a new connection: the kernel hands it to whichever worker accepts first.
        seen = await node_ids(node.url, 2)
        assert len(seen) == 2, f"one worker answered every connection: {seen}"
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(
                node.url + "/v1/chat/completions",
                json={"model": "simulated", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert answer.status_code == 200
    assert node.proc.returncode == 0  # SIGTERM to the supervisor: every worker stopped well


async def node_ids(url: str, wanted: int, within: float = 60.0) -> set[str]:
    """The node ids that answer `url`'s stats, over new connections, until `wanted` of
    them have (or `within` seconds passed)."""
    seen: set[str] = set()
    deadline = time.monotonic() + within
    while len(seen) < wanted and time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=10) as client:
                seen.add((await client.get(url + "/api/streaming/stats")).json()["node_id"])
    return seen


async def test_a_worker_that_dies_is_replaced_by_a_new_node(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(tmp_path, shared_redis.url, nodes=1, args=["--workers", "2"]) as (
        node,
    ):
        before = await node_ids(node.url, 2)
        workers = (await node.serving_line())["workers"]
        assert isinstance(workers, list)
        os.kill(workers[0]["pid"], signal.SIGKILL)

        def replaced() -> bool:
            return node.output().count('"worker serving"') >= 3

        await eventually(replaced, timeout=60)
        after = await node_ids(node.url, 2)
        assert len(after) == 2
        assert after != before  # a new worker is a new node


async def test_workers_whose_supervisor_was_killed_stop_serving(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(tmp_path, shared_redis.url, nodes=1, args=["--workers", "2"]) as (
        node,
    ):
        workers = (await node.serving_line())["workers"]
        assert isinstance(workers, list)
        os.kill(node.pid, signal.SIGKILL)  # the supervisor alone, not its group
        node.proc.wait(10)
        await eventually(lambda: not any(alive(w["pid"]) for w in workers), timeout=30)


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet has stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_a_worker_that_cannot_start_stops_the_server_with_status_2(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        cluster_config(shared_redis.url, private_prefix()).replace("tokens = 60", "tokens = -1")
    )
    code, out = await run_cli("serve", "--config", str(config), "--port", "0", "--workers", "2")
    assert code == 2
    assert "configuration error: providers[0] (simulated)" in out


async def test_a_node_killed_leaves_the_others_serving(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(tmp_path, shared_redis.url, nodes=2) as (first, second):
        first.kill()
        assert first.proc.returncode == -signal.SIGKILL
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(second.url + "/readyz")).status_code == 200
            with pytest.raises(httpx.ConnectError):
                await client.get(first.url + "/readyz")


# -- Redis lost -------------------------------------------------------------------------


async def readiness(server: RunningServer) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(server.url + "/readyz")
    return response.status_code, response.json()


async def test_readyz_is_503_while_redis_is_down_and_200_once_it_is_back(
    own_redis: RedisServer,
) -> None:
    settings = redis_settings(own_redis, private_prefix(), reconnect_max_seconds=0.5)
    async with running_server(settings) as server, ws_client(server) as client:
        assert (await readiness(server))[0] == 200
        own_redis.kill()
        down: list[tuple[int, dict[str, Any]]] = []

        async def poll() -> None:
            down.append(await readiness(server))

        async def unready() -> bool:
            await poll()
            return down[-1][0] == 503

        await until(unready)
        assert down[-1][1] == {"status": "not_ready", "reason": "redis unreachable"}
        await client.send({"type": "ai_request", "prompt": "while Redis is down", "config": FAST})
        refused = await client.recv()
        assert refused["event_type"] == "error"
        assert refused["data"]["error_type"] == "backend_unavailable"
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(server.url + "/healthz")).status_code == 200

        own_redis.start()

        async def ready() -> bool:
            await poll()
            return down[-1][0] == 200

        await until(ready)
        served = await client.ask("Redis is back", config=FAST)
        assert of_type(served, "stream_end")[0]["data"]["status"] == "completed"


async def test_a_stream_running_when_redis_is_lost_still_reaches_its_client(
    own_redis: RedisServer,
) -> None:
    settings = redis_settings(own_redis, private_prefix(), reconnect_max_seconds=0.5)
    async with running_server(settings) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "a long answer",
                "request_id": "long-1",
                "config": {"options": {"tokens": 40, "delay_ms": 50}},
            }
        )
        first = await client.recv()
        assert first["event_type"] in ("stream_start", "chunk", "progress")
        own_redis.kill()
        frames = await client.until_end("long-1", timeout=60)
        assert of_type(frames, "stream_end")[-1]["data"]["status"] == "completed"
        # Back before the server stops, which would otherwise wait out each write
        # queue's bound on closing (about 17 s in all) for writes Redis cannot take.
        own_redis.start()


async def until(condition: Any, timeout: float = 30.0) -> None:
    """Poll an async condition until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.05)


# -- conversations ------------------------------------------------------------------


async def test_a_conversation_begun_on_one_node_continues_on_another(
    shared_redis: RedisServer,
) -> None:
    settings = redis_settings(shared_redis, private_prefix())
    on_a, on_b = WatchedProvider(), WatchedProvider()
    backends_a, backends_b = backends_for(settings), backends_for(settings)
    async with (
        running_server(
            settings,
            gateway_with(on_a, settings=settings, backends=backends_a),
            backends=backends_a,
        ) as node_a,
        running_server(
            settings,
            gateway_with(on_b, settings=settings, backends=backends_b),
            backends=backends_b,
        ) as node_b,
        ws_client(node_a) as on_node_a,
        ws_client(node_b) as on_node_b,
    ):
        first = await on_node_a.ask("My name is Ada.", conversation_id="chat-1", config=FAST)
        answer = "".join(c["data"]["chunk"] for c in of_type(first, "chunk"))
        # The turn is written once its stream has ended: wait until Redis holds it.
        store = backends_b.conversations
        await until(lambda: _has_turns(store, "chat-1", 2))
        await on_node_b.ask("What is my name?", conversation_id="chat-1", config=FAST)
        sent = on_b.requests[-1].messages
        assert [(m.role, m.content) for m in sent] == [
            ("user", "My name is Ada."),
            ("assistant", answer),
            ("user", "What is my name?"),
        ]


async def _has_turns(store: Any, conversation_id: str, count: int) -> bool:
    with contextlib.suppress(Exception):
        return len(await store.history("anonymous", conversation_id)) >= count
    return False
