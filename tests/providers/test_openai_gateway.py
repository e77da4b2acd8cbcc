"""The OpenAI provider behind the real tokenwire server: WebSocket in, fake upstream out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer, openai_error
from tests.support.server import RunningServer, WsClient, of_type, running_server, ws_client
from tokenwire.settings import load_settings

KEY_ENV = "TOKENWIRE_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ScriptedUpstream]:
    monkeypatch.setenv(KEY_ENV, KEY)
    async with ScriptedUpstream() as fake:
        yield fake


@contextlib.asynccontextmanager
async def gateway(upstream: ScriptedUpstream, **provider: Any) -> AsyncIterator[RunningServer]:
    oa = {"name": "oa", "kind": "openai", "model": "m", "base_url": upstream.url + "/v1"}
    settings = load_settings(None, {"providers": [{**oa, "api_key_env": KEY_ENV, **provider}]})
    async with running_server(settings) as server:
        yield server


async def first(client: WsClient, event_type: str) -> dict[str, Any]:
    while (frame := await client.recv())["event_type"] != event_type:
        pass
    return frame


async def test_an_answer_reaches_the_client_with_the_upstream_usage_and_its_cost(
    upstream: ScriptedUpstream,
) -> None:
    deltas = ["The", " answer", " is", " 42", "."]
    upstream.reply = openai_answer(deltas, 1200, 340)
    prices = {"input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10.0}

    async with gateway(upstream, **prices) as server, ws_client(server) as client:
        frames = await client.ask("question?", stream_config={"granularity": "token"})

    assert [f["data"]["token"] for f in of_type(frames, "token")] == deltas
    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["provider_used"] == "oa"
    assert end["usage"] == {"prompt_tokens": 1200, "completion_tokens": 340, "total_tokens": 1540}
    assert end["cost_usd"] == pytest.approx((1200 * 2.5 + 340 * 10.0) / 1_000_000)


async def test_cancel_request_closes_the_upstream_connection_within_100ms(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["tick"] * 1000, 3, 1000, frame_delay=0.01)

    async with gateway(upstream) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "count",
                "request_id": "r1",
                "stream_config": {"granularity": "token"},
            }
        )
        await first(client, "token")
        cancelling = time.monotonic()
        await client.send({"type": "cancel_request", "request_id": "r1"})

        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), 1.0)
        end = (await client.until_end("r1"))[-1]["data"]

    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - cancelling < 0.1
    assert end["status"] == "cancelled"


async def test_a_vanished_websocket_client_closes_the_upstream_connection_within_100ms(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["a", "b"], 3, 2, cut_after=3, then="stall")

    async with gateway(upstream) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "hi"})
        await first(client, "chunk")
        vanishing = time.monotonic()
        client.ws.transport.abort()

        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), 1.0)

    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - vanishing < 0.1


async def test_an_upstream_stream_cut_short_ends_as_a_provider_error_not_a_completion(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["a", "b", "c"], 3, 3, cut_after=3, then="end")

    async with gateway(upstream) as server, ws_client(server) as client:
        frames = await client.ask("hi")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "provider_error"
    assert frames[-1]["data"]["status"] == "error"
    assert frames[-1]["data"]["error_type"] == "provider_error"


async def test_an_upstream_stalled_past_config_timeout_ends_as_a_timeout_and_is_closed(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["a", "b"], 3, 2, cut_after=3, then="stall")

    async with gateway(upstream) as server, ws_client(server) as client:
        started = time.monotonic()
        frames = await client.ask("hi", config={"timeout": 1.0})
        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), 1.0)

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "timeout"
    assert frames[-1]["data"]["status"] == "error"
    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - started >= 1.0


async def test_an_upstream_silent_past_the_provider_timeout_ends_as_a_timeout_and_is_closed(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_answer(["a", "b"], 3, 2, cut_after=3, then="stall")

    async with gateway(upstream, timeout=0.2) as server, ws_client(server) as client:
        frames = await client.ask("hi", stream_config={"granularity": "token"})
        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), 1.0)

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "timeout"
    assert "sent nothing for 0.2 s" in error["data"]["error"]
    assert [f["data"]["token"] for f in of_type(frames, "token")] == ["a", "b"]
    assert exchange.client_closed_at is not None


async def test_a_rate_limit_reaches_the_client_with_retry_after(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = openai_error(429, "Rate limit reached", "requests", {"retry-after": "12"})

    async with gateway(upstream) as server, ws_client(server) as client:
        frames = await client.ask("hi")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "rate_limited"
    assert error["data"]["retry_after"] == 12.0


async def test_a_bad_option_is_refused_before_anything_is_sent_upstream(
    upstream: ScriptedUpstream,
) -> None:
    async with gateway(upstream) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "hi", "config": {"options": {"n": 3}}})
        error = await first(client, "error")

    assert error["data"]["error_type"] == "invalid_request"
    assert "config.options.n: unknown key" in error["data"]["error"]
    assert upstream.exchanges == []


async def test_the_api_key_and_the_prompt_stay_out_of_logs_and_the_key_out_of_events(
    upstream: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "my private question"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with gateway(upstream) as server, ws_client(server) as client:
            upstream.reply = openai_answer(["private", " answer"], 3, 2)
            answered = await client.ask(prompt)
            upstream.reply = openai_error(401, f"Incorrect API key provided: {KEY}", "auth")
            refused = await client.ask(prompt)

    assert refused[-1]["data"]["error_type"] == "provider_auth_error"
    assert any(entry["event"] == "stream ended" for entry in logs)
    assert KEY not in json.dumps(answered + refused)
    assert KEY not in repr(logs)
    assert KEY not in caplog.text
    at_info = [e for e in logs if e["log_level"] != "debug"]
    assert prompt not in repr(at_info)
    assert "private answer" not in repr(at_info)
    assert prompt not in " ".join(r.getMessage() for r in caplog.records if r.levelno >= 20)
