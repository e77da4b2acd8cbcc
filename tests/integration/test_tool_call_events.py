"""Tool-call events end to end over real sockets, scripted by the simulated provider:
the same frames on WebSocket and SSE, and a resume (`last_seq`, `Last-Event-ID`) that
replays them exactly, with the ids the answer was given."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import aconnect_sse

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

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
TIME = {"name": "get_time", "arguments": {"zone": "Europe/Paris"}}
# Slow enough to be mid-call when the client goes away, however busy the machine.
CALLS = {
    "options": {
        "tool_calls": [WEATHER, TIME],
        "interleave": True,
        "fragment_chars": 2,
        "text_before": "Let me check.",
        "delay_ms": 10,
    }
}


def request(request_id: str) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "weather and time in Paris?",
        "request_id": request_id,
        "config": CALLS,
    }


@contextlib.asynccontextmanager
async def raw_client(server: RunningServer) -> AsyncIterator[WsClient]:
    """A client the test drops without a close frame (a lost link)."""
    async with dropping_client(server.ws_url) as client:
        yield client


def check_tool_events(frames: list[dict[str, Any]]) -> None:
    """A whole answer's frames: seq without gap, calls whose fragments add up to their
    ends, and a stream_end that lists them."""
    assert [f["seq"] for f in frames] == list(range(frames[0]["seq"], frames[-1]["seq"] + 1))
    starts = [f["data"] for f in of_type(frames, "tool_call_start")]
    ends = sorted((f["data"] for f in of_type(frames, "tool_call_end")), key=lambda e: e["index"])
    assert [s["index"] for s in starts] == [0, 1]
    assert [s["name"] for s in starts] == ["get_weather", "get_time"]
    for start, end in zip(starts, ends, strict=True):
        fragments = [
            f["data"]["arguments"]
            for f in of_type(frames, "tool_call_delta")
            if f["data"]["index"] == start["index"]
        ]
        assert end == {**start, "arguments": "".join(fragments)}
    assert [json.loads(e["arguments"]) for e in ends] == [WEATHER["arguments"], TIME["arguments"]]
    end = frames[-1]
    assert end["event_type"] == "stream_end"
    assert end["data"]["status"] == "completed"
    assert end["data"]["finish_reason"] == "tool_calls"
    assert end["data"]["tool_calls"] == [
        {"id": e["id"], "name": e["name"], "arguments": e["arguments"]} for e in ends
    ]


async def test_a_websocket_resume_mid_call_replays_the_tool_events_exactly() -> None:
    settings = simulated_settings(streams={"resume_grace_seconds": 10})
    async with running_server(settings) as server:
        async with raw_client(server) as client:
            await client.send(request("t1"))
            before: list[dict[str, Any]] = []
            while len(of_type(before, "tool_call_delta")) < 3:
                before.append(await client.recv())
            client.ws.transport.abort()
        key = RequestKey("anonymous", "t1")
        await eventually(lambda: len(server.gateway.sessions) == 0)
        assert server.gateway.is_running(key)
        async with ws_client(server) as again:
            last = before[-1]["seq"]
            await again.send({"type": "resume", "request_id": "t1", "last_seq": last})
            after = await again.until_end("t1")
            # The finished request, replayed from its start, is what the two parts were.
            await again.send({"type": "resume", "request_id": "t1", "last_seq": 0})
            replay = await again.until_end("t1")

    whole = before + after
    check_tool_events(whole)
    assert of_type(before, "tool_call_end") == []  # the link was lost mid-call
    assert replay == whole
    text = "".join(f["data"]["chunk"] for f in of_type(whole, "chunk"))
    assert text == "Let me check."


async def test_sse_sends_the_same_tool_events_and_resumes_with_last_event_id() -> None:
    settings = simulated_settings(streams={"resume_grace_seconds": 10})
    async with running_server(settings) as server, httpx.AsyncClient() as http:
        url = f"{server.url}/api/streams?user_id=ada"
        body = {"prompt": "weather and time in Paris?", "request_id": "s1", "config": CALLS}
        first: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(http, "POST", url, json=body) as events:
            async for event in events.aiter_sse():
                first.append((event.id, json.loads(event.data)))
                assert event.event == first[-1][1]["event_type"]
                if len([f for _, f in first if f["event_type"] == "tool_call_delta"]) == 3:
                    break  # the client goes away mid-call
        rest: list[dict[str, Any]] = []
        events_url = f"{server.url}/api/streams/s1/events?user_id=ada"
        async with aconnect_sse(
            http, "GET", events_url, headers={"Last-Event-ID": first[-1][0]}
        ) as events:
            async for event in events.aiter_sse():
                rest.append(json.loads(event.data))

    frames = [f for _, f in first] + rest
    assert frames[0]["seq"] == 1
    check_tool_events(frames)
    assert [f for _, f in first if f["event_type"] == "tool_call_end"] == []
