"""What hostile and careless clients send, over a real socket: each gets a typed error
or a clean close, the connection lives where it should, and nobody else notices."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.providers import WatchedProvider
from tests.support.server import (
    RunningServer,
    WsClient,
    gateway_with,
    running_server,
    simulated_settings,
    ws_client,
)

SLOW = {"options": {"tokens": 5000, "delay_ms": 5}}


async def still_alive(client: WsClient) -> None:
    await client.send({"type": "ping", "timestamp": 7})
    assert (await client.recv())["type"] == "pong"


async def error_for(client: WsClient, frame: str) -> dict[str, Any]:
    await client.send(frame)
    raw = await client.ws.recv()
    assert len(raw) < 1000, f"an error of {len(raw)} bytes"
    error: dict[str, Any] = json.loads(raw)
    assert error["event_type"] == "error"
    return error


async def admin_views_answer(server: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/api/streaming/stats", "/api/streaming/sessions"):
            assert (await http.get(server.url + path)).status_code == 200


async def test_a_hundred_request_and_cancel_pairs_back_to_back_each_end_exactly_once() -> None:
    provider = WatchedProvider()
    # Cancelled streams still count until they end: room for all of them.
    settings = simulated_settings(
        limits={"max_streams_per_connection": 100, "max_streams_per_user": 100}
    )
    gateway = gateway_with(provider, settings=settings)
    async with running_server(settings, gateway) as server, ws_client(server) as c:
        ids = [f"pair-{n}" for n in range(100)]
        for rid in ids:
            await c.send(
                {"type": "ai_request", "prompt": "p" * 10_000, "request_id": rid, "config": SLOW}
            )
            await c.send({"type": "cancel_request", "request_id": rid})
        frames: list[dict[str, Any]] = []
        ended: set[str] = set()
        while len(ended) < len(ids):
            frame = await c.recv()
            frames.append(frame)
            assert frame["event_type"] != "error", frame
            if frame["event_type"] == "stream_end":
                ended.add(frame["request_id"])
        await still_alive(c)
        for rid in ids:
            mine = [f for f in frames if f["request_id"] == rid]
            kinds = [f["event_type"] for f in mine]
            assert kinds[0] == "stream_start"
            assert kinds.count("stream_end") == 1
            assert kinds[-1] == "stream_end"
            assert mine[-1]["data"]["status"] == "cancelled"
            assert [f["seq"] for f in mine] == list(range(1, len(mine) + 1))
        assert server.gateway.running == 0
        assert server.gateway.stats.active_streams == 0
        assert next(iter(server.gateway.sessions)).following == set()


@pytest.mark.parametrize(
    ("frame", "error_type"),
    [
        (
            '{"type": "ai_request", "prompt": "x", "config": {"max_tokens": 1' + "0" * 400 + "}}",
            "invalid_json",
        ),
        (
            '{"type": "ai_request", "prompt": "x", "config": {"max_tokens": 1' + "0" * 30 + "}}",
            "invalid_request",
        ),
        (
            '{"type": "ai_request", "prompt": "x", "config": {"max_tokens": 1000001}}',
            "invalid_request",
        ),
        ('{"type": "ai_request", "prompt": "x", "config": {"timeout": Infinity}}', "invalid_json"),
        ('{"type": "ai_request", "prompt": "x", "config": {"timeout": 1e9}}', "invalid_request"),
        ('{"type": "ai_request", "prompt": "x", "config": {"cost_limit": NaN}}', "invalid_json"),
        (
            '{"type": "ai_request", "prompt": "x", "stream_config": {"progress_every": 1e12}}',
            "invalid_request",
        ),
        (
            '{"type": "ai_request", "prompt": "x", "config": {"options": {"delay_ms": 1e300}}}',
            "invalid_request",
        ),
        (
            '{"type": "ai_request", "prompt": "x", "config": {"options": {"fail_after": 1e300}}}',
            "invalid_request",
        ),
        ('{"type": "update_preferences", "preferences": {"x": NaN}}', "invalid_json"),
        (
            '{"type": "update_preferences", "preferences": {"x": ' + "[" * 900 + "]" * 900 + "}}",
            "invalid_json",
        ),
        (
            '{"type": "update_preferences", "preferences": {"x": {"y": {"z": 1}}}}',
            "invalid_message",
        ),
        ("[" * 1000 + "]" * 1000, "invalid_json"),
        ('{"a":' * 1000 + "1" + "}" * 1000, "invalid_json"),
        ('{"type": "ping", "timestamp": ' + "[" * 20 + "]" * 20 + "}", "invalid_message"),
    ],
)
async def test_hostile_numbers_and_nesting_get_a_typed_error_and_the_connection_lives(
    frame: str, error_type: str
) -> None:
    async with running_server() as server, ws_client(server) as client:
        error = await error_for(client, frame)
        assert error["data"]["error_type"] == error_type
        await still_alive(client)
        await admin_views_answer(server)
        assert server.gateway.stats.total_streams == 0


async def test_errors_quote_at_most_a_short_prefix_of_a_huge_type() -> None:
    async with running_server() as server, ws_client(server) as client:
        error = await error_for(client, json.dumps({"type": "t" * 100_000}))
        assert error["data"]["error_type"] == "unknown_message_type"
        assert "t" * 33 not in error["data"]["error"]
        assert "100000 characters" in error["data"]["error"]
        await still_alive(client)


async def test_an_invalid_request_id_is_never_echoed() -> None:
    async with running_server() as server, ws_client(server) as client:
        huge = "r" * 500_000
        error = await error_for(
            client, json.dumps({"type": "ai_request", "prompt": "x", "request_id": huge})
        )
        assert error["request_id"] is None
        assert error["data"]["request_id"] is None
        for bad in ("has space", "new\nline", "", "é"):
            error = await error_for(
                client, json.dumps({"type": "cancel_request", "request_id": bad})
            )
            assert error["data"]["error_type"] == "invalid_request"
            assert error["request_id"] is None


async def test_a_valid_request_id_is_echoed_on_its_error() -> None:
    async with running_server() as server, ws_client(server) as client:
        error = await error_for(
            client, json.dumps({"type": "ai_request", "prompt": "", "request_id": "ok-1:a.b_c"})
        )
        assert error["request_id"] == error["data"]["request_id"] == "ok-1:a.b_c"


async def test_an_error_event_never_carries_the_prompt() -> None:
    prompt = "my very private question"
    async with running_server() as server, ws_client(server) as client:
        error = await error_for(
            client,
            json.dumps({"type": "ai_request", "prompt": prompt, "config": {"timeout": -1}}),
        )
        assert prompt not in json.dumps(error)
        frames = await client.ask(
            prompt, config={"options": {"tokens": 5, "delay_ms": 0, "fail_after": 2}}
        )
        (failure,) = [f for f in frames if f["event_type"] == "error"]
        assert set(failure["data"]) == {"error", "error_type", "request_id"}
        assert prompt not in json.dumps(frames[-1])


async def test_preferences_from_the_query_string_are_checked_too() -> None:
    async with (
        running_server() as server,
        ws_client(server, "?language=" + "x" * 1000 + "&model_preference=" + "m" * 1000) as client,
    ):
        await client.send({"type": "update_preferences", "preferences": {}})
        ack = await client.recv()
        assert ack["data"]["preferences"] == {"language": "en", "model_preference": None}
        await admin_views_answer(server)


async def test_an_unexpected_failure_costs_the_message_not_the_connection() -> None:
    class Exploding(WatchedProvider):
        def validate(self, request: object) -> None:
            raise RuntimeError("a defect")

    async with (
        running_server(gateway=gateway_with(Exploding())) as server,
        ws_client(server) as client,
    ):
        error = await error_for(client, json.dumps({"type": "ai_request", "prompt": "x"}))
        assert error["data"]["error_type"] == "internal_error"
        assert "defect" not in error["data"]["error"]
        await still_alive(client)
