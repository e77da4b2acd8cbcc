"""What Redis costs, what a second worker adds, and what Redis holds per stream.

A benchmark, not a test. On loopback, with a private redis-server on a free port
(nothing on disk), it measures in one run:

- one node, in memory against `--redis-url`: the same load from the same client
  (`ws_load.py`'s: N WebSocket clients offering permessage-deflate, each sending
  `--requests` sequential `ai_request`s for the simulated provider with a small
  delay between tokens); tokens/s, time to first token (and what Redis adds to it),
  the server's CPU per 1,000 tokens (every process of it) and the load generator's
  own CPU (`time.process_time` of this process), since on 2 cores it competes;
- `--workers 1` against `--workers 2`, both on Redis, the same load;
- Redis memory per stream: `INFO memory` and the `MEMORY USAGE` of the deployment's
  keys, with `--memory-streams` streams running (half-way) and again once they
  finished (their logs kept for the retention).

Configurations alternate run by run (`--repeat`), so that outside load spreads over
them; each figure is the median. Prints a table and writes JSON.

    .venv/bin/python bench/nodes.py
    .venv/bin/python bench/nodes.py --clients 200 --tokens 200 --delay-ms 2 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_load

ROOT = ws_load.ROOT
sys.path.insert(0, str(ROOT))
TOKENWIRE = str(ROOT / ".venv" / "bin" / "tokenwire")
process_cpu_seconds = ws_load.cpu_seconds
# ws_load's clients are all one user ("anonymous", no user_id) from 127.0.0.1, where a
# deployment's are many users from many addresses: the per-user connection and stream caps
# and the per-address handshake throttle would refuse most of them.
SERVER_ENV = {
    "TOKENWIRE_LIMITS__HANDSHAKES_PER_MINUTE_PER_ADDRESS": "1000000",
    "TOKENWIRE_LIMITS__MAX_CONNECTIONS_PER_USER": "100000",
    "TOKENWIRE_LIMITS__MAX_STREAMS_PER_USER": "100000",
}


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants (a supervisor and its workers)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # a worker that ended meanwhile
            total += process_cpu_seconds(each)
    return total


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for child in ws_load.proc_children(pid):
        found += [child, *descendants(child)]
    return found


def serve_help() -> str:
    done = subprocess.run([TOKENWIRE, "serve", "--help"], capture_output=True, text=True)
    return done.stdout


def configurations(redis_url: str, help_text: str) -> dict[str, list[str]]:
    """Each configuration's extra `serve` arguments; those this build cannot run are left out."""
    found = {"memory": []}
    if "--redis-url" in help_text:
        found["redis"] = ["--redis-url", redis_url]
        if "--workers" in help_text:
            found["redis, 2 workers"] = ["--redis-url", redis_url, "--workers", "2"]
    return found


async def measure(args: argparse.Namespace, extra: list[str], log_dir: Path) -> ws_load.RunResult:
    """One run of ws_load's client against a fresh server with `extra` arguments."""
    port = ws_load.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [TOKENWIRE, "serve", "--provider", "simulated", "--host", "127.0.0.1"]
    server = ws_load.Server([*cmd, "--port", str(port), *extra], SERVER_ENV, log_dir)
    server.start(url)
    assert server.proc is not None
    # ws_load stops the deepest child (a profiler's target); here that would be one worker,
    # which the supervisor replaces: stop the supervising process, which stops the rest.
    server.pid = server.proc.pid
    load = ws_load.parser().parse_args(
        [
            "--clients",
            str(args.clients),
            "--tokens",
            str(args.tokens),
            "--delay-ms",
            str(args.delay_ms),
            "--requests",
            str(args.requests),
        ]
    )
    # ws_load measures one process; under --workers the server is several, so its
    # CPU is read over the whole tree from the supervising process down.
    ws_load.cpu_seconds = tree_cpu_seconds
    try:
        await ws_load.warm_up(load, url)
        if args.wait_quiet:
            other = await ws_load.wait_quiet(args.quiet_cores, args.wait_quiet)
            if other >= args.quiet_cores:
                print(f"warning: other load {other} cores at start", file=sys.stderr)
        return await ws_load.run_once(load, url, args.clients, server.proc.pid)
    finally:
        ws_load.cpu_seconds = process_cpu_seconds
        server.stop()


# -- Redis memory per stream -------------------------------------------------------------


