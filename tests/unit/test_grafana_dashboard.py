"""The Grafana dashboard in docs/ parses, and asks only for metrics the server exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tokenwire.core.stats import StreamOutcome
from tokenwire.observability.metrics import PrometheusMetrics
from tokenwire.protocol.errors import PromptTooLong
from tokenwire.protocol.events import StreamStatus

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\b(?:tokenwire|process)_[a-z_]+\b")


def exposed_names() -> set[str]:
    """Every sample name of a server's /metrics once each metric has a value."""
    metrics = PrometheusMetrics("node-1", ["sim"])
    probe = metrics.stream_started("r1")
    probe.first_output("sim", 0.05)
    probe.text(2, 10, None)
    probe.text(1, 5, 0.02)
    probe.attempt_ended("sim", "provider_error")
    probe.ended(StreamOutcome("sim", StreamStatus.COMPLETED, 0.1, 0.05, 2, 15, None, 0.0))
    metrics.refused(PromptTooLong("too long"))
    metrics.loop_lag.observe(0.001)
    text = generate_latest(metrics.registry).decode()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_parses_and_uses_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_every_expression_names_only_metrics_the_server_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_names()

    named = {name for expr in expressions(dashboard) for name in METRIC_NAME.findall(expr)}
    assert named - exposed == set()
    # Every tokenwire metric has a panel (the families, whatever their suffix).
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in named}
    tokenwire = {
        re.sub(r"_(total|bucket|count|sum|created)$", "", n)
        for n in exposed
        if n.startswith("tokenwire_") and n != "tokenwire_node_info"
    }
    assert tokenwire - families == set()
