"""The hosted providers (OpenAI, Anthropic) behind the real tokenwire server.

WebSocket in, fake upstream out. Every test runs once per provider, through the
`flavour` fixture; what differs between the two is gathered in `UpstreamFlavour`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from tests.fakes.anthropic_upstream import anthropic_answer, anthropic_error
from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer, openai_error
from tests.support.server import RunningServer, WsClient, of_type, running_server, ws_client
from tests.support.waiting import AT_ONCE
from tokenwire.settings import load_settings


@dataclass(frozen=True)
class UpstreamFlavour:
    """What differs, in these tests, between one hosted provider and the other."""

    kind: str
    name: str
    base_url_suffix: str
    answer: Callable[..., Any]
    error: Callable[..., Any]
    # Frames to send before the cut/stall so that the first text frame is out.
    cut_after: int
    key_env: str
    api_key: str
    rate_limit_error_type: str
    auth_error_type: str
    auth_error_message: str  # formatted with key=api_key
    unknown_option: str
    unknown_option_error: str
    # Tokens the client sees when the upstream stalls after `cut_after` frames.
    tokens_before_stall: tuple[str, ...]

    def provider(self, upstream: ScriptedUpstream) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": "m",
            "base_url": upstream.url + self.base_url_suffix,
        }


OPENAI = UpstreamFlavour(
    kind="openai",
    name="oa",
    base_url_suffix="/v1",
    answer=openai_answer,
    error=openai_error,
    cut_after=3,
    key_env="TOKENWIRE_TEST_OPENAI_KEY",
    api_key="sk-test-0123456789abcdefSECRET",
    rate_limit_error_type="requests",
    auth_error_type="auth",
    auth_error_message="Incorrect API key provided: {key}",
    unknown_option="n",
    unknown_option_error="config.options.n: unknown key",
    tokens_before_stall=("a", "b"),
)

ANTHROPIC = UpstreamFlavour(
    kind="anthropic",
    name="an",
    base_url_suffix="",
    answer=anthropic_answer,
    error=anthropic_error,
    cut_after=4,
    key_env="TOKENWIRE_TEST_ANTHROPIC_KEY",
    api_key="sk-ant-api03-0123456789abcdefSECRET",
    rate_limit_error_type="rate_limit_error",
    auth_error_type="authentication_error",
    auth_error_message="invalid x-api-key: {key}",
    unknown_option="top_n",
    unknown_option_error="config.options.top_n",
    tokens_before_stall=("a",),
)


@pytest.fixture(params=[OPENAI, ANTHROPIC], ids=["openai", "anthropic"])
def flavour(request: pytest.FixtureRequest) -> UpstreamFlavour:
    chosen: UpstreamFlavour = request.param
    return chosen


@pytest.fixture
async def upstream(
    monkeypatch: pytest.MonkeyPatch, flavour: UpstreamFlavour
) -> AsyncIterator[ScriptedUpstream]:
    monkeypatch.setenv(flavour.key_env, flavour.api_key)
    async with ScriptedUpstream() as fake:
        yield fake


@contextlib.asynccontextmanager
async def gateway(
    upstream: ScriptedUpstream,
    flavour: UpstreamFlavour,
    streams: dict[str, Any] | None = None,
    **provider: Any,
) -> AsyncIterator[RunningServer]:
    hosted = flavour.provider(upstream)
    settings = load_settings(
        None,
        {
            "providers": [{**hosted, "api_key_env": flavour.key_env, **provider}],
            "streams": streams or {},
        },
    )
    async with running_server(settings) as server:
        yield server


async def first(client: WsClient, event_type: str) -> dict[str, Any]:
    while (frame := await client.recv())["event_type"] != event_type:
        pass
    return frame


async def test_an_answer_reaches_the_client_with_the_upstream_usage_and_its_cost(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    deltas = ["The", " answer", " is", " 42", "."]
    upstream.reply = flavour.answer(deltas, 1200, 340)
    prices = {"input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10.0}

    async with gateway(upstream, flavour, **prices) as server, ws_client(server) as client:
        frames = await client.ask("question?", stream_config={"granularity": "token"})

    assert [f["data"]["token"] for f in of_type(frames, "token")] == deltas
    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["provider_used"] == flavour.name
    assert end["usage"] == {
        "prompt_tokens": 1200,
        "completion_tokens": 340,
        "total_tokens": 1540,
        "estimated": False,
    }
    assert end["cost_usd"] == pytest.approx((1200 * 2.5 + 340 * 10.0) / 1_000_000)


async def test_cancel_request_closes_the_upstream_connection_at_once(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.answer(["tick"] * 1000, 3, 1000, frame_delay=0.01)  # 10 s

    async with gateway(upstream, flavour) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "count",
                "request_id": "r1",
                "stream_config": {"granularity": "token"},
            }
        )
        await first(client, "token")
        await client.send({"type": "cancel_request", "request_id": "r1"})

        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)
        end = (await client.until_end("r1"))[-1]["data"]

    assert exchange.frames_sent < 1000  # closed long before the answer's end
    assert end["status"] == "cancelled"


async def test_without_a_resume_grace_a_vanished_client_closes_the_upstream_at_once(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b"], 3, 2, cut_after=flavour.cut_after, then="stall")
    no_grace = {"resume_grace_seconds": 0}

    async with gateway(upstream, flavour, no_grace) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "hi"})
        await first(client, "chunk")
        client.ws.transport.abort()  # the upstream stalls: only this can close it

        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)


async def test_an_upstream_stream_cut_short_ends_as_a_provider_error_not_a_completion(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b", "c"], 3, 3, cut_after=flavour.cut_after, then="end")

    async with gateway(upstream, flavour) as server, ws_client(server) as client:
        frames = await client.ask("hi")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "provider_error"
    assert frames[-1]["data"]["status"] == "error"
    assert frames[-1]["data"]["error_type"] == "provider_error"


async def test_an_upstream_stalled_past_config_timeout_ends_as_a_timeout_and_is_closed(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b"], 3, 2, cut_after=flavour.cut_after, then="stall")

    async with gateway(upstream, flavour) as server, ws_client(server) as client:
        started = time.monotonic()
        frames = await client.ask("hi", config={"timeout": 1.0})
        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "timeout"
    assert frames[-1]["data"]["status"] == "error"
    assert exchange.client_closed_at is not None
    assert exchange.client_closed_at - started >= 1.0


async def test_an_upstream_silent_past_the_provider_timeout_ends_as_a_timeout_and_is_closed(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.answer(["a", "b"], 3, 2, cut_after=flavour.cut_after, then="stall")

    # The silence is timed on the event loop: a loop starved for a moment under load
    # (4 workers on 2 cores) must not read as the upstream's silence before its stall.
    async with gateway(upstream, flavour, timeout=2.0) as server, ws_client(server) as client:
        frames = await client.ask("hi", stream_config={"granularity": "token"})
        exchange = await upstream.exchange()
        await asyncio.wait_for(exchange.client_closed.wait(), AT_ONCE)

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "timeout"
    assert "sent nothing for 2 s" in error["data"]["error"]
    tokens = [f["data"]["token"] for f in of_type(frames, "token")]
    assert tokens == list(flavour.tokens_before_stall)
    assert exchange.client_closed_at is not None


async def test_a_rate_limit_reaches_the_client_with_retry_after(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    upstream.reply = flavour.error(
        429, "Rate limit reached", flavour.rate_limit_error_type, {"retry-after": "12"}
    )

    async with gateway(upstream, flavour) as server, ws_client(server) as client:
        frames = await client.ask("hi")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "rate_limited"
    assert error["data"]["retry_after"] == 12.0


async def test_a_bad_option_is_refused_before_anything_is_sent_upstream(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour
) -> None:
    options = {flavour.unknown_option: 3}
    async with gateway(upstream, flavour) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "hi", "config": {"options": options}})
        error = await first(client, "error")

    assert error["data"]["error_type"] == "invalid_request"
    assert flavour.unknown_option_error in error["data"]["error"]
    assert upstream.exchanges == []


async def test_the_api_key_and_the_prompt_stay_out_of_logs_and_the_key_out_of_events(
    upstream: ScriptedUpstream, flavour: UpstreamFlavour, caplog: pytest.LogCaptureFixture
) -> None:
    key = flavour.api_key
    prompt = "my private question"
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        async with gateway(upstream, flavour) as server, ws_client(server) as client:
            upstream.reply = flavour.answer(["private", " answer"], 3, 2)
            answered = await client.ask(prompt)
            message = flavour.auth_error_message.format(key=key)
            upstream.reply = flavour.error(401, message, flavour.auth_error_type)
            refused = await client.ask(prompt)

    assert refused[-1]["data"]["error_type"] == "provider_auth_error"
    assert any(entry["event"] == "stream ended" for entry in logs)
    assert key not in json.dumps(answered + refused)
    assert key not in repr(logs)
    assert key not in caplog.text
    at_info = [e for e in logs if e["log_level"] != "debug"]
    assert prompt not in repr(at_info)
    assert "private answer" not in repr(at_info)
    assert prompt not in " ".join(r.getMessage() for r in caplog.records if r.levelno >= 20)
