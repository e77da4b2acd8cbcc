"""Finished streams end: an SSE re-attach stops after the stream_end (204 when nothing is
left, which stops a browser's EventSource), a WebSocket resume past the end is refused, and a
follower that left with 1001 or a lost link counts as following until its grace ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.support.browser import offline_page
from tests.support.server import (
    RunningServer,
    WsClient,
    dropping_client,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.core.spec import RequestKey

QUICK = {"options": {"tokens": 20, "delay_ms": 0}}
LONG = {"options": {"tokens": 300, "delay_ms": 10}}


def request(request_id: str, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "tell me a story",
        "request_id": request_id,
        "config": config,
        "stream_config": {"granularity": "token"},
    }


def events_url(server: RunningServer, request_id: str, user: str = "ada") -> str:
    return f"{server.url}/api/streams/{request_id}/events?user_id={user}"


@contextlib.asynccontextmanager
async def finished_request(
    request_id: str, **limits: Any
) -> AsyncIterator[tuple[RunningServer, list[dict[str, Any]]]]:
    """A server holding the finished request `request_id` of ada's, and its frames."""
    settings = simulated_settings(limits=limits, streams={"resume_grace_seconds": 10})
    async with running_server(settings) as server:
        async with ws_client(server, "?user_id=ada") as client:
            await client.send(request(request_id, QUICK))
            frames = await client.until_end(request_id)
        yield server, frames


def open_connections(server: RunningServer) -> int:
    connections = server.server.config.app.state.access.connections  # type: ignore[union-attr]
    total: int = connections.total
    return total


# -- SSE ------------------------------------------------------------------------------


async def test_an_sse_re_attach_ends_once_it_has_sent_the_stream_end() -> None:
    async with finished_request("f1") as (server, frames), httpx.AsyncClient() as http:
        # A response that did not end would run into the read timeout.
        response = await http.get(
            events_url(server, "f1"), headers={"Last-Event-ID": "3"}, timeout=10
        )
    assert response.status_code == 200
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == [f["seq"] for f in frames[3:]]
    assert ": heartbeat" not in response.text


async def test_an_sse_re_attach_with_nothing_left_is_204_and_holds_no_slot() -> None:
    async with (
        finished_request("f1", max_connections_per_user=2) as (server, frames),
        httpx.AsyncClient() as http,
    ):
        end = str(frames[-1]["seq"])
        for last_event_id in (end, str(int(end) + 5)):
            for _ in range(3):  # more than the user's two connections
                response = await http.get(
                    events_url(server, "f1"), headers={"Last-Event-ID": last_event_id}, timeout=10
                )
                assert response.status_code == 204
                assert response.content == b""
        assert open_connections(server) == 0


async def test_an_eventsource_left_open_after_stream_end_stops_reconnecting() -> None:
    async with (
        finished_request("f1", max_connections_per_user=2) as (server, _),
        offline_page(server.url) as offline,
    ):
        page = offline.page
        seen: list[dict[str, str]] = []
        page.on(
            "request",
            lambda r: seen.append(r.headers) if "/api/streams/f1/events" in r.url else None,
        )
        # A page of the server's own origin that opens no connection of its own (the chat
        # page at `/` holds a WebSocket).
        await page.goto(server.url + "/api")
        # A page that reads to the end and never calls close(), as pages do.
        await page.evaluate(
            """url => {
                window.received = [];
                window.source = new EventSource(url);
                window.source.addEventListener("stream_end", e => window.received.push(e.data));
            }""",
            "/api/streams/f1/events?user_id=ada",
        )

        # Its own reconnect comes after the `retry:` (3 s); the answer to it must stop it.
        await page.wait_for_function(
            "window.source.readyState === EventSource.CLOSED", timeout=20_000
        )
        received = await page.evaluate("window.received.length")
    assert received == 1
    assert len(seen) == 2
    assert open_connections(server) == 0


# -- WebSocket resume -----------------------------------------------------------------


async def test_a_websocket_resume_past_the_stream_end_is_invalid_request() -> None:
    async with finished_request("f1") as (server, frames), ws_client(server, "?user_id=ada") as c:
        end = frames[-1]["seq"]
        await c.send({"type": "resume", "request_id": "f1", "last_seq": end + 1})
        error = await c.recv()
    assert error["event_type"] == "error"
    assert error["data"]["error_type"] == "invalid_request"
    assert error["request_id"] == "f1"
    assert f"seq {end}" in error["data"]["error"]


