"""Tracing asked for without the `otel` extra: start-up stops and says what to install."""

from __future__ import annotations

import sys

import pytest

from tests.support.server import simulated_settings
from tokenwire.app import build_app
from tokenwire.settings import ConfigError


def test_tracing_on_without_the_otel_extra_stops_start_up_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "tokenwire.observability.tracing", raising=False)
    settings = simulated_settings(metrics={"tracing": True})

    with pytest.raises(ConfigError) as refused:
        build_app(settings, environ={})

    assert "metrics.tracing" in str(refused.value)
    assert "pip install 'tokenwire[otel]'" in str(refused.value)
