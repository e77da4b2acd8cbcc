"""OpenTelemetry traces of requests (the optional `otel` extra): the core's `Telemetry`.

A request is a `tokenwire.request` span; its routing decision a `tokenwire.route`
child, and each provider attempt a `tokenwire.attempt` child. Attributes are
identifiers, names, statuses and counts, never text: no prompt and no answer
reaches a span, whatever a provider or a client sends.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from tokenwire.core.stats import StreamOutcome
from tokenwire.core.telemetry import NoTelemetry, StreamProbe
from tokenwire.protocol.events import StreamStatus


def tracer_provider(service_name: str, otlp_endpoint: str | None) -> TracerProvider:
    """Spans batched to an OTLP/HTTP collector (`otlp_endpoint`, or the SDK's
    `OTEL_EXPORTER_OTLP_*` environment when None)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    return provider


class Tracing(NoTelemetry):
    """Traces requests with `tracer`; connections and refusals make no spans (the
    silent default's no-ops)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def stream_started(self, request_id: str) -> StreamProbe:
        return _TraceProbe(self._tracer, request_id)


class _TraceProbe:
    """One request's spans. Text events only add to a count (no span work per token)."""

    __slots__ = ("_attempt", "_context", "_request", "_tokens", "_tracer")

    def __init__(self, tracer: Tracer, request_id: str) -> None:
        self._tracer = tracer
        self._request = tracer.start_span(
            "tokenwire.request", attributes={"tokenwire.request_id": request_id}
        )
        self._context = trace.set_span_in_context(self._request)
        self._attempt: Span | None = None
        self._tokens = 0

    def routed(self, provider: str, strategy: str, task_type: str, model: str) -> None:
        attributes = {
            "tokenwire.provider": provider,
            "tokenwire.routing_strategy": strategy,
            "tokenwire.task_type": task_type,
            "tokenwire.model": model,
        }
        self._tracer.start_span(
            "tokenwire.route", context=self._context, attributes=attributes
        ).end()
        self._request.set_attributes({"tokenwire.model": model})

    def attempt_started(self, provider: str) -> None:
        self._attempt = self._tracer.start_span(
            "tokenwire.attempt", context=self._context, attributes={"tokenwire.provider": provider}
        )

    def attempt_ended(self, provider: str, error_type: str | None) -> None:
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        if error_type is not None:
            attempt.set_attribute("tokenwire.error_type", error_type)
            attempt.set_status(Status(StatusCode.ERROR, error_type))
        attempt.end()

    def first_output(self, provider: str, seconds: float) -> None:
        self._request.set_attribute("tokenwire.ttft_seconds", seconds)

    def text(self, deltas: int, size: int, gap: float | None) -> None:
        self._tokens += deltas

    def ended(self, outcome: StreamOutcome | None) -> None:
        request = self._request
        request.set_attribute("tokenwire.tokens_streamed", self._tokens)
        if outcome is None:
            request.set_status(Status(StatusCode.ERROR, "internal_error"))
        else:
            request.set_attributes(
                {
                    "tokenwire.provider": outcome.provider,
                    "tokenwire.status": outcome.status.value,
                    "tokenwire.chunks": outcome.chunks,
                }
            )
            if outcome.usage is not None:
                request.set_attributes(
                    {
                        "tokenwire.prompt_tokens": outcome.usage.prompt_tokens,
                        "tokenwire.completion_tokens": outcome.usage.completion_tokens,
                    }
                )
            if outcome.status is StreamStatus.ERROR:
                request.set_status(Status(StatusCode.ERROR))
        if self._attempt is not None:
            self._attempt.end()
        request.end()
