"""The benchmark suite's bookkeeping: verdicts, part selection, and the blocks it writes into
docs/benchmarks.md. No figure is measured here (benchmarks are not tests)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_a_target_is_met_only_on_its_own_side_of_the_limit() -> None:
    report = bench_module("report")
    higher = report.Target("tokens/s ratio", 1.0, 1.0, "higher")
    assert higher.met is True
    assert report.Target("tokens/s ratio", 0.99, 1.0, "higher").met is False
    assert report.Target("ttft p99", 2.0, 2.0, "lower").met is True
    assert report.Target("ttft p99", 2.01, 2.0, "lower").met is False
    assert report.Target("not run", None, 2.0, "lower").met is None
    line = report.format_target(report.Target("streams", 1500.0, 2000.0, "higher"))
    assert line == "streams: 1,500 (target >= 2,000) NOT met"
    assert report.figure(0.3612) == "0.361"


def test_tables_line_up_and_json_carries_the_verdict() -> None:
    report = bench_module("report")
    table = report.format_table([["server", "tokens/s"], ["tokenwire", "85,300"], ["relay", "1"]])
    lines = table.splitlines()
    assert [len(line) for line in lines[:3]] == [len(lines[1])] * 3
    assert lines[2].endswith("85,300")
    assert lines[3].endswith("1")
    part = report.Part("p", "P", [["a"]], targets=[report.Target("t", 3.0, 2.0, "lower")])
    assert report.to_json(part)["targets"][0]["met"] is False


def test_the_suite_runs_the_parts_asked_for_in_its_own_order() -> None:
    suite = bench_module("suite")
    args = suite.parser().parse_args(["--only", "capacity,ceiling"])
    assert suite.chosen(args) == ["capacity", "ceiling"]
    assert suite.chosen(suite.parser().parse_args(["--skip", "litellm_compare"])) == [
        p for p in suite.PARTS if p != "litellm_compare"
    ]
    with pytest.raises(SystemExit, match="unknown part"):
        suite.chosen(suite.parser().parse_args(["--only", "celing"]))


def test_every_part_of_the_suite_is_a_module_with_run() -> None:
    suite = bench_module("suite")
    for name in suite.PARTS:
        assert callable(bench_module(name).run), name


def test_a_new_report_replaces_the_last_between_the_markers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = bench_module("suite")
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nkept above\n")
    monkeypatch.setattr(suite, "DOCS", docs)
    suite.write_docs("first run\n## Targets")
    suite.write_docs("second run\n## Targets")
    text = docs.read_text()
    assert "kept above" in text
    assert "second run" in text
    assert "first run" not in text
    assert text.count(suite.START) == 1
    assert "### Targets" in text


def test_costs_are_compared_with_the_last_release_and_tabled_per_release() -> None:
    costs = bench_module("costs")
    last = {"release": "0.1.0", "figures": dict.fromkeys(costs.FIGURES, 100_000)}
    rows = costs.comparison(dict.fromkeys(costs.FIGURES, 110_000.0), last)
    assert rows[0] == ["figure", "instructions", "0.1.0", "change"]
    assert all(row[-1] == "+10.0%" for row in rows[1:])
    record = [
        {"release": "0.1.0", "commit": "abc", "date": "2026-12-07", "figures": last["figures"]},
        {"release": "0.2.0", "commit": "def", "date": "2026-12-08", "figures": last["figures"]},
    ]
    table = costs.docs_table(record).splitlines()
    assert len(table) == 4
    assert table[2].startswith("| 0.1.0 | abc")
    assert "100,000" in table[3]
