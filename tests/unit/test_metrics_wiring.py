"""What `[metrics]` plugs in: the route, the gateway's and the access policy's telemetry."""

from __future__ import annotations

from starlette.routing import Route

from tests.support.server import simulated_settings
from tokenwire.app import build_app
from tokenwire.core.telemetry import FanOut, NoTelemetry
from tokenwire.observability.metrics import PrometheusMetrics


def paths(app: object) -> set[str]:
    return {route.path for route in app.routes if isinstance(route, Route)}  # type: ignore[attr-defined]


def test_metrics_are_on_by_default_for_the_gateway_and_the_access_policy() -> None:
    app = build_app(simulated_settings(), environ={})

    assert "/metrics" in paths(app)
    assert isinstance(app.state.gateway.telemetry, PrometheusMetrics)
    assert app.state.access.telemetry is app.state.gateway.telemetry


def test_metrics_off_serve_no_route_and_instrument_nothing() -> None:
    app = build_app(simulated_settings(metrics={"enabled": False}), environ={})

    assert "/metrics" not in paths(app)
    assert isinstance(app.state.gateway.telemetry, NoTelemetry)
    assert isinstance(app.state.access.telemetry, NoTelemetry)


def test_metrics_and_tracing_together_both_listen() -> None:
    settings = simulated_settings(
        metrics={"tracing": True, "otlp_endpoint": "http://127.0.0.1:9/v1/traces"}
    )
    app = build_app(settings, environ={})

    assert isinstance(app.state.gateway.telemetry, FanOut)
    assert "/metrics" in paths(app)
