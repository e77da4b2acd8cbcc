"""Streams that outlive their connection: the grace window, resume, a second device,
compact hydration, retention, and the same streams over Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer
from tests.support.server import (
    RunningServer,
    WsClient,
    dropping_client,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.core.spec import RequestKey
from tokenwire.settings import load_settings

TOKENS = {"options": {"tokens": 300, "delay_ms": 3}}
JSON_CONTENT = {"content-type": "application/json"}
# Still running well after a disconnect has been seen, however busy the machine.
LONGER = {"options": {"tokens": 300, "delay_ms": 10}}


def request(request_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "tell me a long story",
        "request_id": request_id,
        "config": config or TOKENS,
        "stream_config": {"granularity": "token"},
    }


def tokens(frames: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(f["seq"], f["data"]["token"]) for f in of_type(frames, "token")]


async def until(client: WsClient, condition: Any, timeout: float = 10) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.recv(timeout)
            frames.append(frame)
            if condition(frame):
                return frames


def at_token(index: int) -> Any:
    return lambda f: f["event_type"] == "token" and f["data"]["index"] == index


def key(request_id: str, user: str = "anonymous") -> RequestKey:
    return RequestKey(user, request_id)


@contextlib.asynccontextmanager
async def server_with(**streams: Any) -> AsyncIterator[RunningServer]:
    async with running_server(simulated_settings(streams=streams)) as server:
        yield server


@contextlib.asynccontextmanager
async def raw_client(server: RunningServer, query: str = "") -> AsyncIterator[WsClient]:
    """A client the test may drop without a close frame (`client.ws.transport.abort()`)."""
    async with dropping_client(server.ws_url + query) as client:
        yield client


# -- dropped and resumed ---------------------------------------------------------


async def test_a_dropped_link_resumed_on_a_new_connection_misses_and_repeats_nothing() -> None:
    async with server_with(resume_grace_seconds=10) as server:
        async with ws_client(server) as reference:
            await reference.send(request("whole"))
            whole = await reference.until_end("whole")
        async with raw_client(server) as client:
            await client.send(request("r1"))
            before = await until(client, at_token(40))
            client.ws.transport.abort()  # no close frame: a lost link
        await asyncio.sleep(0.1)
        assert server.gateway.is_running(key("r1"))
        assert len(server.gateway.sessions) == 0
        async with ws_client(server) as again:
            last = before[-1]["seq"]
            await again.send({"type": "resume", "request_id": "r1", "last_seq": last})
            after = await again.until_end("r1")
    received = tokens(before) + tokens(after)
    assert [seq for seq, _ in received] == sorted({seq for seq, _ in received})
    assert "".join(t for _, t in received) == "".join(t for _, t in tokens(whole))
    assert after[-1]["data"]["status"] == "completed"
    assert [f["seq"] for f in after] == list(range(last + 1, after[-1]["seq"] + 1))


async def test_a_close_with_1000_cancels_at_once_and_closes_the_upstream() -> None:
    answer = openai_answer([f" w{n}" for n in range(400)], 5, 400, frame_delay=0.01)
    async with ScriptedUpstream(answer) as upstream:
        settings = load_settings(
            None,
            {
                "providers": [
                    {"name": "up", "kind": "openai", "model": "m", "base_url": upstream.url + "/v1"}
                ],
                "streams": {"resume_grace_seconds": 10},
            },
        )
        async with running_server(settings) as server, raw_client(server) as client:
            await client.send({**request("r1"), "config": {}})
            await until(client, lambda f: f["event_type"] == "token")
            await client.ws.close(1000)
            exchange = await upstream.exchange()
            # Not after the grace (10 s), nor at the answer's end (400 frames, 4 s).
            await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)
            assert exchange.frames_sent < 400
            assert not server.gateway.is_running(key("r1"))


async def test_a_close_with_1001_leaves_the_stream_running_for_the_grace() -> None:
    async with server_with(resume_grace_seconds=10) as server:
        async with raw_client(server) as client:
            await client.send(request("r1", LONGER))
            await until(client, at_token(5))
            await client.ws.close(1001)  # what a browser sends when the page reloads
        await eventually(lambda: len(server.gateway.sessions) == 0)  # the server saw it
        assert server.gateway.is_running(key("r1"))
        assert server.gateway.in_grace == 1
        async with ws_client(server) as again:
            await again.send({"type": "resume", "request_id": "r1", "last_seq": 0})
            frames = await again.until_end("r1")
        assert frames[-1]["data"]["status"] == "completed"


async def test_when_nobody_reattaches_the_grace_ends_in_a_cancel_that_closes_the_upstream() -> None:
    answer = openai_answer([f" w{n}" for n in range(400)], 5, 400, frame_delay=0.01)
    async with ScriptedUpstream(answer) as upstream:
        settings = load_settings(
            None,
            {
                "providers": [
                    {"name": "up", "kind": "openai", "model": "m", "base_url": upstream.url + "/v1"}
                ],
                "streams": {"resume_grace_seconds": 0.3},
            },
        )
        async with running_server(settings) as server:
            async with raw_client(server) as client:
                await client.send({**request("r1"), "config": {}})
                await until(client, lambda f: f["event_type"] == "token")
                lost = time.monotonic()
                client.ws.transport.abort()
            exchange = await upstream.exchange()
            await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)
            assert exchange.client_closed_at is not None
            # After the grace (0.3 s), and long before the answer's end (400 frames, 4 s).
            assert exchange.client_closed_at - lost > 0.25
            assert exchange.frames_sent < 400
            log = await server.gateway.logs.get(key("r1"))
            assert log is not None
            assert log.status == "cancelled"


async def test_a_zero_grace_cancels_on_any_disconnect() -> None:
    async with server_with(resume_grace_seconds=0) as server:
        async with raw_client(server) as client:
            await client.send(request("r1"))
            await until(client, at_token(2))
            client.ws.transport.abort()
        await eventually(lambda: not server.gateway.is_running(key("r1")), 1)


async def test_a_second_device_follows_the_same_stream_and_keeps_it_alive() -> None:
    async with (
        server_with(resume_grace_seconds=10) as server,
        raw_client(server, "?user_id=ada") as phone,
        raw_client(server, "?user_id=ada") as laptop,
    ):
        await phone.send(request("shared"))
        await until(phone, at_token(3))
        await laptop.send({"type": "resume", "request_id": "shared", "last_seq": 0})
        on_laptop = await until(laptop, at_token(10))
        await phone.ws.close(1000)  # on purpose, but the laptop still follows
        on_laptop += await laptop.until_end("shared")
        assert on_laptop[-1]["data"]["status"] == "completed"
        assert [f["seq"] for f in on_laptop] == list(range(1, len(on_laptop) + 1))


async def test_a_resume_on_the_connection_that_follows_the_request_sends_each_frame_once() -> None:
    async with server_with() as server, ws_client(server) as client:
        await client.send(request("r1"))
        await until(client, at_token(10))
        await client.send({"type": "resume", "request_id": "r1", "last_seq": 0})
        frames = await client.until_end("r1")
    replayed = frames[[f["seq"] for f in frames].index(1) :]
    assert [f["seq"] for f in replayed] == list(range(1, len(replayed) + 1))
    assert len(of_type(replayed, "token")) == 300


async def test_resuming_a_followed_request_again_does_not_count_it_twice_against_the_limit() -> (
    None
):
    settings = simulated_settings(limits={"max_streams_per_connection": 2})
    async with running_server(settings) as server, ws_client(server) as client:
        await client.send(request("r1"))
        await until(client, at_token(1))
        for _ in range(3):
            await client.send({"type": "resume", "request_id": "r1", "last_seq": 10**6})
        await client.send(request("r2"))
        answer = await until(
            client,
            lambda f: f.get("request_id") == "r2" and f["event_type"] in ("stream_start", "error"),
        )
        assert answer[-1]["event_type"] == "stream_start"


async def test_a_failed_resume_on_the_connection_that_follows_leaves_it_following() -> None:
    # Given a connection following a request whose log has dropped its first events
    settings = simulated_settings(streams={"max_log_bytes": 1024, "resume_grace_seconds": 0})
    async with running_server(settings) as server, ws_client(server) as client:
        await client.send(request("r1"))
        before = await until(client, at_token(100))

        # When it asks for events that are gone
        await client.send({"type": "resume", "request_id": "r1", "last_seq": 0})
        frames = await client.until_end("r1")

    # Then it is told so, and still gets the rest of the answer, each event once
    errors = of_type(frames, "error")
    assert [e["data"]["error_type"] for e in errors] == ["not_recovered"]
    seqs = [f["seq"] for f in before + frames if f.get("request_id") == "r1" and f.get("seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert frames[-1]["data"]["status"] == "completed"
    assert len(of_type(before + frames, "token")) == 300


async def test_another_user_cannot_resume_or_learn_that_a_request_exists() -> None:
    async with (
        server_with() as server,
        ws_client(server, "?user_id=ada") as ada,
        ws_client(server, "?user_id=mallory") as mallory,
    ):
        await ada.send(request("mine"))
        await until(ada, at_token(1))
        await mallory.send({"type": "resume", "request_id": "mine", "last_seq": 0})
        error = await mallory.recv()
        assert error["data"]["error_type"] == "unknown_request"
        await mallory.send({"type": "resume", "request_id": "never-was", "last_seq": 0})
        other = await mallory.recv()
        assert other["data"]["error"].replace("never-was", "mine") == error["data"]["error"]


# -- after the end -------------------------------------------------------------------


async def test_a_finished_request_replays_to_its_end_until_its_retention_passes() -> None:
    async with server_with(log_retention_seconds=0.5) as server, ws_client(server) as client:
        await client.send(request("done", {"options": {"tokens": 10, "delay_ms": 0}}))
        original = await client.until_end("done")
        await client.send({"type": "resume", "request_id": "done", "last_seq": 3})
        replay = await client.until_end("done")
        assert replay == original[3:]
        await asyncio.sleep(0.6)
        await client.send({"type": "resume", "request_id": "done", "last_seq": 0})
        gone = await client.recv()
        assert gone["data"]["error_type"] == "unknown_request"
        assert gone["request_id"] == "done"


async def test_events_dropped_past_the_log_bound_are_not_recovered() -> None:
    async with server_with(max_log_bytes=4096) as server, ws_client(server) as client:
        await client.send(request("big", {"options": {"tokens": 300, "delay_ms": 0}}))
        await client.until_end("big")
        await client.send({"type": "resume", "request_id": "big", "last_seq": 0})
        error = await client.recv()
        assert error["data"]["error_type"] == "not_recovered"
        log = await server.gateway.logs.get(key("big"))
        assert log is not None
        await client.send(
            {"type": "resume", "request_id": "big", "last_seq": log.first_held_seq - 1}
        )
        tail = await client.until_end("big")
        assert tail[0]["seq"] == log.first_held_seq
        async with httpx.AsyncClient() as http:
            stats = (await http.get(server.url + "/api/streaming/stats")).json()["streams"]
        assert stats["not_recovered"] == 1
        assert stats["resumes_served"] == 1


# -- compact hydration ----------------------------------------------------------------


async def test_compact_hydration_sends_the_text_so_far_as_one_chunk_then_live_frames() -> None:
    async with server_with() as server, raw_client(server) as client:
        await client.send(
            {
                **request("r1", {"options": {"tokens": 200, "delay_ms": 5}}),
                "stream_config": {
                    "granularity": "token",
                    "progress_every": 10,
                },
            }
        )
        seen = await until(client, at_token(60))
        async with ws_client(server) as reloaded:
            await reloaded.send(
                {"type": "resume", "request_id": "r1", "last_seq": 0, "compact": True}
            )
            frames = await reloaded.until_end("r1")
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    merged = [f for f in frames if f["event_type"] == "chunk"]
    assert len(merged) == 1
    chunk = merged[0]["data"]
    assert chunk["compacted"] >= 61
    live = tokens([f for f in frames if f["seq"] > merged[0]["seq"]])
    text_before = "".join(t for _, t in tokens(seen))
    assert chunk["chunk"].startswith(text_before)
    whole = chunk["chunk"] + "".join(t for _, t in live)
    assert len(whole.split()) == 200
    held_progress = [
        f for f in frames if f["event_type"] == "progress" and f["seq"] < merged[0]["seq"]
    ]
    assert len(held_progress) <= 1
    kinds = [f["event_type"] for f in frames if f["seq"] < merged[0]["seq"]]
    assert kinds[:3] == ["stream_start", "typing_indicator", "metadata"]


async def test_a_client_that_resumes_after_a_compact_replay_gets_no_text_twice() -> None:
    quiet = {"granularity": "token", "progress_every": 0}
    async with server_with(resume_grace_seconds=10) as server:
        async with raw_client(server) as starter:
            await starter.send({**request("r1"), "stream_config": quiet})
            await until(starter, at_token(30))
            starter.ws.transport.abort()
        async with raw_client(server) as reloaded:  # a page that reloads: compact, from 0
            await reloaded.send(
                {"type": "resume", "request_id": "r1", "last_seq": 0, "compact": True}
            )
            replay = await until(reloaded, lambda f: f["event_type"] == "chunk")
            reloaded.ws.transport.abort()  # and loses its link at once
        last_seq = max(f["seq"] for f in replay)
        async with ws_client(server) as again:
            await again.send({"type": "resume", "request_id": "r1", "last_seq": last_seq})
            rest = await again.until_end("r1")
        log = await server.gateway.logs.get(key("r1"))
    assert log is not None
    whole = "".join(r.data["token"] for r in log.records() if r.event_type.value == "token")
    received = replay[-1]["data"]["chunk"] + "".join(t for _, t in tokens(rest))
    assert received == whole
    assert rest[-1]["data"]["status"] == "completed"


# -- listing ------------------------------------------------------------------------


async def test_a_device_that_did_not_start_a_request_can_list_the_user_s_requests() -> None:
    async with (
        server_with() as server,
        ws_client(server, "?user_id=ada") as phone,
        ws_client(server, "?user_id=ada") as laptop,
        ws_client(server, "?user_id=bob") as bob,
    ):
        await phone.send(request("old", {"options": {"tokens": 3, "delay_ms": 0}}))
        await phone.until_end("old")
        await phone.send({**request("new"), "conversation_id": "chat-1"})
        await until(phone, at_token(1))
        await bob.send(request("bobs", {"options": {"tokens": 3, "delay_ms": 0}}))
        await bob.until_end("bobs")
        await laptop.send({"type": "list_requests"})
        listing = await laptop.recv()
        assert listing["data"]["status"] == "request_list"
        rows = listing["data"]["requests"]
        assert [(r["request_id"], r["status"], r["conversation_id"]) for r in rows] == [
            ("new", "running", "chat-1"),
            ("old", "completed", None),
        ]
        async with httpx.AsyncClient() as http:
            body = (await http.get(server.url + "/api/streams?user_id=ada")).json()
        assert [r["request_id"] for r in body["requests"]] == ["new", "old"]


# -- Server-Sent Events ----------------------------------------------------------------


def sse_url(server: RunningServer, path: str, user: str = "ada") -> str:
    return f"{server.url}{path}?user_id={user}"


async def test_sse_streams_the_same_events_and_resumes_with_last_event_id() -> None:
    async with server_with(resume_grace_seconds=10) as server, httpx.AsyncClient() as http:
        body = {
            "prompt": "tell me a long story",
            "request_id": "s1",
            "config": TOKENS,
            "stream_config": {"granularity": "token"},
        }
        first: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(http, "POST", sse_url(server, "/api/streams"), json=body) as events:
            assert events.response.headers["tokenwire-request-id"] == "s1"
            async for event in events.aiter_sse():
                first.append((event.id, json.loads(event.data)))
                assert event.event == first[-1][1]["event_type"]
                if event.event == "token" and first[-1][1]["data"]["index"] == 30:
                    break  # the client goes away mid-stream
        await asyncio.sleep(0.1)
        assert server.gateway.is_running(key("s1", "ada"))
        last = first[-1][0]
        rest: list[dict[str, Any]] = []
        async with aconnect_sse(
            http, "GET", sse_url(server, "/api/streams/s1/events"), headers={"Last-Event-ID": last}
        ) as events:
            async for event in events.aiter_sse():
                rest.append(json.loads(event.data))
    frames = [f for _, f in first] + rest
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-1]["event_type"] == "stream_end"
    assert frames[-1]["data"]["status"] == "completed"
    assert len(of_type(frames, "token")) == 300


async def test_eventsource_reattaches_with_the_query_parameter() -> None:
    async with server_with() as server, ws_client(server, "?user_id=ada") as client:
        await client.send(request("w1", {"options": {"tokens": 20, "delay_ms": 0}}))
        whole = await client.until_end("w1")
        async with httpx.AsyncClient() as http:
            response = await http.get(
                sse_url(server, "/api/streams/w1/events") + "&last_event_id=10"
            )
    assert response.status_code == 200
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == [f["seq"] for f in whole[10:]]
    assert response.text.startswith("retry: ")


async def read_sse(
    http: httpx.AsyncClient, method: str, url: str, into: list[dict[str, Any]], **kwargs: Any
) -> None:
    async with aconnect_sse(http, method, url, **kwargs) as events:
        async for event in events.aiter_sse():
            into.append(json.loads(event.data))


async def closed_with_1000_on_another_device(server: RunningServer, request_id: str) -> None:
    """Another device of the user follows the request, then closes on purpose."""
    async with ws_client(server, "?user_id=ada") as phone:
        await phone.send({"type": "resume", "request_id": request_id, "last_seq": 0})
        await until(phone, at_token(5))
        await phone.ws.close(1000)


async def test_a_stream_started_over_sse_outlives_another_device_s_1000_close() -> None:
    async with server_with(resume_grace_seconds=10) as server, httpx.AsyncClient() as http:
        body = {k: v for k, v in request("s1").items() if k != "type"}
        frames: list[dict[str, Any]] = []
        reader = asyncio.create_task(
            read_sse(http, "POST", sse_url(server, "/api/streams"), frames, json=body)
        )
        await eventually(lambda: bool(frames))
        await closed_with_1000_on_another_device(server, "s1")
        await asyncio.wait_for(reader, 20)
    assert frames[-1]["event_type"] == "stream_end"
    assert frames[-1]["data"]["status"] == "completed"


async def test_a_stream_re_attached_over_sse_outlives_another_device_s_1000_close() -> None:
    # The lost starter counts as following only until its grace ends (3 s), well before
    # the answer does (10 s): from then on only the SSE re-attach keeps the stream.
    async with server_with(resume_grace_seconds=3) as server, httpx.AsyncClient() as http:
        async with raw_client(server, "?user_id=ada") as starter:
            await starter.send(request("s1", {"options": {"tokens": 1000, "delay_ms": 10}}))
            seen = await until(starter, at_token(5))
            starter.ws.transport.abort()  # lost: the stream waits for the grace
        frames: list[dict[str, Any]] = []
        url = sse_url(server, "/api/streams/s1/events")
        headers = {"Last-Event-ID": str(seen[-1]["seq"])}
        reader = asyncio.create_task(read_sse(http, "GET", url, frames, headers=headers))
        await eventually(lambda: bool(frames))
        await closed_with_1000_on_another_device(server, "s1")
        await asyncio.wait_for(reader, 20)
    assert frames[-1]["event_type"] == "stream_end"
    assert frames[-1]["data"]["status"] == "completed"


async def test_an_sse_re_attach_with_compact_gets_the_text_so_far_as_one_chunk() -> None:
    async with server_with() as server, ws_client(server, "?user_id=ada") as client:
        quiet = {"granularity": "token", "progress_every": 0}
        await client.send(
            {**request("w1", {"options": {"tokens": 20, "delay_ms": 0}}), "stream_config": quiet}
        )
        whole = await client.until_end("w1")
        async with httpx.AsyncClient() as http:
            response = await http.get(sse_url(server, "/api/streams/w1/events") + "&compact=true")
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    (merged,) = of_type(events, "chunk")
    assert merged["data"]["chunk"] == "".join(t for _, t in tokens(whole))
    assert merged["data"]["compacted"] == 20
    assert merged["seq"] == of_type(whole, "token")[-1]["seq"]
    assert of_type(events, "token") == []
    assert events[-1]["event_type"] == "stream_end"


async def test_sse_delete_cancels_and_a_bad_body_is_refused_before_any_stream() -> None:
    async with server_with() as server, httpx.AsyncClient() as http:
        body = {"prompt": "x", "request_id": "del-1", "config": TOKENS}
        async with aconnect_sse(http, "POST", sse_url(server, "/api/streams"), json=body) as events:
            kinds = []
            async for event in events.aiter_sse():
                kinds.append(event.event)
                if event.event == "chunk":
                    deleted = await http.delete(sse_url(server, "/api/streams/del-1"))
                    assert deleted.status_code == 200
                if event.event == "stream_end":
                    assert json.loads(event.data)["data"]["status"] == "cancelled"
        assert kinds[-1] == "stream_end"
        for bad, status in ((b"{nope", 400), (b'{"prompt": ""}', 400), (b"[1]", 400)):
            response = await http.post(
                sse_url(server, "/api/streams"), content=bad, headers=JSON_CONTENT
            )
            assert response.status_code == status
            assert response.headers["content-type"] == "application/json"
            assert "error" in response.json()
        gone = await http.delete(sse_url(server, "/api/streams/no-such"))
        assert gone.status_code == 404
        assert server.gateway.stats.total_streams == 1


async def test_sse_sends_heartbeats_while_quiet() -> None:
    async with (
        server_with(sse_heartbeat_seconds=0.1) as server,
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            sse_url(server, "/api/streams"),
            json={"prompt": "x", "config": {"options": {"tokens": 3, "delay_ms": 350}}},
        ) as response,
    ):
        text = "".join([piece async for piece in response.aiter_text()])
    assert text.count(": heartbeat") >= 2


async def test_one_log_every_transport_websocket_to_sse_and_back() -> None:
    async with server_with(resume_grace_seconds=10) as server, httpx.AsyncClient() as http:
        async with raw_client(server, "?user_id=ada") as client:
            await client.send(request("x1"))
            ws_part = await until(client, at_token(20))
            client.ws.transport.abort()
        sse_part: list[dict[str, Any]] = []
        async with aconnect_sse(
            http,
            "GET",
            sse_url(server, "/api/streams/x1/events"),
            headers={"Last-Event-ID": str(ws_part[-1]["seq"])},
        ) as events:
            async for event in events.aiter_sse():
                sse_part.append(json.loads(event.data))
                if event.event == "token" and sse_part[-1]["data"]["index"] == 60:
                    break
        async with ws_client(server, "?user_id=ada") as back:
            await back.send({"type": "resume", "request_id": "x1", "last_seq": sse_part[-1]["seq"]})
            ws_again = await back.until_end("x1")
    frames = ws_part + sse_part + ws_again
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert len(of_type(frames, "token")) == 300
