"""`/metrics`: what it counts is what the test did, read with Prometheus's own parser.

One server for the module (authentication on, three simulated providers); each test
reads the metrics before and after what it does, so that the tests do not depend on
each other's order.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.raw_ws import RawWebSocket
from tests.support.server import (
    RunningServer,
    WsClient,
    dropping_client,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.core.spec import RequestKey

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "tw-metrics-test-key-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
ENVIRON = {"TW_METRICS_KEYS": f"{KEY}:ada"}
QUICK = {"tokens": 5, "delay_ms": 0}
SLOW = {"tokens": 400, "delay_ms": 20}
PROVIDERS = [
    {"name": "sim_a", "kind": "simulated", "options": QUICK},
    {"name": "sim_b", "kind": "simulated", "options": QUICK},
    # Fails after its first delta, and one failure opens its circuit (circuit_failures 1).
    {"name": "sim_bad", "kind": "simulated", "options": {**QUICK, "fail_after": 1}},
]


def auth_settings(metrics_public: bool = False) -> Any:
    return simulated_settings(
        providers=PROVIDERS,
        auth={
            "mode": "api_key",
            "api_keys_env": "TW_METRICS_KEYS",
            "metrics_public": metrics_public,
        },
        routing={"circuit_failures": 1, "circuit_cooldown_seconds": 600, "max_retries": 0},
        limits={"max_prompt_chars": 100},
        streams={"resume_grace_seconds": 30},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(auth_settings(), environ=ENVIRON) as running:
        yield running


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: RunningServer, headers: dict[str, str] | None = None) -> Samples:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        response = await http.get("/metrics", headers=AUTH if headers is None else headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def connect(server: RunningServer) -> Any:
    return ws_client(server, additional_headers=AUTH)


def ask(request_id: str, provider: str, prompt: str = "hello", **options: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"provider": provider}
    if options:
        config["options"] = options
    return {"type": "ai_request", "prompt": prompt, "request_id": request_id, "config": config}


async def until_streaming(client: WsClient, request_id: str) -> None:
    while True:
        frame = await client.recv(10)
        text = frame.get("event_type") in ("token", "chunk")
        if text and frame.get("request_id") == request_id:
            return


# -- access --------------------------------------------------------------------------


async def test_metrics_need_a_credential_when_authentication_is_on(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        refused = await http.get("/metrics")

    assert refused.status_code == 401
    assert value(await scrape(server), "tokenwire_node_info", node="local", version="0.1.0") == 1


async def test_metrics_public_serves_them_without_a_credential() -> None:
    async with running_server(auth_settings(metrics_public=True), environ=ENVIRON) as public:
        samples = await scrape(public, headers={})
        async with httpx.AsyncClient(base_url=public.url, timeout=10) as http:
            other = await http.get("/api/streams")

    assert value(samples, "tokenwire_streams_active") == 0
    assert other.status_code == 401


# -- streams -------------------------------------------------------------------------


async def test_outcomes_are_counted_by_status_and_provider_and_active_streams_fall_back(
    server: RunningServer,
) -> None:
    before = await scrape(server)
    async with connect(server) as client:
        for n in range(3):
            await client.send(ask(f"done-{n}", "sim_a"))
            await client.until_end(f"done-{n}")
        await client.send(ask("stopped", "sim_b", **SLOW))
        await until_streaming(client, "stopped")
        during = await scrape(server)
        await client.send({"type": "cancel_request", "request_id": "stopped"})
        await client.until_end("stopped")
        await client.send(ask("broken", "sim_bad"))
        await client.until_end("broken")

    await eventually(lambda: server.gateway.running == 0)
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ended = "tokenwire_streams_ended_total"
    assert delta(ended, provider="sim_a", status="completed") == 3
    assert delta(ended, provider="sim_b", status="cancelled") == 1
    assert delta(ended, provider="sim_bad", status="error") == 1
    assert delta(ended, provider="sim_a", status="error") == 0
    assert value(during, "tokenwire_streams_active") == 1
    assert value(after, "tokenwire_streams_active") == 0
    # Every one of them sent text: one first token each, on the provider that sent it.
    ttft = "tokenwire_time_to_first_token_seconds_count"
    assert delta(ttft, provider="sim_a") == 3
    assert delta(ttft, provider="sim_b") == 1
    assert delta(ttft, provider="sim_bad") == 1
    assert delta("tokenwire_tokens_out_total", provider="sim_a") == 3 * QUICK["tokens"]
    assert delta("tokenwire_text_bytes_out_total", provider="sim_a") > 0
    assert delta("tokenwire_inter_token_gap_seconds_count") > 0
    errors = "tokenwire_provider_errors_total"
    assert delta(errors, provider="sim_bad", error_type="provider_error") == 1
    assert value(after, "tokenwire_provider_circuit_state", provider="sim_bad") == 2
    assert value(after, "tokenwire_provider_circuit_state", provider="sim_a") == 0


async def test_the_connections_gauge_rises_with_a_connection_and_falls_when_it_goes(
    server: RunningServer,
) -> None:
    name = "tokenwire_connections"
    before = value(await scrape(server), name, transport="websocket")
    async with connect(server):
        during = value(await scrape(server), name, transport="websocket")
    # Closed by the client: the server's side ends a moment later.
    after = await scraped_until(server, lambda s: value(s, name, transport="websocket") == before)

    assert during == before + 1
    assert value(after, name, transport="websocket") == before


async def test_an_sse_event_stream_counts_as_a_connection_while_it_is_open(
    server: RunningServer,
) -> None:
    name = "tokenwire_connections"
    before = value(await scrape(server), name, transport="sse")
    body: dict[str, Any] = {"prompt": "hi", "request_id": "sse-1"}
    body["config"] = {"provider": "sim_a", "options": SLOW}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("POST", "/api/streams", json=body, headers=AUTH) as events,
    ):
        assert events.status_code == 200
        during = value(await scrape(server), name, transport="sse")
    await server.gateway.cancel_anywhere(RequestKey("ada", "sse-1"))
    after = await scraped_until(server, lambda s: value(s, name, transport="sse") == before)

    assert during == before + 1
    assert value(after, name, transport="sse") == before


async def test_a_refusal_by_a_limit_is_counted_by_its_reason(server: RunningServer) -> None:
    name = "tokenwire_limit_refusals_total"
    before = value(await scrape(server), name, reason="prompt_too_long")
    async with connect(server) as client:
        await client.send(ask("long", "sim_a", prompt="x" * 101))
        refused = await client.recv()

    assert refused["data"]["error_type"] == "prompt_too_long"
    assert value(await scrape(server), name, reason="prompt_too_long") == before + 1


async def test_a_dropped_stream_waits_in_the_grace_and_its_resume_is_counted(
    server: RunningServer,
) -> None:
    name = "tokenwire_resumes_total"
    before = await scrape(server)
    async with dropping_client(server.ws_url + f"?access_token={KEY}") as dropped:
        await dropped.send(ask("left", "sim_a", **SLOW))
        await until_streaming(dropped, "left")
        dropped.ws.transport.abort()
        await eventually(lambda: server.gateway.in_grace == 1)
    waiting = await scrape(server)
    async with connect(server) as again:
        await again.send({"type": "resume", "request_id": "left", "last_seq": 0})
        await until_streaming(again, "left")
        resumed = await scrape(server)
        await again.send({"type": "resume", "request_id": "never-was", "last_seq": 0})
        await again.recv()
        await again.send({"type": "cancel_request", "request_id": "left"})
        await again.until_end("left")
    after = await scrape(server)

    assert value(waiting, "tokenwire_streams_in_resume_grace") == 1
    assert value(resumed, "tokenwire_streams_in_resume_grace") == 0
    assert value(after, name, outcome="replayed") - value(before, name, outcome="replayed") == 1
    assert value(after, name, outcome="unknown") - value(before, name, outcome="unknown") == 1


async def test_a_resume_past_what_the_log_still_holds_is_counted_not_recovered() -> None:
    settings = simulated_settings(streams={"max_log_bytes": 1024})
    long_answer = {"options": {"tokens": 60, "delay_ms": 0}}
    async with running_server(settings) as small, ws_client(small) as client:
        await client.ask("hi", request_id="trimmed", config=long_answer)
        await client.send({"type": "resume", "request_id": "trimmed", "last_seq": 0})
        refused = await client.recv()
        samples = await scrape(small, headers={})

    assert refused["data"]["error_type"] == "not_recovered"
    assert value(samples, "tokenwire_resumes_total", outcome="not_recovered") == 1
    assert value(samples, "tokenwire_resumes_total", outcome="replayed") == 0


async def test_a_client_too_slow_to_read_is_counted_as_a_send_buffer_overflow() -> None:
    settings = simulated_settings(
        limits={"max_send_buffer_bytes": 64 * 1024, "close_timeout_seconds": 0.5},
        streams={"resume_grace_seconds": 0},
    )
    flood = {
        "type": "ai_request",
        "prompt": "x",
        "stream_config": {"granularity": "token"},
        "config": {"timeout": 60, "options": {"tokens": 1_000_000, "delay_ms": 0}},
    }
    async with running_server(settings) as slow:
        port = int(slow.url.rsplit(":", 1)[1])
        client = await RawWebSocket.connect(port, receive_buffer=4096)
        try:
            await client.send_text(json.dumps(flood).encode())
            await eventually(lambda: len(slow.gateway.sessions) == 0, 20)
            samples = await scrape(slow, headers={})
        finally:
            client.abort()

    assert value(samples, "tokenwire_send_buffer_overflows_total", transport="websocket") == 1
    assert value(samples, "tokenwire_send_buffer_overflows_total", transport="sse") == 0


async def test_the_event_loop_lag_is_sampled(server: RunningServer) -> None:
    count = "tokenwire_event_loop_lag_seconds_count"
    samples = await scraped_until(server, lambda s: value(s, count) >= 1)

    assert value(samples, "tokenwire_event_loop_lag_seconds_sum") >= 0


async def scraped_until(
    server: RunningServer, condition: Callable[[Samples], bool], timeout: float = 10.0
) -> Samples:
    """Scrapes until one meets `condition` (what the server does a moment later)."""
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(server)
            if condition(samples):
                return samples
            await asyncio.sleep(0.01)
