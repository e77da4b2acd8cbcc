"""Routing on live health, end to end: real sockets, fake upstreams speaking OpenAI's wire
format through the official SDK, and simulated providers where only the core matters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.fakes.openai_upstream import (
    Exchange,
    Reply,
    ScriptedUpstream,
    openai_answer,
    openai_error,
)
from tests.support.providers import TroubledProvider, WatchedProvider
from tests.support.server import RunningServer, WsClient, of_type, running_server, ws_client
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.app import gateway_for, provider_profile
from tokenwire.core.gateway import Gateway
from tokenwire.core.provider import Provider
from tokenwire.core.route import ProviderSlot
from tokenwire.protocol.errors import ProviderError
from tokenwire.settings import Settings, load_settings

FAST_ROUTING = {
    "retry_backoff_seconds": 0.01,
    "circuit_cooldown_seconds": 0.5,
    "circuit_failures": 3,
}


def hosted(name: str, upstream: ScriptedUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "openai",
        "model": f"{name}-model",
        "base_url": upstream.url + "/v1",
        **extra,
    }


def simulated(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "simulated", **extra}


@contextlib.asynccontextmanager
async def serving(
    providers: list[dict[str, Any]], **routing: Any
) -> AsyncIterator[tuple[RunningServer, WsClient]]:
    settings = load_settings(None, {"providers": providers, "routing": {**FAST_ROUTING, **routing}})
    async with running_server(settings) as server, ws_client(server, "?user_id=router") as c:
        yield server, c


def used(frames: list[dict[str, Any]]) -> str:
    provider: str = frames[-1]["data"]["provider_used"]
    return provider


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))


async def answer_or_refusal(client: WsClient, **fields: Any) -> list[dict[str, Any]]:
    """A request's frames up to its stream_end, or the error that refused it (no seq)."""
    await client.send({"type": "ai_request", "prompt": "hi", **fields})
    frames = []
    while True:
        frames.append(await client.recv(20))
        if frames[-1]["event_type"] == "stream_end":
            return frames
        if frames[-1]["event_type"] == "error" and frames[-1]["seq"] is None:
            return frames


async def health(server: RunningServer) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        body = (await http.get(server.url + "/api/providers")).json()
    return {row["name"]: row for row in body["providers"]}


# -- strategies ----------------------------------------------------------------------


async def test_performance_based_goes_to_the_provider_measured_fastest() -> None:
    async with (
        ScriptedUpstream(openai_answer(["slow", " answer"], 3, 2, frame_delay=0.15)) as slow,
        ScriptedUpstream(openai_answer(["fast", " answer"], 3, 2)) as fast,
        serving([hosted("slow", slow), hosted("fast", fast)]) as (server, client),
    ):
        for name in ("slow", "fast"):  # one measured request each
            await client.ask("hi", config={"provider": name})
        frames = await client.ask("hi", config={"routing_strategy": "performance_based"})
        assert used(frames) == "fast"
        meta = of_type(frames, "metadata")[0]["data"]
        assert [c["provider"] for c in meta["candidates"]] == ["fast", "slow"]
        assert meta["candidates"][0]["reason"].startswith("ttft")
        rows = await health(server)
        assert rows["slow"]["health"]["ttft_ms"] > rows["fast"]["health"]["ttft_ms"]


async def test_cost_optimized_goes_to_the_cheapest() -> None:
    providers = [
        simulated("dear", output_cost_per_mtok=30.0),
        simulated("cheap", output_cost_per_mtok=0.5),
    ]
    async with serving(providers) as (_, client):
        frames = await client.ask("hi", config={"routing_strategy": "cost_optimized"})
    assert used(frames) == "cheap"


async def test_round_robin_alternates() -> None:
    async with serving([simulated("a"), simulated("b")]) as (_, client):
        order = [
            used(await client.ask("hi", config={"routing_strategy": "round_robin"}))
            for _ in range(4)
        ]
    assert order == ["a", "b", "a", "b"]


