"""Several `tokenwire serve` processes on one Redis, as a deployment runs them: a request
started on one node is resumed, re-attached, listed, cancelled and continued on another,
on every transport, exactly as on one node; a node that dies or a Redis that restarts
ends what it must with a typed error, never a gap, a repeat or a hang.

Every node here is a real process (tests/support/cluster.py) on the simulated provider,
whose answer to a prompt is the same on every node: its whole answer, computed in-process
(`simulated_answer`), is what a resumed run must equal. The tests whose streams all end
before they do share one pair of nodes (`pair`); the others start nodes configured for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from httpx_sse import aconnect_sse
from websockets.exceptions import InvalidStatus

from tests.support.background import left_after, resumed_after
from tests.support.cluster import NodeProcess, gateway_cluster
from tests.support.providers import simulated_answer
from tests.support.redis_server import RedisServer
from tests.support.server import WsClient, dropping_client, of_type

# The pair of nodes lives as long as the module, so the module runs on one xdist worker.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("gateway_nodes")]

USER = "?user_id=ada"
# Slow enough to act mid-stream on a loaded machine; 60 tokens take 3 s.
TOKENS, DELAY_MS = 60, 50.0
STORY = "tell me a long story"
# Per request, on the pair: an answer that would run 30 s.
LONG = {"options": {"tokens": 600}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(
    tmp_path_factory: pytest.TempPathFactory, shared_redis: RedisServer
) -> AsyncIterator[list[NodeProcess]]:
    """Two nodes answering `TOKENS` words `DELAY_MS` apart, for the tests that leave no
    stream running: each takes request ids of its own."""
    workdir = tmp_path_factory.mktemp("pair")
    async with gateway_cluster(workdir, shared_redis.url, tokens=TOKENS, delay_ms=DELAY_MS) as pair:
        yield pair


@contextlib.asynccontextmanager
async def client_of(node: NodeProcess, user: str = USER) -> AsyncIterator[WsClient]:
    """A WebSocket client that the test may drop without a close frame."""
    async with dropping_client(node.ws_url + user) as client:
        yield client


def ask(request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": STORY,
        "request_id": request_id,
        "stream_config": {"granularity": "token"},
        **fields,
    }


async def frames_until(client: WsClient, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Frames until the `count`-th token."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(of_type(frames, "token")) < count:
            frames.append(await client.recv(timeout))
    return frames


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(
        f["data"]["token"] if f["event_type"] == "token" else f["data"]["chunk"]
        for f in frames
        if f["event_type"] in ("token", "chunk")
    )


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if f.get("seq") is not None]


async def whole_text(tokens: int = TOKENS, delay_ms: float = DELAY_MS) -> str:
    """The answer of an uninterrupted run on nodes answering `tokens` words `delay_ms`
    apart: the reference of every resumed one."""
    return await simulated_answer(STORY, tokens=tokens, delay_ms=delay_ms)


# -- resume anywhere -------------------------------------------------------------------


async def test_a_client_dropped_on_one_node_resumes_on_another_exactly(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    reference = await whole_text()
    async with client_of(a) as phone:
        await phone.send(ask("r1"))
        before = await frames_until(phone, 10)
    # The link is gone without a close frame; the phone comes back through node b.
    async with client_of(b) as phone:
        last = seqs(before)[-1]
        await phone.send({"type": "resume", "request_id": "r1", "last_seq": last})
        after = await phone.until_end("r1", timeout=60)
    assert seqs(before) + seqs(after) == list(range(1, seqs(after)[-1] + 1))
    assert text_of(before) + text_of(after) == reference
    assert after[-1]["data"]["status"] == "completed"


async def test_compact_resume_and_a_second_device_on_another_node(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    reference = await whole_text()
    async with client_of(a) as laptop, client_of(b) as phone:
        await laptop.send(ask("r2"))
        first = await frames_until(laptop, 10)
        await phone.send({"type": "resume", "request_id": "r2", "last_seq": 0, "compact": True})
        on_phone = await phone.until_end("r2", timeout=60)
        on_laptop = await laptop.until_end("r2", timeout=60)
    # The phone gets the text so far as one chunk, then the live tokens, each once.
    assert on_phone[0]["event_type"] == "stream_start"
    assert of_type(on_phone, "chunk"), "compact replay merges the text so far"
    assert text_of(on_phone) == reference
    assert text_of(first + on_laptop) == reference
    assert on_phone[-1]["seq"] == on_laptop[-1]["seq"]


async def test_sse_re_attaches_on_another_node_with_last_event_id(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    reference = await whole_text()
    async with httpx.AsyncClient(timeout=60) as http:
        body = {"prompt": STORY, "request_id": "s1", "stream_config": {"granularity": "token"}}
        first: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(http, "POST", f"{a.url}/api/streams{USER}", json=body) as events:
            async for event in events.aiter_sse():
                first.append((event.id, json.loads(event.data)))
                if len(of_type([f for _, f in first], "token")) == 10:
                    break
        rest: list[dict[str, Any]] = []
        url = f"{b.url}/api/streams/s1/events{USER}"
        headers = {"Last-Event-ID": first[-1][0]}
        async with aconnect_sse(http, "GET", url, headers=headers) as events:
            async for event in events.aiter_sse():
                rest.append(json.loads(event.data))
        listed = (await http.get(f"{b.url}/api/streams{USER}")).json()
    frames = [f for _, f in first] + rest
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert text_of(frames) == reference
    assert frames[-1]["data"]["status"] == "completed"
    assert "s1" in [r["request_id"] for r in listed["requests"]]


async def test_a_background_response_resumes_and_continues_on_another_node(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    on_a = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
    on_b = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0)
    try:
        response_id, first = await left_after(on_a, 10, STORY)
        rest = await resumed_after(on_b, response_id, first[-1][0])
        final = await on_b.responses.retrieve(response_id)
        follow_up = await on_b.responses.create(
            model="simulated", input="and then?", previous_response_id=response_id
        )
    finally:
        await on_a.close()
        await on_b.close()
    numbers = [n for n, _ in first + rest]
    assert numbers == sorted(set(numbers))
    assert len(first + rest) == TOKENS
    assert final.status == "completed"
    assert final.output_text == "".join(d for _, d in first + rest)
    assert follow_up.status == "completed"


async def test_another_user_s_request_is_unknown_on_every_node(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    async with (
        client_of(a) as owner,
        client_of(b, "?user_id=eve") as eve,
        httpx.AsyncClient(timeout=10) as http,
    ):
        await owner.send(ask("secret"))
        await frames_until(owner, 2)
        await eve.send({"type": "resume", "request_id": "secret", "last_seq": 0})
        refused = await eve.recv(10)
        await eve.send({"type": "cancel_request", "request_id": "secret"})
        refused_cancel = await eve.recv(10)
        sse = await http.get(f"{b.url}/api/streams/secret/events?user_id=eve")
        deleted = await http.delete(f"{b.url}/api/streams/secret?user_id=eve")
        finished = await owner.until_end("secret", timeout=60)
    assert refused["data"]["error_type"] == "unknown_request"
    assert refused_cancel["data"]["error_type"] == "unknown_request"
    assert (sse.status_code, deleted.status_code) == (404, 404)
    assert finished[-1]["data"]["status"] == "completed"


# -- cancel and followers across nodes -------------------------------------------------


async def test_a_cancel_on_another_node_stops_the_request_where_it_runs(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    async with client_of(a) as laptop, client_of(b) as phone:
        await laptop.send(ask("c1", config=LONG))
        await frames_until(laptop, 3)
        sent = time.monotonic()
        await phone.send({"type": "cancel_request", "request_id": "c1"})
        ended = await laptop.until_end("c1", timeout=20)
        took = time.monotonic() - sent
    assert await streams_running(a) == 0
    assert ended[-1]["data"]["status"] == "cancelled"
    # 600 tokens 50 ms apart would run 30 s: it was stopped, not finished.
    assert took < 20
    assert len(of_type(ended, "token")) < 590


async def streams_running(node: NodeProcess, within: float = 10.0) -> int:
    """The node's running streams, once none are left or `within` seconds passed."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            stats = (await http.get(node.url + "/api/streaming/stats")).json()
            running: int = stats["streams"]["active_streams"]
            if running == 0 or time.monotonic() > deadline:
                return running
            await asyncio.sleep(0.05)


