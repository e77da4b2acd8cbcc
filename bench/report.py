"""What every part of `make bench` (bench/suite.py) hands back, and how it is printed.

A part is a module with `run(options: Options) -> Part`, runnable alone too. Its figures are
ratios or differences measured in the same run against a reference (a bare relay, the fake
upstream called directly, LiteLLM's proxy, llama.cpp called directly), so that a slow or busy
machine moves both sides alike. Each target of issue 26 a part measures becomes a `Target`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Options:
    """What every part is given by the suite (or by its own command line)."""

    # a few seconds per part: checks that the part runs, not a measurement
    quick: bool = False
    root: Path = ROOT
    # the cores' other load is written beside each figure; parts may wait for quiet first
    wait_quiet_s: float = 0.0


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: `measured` against `limit`, `better` says which way."""

    name: str
    measured: float | None
    limit: float
    better: Literal["higher", "lower"]
    unit: str = ""
    # what limits it when it is not met, or how it was measured when that is not obvious
    remark: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        if self.better == "higher":
            return self.measured >= self.limit
        return self.measured <= self.limit


@dataclass
class Part:
    key: str
    title: str
    # printed as an aligned table: the first row is the header
    table: list[list[str]]
    targets: list[Target] = field(default_factory=list)
    # everything measured, for the JSON file
    data: dict[str, Any] = field(default_factory=dict)
    # printed under the table
    notes: list[str] = field(default_factory=list)


def format_table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def figure(value: float) -> str:
    """Three significant digits without an exponent: 2,000, 85.3, 1.2, 0.36."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_target(target: Target) -> str:
    verdict = {True: "met", False: "NOT met", None: "not measured"}[target.met]
    sign = ">=" if target.better == "higher" else "<="
    measured = "-" if target.measured is None else figure(target.measured)
    limit = f"{sign} {figure(target.limit)}{target.unit}"
    line = f"{target.name}: {measured}{target.unit} (target {limit}) {verdict}"
    return f"{line}; {target.remark}" if target.remark else line


def format_part(part: Part) -> str:
    out = [f"## {part.title}", "", format_table(part.table)]
    out += [""] + [f"- {note}" for note in part.notes] if part.notes else []
    if part.targets:
        out += [""] + [f"- {format_target(t)}" for t in part.targets]
    return "\n".join(out)


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for a table cell: thousands separated, '-' when not measured."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Target):
            out["met"] = value.met
        return out
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(payload), indent=2) + "\n")