async def test_reliability_based_avoids_the_failing_one() -> None:
    async with (
        ScriptedUpstream(openai_error(500, "boom", "server_error")) as flaky,
        ScriptedUpstream(openai_answer(["ok"], 1, 1)) as solid,
        serving([hosted("flaky", flaky), hosted("solid", solid)], max_retries=0) as (_, c),
    ):
        failed = await c.ask("hi", config={"provider": "flaky"})
        assert failed[-1]["data"]["status"] == "error"
        flaky.reply = openai_answer(["fine now"], 1, 2)
        frames = await c.ask("hi", config={"routing_strategy": "reliability_based"})
    assert used(frames) == "solid"


# -- the circuit breaker, against a fake whose failure is switched on and off ----------


async def test_a_failing_provider_s_circuit_opens_then_closes_after_a_successful_probe() -> None:
    async with (
        ScriptedUpstream(openai_error(502, "bad gateway", "server_error")) as shaky,
        serving([hosted("shaky", shaky), simulated("spare")], max_retries=0) as (server, c),
    ):
        for _ in range(3):
            frames = await c.ask("hi", config={"provider": "shaky"})
            assert frames[-1]["data"]["status"] == "error"
        assert (await health(server))["shaky"]["health"]["state"] == "open"
        calls = len(shaky.exchanges)
        await c.send({"type": "ai_request", "prompt": "hi", "config": {"provider": "shaky"}})
        refused = await c.recv()
        assert refused["event_type"] == "error"
        assert refused["data"]["error_type"] == "provider_unavailable"
        assert 0 < refused["data"]["retry_after"] <= 0.5
        assert len(shaky.exchanges) == calls  # refused before anything was sent
        routed = await c.ask("hi")  # routing leaves it out meanwhile
        assert used(routed) == "spare"

        shaky.reply = openai_answer(["back"], 1, 1)  # the upstream recovers
        await asyncio.sleep(0.55)  # the cooldown passes
        assert (await health(server))["shaky"]["health"]["state"] == "half_open"
        probe = await c.ask("hi", config={"provider": "shaky"})
        assert probe[-1]["data"]["status"] == "completed"
        assert (await health(server))["shaky"]["health"]["state"] == "closed"


async def test_requests_the_upstream_refuses_as_malformed_leave_its_circuit_closed() -> None:
    async with (
        ScriptedUpstream(openai_error(400, "bad request", "invalid_request_error")) as picky,
        serving([hosted("picky", picky), simulated("spare")], max_retries=0) as (server, c),
    ):
        for sent in range(1, 5):  # more than circuit_failures
            frames = await answer_or_refusal(c, config={"provider": "picky"})
            assert frames[-1]["data"]["status"] == "error"
            assert len(picky.exchanges) == sent
            state = (await health(server))["picky"]["health"]
            assert (state["state"], state["error_rate"], state["in_flight"]) == ("closed", 0.0, 0)


# -- fallback and retries -------------------------------------------------------------


async def test_a_provider_failing_before_any_text_is_replaced_transparently() -> None:
    async with (
        ScriptedUpstream(openai_error(503, "overloaded", "server_error")) as down,
        ScriptedUpstream(openai_answer(["from", " the", " spare"], 3, 3)) as spare,
        serving(
            [hosted("primary", down), hosted("spare", spare)],
            default_provider="primary",
            max_retries=1,
        ) as (_, client),
    ):
        frames = await client.ask("hi")
    end = frames[-1]["data"]
    assert (end["status"], end["provider_used"]) == ("completed", "spare")
    assert text_of(frames) == "from the spare"
    assert not of_type(frames, "error")
    fallback = [m["data"] for m in of_type(frames, "metadata") if "fallback_from" in m["data"]]
    assert len(fallback) == 1
    assert fallback[0]["fallback_from"] == "primary"
    assert fallback[0]["recommended_provider"] == "spare"
    assert "provider_error" in fallback[0]["fallback_reason"]
    assert len(down.exchanges) == 2  # one retry, then the fallback


