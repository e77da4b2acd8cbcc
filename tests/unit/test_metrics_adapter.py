"""The one place tokenwire uses prometheus-client's histogram internals, held to the
library: observations added in bulk read exactly as the same ones observed one by one."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tokenwire.observability.metrics import GAP_BUCKETS, PrometheusMetrics, add_observations

GAPS = [0.0, 0.0005, 0.001, 0.003, 0.01, 0.02, 0.2, 0.9, 3.0, 7.5, 0.05, 0.001]


def exposition(histogram_of: str) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("gap_seconds", "Gaps.", buckets=GAP_BUCKETS, registry=registry)
    if histogram_of == "one by one":
        for gap in GAPS:
            histogram.observe(gap)
    else:
        counts = [0] * (len(GAP_BUCKETS) + 1)
        for gap in GAPS:
            counts[bisect_left(GAP_BUCKETS, gap)] += 1
        add_observations(histogram, counts, sum(GAPS))
    return "\n".join(
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    )


def test_observations_added_in_bulk_read_as_the_same_observed_one_by_one() -> None:
    assert exposition("in bulk") == exposition("one by one")


def test_a_stream_s_text_reaches_the_metrics_when_it_ends_and_at_each_refresh() -> None:
    metrics = PrometheusMetrics("node-1", ["sim"])
    probe = metrics.stream_started("r1")
    probe.first_output("sim", 0.01)
    probe.text(3, 12, None)
    probe.text(2, 8, 0.02)

    metrics.refresh()
    assert 'tokenwire_tokens_out_total{provider="sim"} 5.0' in metrics.exposition().decode()
    probe.text(1, 4, 0.03)
    probe.ended(None)

    text = generate_latest(metrics.registry).decode()
    assert 'tokenwire_tokens_out_total{provider="sim"} 6.0' in text
    assert 'tokenwire_text_bytes_out_total{provider="sim"} 24.0' in text
    assert "tokenwire_inter_token_gap_seconds_count 2.0" in text
    assert "tokenwire_streams_active 0.0" in text


def test_a_stream_s_gaps_land_in_the_buckets_that_observing_them_would_give() -> None:
    metrics = PrometheusMetrics("node-1", ["sim"])
    probe = metrics.stream_started("r1")
    probe.first_output("sim", 0.01)
    for gap in GAPS:
        probe.text(1, 1, gap)
    probe.ended(None)
    reference = CollectorRegistry()
    histogram = Histogram(
        "tokenwire_inter_token_gap_seconds", "Gaps.", buckets=GAP_BUCKETS, registry=reference
    )
    for gap in GAPS:
        histogram.observe(gap)

    def buckets(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        prefix = "tokenwire_inter_token_gap_seconds_"
        lines = text.splitlines()
        return [line for line in lines if line.startswith(prefix) and "created" not in line]

    assert buckets(metrics.registry) == buckets(reference)


def test_each_provider_s_output_lands_in_its_own_series_from_its_first_output() -> None:
    # The labelled children are looked up once per provider and kept: every later stream
    # of that provider, and only of that one, counts in them.
    metrics = PrometheusMetrics("node-1", ["sim", "other"])
    assert 'tokenwire_tokens_out_total{provider="sim"}' not in metrics.exposition().decode()
    for provider, tokens in [("sim", 3), ("other", 5), ("sim", 2), ("late", 7)]:
        probe = metrics.stream_started("r")
        probe.first_output(provider, 0.01)
        probe.text(tokens, tokens * 2, None)
        probe.ended(None)
    text = metrics.exposition().decode()
    assert 'tokenwire_tokens_out_total{provider="sim"} 5.0' in text
    assert 'tokenwire_tokens_out_total{provider="other"} 5.0' in text
    assert 'tokenwire_tokens_out_total{provider="late"} 7.0' in text
    assert 'tokenwire_text_bytes_out_total{provider="sim"} 10.0' in text
    assert 'tokenwire_time_to_first_token_seconds_count{provider="sim"} 2.0' in text
    assert 'tokenwire_time_to_first_token_seconds_count{provider="other"} 1.0' in text