def redis_memory(client: Any, prefix: str) -> dict[str, Any]:
    """used_memory, and the keys of this deployment: how many, their MEMORY USAGE by part."""
    used = int(client.info("memory")["used_memory"])
    by_part: Counter[str] = Counter()
    keys = 0
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode()
        # req:{tag}:events -> "req:events": which kind of key holds the bytes.
        parts = name[len(prefix) :].split(":")
        kind = f"{parts[0]}:{parts[-1]}" if len(parts) > 2 else parts[0]
        by_part[kind] += int(client.memory_usage(key, samples=0) or 0)
        keys += 1
    return {
        "used_memory": used,
        "keys": keys,
        "key_bytes": sum(by_part.values()),
        "by_part": dict(by_part),
    }


async def hold_streams(
    url: str, count: int, tokens: int, delay_ms: float, halfway: asyncio.Event, go_on: asyncio.Event
) -> int:
    """`count` streams that pause at half their tokens (reading on) until `go_on`.

    Returns how many completed."""
    from websockets.asyncio.client import connect

    reached = 0
    completed = 0

    async def one(i: int) -> None:
        nonlocal reached, completed
        ws_url = url.replace("http", "ws") + f"/ws/ai-stream?user_id=mem-{i % 50}"
        async with connect(ws_url, ping_interval=None, max_size=None) as ws:
            await ws.recv()
            request = {
                "type": "ai_request",
                "prompt": f"memory {i}",
                "stream_config": {"granularity": "token"},
                "config": {"options": {"tokens": tokens, "delay_ms": delay_ms}},
            }
            await ws.send(json.dumps(request))
            seen = 0
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("event_type") == "token":
                    seen += 1
                    if seen == tokens // 2:
                        reached += 1
                        if reached == count:
                            halfway.set()
                elif frame.get("event_type") == "stream_end":
                    completed += frame["data"]["status"] == "completed"
                    await go_on.wait()
                    return

    await asyncio.gather(*(one(i) for i in range(count)))
    return completed


async def memory_per_stream(
    args: argparse.Namespace, redis_url: str, log_dir: Path
) -> dict[str, Any]:
    import redis

    prefix = "tokenwire:"
    port = ws_load.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [TOKENWIRE, "serve", "--provider", "simulated", "--host", "127.0.0.1"]
    serve = [*cmd, "--port", str(port), "--redis-url", redis_url]
    server = ws_load.Server(serve, SERVER_ENV, log_dir)
    server.start(url)
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()  # our own private server: what follows is only these streams
        before = await asyncio.to_thread(redis_memory, client, prefix)
        halfway, go_on = asyncio.Event(), asyncio.Event()
        n, tokens = args.memory_streams, args.memory_tokens
        # Slow enough that they are all half-way while measured.
        streams = asyncio.create_task(hold_streams(url, n, tokens, 20.0, halfway, go_on))
        await asyncio.wait_for(halfway.wait(), 120)
        running = await asyncio.to_thread(redis_memory, client, prefix)
        go_on.set()
        completed = await asyncio.wait_for(streams, 120)
        await asyncio.sleep(1.0)  # the owner's mirror is batched: let its last batch land
        finished = await asyncio.to_thread(redis_memory, client, prefix)
    finally:
        client.close()
        server.stop()

    def per_stream(after: dict[str, Any]) -> dict[str, Any]:
        return {
            "used_memory_bytes": round((after["used_memory"] - before["used_memory"]) / n),
            "key_bytes": round((after["key_bytes"] - before["key_bytes"]) / n),
            "keys": round((after["keys"] - before["keys"]) / n, 2),
            "by_part": {k: round(v / n) for k, v in after["by_part"].items()},
        }

    return {
        "streams": n,
        "tokens_per_stream": tokens,
        "completed": completed,
        "running_halfway": per_stream(running),
        "finished_within_retention": per_stream(finished),
    }


