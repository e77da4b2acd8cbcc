"""`make bench`: every figure of issue 26 in one run, each against its reference.

    .venv/bin/python bench/suite.py                 # the whole suite (about 25 minutes)
    .venv/bin/python bench/suite.py --quick         # each part at toy sizes: does it run?
    .venv/bin/python bench/suite.py --only ceiling,capacity
    .venv/bin/python bench/suite.py --write-docs    # also put the tables in docs/benchmarks.md

Parts, in order (each is also a script of its own, `bench/NAME.py`):

    ceiling          throughput and CPU per token, tokenwire against a bare ASGI relay
    added_latency    time to first token and gaps on every transport, against the upstream direct
    litellm_compare  LiteLLM's proxy against /v1/chat/completions (needs `make litellm`)
    capacity         memory per idle connection; the most streams at 20 tokens/s
    local_model      the packaged model through the gateway against llama.cpp direct

Prints each part's table and the issue's targets, met or not, and writes everything measured
to bench/results/<stamp>-suite.json (git ignores bench/results/). A part that fails is
reported and the others still run; the exit status is 1 if any part failed.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report

PARTS = ("ceiling", "added_latency", "litellm_compare", "capacity", "local_model")
DOCS = report.ROOT / "docs" / "benchmarks.md"
START, END = "<!-- make-bench:start -->", "<!-- make-bench:end -->"


def run_part(name: str, options: report.Options) -> report.Part:
    module = importlib.import_module(name)
    started = time.monotonic()
    try:
        part: report.Part = module.run(options)
    except Exception as exc:  # one part's failure must not lose the others' figures
        traceback.print_exc()
        part = report.Part(
            key=name, title=f"{name}: failed", table=[], notes=[f"{type(exc).__name__}: {exc}"]
        )
        part.data["failed"] = True
    part.data["seconds"] = round(time.monotonic() - started, 1)
    return part


def header(info: dict[str, object], command: str) -> str:
    return (
        f"Machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, Linux {info['kernel']}; commit {info['commit']}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\nReproduce: `{command}`"
    )


def targets_table(parts: list[report.Part]) -> str:
    rows = [["target", "measured", "limit", "met"]]
    for part in parts:
        for t in part.targets:
            sign = ">=" if t.better == "higher" else "<="
            measured = "-" if t.measured is None else f"{report.figure(t.measured)}{t.unit}"
            verdict = {True: "yes", False: "NO", None: "not measured"}[t.met]
            rows.append([t.name, measured, f"{sign} {report.figure(t.limit)}{t.unit}", verdict])
    return report.format_table(rows)


def render(parts: list[report.Part], info: dict[str, object], command: str) -> str:
    blocks = [header(info, command)]
    for part in parts:
        blocks.append(report.format_part(part))
    blocks.append("## Targets\n\n" + targets_table(parts))
    return "\n\n".join(blocks)


def write_docs(text: str) -> None:
    """Replace what lies between the markers in docs/benchmarks.md with this run's report."""
    docs = DOCS.read_text()
    fenced = re.sub(r"(?m)^## (.*)$", r"### \1", text)
    block = f"{START}\n{fenced}\n{END}"
    if START in docs and END in docs:
        docs = docs[: docs.index(START)] + block + docs[docs.index(END) + len(END) :]
    else:
        docs = docs.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(docs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="toy sizes: checks that every part runs")
    p.add_argument("--only", default="", help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out")
    p.add_argument(
        "--wait-quiet", type=float, default=30.0, help="seconds a part may wait for a quiet machine"
    )
    p.add_argument("--write-docs", action="store_true", help="put the report in docs/benchmarks.md")
    return p


def chosen(args: argparse.Namespace) -> list[str]:
    only = [p for p in args.only.split(",") if p]
    skip = {p for p in args.skip.split(",") if p}
    unknown = (set(only) | skip) - set(PARTS)
    if unknown:
        raise SystemExit(
            f"unknown part(s): {', '.join(sorted(unknown))}; parts: {', '.join(PARTS)}"
        )
    return [p for p in (only or PARTS) if p not in skip]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = chosen(args)
    options = report.Options(quick=args.quick, wait_quiet_s=0.0 if args.quick else args.wait_quiet)
    given = sys.argv[1:] if argv is None else argv
    command = "make bench" if not given else ".venv/bin/python bench/suite.py " + " ".join(given)
    info = report.machine()
    parts = []
    for name in names:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        part = run_part(name, options)
        parts.append(part)
        print(report.format_part(part) + "\n", flush=True)
    text = render(parts, info, command)
    print("## Targets\n\n" + targets_table(parts), flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report.dump(
        report.RESULTS / f"{stamp}-suite.json",
        {"machine": info, "command": command, "parts": parts},
    )
    (report.RESULTS / f"{stamp}-suite.md").write_text(text + "\n")
    print(f"\nJSON: {report.RESULTS / f'{stamp}-suite.json'}", file=sys.stderr)
    if args.write_docs:
        write_docs(text)
    return 1 if any(p.data.get("failed") for p in parts) else 0


if __name__ == "__main__":
    sys.exit(main())