async def test_after_text_went_out_there_is_no_silent_switch() -> None:
    async with (
        ScriptedUpstream(
            openai_answer(["half", " an", " answer"], 3, 3, cut_after=3, then="drop")
        ) as cut,
        ScriptedUpstream(openai_answer(["other"], 1, 1)) as spare,
        serving([hosted("primary", cut), hosted("spare", spare)], default_provider="primary") as (
            _,
            client,
        ),
    ):
        frames = await client.ask("hi")
    assert frames[-1]["data"]["status"] == "error"
    assert frames[-1]["data"]["provider_used"] == "primary"
    assert of_type(frames, "error")[0]["data"]["error_type"] == "provider_error"
    assert spare.exchanges == []


async def test_a_rate_limit_is_retried_after_its_retry_after() -> None:
    answer = openai_answer(["patience"], 1, 1)

    def script(exchange: Exchange) -> Reply:
        if len(upstream.exchanges) == 1:
            return openai_error(429, "slow down", "rate_limit_error", {"retry-after": "0.3"})
        return answer(exchange)

    async with (
        ScriptedUpstream(script) as upstream,
        serving([hosted("only", upstream)]) as (_, client),
    ):
        started = time.monotonic()
        frames = await client.ask("hi")
        waited = time.monotonic() - started
    assert frames[-1]["data"]["status"] == "completed"
    assert text_of(frames) == "patience"
    assert len(upstream.exchanges) == 2
    assert waited >= 0.3


async def test_a_retry_that_would_pass_the_deadline_is_not_made() -> None:
    async with (
        ScriptedUpstream(
            openai_error(429, "slow", "rate_limit_error", {"retry-after": "30"})
        ) as upstream,
        serving([hosted("only", upstream)], max_retry_wait_seconds=60) as (_, client),
    ):
        started = time.monotonic()
        frames = await client.ask("hi", config={"timeout": 10.0})
        took = time.monotonic() - started
    # At once: not after waiting for the deadline (a timeout), nor for the retry.
    assert of_type(frames, "error")[0]["data"]["error_type"] == "rate_limited"
    assert len(upstream.exchanges) == 1
    assert took < AT_ONCE


# -- capacity ----------------------------------------------------------------------------


async def test_a_request_goes_to_a_provider_with_room_before_it_queues() -> None:
    providers = [simulated("busy", max_concurrency=1), simulated("idle")]
    async with serving(providers, default_provider="busy") as (_, client):
        await client.send(
            {
                "type": "ai_request",
                "prompt": "long",
                "request_id": "hog",
                "config": {"provider": "busy", "options": {"tokens": 500, "delay_ms": 5}},
            }
        )
        second = await client.ask("hi", request_id="second", config={"options": {"tokens": 3}})
        assert used(second) == "idle"
        await client.send({"type": "cancel_request", "request_id": "hog"})
        await client.until_end("hog")


async def test_when_every_candidate_is_at_capacity_the_request_waits_then_is_busy() -> None:
    providers = [simulated("only", max_concurrency=1)]
    async with serving(providers, queue_timeout_seconds=0.3) as (_, client):
        await client.send(
            {
                "type": "ai_request",
                "prompt": "long",
                "request_id": "hog",
                "config": {"options": {"tokens": 5000, "delay_ms": 5}},  # 25 s
            }
        )
        started = time.monotonic()
        frames = await client.ask("hi", request_id="waiter")
        waited = time.monotonic() - started
        error = of_type(frames, "error")[0]["data"]
        assert error["error_type"] == "provider_busy"
        assert error["retry_after"] > 0
        assert 0.3 <= waited < 0.3 + AT_ONCE  # the queue timeout, not the hog's end
        await client.send({"type": "cancel_request", "request_id": "hog"})
        await client.until_end("hog")


async def test_a_failed_or_cancelled_answer_gives_its_provider_s_place_back() -> None:
    providers = [simulated("only", max_concurrency=1)]
    async with serving(providers, queue_timeout_seconds=0.5, circuit_failures=10) as (_, client):
        for fail_after in (0, 3):  # before any text (after its retries), and mid-answer
            options = {"tokens": 10, "delay_ms": 0, "fail_after": fail_after}
            failed = await client.ask("hi", config={"options": options})
            assert failed[-1]["data"]["status"] == "error"
        await client.send(
            {
                "type": "ai_request",
                "prompt": "long",
                "request_id": "left",
                "config": {"options": {"tokens": 10, "delay_ms": 0, "stall_after": 2}},
            }
        )
        await client.send({"type": "cancel_request", "request_id": "left"})
        assert (await client.until_end("left"))[-1]["data"]["status"] == "cancelled"
        frames = await client.ask("hi", config={"options": {"tokens": 3, "delay_ms": 0}})
    assert frames[-1]["data"]["status"] == "completed"