# -- the run ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summary_of(runs: list[ws_load.RunResult]) -> dict[str, Any]:
    def med(get: Any) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return round(median(values), 2) if values else None

    return {
        "runs": len(runs),
        "tokens_per_s": med(lambda r: r.tokens_per_s),
        "ttft_p50_ms": med(lambda r: r.ttft_ms.get("p50")),
        "ttft_p99_ms": med(lambda r: r.ttft_ms.get("p99")),
        "server_cpu_ms_per_1k_tokens": med(lambda r: r.server_cpu_ms_per_1k_tokens),
        "client_cpu_share": med(lambda r: r.client_cpu_share),
        "other_load_cores": med(lambda r: r.other_load_cores),
        "errors": sum(r.errors for r in runs),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support.redis_server import RedisServer

    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-nodes-"))
    redis_server = RedisServer(log_dir / "redis")
    redis_server.start()
    try:
        configs = configurations(redis_server.url, serve_help())
        if len(configs) == 1:
            print("# `tokenwire serve` has no --redis-url yet: in-memory figures only", flush=True)
        runs: dict[str, list[ws_load.RunResult]] = {name: [] for name in configs}
        failed: dict[str, str] = {}
        for round_ in range(args.repeat):
            for name, extra in configs.items():
                if name in failed:
                    continue
                try:
                    result = await measure(args, extra, log_dir)
                except RuntimeError as exc:  # the server did not start: say so, go on
                    failed[name] = str(exc)
                    print(f"# {name}: {exc}", flush=True)
                    continue
                runs[name].append(result)
                print(
                    f"# run {round_ + 1} {name}: {result.tokens_per_s:,.0f} tokens/s, "
                    f"ttft p50 {result.ttft_ms.get('p50', 0):.1f} ms, "
                    f"errors {result.errors} {result.error_samples[:2]}",
                    flush=True,
                )
        memory = None
        if "redis" in configs and "redis" not in failed:
            memory = await memory_per_stream(args, redis_server.url, log_dir)
    finally:
        redis_server.stop()
    print(f"server logs: {log_dir}", file=sys.stderr)
    summaries = {name: summary_of(found) for name, found in runs.items() if found}
    derived: dict[str, Any] = {}
    if "redis" in summaries and "memory" in summaries:
        mem, red = summaries["memory"], summaries["redis"]
        derived["redis_over_memory_tokens_per_s"] = _ratio(red["tokens_per_s"], mem["tokens_per_s"])
        derived["added_ttft_p50_ms"] = _diff(red["ttft_p50_ms"], mem["ttft_p50_ms"])
        derived["added_ttft_p99_ms"] = _diff(red["ttft_p99_ms"], mem["ttft_p99_ms"])
    if "redis, 2 workers" in summaries and "redis" in summaries:
        two, one = summaries["redis, 2 workers"], summaries["redis"]
        derived["workers_2_over_1_tokens_per_s"] = _ratio(two["tokens_per_s"], one["tokens_per_s"])
    return {
        "load": {k: getattr(args, k) for k in ("clients", "tokens", "delay_ms", "requests")},
        "configurations": summaries,
        "derived": derived,
        "redis_memory_per_stream": memory,
        "failed_to_start": failed,
        "runs": {name: [asdict(r) for r in found] for name, found in runs.items()},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


def report(result: dict[str, Any]) -> None:
    load = result["load"]
    print(
        f"# {load['clients']} clients x {load['requests']} requests x {load['tokens']} tokens, "
        f"delay {load['delay_ms']} ms; medians"
    )
    columns = ("tokens/s", "ttft p50", "ttft p99", "srv ms/1k tok", "client cpu", "other", "errors")
    print(f"{'configuration':>18}  " + "  ".join(f"{c:>13}" for c in columns))
    for name, s in result["configurations"].items():
        cells = (
            f"{s['tokens_per_s']:,.0f}",
            f"{s['ttft_p50_ms']}",
            f"{s['ttft_p99_ms']}",
            f"{s['server_cpu_ms_per_1k_tokens']}",
            f"{s['client_cpu_share']:.0%}" if s["client_cpu_share"] is not None else "-",
            f"{s['other_load_cores']}",
            f"{s['errors']}",
        )
        print(f"{name:>18}  " + "  ".join(f"{c:>13}" for c in cells))
    for key, value in result["derived"].items():
        print(f"{key:>34}  {value}")
    memory = result["redis_memory_per_stream"]
    if memory:
        print(
            f"# Redis memory per stream ({memory['streams']} streams x "
            f"{memory['tokens_per_stream']} tokens, {memory['completed']} completed)"
        )
        for phase in ("running_halfway", "finished_within_retention"):
            m = memory[phase]
            print(
                f"{phase:>28}  used_memory {m['used_memory_bytes']:,} B, "
                f"keys {m['keys']} ({m['key_bytes']:,} B): {m['by_part']}"
            )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--delay-ms", type=float, default=2.0, help="simulated pause between tokens")
    p.add_argument("--requests", type=int, default=3, help="sequential requests per client")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other load to drop under --quiet-cores",
    )
    p.add_argument("--quiet-cores", type=float, default=0.15)
    p.add_argument("--memory-streams", type=int, default=200)
    p.add_argument("--memory-tokens", type=int, default=200)
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/<stamp>-nodes.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ws_load.raise_fd_limit(args.clients)
    result = asyncio.run(bench(args))
    result["machine"] = ws_load.machine()
    report(result)
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = ROOT / "bench" / "results" / f"{stamp}-nodes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}", file=sys.stderr)
    errors = sum(s["errors"] for s in result["configurations"].values())
    return 1 if errors or result["failed_to_start"] else 0


if __name__ == "__main__":
    sys.exit(main())
