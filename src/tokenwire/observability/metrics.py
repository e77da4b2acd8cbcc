"""Prometheus metrics: the core's `Telemetry` on prometheus-client, served at `/metrics`.

One process: the metrics live in a registry of this app's own (several apps in one
process, as in the tests, never meet). Several workers (`--workers N`): the
supervisor gives every worker one `PROMETHEUS_MULTIPROC_DIR`, prometheus-client
writes each worker's values there, and whichever worker answers a scrape sums them
all (gauges of what is live count only live workers). Several nodes: each serves
its own `/metrics`; `tokenwire_node_info` names the node (docs/deployment.md).

Per text event a stream costs a few additions to plain integers of its own (and a
bisect for the gap's bucket): no lock, no label lookup. What it holds goes into the
shared metrics when it ends, at each loop-lag sample (twice a second) and at each
scrape, so that a scrape always reads every stream up to that moment.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response

from tokenwire import __version__
from tokenwire.core.stats import StreamOutcome
from tokenwire.core.telemetry import LIMIT_ERRORS, ResumeOutcome, StreamProbe
from tokenwire.protocol.errors import TokenwireError
from tokenwire.protocol.events import StreamStatus

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by the supervisor of `--workers`): prometheus-client keeps values in files there."""
TRANSPORTS = ("websocket", "sse")
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}

FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)

LOOP_LAG_INTERVAL_SECONDS = 0.5
"""How often the loop-lag task wakes (each wake is one histogram observation)."""

# A provider's time-to-first-token histogram, tokens and bytes counters (labelled children).
_OutputChildren = tuple[Histogram, Counter, Counter]


