"""OpenTelemetry traces of requests: the spans, their parents, and no text in them."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.server import (
    RunningServer,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.app import build_gateway
from tokenwire.observability.tracing import Tracing

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "a-private-prompt: the colour of the swallow's saddle"
PROVIDERS = [
    {"name": "sim", "kind": "simulated", "options": {"tokens": 6, "delay_ms": 0}},
    # Fails before any text: retried once (max_retries 1), then the request fails.
    {"name": "down", "kind": "simulated", "options": {"tokens": 6, "fail_after": 0}},
]


class Traced:
    def __init__(self, server: RunningServer, exporter: InMemorySpanExporter) -> None:
        self.server = server
        self.exporter = exporter

    def spans_of(self, request_id: str) -> list[ReadableSpan]:
        """The request's span and every span under it."""
        spans = self.exporter.get_finished_spans()
        roots = [s for s in spans if s.attributes.get("tokenwire.request_id") == request_id]
        ids = {s.context.span_id for s in roots}
        return roots + [s for s in spans if s.parent is not None and s.parent.span_id in ids]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced() -> AsyncIterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = simulated_settings(
        providers=PROVIDERS, routing={"max_retries": 1, "retry_backoff_seconds": 0}
    )
    gateway = build_gateway(settings)
    gateway.telemetry = Tracing(provider.get_tracer("tokenwire-tests"))
    async with running_server(settings, gateway) as server:
        yield Traced(server, exporter)


async def ask(server: RunningServer, request_id: str, provider: str) -> list[dict[str, Any]]:
    async with ws_client(server) as client:
        return await client.ask(PROMPT, request_id=request_id, config={"provider": provider})


async def test_a_request_is_a_span_with_its_routing_and_its_attempt_under_it(
    traced: Traced,
) -> None:
    frames = await ask(traced.server, "t-ok", "sim")
    await eventually(lambda: any(s.name == "tokenwire.request" for s in traced.spans_of("t-ok")))

    spans = traced.spans_of("t-ok")
    (request,) = [s for s in spans if s.name == "tokenwire.request"]
    (route,) = [s for s in spans if s.name == "tokenwire.route"]
    (attempt,) = [s for s in spans if s.name == "tokenwire.attempt"]
    assert route.parent is not None
    assert attempt.parent is not None
    assert route.parent.span_id == attempt.parent.span_id == request.context.span_id
    assert route.context.trace_id == attempt.context.trace_id == request.context.trace_id
    end = of_type(frames, "stream_end")[0]["data"]
    assert request.attributes["tokenwire.status"] == "completed"
    assert request.attributes["tokenwire.provider"] == "sim"
    assert request.attributes["tokenwire.model"] == end["model"]
    assert request.attributes["tokenwire.completion_tokens"] == end["usage"]["completion_tokens"]
    assert request.attributes["tokenwire.tokens_streamed"] == 6
    assert route.attributes["tokenwire.provider"] == attempt.attributes["tokenwire.provider"]


async def test_each_attempt_at_a_failing_provider_is_a_span_with_its_error(
    traced: Traced,
) -> None:
    await ask(traced.server, "t-down", "down")
    await eventually(lambda: any(s.name == "tokenwire.request" for s in traced.spans_of("t-down")))

    spans = traced.spans_of("t-down")
    attempts = [s for s in spans if s.name == "tokenwire.attempt"]
    (request,) = [s for s in spans if s.name == "tokenwire.request"]
    assert len(attempts) == 2
    assert {a.attributes["tokenwire.error_type"] for a in attempts} == {"provider_error"}
    assert request.attributes["tokenwire.status"] == "error"
    assert not request.status.is_ok


async def test_no_span_holds_the_prompt_or_the_answer(traced: Traced) -> None:
    frames = await ask(traced.server, "t-text", "sim")
    await eventually(lambda: any(s.name == "tokenwire.request" for s in traced.spans_of("t-text")))
    answer = "".join(f["data"].get("chunk", "") for f in of_type(frames, "chunk"))
    words = answer.split()
    # Any two words in a row: a fragment of the answer, whatever a span would cut.
    fragments = [f"{a} {b}" for a, b in itertools.pairwise(words)]
    assert fragments

    values = [
        str(value)
        for span in traced.exporter.get_finished_spans()
        for value in [*span.attributes.values(), span.name]
    ]
    assert [v for v in values if "private-prompt" in v or "swallow" in v] == []
    assert [v for v in values if any(fragment in v for fragment in fragments)] == []
