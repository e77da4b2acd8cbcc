"""Part (1) of `make bench`: the throughput ceiling and CPU per token, tokenwire against a relay.

The same load, in the same run, against `tokenwire serve --provider simulated` (limits
raised, bench/servers.py) and against bench/relay.py, a naive ASGI relay on the same
uvicorn with the same WebSocket options that sends the same frames and does nothing else:
50 WebSocket clients offering permessage-deflate (as browsers do) x 2,000 tokens, no pause
between tokens, all requests sent at once; servers alternating run by run, 3 runs each,
medians. What tokenwire delivers per second, and the server CPU it spends per token, over
the relay's are the targets (>= 1.0 and <= 1.0).

    .venv/bin/python bench/ceiling.py            # 50 x 2,000 tokens, 3 runs each
    .venv/bin/python bench/ceiling.py --quick    # 5 x 200 tokens, 1 run each
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import servers
import ws_load

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "tokenwire": servers.tokenwire_cmd,
    # the reference: frames as fast as the socket takes them, one stream's after
    # another's (no loop turn between tokens, so the first stream's client is served first)
    "relay": lambda port: [*servers.relay_cmd(port), "--burst"],
    # the same relay turning the loop before each token, as any provider's stream does
    "relay, turning": servers.relay_cmd,
}


@dataclass(frozen=True)
class Sizes:
    clients: int
    tokens: int
    runs: int  # per server

    @classmethod
    def of(cls, options: report.Options) -> Sizes:
        return cls(5, 200, 1) if options.quick else cls(50, 2000, 3)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


async def measure_all(options: report.Options, sizes: Sizes) -> dict[str, list[ws_load.RunResult]]:
    load = servers.load_args(sizes.clients, sizes.tokens)
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-ceiling-"))
    runs: dict[str, list[ws_load.RunResult]] = {name: [] for name in SERVERS}
    # Alternating, so that a burst of outside load spreads over both servers.
    for number in range(sizes.runs):
        for name, command in SERVERS.items():
            cmd = command(ws_load.free_port())
            async with servers.serving(cmd, log_dir) as (pid, url):
                result = await servers.measured_run(url, pid, load, options.wait_quiet_s)
            runs[name].append(result)
            print(
                f"# run {number + 1} {name}: {result.tokens_per_s:,.0f} tokens/s, "
                f"{result.server_cpu_ms_per_1k_tokens} ms CPU/1k tokens, errors {result.errors}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def summary(runs: list[ws_load.RunResult]) -> dict[str, float | int | None]:
    return {
        "runs": len(runs),
        "tokens_per_s": median([r.tokens_per_s for r in runs]),
        "server_cpu_ms_per_1k_tokens": median([r.server_cpu_ms_per_1k_tokens for r in runs]),
        "server_cpu_us_per_frame": median([r.server_cpu_us_per_frame for r in runs]),
        "ttft_p99_ms": median([r.ttft_ms.get("p99") for r in runs]),
        "gap_p99_ms": median([r.gap_ms.get("p99") for r in runs]),
        "client_cpu_share": median([r.client_cpu_share for r in runs]),
        "other_load_cores": median([r.other_load_cores for r in runs]),
        "errors": sum(r.errors for r in runs),
    }


def build_part(sizes: Sizes, runs: dict[str, list[ws_load.RunResult]]) -> report.Part:
    clients, tokens, repeat = sizes.clients, sizes.tokens, sizes.runs
    sums = {name: summary(found) for name, found in runs.items()}
    tw, relay, turning = sums["tokenwire"], sums["relay"], sums["relay, turning"]
    speed = ratio(tw["tokens_per_s"], relay["tokens_per_s"])
    cpu = ratio(tw["server_cpu_ms_per_1k_tokens"], relay["server_cpu_ms_per_1k_tokens"])
    speed_turning = ratio(tw["tokens_per_s"], turning["tokens_per_s"])
    cpu_turning = ratio(tw["server_cpu_ms_per_1k_tokens"], turning["server_cpu_ms_per_1k_tokens"])
    table = [
        [
            "server",
            "tokens/s",
            "srv CPU ms/1k tok",
            "srv us/frame",
            "ttft p99 ms",
            "gap p99 ms",
            "client cpu",
            "other load",
            "errors",
        ]
    ]
    for name, s in sums.items():
        share = s["client_cpu_share"]
        table.append(
            [
                name,
                report.fmt(s["tokens_per_s"], 0),
                report.fmt(s["server_cpu_ms_per_1k_tokens"], 2),
                report.fmt(s["server_cpu_us_per_frame"], 1),
                report.fmt(s["ttft_p99_ms"], 1),
                report.fmt(s["gap_p99_ms"], 1),
                "-" if share is None else f"{share:.0%}",
                report.fmt(s["other_load_cores"], 2),
                str(s["errors"]),
            ]
        )
    table.append(["tokenwire / relay", report.fmt(speed, 3), report.fmt(cpu, 3)] + [""] * 6)
    table.append(
        ["tokenwire / relay, turning", report.fmt(speed_turning, 3), report.fmt(cpu_turning, 3)]
        + [""] * 6
    )
    notes = [
        f"{clients} WebSocket streams x {tokens:,} tokens, no pause, deflate offered by the "
        f"clients (the servers' default: declined); median of {repeat} run(s) per server, "
        "alternating; server CPU is user + system of the server process while streaming",
        "relay: bench/relay.py --burst, the same frames from a bare ASGI app on the same "
        "uvicorn (WebSocket protocol class, options, GC tuning), one `await send` per frame, "
        "no loop turn between tokens (the targets' reference); relay, turning: the same with "
        "a loop turn before each token, as the simulated provider (and any upstream) takes",
    ]
    clients_busy = [s["client_cpu_share"] for s in sums.values()]
    if any(share is not None and share >= 0.9 for share in clients_busy):
        notes.append("the load generator used >= 90% of a core: it, not the server, may limit")
    if any(s["errors"] for s in sums.values()):
        samples = [e for found in runs.values() for r in found for e in r.error_samples[:2]]
        notes.append(f"errors: {samples[:4]}")
    targets = [
        report.Target(
            "ceiling: tokens/s, tokenwire / relay",
            speed,
            1.0,
            "higher",
            remark=(
                f"{report.fmt(tw['tokens_per_s'], 0)} against "
                f"{report.fmt(relay['tokens_per_s'], 0)} tokens/s"
            ),
        ),
        report.Target(
            "ceiling: server CPU per token, tokenwire / relay",
            cpu,
            1.0,
            "lower",
            remark=(
                f"{report.fmt(tw['server_cpu_ms_per_1k_tokens'], 2)} against "
                f"{report.fmt(relay['server_cpu_ms_per_1k_tokens'], 2)} ms per 1,000 tokens"
            ),
        ),
    ]
    data = {
        "load": {"clients": clients, "tokens": tokens, "delay_ms": 0, "runs_per_server": repeat},
        "summaries": sums,
        "ratios": {
            "tokens_per_s": speed,
            "server_cpu_per_token": cpu,
            "tokens_per_s_turning": speed_turning,
            "server_cpu_per_token_turning": cpu_turning,
        },
        "runs": {name: [asdict(r) for r in found] for name, found in runs.items()},
        "machine": report.machine(),
    }
    return report.Part(
        key="ceiling",
        title="Throughput ceiling and CPU per token: tokenwire against a bare relay",
        table=table,
        targets=targets,
        data=data,
        notes=notes,
    )


def run(options: report.Options) -> report.Part:
    return run_sizes(options, Sizes.of(options))


def run_sizes(options: report.Options, sizes: Sizes) -> report.Part:
    servers.require_installed()
    ws_load.raise_fd_limit(sizes.clients)
    runs = servers.run_async(measure_all(options, sizes))
    return build_part(sizes, runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="5 x 200 tokens, 1 run each")
    p.add_argument("--clients", type=int, help="WebSocket streams (default 50)")
    p.add_argument("--tokens", type=int, help="tokens per stream (default 2,000)")
    p.add_argument("--runs", type=int, help="runs per server (default 3)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = p.parse_args(argv)
    options = report.Options(quick=args.quick, wait_quiet_s=args.wait_quiet)
    default = Sizes.of(options)
    sizes = Sizes(
        args.clients or default.clients, args.tokens or default.tokens, args.runs or default.runs
    )
    part = run_sizes(options, sizes)
    print(report.format_part(part))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report.dump(report.RESULTS / f"{stamp}-ceiling.json", part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