async def test_a_websocket_resume_at_the_stream_end_has_nothing_to_send() -> None:
    async with finished_request("f1") as (server, frames), ws_client(server, "?user_id=ada") as c:
        await c.send({"type": "resume", "request_id": "f1", "last_seq": frames[-1]["seq"]})
        await c.send({"type": "ping", "timestamp": 1})
        answer = await c.recv()
    assert answer["type"] == "pong"


# -- followers that left ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def device(server: RunningServer) -> AsyncIterator[WsClient]:
    async with dropping_client(server.ws_url + "?user_id=ada") as client:
        yield client


async def until_token(client: WsClient, index: int) -> list[dict[str, Any]]:
    frames = []
    while True:
        frames.append(await client.recv(10))
        if frames[-1]["event_type"] == "token" and frames[-1]["data"]["index"] == index:
            return frames


async def test_a_device_that_reloads_keeps_the_stream_when_the_other_then_closes_with_1000() -> (
    None
):
    settings = simulated_settings(streams={"resume_grace_seconds": 10})
    async with running_server(settings) as server:
        async with device(server) as laptop, device(server) as phone:
            await laptop.send(request("shared", LONG))
            await until_token(laptop, 3)
            await phone.send({"type": "resume", "request_id": "shared", "last_seq": 0})
            seen = await until_token(phone, 5)
            await phone.ws.close(1001)  # the phone's page reloads
            await eventually(lambda: len(server.gateway.sessions) == 1)
            await laptop.ws.close(1000)  # then the laptop closes its tab
            await eventually(lambda: len(server.gateway.sessions) == 0)
        async with device(server) as reloaded:
            await reloaded.send(
                {"type": "resume", "request_id": "shared", "last_seq": seen[-1]["seq"]}
            )
            rest = await reloaded.until_end("shared")
    assert rest[-1]["data"]["status"] == "completed"


async def test_a_follower_that_left_stops_counting_when_its_grace_ends() -> None:
    settings = simulated_settings(streams={"resume_grace_seconds": 0.3})
    async with running_server(settings) as server:
        async with device(server) as laptop:
            await laptop.send(request("shared", LONG))
            await until_token(laptop, 3)
            laptop.ws.transport.abort()  # a lost link
        await eventually(lambda: len(server.gateway.sessions) == 0)
        log = await server.gateway.logs.get(RequestKey("ada", "shared"))
        assert log is not None
        await eventually(lambda: log.finished)
    assert log.status == "cancelled"


# -- slots of cancelled streams --------------------------------------------------------


async def flood(client: WsClient, pairs: int) -> list[dict[str, Any]]:
    """Send `pairs` request-and-cancel pairs back to back; the frames until every one ended."""
    for n in range(pairs):
        await client.send(request(f"c{n}", LONG))
        await client.send({"type": "cancel_request", "request_id": f"c{n}"})
    frames: list[dict[str, Any]] = []
    while len(of_type(frames, "stream_end")) + len(of_type(frames, "error")) < pairs:
        frames.append(await client.recv(10))
    return frames


async def test_request_and_cancel_pairs_are_not_refused_for_cancelled_streams_per_connection() -> (
    None
):
    settings = simulated_settings(
        limits={"max_streams_per_connection": 2, "max_streams_per_user": 100}
    )
    async with running_server(settings) as server, ws_client(server, "?user_id=ada") as client:
        frames = await flood(client, 12)
    assert [e["data"]["error_type"] for e in of_type(frames, "error")] == []
    assert {e["data"]["status"] for e in of_type(frames, "stream_end")} == {"cancelled"}


async def test_request_and_cancel_pairs_are_not_refused_for_cancelled_streams_per_user() -> None:
    settings = simulated_settings(
        limits={"max_streams_per_connection": 100, "max_streams_per_user": 2}
    )
    async with running_server(settings) as server, ws_client(server, "?user_id=ada") as client:
        frames = await flood(client, 12)
    assert [e["data"]["error_type"] for e in of_type(frames, "error")] == []


async def test_a_cancelled_stream_still_ends_for_its_connection() -> None:
    settings = simulated_settings(limits={"max_streams_per_connection": 1})
    async with running_server(settings) as server, ws_client(server, "?user_id=ada") as client:
        await client.send(request("a", LONG))
        await until_token(client, 2)
        await client.send({"type": "cancel_request", "request_id": "a"})
        await client.send(request("b", QUICK))
        frames = await client.until_end("b")
    ends = {f["request_id"]: f["data"]["status"] for f in of_type(frames, "stream_end")}
    assert ends == {"a": "cancelled", "b": "completed"}
    assert json.dumps(of_type(frames, "error")) == "[]"