class PrometheusMetrics:
    """Every tokenwire metric; `multiprocess_dir` set: the workers' shared directory."""

    def __init__(
        self,
        node_id: str,
        providers: Iterable[str],
        multiprocess_dir: str | None = None,
    ) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        # Under multiprocess mode values go to files whatever the registry; the scrape
        # reads the files (`MultiProcessCollector`), so the metrics register nowhere.
        own = None if multiprocess_dir else self.registry
        self.connections = Gauge(
            "tokenwire_connections",
            "Open client connections (WebSocket, and SSE event streams).",
            ["transport"],
            registry=own,
            multiprocess_mode="livesum",
        )
        self.streams_active = Gauge(
            "tokenwire_streams_active",
            "Requests running now (falls back as each ends).",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.streams_in_grace = Gauge(
            "tokenwire_streams_in_resume_grace",
            "Running requests that nobody follows, waiting for a client to re-attach.",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.streams_ended = Counter(
            "tokenwire_streams_ended",
            "Requests ended, by status (completed, cancelled, error) and provider.",
            ["provider", "status"],
            registry=own,
        )
        self.first_token = Histogram(
            "tokenwire_time_to_first_token_seconds",
            "Time from a request's start to its first text or tool call, by provider.",
            ["provider"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=own,
        )
        self.gap = Histogram(
            "tokenwire_inter_token_gap_seconds",
            "Time between a request's text events as delivered (tokens, or chunks).",
            buckets=GAP_BUCKETS,
            registry=own,
        )
        self.tokens_out = Counter(
            "tokenwire_tokens_out",
            "Text deltas (tokens) received from providers and streamed, by provider.",
            ["provider"],
            registry=own,
        )
        self.bytes_out = Counter(
            "tokenwire_text_bytes_out",
            "UTF-8 bytes of answer text streamed, by provider.",
            ["provider"],
            registry=own,
        )
        self.provider_errors = Counter(
            "tokenwire_provider_errors",
            "Failed provider attempts (retried, fallen back or final), by provider and error.",
            ["provider", "error_type"],
            registry=own,
        )
        self.circuit = Gauge(
            "tokenwire_provider_circuit_state",
            "Each provider's circuit breaker: 0 closed, 1 half open, 2 open.",
            ["provider"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.overflows = Counter(
            "tokenwire_send_buffer_overflows",
            "Clients disconnected for reading too slowly (send buffer overflow), by transport.",
            ["transport"],
            registry=own,
        )
        self.resumes = Counter(
            "tokenwire_resumes",
            "Re-attaches, by outcome (replayed, not_recovered, unknown).",
            ["outcome"],
            registry=own,
        )
        self.refusals = Counter(
            "tokenwire_limit_refusals",
            "Requests and connections refused by a limit, by reason (the error type).",
            ["reason"],
            registry=own,
        )
        self.loop_lag = Histogram(
            "tokenwire_event_loop_lag_seconds",
            "How late the event loop ran a timer (scheduling delay), sampled twice a second.",
            buckets=LAG_BUCKETS,
            registry=own,
        )
        self.node_info = Gauge(
            "tokenwire_node_info",
            "This node (and, with --workers, worker process): always 1.",
            ["node", "version"],
            registry=own,
            multiprocess_mode="liveall",
        )
        self.node_info.labels(node_id, __version__).set(1)
        self._prepare(list(providers))
        if multiprocess_dir:
            # prometheus-client leaves this one constructor untyped.
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            # The worker answering the scrape; the others' would need their own scrape.
            process_collector.ProcessCollector(registry=self.registry)
        else:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        self._refreshers: list[Callable[[], None]] = [self._flush_streams]
        self._streams: set[_Probe] = set()
        """Running requests' probes, whose counts are added in at each refresh."""

    def _prepare(self, providers: list[str]) -> None:
        """Children made up front, so that every series exists (at 0) from the start."""
        for transport in TRANSPORTS:
            self.connections.labels(transport)
            self.overflows.labels(transport)
        for outcome in ResumeOutcome:
            self.resumes.labels(outcome)
        self._ended = {
            (provider, status): self.streams_ended.labels(provider, status.value)
            for provider in providers
            for status in StreamStatus
        }
        self._circuits = {provider: self.circuit.labels(provider) for provider in providers}
        # Not made up front: these series appear with a provider's first output, as before.
        self._outputs: dict[str, _OutputChildren] = {}

    def _output_children(self, provider: str) -> _OutputChildren:
        return (
            self.first_token.labels(provider),
            self.tokens_out.labels(provider),
            self.bytes_out.labels(provider),
        )

    def output_children(self, provider: str) -> _OutputChildren:
        """A provider's first-token, tokens and bytes children, looked up once (`labels()`
        takes a lock and builds its key on every call: three of them per request)."""
        children = self._outputs.get(provider)
        if children is None:
            children = self._outputs[provider] = self._output_children(provider)
        return children

    # -- what the gateway cannot push: read when sampled and when scraped ---------------

    def watch(self, in_grace: Callable[[], int], circuits: Callable[[], Mapping[str, str]]) -> None:
        """Read these at every sample and scrape (streams in the resume grace, and each
        provider's circuit state, which its cooldown changes with no event to tell)."""

        def refresh() -> None:
            self.streams_in_grace.set(in_grace())
            for provider, state in circuits().items():
                gauge = self._circuits.get(provider) or self.circuit.labels(provider)
                gauge.set(CIRCUIT_VALUES.get(state, 0))

        self._refreshers.append(refresh)

    def refresh(self) -> None:
        for refresh in self._refreshers:
            refresh()

    async def sample_loop_lag(self, interval: float = LOOP_LAG_INTERVAL_SECONDS) -> None:
        """Until cancelled: how much later than asked the loop wakes this task."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - asked))
            self.refresh()

    def exposition(self) -> bytes:
        """The text exposition format (`/metrics`), this process's view refreshed first."""
        self.refresh()
        return generate_latest(self.registry)

    # -- Telemetry ------------------------------------------------------------------------

    def stream_started(self, request_id: str) -> StreamProbe:
        probe = _Probe(self)
        self._streams.add(probe)
        return probe

    def _flush_streams(self) -> None:
        for probe in self._streams:
            probe.flush()

    def stream_ended(self, probe: _Probe, outcome: StreamOutcome | None) -> None:
        self._streams.discard(probe)
        probe.flush()
        self.streams_active.dec()
        if outcome is not None:
            self.stream_outcome(outcome)

    def connection_opened(self, transport: str) -> None:
        self.connections.labels(transport).inc()

    def connection_closed(self, transport: str) -> None:
        self.connections.labels(transport).dec()

    def send_buffer_overflowed(self, transport: str) -> None:
        self.overflows.labels(transport).inc()

    def resumed(self, outcome: ResumeOutcome) -> None:
        self.resumes.labels(outcome).inc()

    def refused(self, error: TokenwireError) -> None:
        if isinstance(error, LIMIT_ERRORS):
            self.refusals.labels(error.error_type).inc()

    def stream_outcome(self, outcome: StreamOutcome) -> None:
        key = (outcome.provider, outcome.status)
        child = self._ended.get(key)
        if child is None:
            child = self._ended[key] = self.streams_ended.labels(*key)
        child.inc()


def metrics_endpoint(metrics: PrometheusMetrics) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: the text exposition format (access is the middleware's business)."""

    async def serve(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    return serve


class _Probe:
    """One request's metrics: counted in plain integers per text event, added to the
    shared metrics by `flush` (children bound once, at the first output)."""

    __slots__ = (
        "_bytes",
        "_gap_counts",
        "_gap_sum",
        "_metrics",
        "_pending_bytes",
        "_pending_tokens",
        "_tokens",
    )

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics
        self._tokens: Counter | None = None
        self._bytes: Counter | None = None
        self._pending_tokens = 0
        self._pending_bytes = 0
        # One slot per bucket of GAP_BUCKETS, and one for +Inf, as the histogram has.
        self._gap_counts = [0] * (len(GAP_BUCKETS) + 1)
        self._gap_sum = 0.0
        metrics.streams_active.inc()

    def routed(self, provider: str, strategy: str, task_type: str, model: str) -> None:
        return None

    def attempt_started(self, provider: str) -> None:
        return None

    def attempt_ended(self, provider: str, error_type: str | None) -> None:
        if error_type is not None:
            self._metrics.provider_errors.labels(provider, error_type).inc()

    def first_output(self, provider: str, seconds: float) -> None:
        first_token, self._tokens, self._bytes = self._metrics.output_children(provider)
        first_token.observe(seconds)

    def text(self, deltas: int, size: int, gap: float | None) -> None:
        self._pending_tokens += deltas
        self._pending_bytes += size
        if gap is not None:
            self._gap_counts[bisect_left(GAP_BUCKETS, gap)] += 1
            self._gap_sum += gap

    def flush(self) -> None:
        tokens, size = self._tokens, self._bytes
        pending = self._pending_tokens or self._pending_bytes
        if pending and tokens is not None and size is not None:
            tokens.inc(self._pending_tokens)
            size.inc(self._pending_bytes)
            self._pending_tokens = self._pending_bytes = 0
        if self._gap_sum or any(self._gap_counts):
            add_observations(self._metrics.gap, self._gap_counts, self._gap_sum)
            self._gap_counts = [0] * len(self._gap_counts)
            self._gap_sum = 0.0

    def ended(self, outcome: StreamOutcome | None) -> None:
        self._metrics.stream_ended(self, outcome)


def add_observations(histogram: Histogram, counts: list[int], total: float) -> None:
    """Add observations already sorted into `histogram`'s buckets (`counts[i]` of them at
    most its i-th bound, above the one before; the last slot for +Inf) summing to `total`.

    prometheus-client offers one observation at a time only; this is the one place that
    uses its histogram's own values (`_buckets`, `_sum`), and
    tests/unit/test_metrics_adapter.py fails if they change.
    """
    buckets = histogram._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)
    histogram._sum.inc(total)
