"""Tool round trips on the WebSocket and on SSE (`POST /api/streams`), with the simulated
provider's scripted calls: ask with tools, receive the calls, send their results with the
conversation's id, receive the text answer. Pending calls, forced refusals and the
capabilities in `/api/providers`, over real sockets."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.server import of_type, running_server, simulated_settings, ws_client
from tokenwire.settings import Settings

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SCRIPT = {
    "delay_ms": 0,
    "text_before": "Let me look.",
    "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
    ],
}


def settings() -> Settings:
    """A simulated provider that calls tools, and one configured not to (preferred for
    text), so that routing by capability shows."""
    return simulated_settings(
        providers=[
            {"name": "plain", "kind": "simulated", "tools": False, "options": {"delay_ms": 0}},
            {"name": "caller", "kind": "simulated"},
        ],
        routing={"default_provider": "plain", "strategy": "cost_optimized"},
    )


def ask(request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "request_id": request_id,
        "conversation_id": "trip",
        "prompt": "Weather in Paris and Oslo?",
        "tools": [WEATHER],
        "config": {"options": SCRIPT},
        **fields,
    }


def answer(calls: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "request_id": request_id,
        "conversation_id": "trip",
        "tool_results": [
            {
                "tool_call_id": call["id"],
                "content": f"18 C in {json.loads(call['arguments'])['city']}",
            }
            for call in calls
        ],
        "config": {"options": {"delay_ms": 0}},
    }


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))


async def test_a_websocket_round_trip_calls_tools_then_answers_with_their_results() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(ask("q1"))
        frames = await client.until_end("q1")
        end = frames[-1]["data"]
        # Routing prefers "plain" for text; it cannot call tools, so "caller" answers.
        candidates = of_type(frames, "metadata")[0]["data"]["candidates"]
        assert [c["provider"] for c in candidates] == ["caller"]
        assert (end["status"], end["finish_reason"]) == ("completed", "tool_calls")
        calls = end["tool_calls"]
        assert [json.loads(c["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
        assert [c["name"] for c in calls] == ["get_weather", "get_weather"]
        started = of_type(frames, "tool_call_start")
        assert [(s["data"]["index"], s["data"]["id"]) for s in started] == [
            (0, calls[0]["id"]),
            (1, calls[1]["id"]),
        ]

        await client.send(answer(calls, "q2"))
        frames = await client.until_end("q2")
    end = frames[-1]["data"]
    assert (end["status"], end["finish_reason"]) == ("completed", "stop")
    assert text_of(frames) == "results: 18 C in Paris; 18 C in Oslo"
    assert "tool_calls" not in end


async def test_a_new_prompt_while_calls_are_pending_is_refused_before_stream_start() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(ask("q1"))
        calls = (await client.until_end("q1"))[-1]["data"]["tool_calls"]
        await client.send({**ask("q2"), "config": {"options": {"delay_ms": 0}}})
        refused = await client.recv()
        assert refused["event_type"] == "error"
        assert refused["request_id"] == "q2"
        assert refused["data"]["error_type"] == "invalid_request"
        assert calls[0]["id"] in refused["data"]["error"]
        assert "results are pending" in refused["data"]["error"]

        # Only one of the two calls answered: still refused, naming the other.
        await client.send({**answer(calls[:1], "q3")})
        refused = await client.recv()
        assert refused["data"]["error_type"] == "invalid_request"
        assert refused["data"]["error"] == (
            f"tool_results: missing the results of {calls[1]['id']} (get_weather)"
        )

        # The calls are still pending, and answering both ends the round trip.
        await client.send(answer(calls, "q4"))
        frames = await client.until_end("q4")
    assert frames[-1]["data"]["status"] == "completed"


async def test_a_cancelled_answer_s_calls_are_not_kept() -> None:
    slow = {**SCRIPT, "delay_ms": 50, "fragment_chars": 1}
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(ask("q1", config={"options": slow}))
        while (await client.recv()).get("event_type") != "tool_call_start":
            pass
        await client.send({"type": "cancel_request", "request_id": "q1"})
        end = (await client.until_end("q1"))[-1]["data"]
        assert end["status"] == "cancelled"
        # Nothing pending: the conversation goes on with a new prompt.
        await client.send(
            {**ask("q2"), "tools": None, "config": {"options": {"delay_ms": 0, "tokens": 3}}}
        )
        frames = await client.until_end("q2")
    assert frames[-1]["data"]["status"] == "completed"


async def test_tools_forced_on_a_provider_that_cannot_call_them_are_unsupported_feature() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(ask("q1", config={"provider": "plain", "options": SCRIPT}))
        refused = await client.recv()
    assert refused["event_type"] == "error"
    assert refused["data"]["error_type"] == "unsupported_feature"
    assert refused["data"]["error"] == (
        "provider plain does not call tools; name one that does or use auto"
    )


async def test_an_sse_round_trip_calls_tools_then_answers_with_their_results() -> None:
    async with running_server(settings()) as server, httpx.AsyncClient(timeout=20) as http:
        url = server.url + "/api/streams?user_id=sse"
        body = {k: v for k, v in ask("s1").items() if k != "type"}
        first = sse_events(await http.post(url, json=body))
        end = first[-1]
        assert (end["event"], end["data"]["finish_reason"]) == ("stream_end", "tool_calls")
        assert [e["event"] for e in first].count("tool_call_end") == 2
        calls = end["data"]["tool_calls"]
        body = {k: v for k, v in answer(calls, "s2").items() if k != "type"}
        second = sse_events(await http.post(url, json=body))
    chunks = "".join(e["data"]["chunk"] for e in second if e["event"] == "chunk")
    assert chunks == "results: 18 C in Paris; 18 C in Oslo"


async def test_the_providers_view_shows_capabilities_with_overrides() -> None:
    async with running_server(settings()) as server, httpx.AsyncClient() as http:
        listed = (await http.get(server.url + "/api/providers")).json()["providers"]
    capabilities = {p["name"]: p["capabilities"] for p in listed}
    assert capabilities == {
        "plain": {
            "tools": False,
            "parallel_tool_calls": False,
            "vision": True,
            "structured_output": "native",
        },
        "caller": {
            "tools": True,
            "parallel_tool_calls": True,
            "vision": True,
            "structured_output": "native",
        },
    }


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    events = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines and "data" in lines:
            events.append({"event": lines["event"], "data": json.loads(lines["data"])["data"]})
    return events


async def test_results_count_towards_the_prompt_length_limit() -> None:
    bounded = settings().model_copy(
        update={"limits": settings().limits.model_copy(update={"max_prompt_chars": 100})}
    )
    async with running_server(bounded) as server, ws_client(server) as client:
        await client.send(ask("q1"))
        calls = (await client.until_end("q1"))[-1]["data"]["tool_calls"]
        long = answer(calls, "q2")
        long["tool_results"][0]["content"] = "x" * 101
        await client.send(long)
        refused = await client.recv()
    assert refused["data"]["error_type"] == "prompt_too_long"
    assert refused["data"]["error"].startswith("the prompt is 1")