async def test_past_max_queued_a_request_is_busy_at_once_while_the_queued_one_waits() -> None:
    providers = [simulated("only", max_concurrency=1)]
    async with serving(providers, queue_timeout_seconds=60, max_queued=1) as (server, client):
        stalled = {"options": {"tokens": 10, "delay_ms": 0, "stall_after": 1}}
        await client.send(
            {"type": "ai_request", "prompt": "x", "request_id": "hog", "config": stalled}
        )
        await client.send({"type": "ai_request", "prompt": "x", "request_id": "queued"})
        await eventually(lambda: server.gateway.slots["only"].waiting == 1)
        refused = await client.ask("x", request_id="over")
        error = of_type(refused, "error")[0]["data"]
        assert error["error_type"] == "provider_busy"
        await client.send({"type": "cancel_request", "request_id": "hog"})
        frames = await client.until_end("queued")
    assert frames[-1]["data"]["status"] == "completed"


# -- cost limits ---------------------------------------------------------------------------


async def test_no_provider_within_the_cost_limit_refuses_before_anything_is_spent() -> None:
    async with (
        ScriptedUpstream(openai_answer(["x"], 1, 1)) as upstream,
        serving([hosted("dear", upstream, output_cost_per_mtok=1000.0)]) as (server, client),
    ):
        await client.send({"type": "ai_request", "prompt": "hi", "config": {"cost_limit": 0.0001}})
        refused = await client.recv()
        assert refused["data"]["error_type"] == "cost_limit_exceeded"
        assert upstream.exchanges == []
        assert server.gateway.stats.total_streams == 0


async def test_an_answer_that_reaches_the_cost_limit_is_stopped() -> None:
    # Estimated for the default 512-token budget it fits; it runs to 5,000 tokens.
    providers = [simulated("meter", output_cost_per_mtok=100.0)]
    async with serving(providers) as (_, client):
        frames = await client.ask(
            "hi",
            config={"cost_limit": 0.06, "options": {"tokens": 5000, "delay_ms": 0}},
        )
    error = of_type(frames, "error")[0]["data"]
    assert error["error_type"] == "cost_limit_exceeded"
    end = frames[-1]["data"]
    assert end["status"] == "error"
    assert end["cost_usd"] <= 0.06 + 0.0001
    assert end["usage"]["completion_tokens"] < 5000


async def test_an_answer_that_costs_exactly_the_limit_is_within_it() -> None:
    # Five tokens at $10,000 per million: $0.05, estimated and spent.
    providers = [simulated("meter", output_cost_per_mtok=10_000.0)]
    config = {"cost_limit": 0.05, "max_tokens": 5, "options": {"tokens": 5, "delay_ms": 0}}
    async with serving(providers) as (_, client):
        routed = await answer_or_refusal(client, config=config)
        forced = await answer_or_refusal(client, config={**config, "provider": "meter"})
    for answer in (routed, forced):
        assert of_type(answer, "error") == []
        end = answer[-1]["data"]
        assert (end["status"], end["cost_usd"]) == ("completed", 0.05)


# -- what the server tells ----------------------------------------------------------------


async def test_providers_endpoint_shows_health_and_never_a_key(monkeypatch: Any) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-secret-value-1234567890")
    async with (
        ScriptedUpstream(openai_answer(["x"], 1, 1)) as upstream,
        serving([hosted("keyed", upstream, api_key_env="UPSTREAM_KEY")]) as (server, client),
    ):
        await client.ask("hi")
        async with httpx.AsyncClient() as http:
            response = await http.get(server.url + "/api/providers")
    body = response.json()
    assert body == {
        "providers": [
            {
                "name": "keyed",
                "kind": "openai",
                "model": "keyed-model",
                "auto": True,
                "vision": True,
                "capabilities": {
                    "tools": True,
                    "parallel_tool_calls": True,
                    "vision": True,
                    "structured_output": "native",
                },
                "health": {
                    "state": "closed",
                    "ttft_ms": body["providers"][0]["health"]["ttft_ms"],
                    "tokens_per_s": None,
                    "error_rate": 0.0,
                    "in_flight": 0,
                },
            }
        ]
    }
    assert body["providers"][0]["health"]["ttft_ms"] > 0
    assert "sk-secret" not in response.text


