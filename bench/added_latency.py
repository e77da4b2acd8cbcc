"""Part (2) of `make bench`: what tokenwire adds to the first token and to the gaps.

    python bench/added_latency.py [--quick]

One fake upstream (bench/fast_upstream.py, 50 tokens 50 ms apart: 20 tokens/s) and one
`tokenwire serve` in front of it (bench/upstream_stack.py). The same client (bench/stream_load.py)
streams from the upstream directly (`/v1/chat/completions`, and `/v1/messages` for the
Anthropic dialect) and through tokenwire on the WebSocket, its SSE transport
(`POST /api/streams`), `/v1/chat/completions`, `/v1/responses` (these four to the `openai`
provider) and `/v1/messages` (to the `anthropic` provider), at 1 stream (sequential
requests), 100 streams starting over 1 s, and 1,000 starting at once. Added = through
tokenwire minus direct, per percentile; the WebSocket and SSE are compared with the direct
Chat Completions stream that their provider reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import report
import stream_load
import upstream_stack
import ws_load
from fast_upstream import Upstream
from report import Options, Part, Target, fmt
from stream_load import CHAT, MESSAGES, RESPONSES, TOKENWIRE_SSE, Outcome, Plan

KEY = "added_latency"
TRANSPORTS = ("websocket", "sse", "chat", "responses", "messages")
# The targets: added TTFT p99 at 100 streams on these; TTFT p99 of 1,000 at once.
ADDED_TTFT_TRANSPORTS = ("websocket", "chat", "responses", "messages")
ADDED_TTFT_LIMIT_MS = 2.0
BURST_TTFT_LIMIT_MS = 50.0
# 20 tokens/s, as the issue measured it ("100 streams at 20 tokens/s"); part (3) uses 20 ms.
TOKENS = 50
GAP_MS = 50.0
STAMP = time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class Level:
    label: str
    plan: Plan
    # the level the targets are stated for
    role: str = ""


def levels(quick: bool) -> list[Level]:
    if quick:
        return [Level("1", Plan(1, each=3)), Level("10 over 0.2 s", Plan(10, spread_s=0.2))]
    return [
        Level("1", Plan(1, each=5)),
        Level("100 over 1 s", Plan(100, spread_s=1.0), "added"),
        Level("1000 at once", Plan(1000), "burst"),
    ]


async def through(
    transport: str, url: str, plan: Plan, tokens: int, pids: dict[str, int]
) -> Outcome:
    if transport == "websocket":
        return await stream_load.run_websocket(
            url, upstream_stack.OPENAI_PROVIDER, plan, tokens, pids
        )
    dialect = {"sse": TOKENWIRE_SSE, "chat": CHAT, "responses": RESPONSES, "messages": MESSAGES}[
        transport
    ]
    model = (
        upstream_stack.ANTHROPIC_PROVIDER
        if transport == "messages"
        else upstream_stack.OPENAI_PROVIDER
    )
    return await stream_load.run_http(url, dialect, model, plan, tokens, pids)


def added(a: dict[str, float], b: dict[str, float], key: str) -> float | None:
    if key not in a or key not in b:
        return None
    return round(a[key] - b[key], 3)


@contextlib.asynccontextmanager
async def profiled(py_spy: str | None, pid: int, out: Path) -> AsyncIterator[None]:
    """py-spy recording `pid` (collapsed stacks, `bench/stacks_top.py` sums them) while the
    block runs; nothing when `py_spy` is None."""
    if py_spy is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "-r", "200", "--format", "raw", "-o", str(out), "--pid", str(pid)]
    quiet = asyncio.subprocess.DEVNULL
    spy = await asyncio.create_subprocess_exec(*command, stdout=quiet, stderr=quiet)
    await asyncio.sleep(1.0)  # attached, or the first requests go unseen
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        await asyncio.wait_for(spy.wait(), 60)


async def measure(
    options: Options,
    paths: tuple[str, ...] = TRANSPORTS,
    only: tuple[str, ...] = (),
    py_spy: str | None = None,
) -> Part:
    """`paths` and `only` (level labels) narrow the run, for profiling one case; `py_spy`
    records the server during each measured run through it (figures then include py-spy's
    own cost: a profile, not a benchmark)."""
    tokens, gap_ms = (20, 20.0) if options.quick else (TOKENS, GAP_MS)
    plan_levels = [level for level in levels(options.quick) if not only or level.label in only]
    stream_load.raise_fd_limit(max(level.plan.streams for level in plan_levels))
    upstream = Upstream(tokens, gap_ms)
    log_dir = report.RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        tokenwire = upstream_stack.Tokenwire(options.root, upstream.url, log_dir)
    except Exception:
        upstream.stop()
        raise
    pids = {"tokenwire": tokenwire.pid, "upstream": upstream.pid}
    runs: list[dict[str, Any]] = []
    try:
        # First use of each path (imports, the SDK clients' pools) is not what is measured.
        warm = Plan(4, each=2)
        for transport in paths:
            await through(transport, tokenwire.url, warm, tokens, pids)
        for level in plan_levels:
            if options.wait_quiet_s:
                await ws_load.wait_quiet(0.3, options.wait_quiet_s)
            direct = {
                "chat": await stream_load.run_http(
                    upstream.url, CHAT, "m", level.plan, tokens, pids
                ),
                "messages": await stream_load.run_http(
                    upstream.url, MESSAGES, "m", level.plan, tokens, pids
                ),
            }
            for name, outcome in direct.items():
                runs.append(
                    {
                        "level": level.label,
                        "role": level.role,
                        "path": f"direct {name}",
                        **asdict(outcome),
                    }
                )
            for transport in paths:
                await asyncio.sleep(0.5)  # the last run's connections closing
                label = re.sub(r"\W+", "-", level.label)
                out = report.RESULTS / "profiles" / f"{STAMP}-{transport}-{label}.txt"
                async with profiled(py_spy, tokenwire.pid, out):
                    outcome = await through(transport, tokenwire.url, level.plan, tokens, pids)
                base = direct["messages" if transport == "messages" else "chat"]
                runs.append(
                    {
                        "level": level.label,
                        "role": level.role,
                        "path": transport,
                        **asdict(outcome),
                        "added_ttft_ms": {
                            k: added(outcome.ttft_ms, base.ttft_ms, k) for k in ("p50", "p99")
                        },
                        "added_gap_ms": {
                            k: added(outcome.gap_ms, base.gap_ms, k) for k in ("p50", "p99")
                        },
                        "tokenwire_ms_per_1k_tokens": outcome.cpu_ms_per_1k_tokens("tokenwire"),
                        "upstream_ms_per_1k_tokens": outcome.cpu_ms_per_1k_tokens("upstream"),
                    }
                )
    finally:
        tokenwire.stop()
        upstream.stop()
    return part(options, tokens, gap_ms, runs)


def part(options: Options, tokens: int, gap_ms: float, runs: list[dict[str, Any]]) -> Part:
    header = [
        "path",
        "streams",
        "ttft p50",
        "ttft p99",
        "added p50",
        "added p99",
        "gap p50",
        "gap p99",
        "added gap p99",
        "srv ms/1k tok",
        "errors",
    ]
    table = [header]
    for run in runs:
        add = run.get("added_ttft_ms", {})
        table.append(
            [
                run["path"],
                run["level"],
                fmt(run["ttft_ms"].get("p50")),
                fmt(run["ttft_ms"].get("p99")),
                fmt(add.get("p50")),
                fmt(add.get("p99")),
                fmt(run["gap_ms"].get("p50")),
                fmt(run["gap_ms"].get("p99")),
                fmt(run.get("added_gap_ms", {}).get("p99")),
                fmt(run.get("tokenwire_ms_per_1k_tokens")),
                str(run["errors"]),
            ]
        )
    notes = [
        f"{tokens} tokens {gap_ms:g} ms apart per stream from bench/fast_upstream.py; times in ms; "
        "added = through tokenwire minus the upstream called directly by the same client",
        "websocket, sse, chat, responses: the openai provider, compared with direct chat; "
        "messages: the anthropic provider, compared with direct messages",
        "srv ms/1k tok: tokenwire's CPU during the run per 1,000 tokens delivered",
    ]
    errors = [
        f"{run['path']} {run['level']}: {run['error_samples'][:2]}" for run in runs if run["errors"]
    ]
    notes += errors
    return Part(
        key=KEY,
        title="Added time to first token and gaps (fake upstream: direct vs through tokenwire)",
        table=table,
        targets=targets(options, runs),
        data={"machine": report.machine(), "tokens": tokens, "gap_ms": gap_ms, "runs": runs},
        notes=notes,
    )


def targets(options: Options, runs: list[dict[str, Any]]) -> list[Target]:
    def find(role: str, path: str) -> dict[str, Any] | None:
        return next((r for r in runs if r["role"] == role and r["path"] == path), None)

    quick = "quick run: the issue's sizes were not run" if options.quick else ""

    def why_not(run: dict[str, Any] | None) -> str:
        if quick:
            return quick
        if run is None:
            return "not run"
        return f"{run['errors']} errors in the run" if run["errors"] else ""

    found: list[Target] = []
    for transport in ADDED_TTFT_TRANSPORTS:
        run = find("added", transport)
        value = run["added_ttft_ms"]["p99"] if run and not why_not(run) else None
        name = f"added TTFT p99, 100 streams, {transport}"
        found.append(Target(name, value, ADDED_TTFT_LIMIT_MS, "lower", " ms", why_not(run)))
    run = find("burst", "websocket")
    value = run["ttft_ms"].get("p99") if run and not why_not(run) else None
    direct = find("burst", "direct chat")
    remark = why_not(run) or (
        "through tokenwire; the upstream called directly: "
        f"{fmt(direct['ttft_ms'].get('p99') if direct else None)} ms"
    )
    found.append(
        Target(
            "TTFT p99, 1,000 WebSocket streams at once",
            value,
            BURST_TTFT_LIMIT_MS,
            "lower",
            " ms",
            remark,
        )
    )
    return found


def run(options: Options) -> Part:
    result: Part = stream_load.uvloop_runner()(measure(options))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that the part runs"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="seconds to wait for a quiet machine per level",
    )
    parser.add_argument(
        "--paths", nargs="+", choices=TRANSPORTS, default=list(TRANSPORTS), help="what to measure"
    )
    parser.add_argument(
        "--levels", nargs="+", default=[], help='level labels to run, e.g. "100 over 1 s"'
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="py-spy's binary: profile the server in each measured run (bench/results/profiles/)",
    )
    args = parser.parse_args()
    options = Options(quick=args.quick, wait_quiet_s=args.wait_quiet)
    narrowed = measure(options, tuple(args.paths), tuple(args.levels), args.py_spy)
    result: Part = stream_load.uvloop_runner()(narrowed)
    print(report.format_part(result))
    report.dump(report.RESULTS / f"{STAMP}-{KEY}.json", result)


if __name__ == "__main__":
    main()