async def test_a_request_followed_only_on_another_node_outlives_its_first_client(
    pair: list[NodeProcess],
) -> None:
    a, b = pair
    reference = await whole_text()
    async with client_of(b) as phone:
        async with client_of(a) as laptop:
            await laptop.send(ask("f1"))
            await frames_until(laptop, 3)
            await phone.send({"type": "resume", "request_id": "f1", "last_seq": 0})
            await frames_until(phone, 5)
            await laptop.ws.close(1000)  # on purpose: as a tab closed
        rest = await phone.until_end("f1", timeout=60)
    assert rest[-1]["data"]["status"] == "completed"
    assert reference.endswith(text_of(rest)[-20:])


# -- failures --------------------------------------------------------------------------


async def test_followers_of_a_killed_node_get_stream_interrupted_within_the_bound(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(
        tmp_path, shared_redis.url, nodes=3, tokens=600, delay_ms=DELAY_MS
    ) as (a, b, c):
        async with client_of(b) as phone:
            async with client_of(a) as laptop:
                await laptop.send(ask("k1"))
                await frames_until(laptop, 3)
                await phone.send({"type": "resume", "request_id": "k1", "last_seq": 0})
                seen = await frames_until(phone, 5)
            a.kill()
            killed = time.monotonic()
            rest = await phone.until_end("k1", timeout=30)
            took = time.monotonic() - killed
        async with client_of(c) as later:
            await later.send({"type": "resume", "request_id": "k1", "last_seq": 0})
            replay = await later.until_end("k1", timeout=30)
    frames = seen + rest
    assert seqs(frames) == list(range(1, seqs(frames)[-1] + 1)), "no gap, no repeat"
    errors = of_type(rest, "error")
    assert [e["data"]["error_type"] for e in errors] == ["stream_interrupted"]
    assert rest[-1]["data"]["status"] == "error"
    assert took < 10, f"followers waited {took:.1f} s (the contract: under 10 s by default)"
    assert replay[-1]["seq"] == rest[-1]["seq"]
    assert of_type(replay, "error")[-1]["data"]["error_type"] == "stream_interrupted"


async def test_a_finished_request_replays_elsewhere_until_its_retention_passes(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(
        tmp_path,
        shared_redis.url,
        tokens=10,
        delay_ms=1,
        extra_config="[streams]\nlog_retention_seconds = 3\n",
    ) as (a, b):
        async with client_of(a) as laptop:
            await laptop.send(ask("t1"))
            whole = await laptop.until_end("t1")
        async with client_of(b) as phone:
            await phone.send({"type": "resume", "request_id": "t1", "last_seq": 0})
            replay = await phone.until_end("t1")
            await asyncio.sleep(3.5)  # the retention, a stated duration, not a wait for work
            await phone.send({"type": "resume", "request_id": "t1", "last_seq": 0})
            gone = await phone.recv(10)
    assert [f["seq"] for f in replay] == [f["seq"] for f in whole]
    assert text_of(replay) == text_of(whole)
    assert gone["data"]["error_type"] == "unknown_request"


async def test_a_user_s_rate_limit_holds_over_requests_alternating_between_nodes(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    limits = "[limits]\nrequests_per_minute_per_user = 4\n"
    async with gateway_cluster(
        tmp_path, shared_redis.url, tokens=2, delay_ms=1, extra_config=limits
    ) as (a, b):
        outcomes = []
        for index in range(6):
            node = (a, b)[index % 2]
            async with client_of(node) as client:
                await client.send(ask(f"q{index}"))
                frame = await client.recv(10)
                outcomes.append(frame["event_type"])
                if frame["event_type"] != "error":
                    await client.until_end(f"q{index}")
                else:
                    outcomes[-1] = frame["data"]["error_type"]
    assert outcomes == ["stream_start"] * 4 + ["rate_limited"] * 2


async def test_a_user_s_stream_cap_holds_over_nodes(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    limits = "[limits]\nmax_streams_per_user = 2\n"
    async with (
        gateway_cluster(
            tmp_path, shared_redis.url, tokens=600, delay_ms=DELAY_MS, extra_config=limits
        ) as (a, b),
        client_of(a) as first,
        client_of(b) as second,
    ):
        await first.send(ask("m1"))
        await frames_until(first, 1)
        await second.send(ask("m2"))
        await frames_until(second, 1)
        await first.send(ask("m3"))
        refused = await first.recv(10)
        while refused.get("request_id") != "m3":
            refused = await first.recv(10)
    assert refused["event_type"] == "error"
    assert refused["data"]["error_type"] == "too_many_streams"


# -- Redis restarted, several workers ----------------------------------------------------

DOCUMENTED_ENDS = ("not_recovered", "stream_interrupted", "unknown_request", "backend_unavailable")


async def resume_until_end(
    nodes: list[NodeProcess], request_id: str, held: list[dict[str, Any]], within: float = 60
) -> list[dict[str, Any]]:
    """Resume `request_id` after the last seq of `held`, on each node in turn, until its
    `stream_end` or an error that ends what can be had of it; what each attempt brought."""
    deadline = time.monotonic() + within
    frames = list(held)
    attempt = 0
    while time.monotonic() < deadline:
        node = nodes[attempt % len(nodes)]
        attempt += 1
        try:
            async with client_of(node) as client:
                last = seqs(frames)[-1] if seqs(frames) else 0
                await client.send({"type": "resume", "request_id": request_id, "last_seq": last})
                while True:
                    # A stall is a hang, never a reason to try again: it fails the test.
                    try:
                        frame = await client.recv(15)
                    except TimeoutError:
                        raise AssertionError(
                            f"resume on node {nodes.index(node)} stalled after {frames[-3:]}"
                        ) from None
                    frames.append(frame)
                    if frame["event_type"] == "stream_end":
                        return frames
                    if frame["event_type"] == "error" and frame.get("seq") is None:
                        if frame["data"]["error_type"] == "backend_unavailable":
                            frames.pop()  # Redis is not back yet: try again
                            break
                        return frames
        except (ConnectionError, InvalidStatus):
            pass  # a node refusing while Redis is away
        await asyncio.sleep(0.2)
    raise AssertionError(f"{request_id} neither ended nor failed within {within} s: {frames}")


async def test_redis_restarted_mid_stream_ends_in_exact_text_or_a_typed_error(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    async with gateway_cluster(tmp_path, own_redis.url, tokens=100, delay_ms=30) as (a, b):
        reference = await whole_text(tokens=100, delay_ms=30)
        async with client_of(a) as laptop:
            await laptop.send(ask("x1"))
            held = await frames_until(laptop, 10)
        own_redis.kill()
        own_redis.start()  # empty: it keeps nothing on disk
        frames = await resume_until_end([b, a], "x1", held)
        # The nodes live and serve new requests once Redis is back.
        async with client_of(b) as later:
            fresh = await later.ask("hi", request_id="after", config={"options": {"tokens": 5}})
    numbered = seqs(frames)
    assert numbered == sorted(set(numbered)), "no repeat, no reordering"
    assert numbered == list(range(1, numbered[-1] + 1)), "no gap"
    end = frames[-1]
    if end["event_type"] == "stream_end" and end["data"]["status"] == "completed":
        assert text_of(frames) == reference
    else:
        error = [f for f in frames if f["event_type"] == "error"][-1]
        assert error["data"]["error_type"] in DOCUMENTED_ENDS
        assert reference.startswith(text_of(frames))
    assert fresh[-1]["data"]["status"] == "completed"


async def test_resumes_over_two_workers_are_exact_whichever_worker_takes_them(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with gateway_cluster(
        tmp_path, shared_redis.url, nodes=1, tokens=200, delay_ms=20, args=["--workers", "2"]
    ) as (node,):
        reference = await whole_text(tokens=200, delay_ms=20)
        frames: list[dict[str, Any]] = []
        workers: set[str] = set()
        async with client_of(node) as first:
            await first.send(ask("w1"))
            frames += await frames_until(first, 5)
        # Each resume is a new connection, taken by whichever worker accepts it first.
        while frames[-1]["event_type"] != "stream_end":
            async with client_of(node) as again:
                workers.add(again.ws.response.headers["tokenwire-node"])
                last = seqs(frames)[-1]
                await again.send({"type": "resume", "request_id": "w1", "last_seq": last})
                count = len(of_type(frames, "token")) + 5
                while len(of_type(frames, "token")) < count and frames[-1]["event_type"] != (
                    "stream_end"
                ):
                    frames.append(await again.recv(30))
    assert seqs(frames) == list(range(1, seqs(frames)[-1] + 1))
    assert text_of(frames) == reference
    assert frames[-1]["data"]["status"] == "completed"
    assert len(workers) == 2, f"every resume landed on one worker: {workers}"


async def test_another_node_lists_the_user_s_requests_and_cancels_a_background_response(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    async with (
        gateway_cluster(tmp_path, shared_redis.url, tokens=600, delay_ms=DELAY_MS) as (a, b),
        client_of(a) as laptop,
        client_of(b) as phone,
    ):
        await laptop.send(ask("listed"))
        await frames_until(laptop, 1)
        on_a = openai.AsyncOpenAI(base_url=a.url + "/v1", api_key="unused", max_retries=0)
        on_b = openai.AsyncOpenAI(base_url=b.url + "/v1", api_key="unused", max_retries=0)
        try:
            started = await on_a.responses.create(
                model="simulated", input=STORY, background=True, user="ada"
            )
            cancelled = await on_b.responses.cancel(started.id)
            final = await on_a.responses.retrieve(started.id)
        finally:
            await on_a.close()
            await on_b.close()
        await phone.send({"type": "list_requests"})
        listing = await phone.recv(10)
    assert cancelled.status == "cancelled"
    assert final.status == "cancelled"
    assert listing["data"]["status"] == "request_list"
    assert "listed" in [r["request_id"] for r in listing["data"]["requests"]]