async def test_stats_count_spend_and_tokens_per_user() -> None:
    providers = [simulated("priced", input_cost_per_mtok=1.0, output_cost_per_mtok=2.0)]
    async with serving(providers) as (server, client):
        for _ in range(2):
            await client.ask("hello", config={"options": {"tokens": 10, "delay_ms": 0}})
        async with httpx.AsyncClient() as http:
            stats = (await http.get(server.url + "/api/streaming/stats")).json()
    mine = stats["users"]["router"]
    assert mine["streams"] == 2
    assert mine["completion_tokens"] == 20
    assert mine["cost_usd"] > 0


# -- the simulated provider of a bare `tokenwire serve`: by name only ------------------


def with_doubles(settings: Settings, *doubles: Provider) -> Gateway:
    """A gateway over `settings`' providers with doubles in their places: the profiles,
    and so whether routing may choose each, come from the settings."""
    by_name = {double.name: double for double in doubles}
    slots = {p.name: ProviderSlot(by_name[p.name], provider_profile(p)) for p in settings.providers}
    return gateway_for(settings, slots)


async def chat(http: httpx.AsyncClient, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital?"}]}
    return await http.post("/v1/chat/completions", json=body)


async def test_on_a_bare_serve_auto_never_answers_from_the_simulated_provider() -> None:
    # Given the providers of `tokenwire serve` without configuration, the local model
    # measured slower than the simulated one, then failing until its circuit opens
    # (and stays open for the rest of the test, however slow the machine),
    routing = {**FAST_ROUTING, "max_retries": 0, "circuit_cooldown_seconds": 600}
    settings = load_settings(None, {"routing": routing})
    local = TroubledProvider("local", wait_first=0.5)
    stand_in = WatchedProvider("simulated")
    async with (
        running_server(settings, with_doubles(settings, local, stand_in)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        for _ in range(2):
            named = await chat(http, "simulated")  # forcing it by name works
            assert (named.status_code, named.json()["model"]) == (200, "simulated")
        answered = await chat(http, "auto")
        assert (answered.status_code, answered.json()["model"]) == (200, "local")

        local.before_first = ProviderError("the model crashed")
        for _ in range(3):
            failed = await chat(http, "auto")
            assert failed.status_code == 502, failed.text  # an error, never filler words
        out = await chat(http, "auto")
        assert out.status_code == 503
        assert "circuits open: local" in out.json()["error"]["message"]
        assert int(out.headers["retry-after"]) >= 1
        assert len(stand_in.requests) == 2  # only the two that named it

        # /v1/models and /api/providers list it, and say that auto never picks it.
        models = {m["id"]: m.get("auto") for m in (await http.get("/v1/models")).json()["data"]}
        assert models == {"local": True, "simulated": False, "auto": None}
        providers = (await http.get("/api/providers")).json()["providers"]
        assert {p["name"]: p["auto"] for p in providers} == {"local": True, "simulated": False}


async def test_a_simulated_provider_configured_explicitly_takes_part_in_auto() -> None:
    providers = [{"name": "local", "kind": "local"}, {"name": "simulated", "kind": "simulated"}]
    settings = load_settings(
        None, {"providers": providers, "routing": {**FAST_ROUTING, "max_retries": 0}}
    )
    local = TroubledProvider("local", before_first=ProviderError("the model crashed"))
    async with (
        running_server(settings, with_doubles(settings, local, WatchedProvider("simulated"))) as s,
        httpx.AsyncClient(base_url=s.url, timeout=30) as http,
    ):
        answered = await chat(http, "auto")
    assert (answered.status_code, answered.json()["model"]) == (200, "simulated")
