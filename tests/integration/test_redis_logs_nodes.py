"""Two gateways sharing their event logs through Redis: a request started on node A is
resumed on node B, over the WebSocket, over SSE and through the Responses API, with
exactly the events of an uninterrupted run, whose text is the simulated provider's whole
answer (computed in-process). Only the log store is shared here (cancels and followers
across nodes are the cluster's, tested on their own)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from tests.support.background import left_after, resumed_after
from tests.support.providers import simulated_answer
from tests.support.redis_server import RedisServer, private_prefix
from tests.support.server import RunningServer, of_type, running_server, simulated_settings
from tests.support.server import ws_client as connected
from tokenwire.app import build_gateway
from tokenwire.backends.redis import RedisBackend
from tokenwire.backends.redis.logs import RedisLogStore

pytestmark = pytest.mark.timeout(120)

# Still running well after the first node's client has gone, however busy the machine.
LONG = {"options": {"tokens": 200, "delay_ms": 10}}
STORY = "tell me a long story"


def request(request_id: str) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": STORY,
        "request_id": request_id,
        "config": LONG,
        "stream_config": {"granularity": "token"},
    }


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"].get("token") or f["data"].get("chunk") for f in frames)


def texts(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("event_type") in ("token", "chunk")]


@contextlib.asynccontextmanager
async def gateway_node(server: RedisServer, prefix: str) -> AsyncIterator[RunningServer]:
    """A gateway whose event logs live in Redis under `prefix`."""
    settings = simulated_settings(streams={"resume_grace_seconds": 10})
    client = Redis.from_url(server.url, socket_timeout=2.0, retry=None, retry_on_error=[])
    streams = settings.streams
    store = RedisLogStore(
        RedisBackend(client, prefix=prefix),
        retention_seconds=streams.log_retention_seconds,
        max_log_bytes=streams.max_log_bytes,
        max_retained_bytes=streams.max_retained_log_bytes,
    )
    gateway = build_gateway(settings)
    gateway.logs = store
    await store.start()
    try:
        async with running_server(settings, gateway=gateway) as running:
            yield running
    finally:
        await store.close()
        await client.aclose()


@contextlib.asynccontextmanager
async def two_gateways(server: RedisServer) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    prefix = private_prefix()
    async with gateway_node(server, prefix) as a, gateway_node(server, prefix) as b:
        yield a, b


async def reference_text() -> str:
    """The text of an uninterrupted run of `request`."""
    return await simulated_answer(STORY, **LONG["options"])


async def until_token(client: Any, index: int) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await client.recv(10)
        frames.append(frame)
        if frame.get("event_type") == "token" and frame["data"]["index"] == index:
            return frames


async def test_a_websocket_resume_on_another_node_continues_exactly(
    shared_redis: RedisServer,
) -> None:
    async with two_gateways(shared_redis) as (a, b):
        whole = await reference_text()
        async with connected(a) as phone:
            await phone.send(request("r1"))
            before = await until_token(phone, 20)
            await phone.ws.close(1001)  # a reload: the stream waits for its grace
        last_seq = before[-1]["seq"]

        async with connected(b) as laptop:
            await laptop.send({"type": "resume", "request_id": "r1", "last_seq": last_seq})
            after = await laptop.until_end("r1")

    assert [f["seq"] for f in after] == list(range(last_seq + 1, after[-1]["seq"] + 1))
    assert after[-1]["data"]["status"] == "completed"
    assert text_of(texts(before) + texts(after)) == whole


async def test_a_compact_resume_on_another_node_merges_what_was_held(
    shared_redis: RedisServer,
) -> None:
    async with two_gateways(shared_redis) as (a, b):
        whole = await reference_text()
        async with connected(a) as phone:
            await phone.send(request("r1"))
            await until_token(phone, 30)
            await phone.ws.close(1001)

        async with connected(b) as laptop:
            resume = {"type": "resume", "request_id": "r1", "last_seq": 0, "compact": True}
            await laptop.send(resume)
            frames = await laptop.until_end("r1")

    first = texts(frames)[0]
    assert first["event_type"] == "chunk"
    assert first["data"]["compacted"] >= 30
    assert text_of(texts(frames)) == whole
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(set(seqs))


async def test_an_sse_reattach_on_another_node_continues_after_last_event_id(
    shared_redis: RedisServer,
) -> None:
    async with two_gateways(shared_redis) as (a, b):
        whole = await reference_text()
        async with connected(a) as phone:
            await phone.send(request("r1"))
            before = await until_token(phone, 20)
            await phone.ws.close(1001)
        last_seq = before[-1]["seq"]

        after = []
        headers = {"Last-Event-ID": str(last_seq)}
        async with (
            httpx.AsyncClient(base_url=b.url, timeout=20) as http,
            aconnect_sse(http, "GET", "/api/streams/r1/events", headers=headers) as source,
        ):
            async for event in source.aiter_sse():
                after.append({"seq": int(event.id), **json.loads(event.data)})

    assert [f["seq"] for f in after] == list(range(last_seq + 1, after[-1]["seq"] + 1))
    assert of_type(after, "stream_end")[0]["data"]["status"] == "completed"
    assert text_of(texts(before) + texts(after)) == whole


async def test_a_background_response_resumes_on_another_node_with_starting_after(
    shared_redis: RedisServer,
) -> None:
    async with two_gateways(shared_redis) as (a, b):
        on_a = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
        on_b = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0)
        async with on_a, on_b:
            response_id, first = await left_after(on_a, 10, "a long story")
            rest = await resumed_after(on_b, response_id, first[-1][0])
            final = await on_b.responses.retrieve(response_id)

    numbers = [n for n, _ in first + rest]
    assert numbers == sorted(set(numbers))
    assert len(first + rest) == 60
    assert final.status == "completed"
    assert final.output_text == "".join(d for _, d in first + rest)
