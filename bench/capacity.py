"""Part (4) of `make bench`: memory per idle connection, and the most streams at 20 tokens/s.

(a) Memory per idle WebSocket connection: the server's RSS after N clients have connected
(and been greeted) and sat idle for a second, minus its RSS before, over N; tokenwire
(`serve --provider simulated`, limits raised: bench/servers.py) against bench/relay.py (a
bare ASGI app on the same uvicorn and WebSocket options). 10,000 connections (quick: 200).
This process raises its file-descriptor limit, which the servers inherit.

(b) The most streams at 20 tokens/s (a 50 ms pause between tokens, 200 tokens each, the
requests spread over 1 s) that keep the gap between a stream's tokens under 100 ms at the 99th
percentile, with no errors: N = 500, 1,000, 1,500, 2,000, 2,500, 3,000, 4,000 in turn (quick:
50, 100, with 20 tokens), a fresh server each, stopping at the first N that fails; for one
worker in memory, then `--workers 2 --redis-url` on a private redis-server. Per N: gap p50/p99,
time to first token p99, errors, the server's CPU (all its processes) and the load generator's,
in cores. The load generator is this one process on the same cores as the server.

    .venv/bin/python bench/capacity.py
    .venv/bin/python bench/capacity.py --quick
    .venv/bin/python bench/capacity.py --connections 2000 --streams 200 500 --tokens 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import servers
import ws_load

GAP_LIMIT_MS = 100.0
DELAY_MS = 50.0
STAGGER_MS = 1000.0
IDLE_SETTLE_S = 1.0


@dataclass(frozen=True)
class Sizes:
    connections: int
    streams: tuple[int, ...]
    tokens: int
    # all N of a search on one server (quick), not a fresh one per N
    one_server: bool = False

    @classmethod
    def of(cls, options: report.Options) -> Sizes:
        if options.quick:
            return cls(connections=200, streams=(50, 100), tokens=20, one_server=True)
        return cls(
            connections=10_000, streams=(500, 1000, 1500, 2000, 2500, 3000, 4000), tokens=200
        )


# -- (a) memory per idle connection ---------------------------------------------------


async def connect_idle(url: str, count: int) -> tuple[list[ws_load.RawClient], int]:
    """`count` greeted, idle clients (64 handshakes at a time); and how many failed."""
    host, port = url.removeprefix("http://").split(":")
    stats = ws_load.Stats("token", 0)
    gate = asyncio.Semaphore(64)
    opened: list[ws_load.RawClient] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                client = await asyncio.wait_for(
                    ws_load.open_raw(
                        host, int(port), ws_load.WS_PATH, True, ws_load.Stream(stats, 0), b"{}"
                    ),
                    60,
                )
            except (OSError, TimeoutError, ConnectionError):
                failed += 1
                return
        opened.append(client)

    await asyncio.gather(*(one() for _ in range(count)))
    return opened, failed + stats.errors


async def idle_memory(cmd: list[str], count: int, log_dir: Path) -> dict[str, Any]:
    async with servers.serving(cmd, log_dir) as (pid, url):
        await asyncio.sleep(IDLE_SETTLE_S)
        before = ws_load.rss_kb(pid)
        clients, failed = await connect_idle(url, count)
        await asyncio.sleep(IDLE_SETTLE_S)
        after = ws_load.rss_kb(pid)
        await asyncio.gather(*(client.close(5) for client in clients))
    per = None
    if before is not None and after is not None and clients:
        per = round((after - before) / len(clients), 2)
    return {
        "connections": len(clients),
        "failed": failed,
        "rss_kb_before": before,
        "rss_kb_after": after,
        "kb_per_connection": per,
    }


# -- (b) the most streams at 20 tokens/s ----------------------------------------------------


@dataclass
class Step:
    streams: int
    gap_p50_ms: float | None
    gap_p99_ms: float | None
    ttft_p99_ms: float | None
    errors: int
    server_cores: float | None
    client_cores: float
    # what else kept the cores busy meanwhile (other processes on the machine)
    other_cores: float | None
    passed: bool
    error_samples: list[str] = field(default_factory=list)


def step_of(n: int, result: ws_load.RunResult) -> Step:
    gap_p99 = result.gap_ms.get("p99")
    seconds = result.stream_seconds
    server = None
    if result.server_cpu_s is not None and seconds:
        server = round(result.server_cpu_s / seconds, 2)
    return Step(
        streams=n,
        gap_p50_ms=result.gap_ms.get("p50"),
        gap_p99_ms=gap_p99,
        ttft_p99_ms=result.ttft_ms.get("p99"),
        errors=result.errors,
        server_cores=server,
        client_cores=result.client_cpu_share,
        other_cores=result.other_load_cores,
        passed=result.errors == 0 and gap_p99 is not None and gap_p99 < GAP_LIMIT_MS,
        error_samples=result.error_samples[:3],
    )


async def search(
    name: str,
    cmd_for: Callable[[int], list[str]],
    sizes: Sizes,
    log_dir: Path,
    wait_quiet_s: float,
    reset: Callable[[], object] | None = None,
    cpu: Callable[[int], float] = servers.tree_cpu_seconds,
) -> list[Step]:
    """Each N in turn, up to the first that fails; a fresh server per N unless
    `sizes.one_server` (quick: server start-up would be most of the time)."""
    steps: list[Step] = []
    async with contextlib.AsyncExitStack() as stack:
        url, pid = "", 0
        for n in sizes.streams:
            if not url or not sizes.one_server:
                await stack.aclose()
                if reset is not None:
                    reset()
                cmd = cmd_for(ws_load.free_port())
                pid, url = await stack.enter_async_context(servers.serving(cmd, log_dir))
            load = servers.load_args(n, sizes.tokens, DELAY_MS, STAGGER_MS)
            result = await servers.measured_run(url, pid, load, wait_quiet_s, cpu)
            steps.append(step_of(n, result))
            print(
                f"# {name}, N={n}: gap p99 {result.gap_ms.get('p99')} ms, "
                f"errors {result.errors}, client cpu {result.client_cpu_share:.0%}",
                file=sys.stderr,
                flush=True,
            )
            if not steps[-1].passed:
                break
    return steps


def most(steps: list[Step]) -> int:
    return max((s.streams for s in steps if s.passed), default=0)


# -- the part ------------------------------------------------------------------------------


async def measure_all(options: report.Options, sizes: Sizes) -> dict[str, Any]:
    from tests.support.redis_server import RedisServer

    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-capacity-"))
    idle = {
        "tokenwire": await idle_memory(
            servers.tokenwire_cmd(ws_load.free_port()), sizes.connections, log_dir
        ),
        "relay": await idle_memory(
            servers.relay_cmd(ws_load.free_port()), sizes.connections, log_dir
        ),
    }
    one = await search("1 worker", servers.tokenwire_cmd, sizes, log_dir, options.wait_quiet_s)
    redis_server = RedisServer(log_dir / "redis")
    redis_server.start()
    try:
        import redis

        client = redis.Redis.from_url(redis_server.url)
        two_args = ["--workers", "2", "--redis-url", redis_server.url]
        assert redis_server.process is not None
        redis_pid = redis_server.process.pid

        def with_redis(pid: int) -> float:
            # Redis works for these workers only: its CPU is theirs.
            return servers.tree_cpu_seconds(pid) + ws_load.cpu_seconds(redis_pid)

        try:
            two = await search(
                "2 workers, Redis",
                lambda port: servers.tokenwire_cmd(port, two_args),
                sizes,
                log_dir,
                options.wait_quiet_s,
                client.flushdb,  # what earlier runs' logs hold in Redis is no load of this one
                with_redis,
            )
        finally:
            client.close()
    finally:
        redis_server.stop()
    return {"idle": idle, "one_worker": one, "two_workers": two}


def idle_target(idle: dict[str, Any]) -> report.Target:
    tw, relay = idle["tokenwire"]["kb_per_connection"], idle["relay"]["kb_per_connection"]
    value = round(tw / relay, 3) if tw and relay and relay > 0 else None
    return report.Target(
        "capacity: memory per idle connection, tokenwire / relay",
        value,
        1.2,
        "lower",
        remark=f"{report.fmt(tw)} against {report.fmt(relay)} KB per connection",
    )


def streams_targets(sizes: Sizes, one: list[Step], two: list[Step]) -> list[report.Target]:
    n1, n2 = most(one), most(two)
    top = sizes.streams[-1]
    both_top = n1 == top and n2 == top
    limit = 2000
    return [
        report.Target(
            "capacity: streams at 20 tokens/s with gap p99 < 100 ms, one worker",
            float(n1),
            float(limit),
            "higher",
            remark="" if top >= limit else f"the largest N tried was {top:,}: not a measurement",
        ),
        report.Target(
            "capacity: streams, two workers (Redis) more than one",
            None if both_top else float(n2),
            float(n1 + 1),
            "higher",
            remark=(
                f"both passed the largest N tried ({top:,}): not told apart"
                if both_top
                else f"{n2:,} against {n1:,} for one worker"
            ),
        ),
    ]


def build_part(sizes: Sizes, found: dict[str, Any]) -> report.Part:
    idle = found["idle"]
    header = [
        "server",
        "N",
        "gap p50",
        "gap p99",
        "ttft p99",
        "errors",
        "srv cores",
        "client",
        "other",
    ]
    table = [[*header, "result"]]
    searches = (("1 worker", found["one_worker"]), ("2 workers, Redis", found["two_workers"]))
    for name, steps in searches:
        for s in steps:
            table.append(
                [
                    name,
                    f"{s.streams:,}",
                    report.fmt(s.gap_p50_ms),
                    report.fmt(s.gap_p99_ms),
                    report.fmt(s.ttft_p99_ms),
                    str(s.errors),
                    report.fmt(s.server_cores, 2),
                    report.fmt(s.client_cores, 2),
                    report.fmt(s.other_cores, 2),
                    "ok" if s.passed else "FAIL",
                ]
            )
    servers_used = "one server per search" if sizes.one_server else "a fresh server per N"
    notes = [
        f"streams: {sizes.tokens} tokens each at {DELAY_MS:g} ms apart, requests spread over "
        f"{STAGGER_MS / 1000:g} s, {servers_used}; times in ms; cores = CPU seconds / "
        "streaming seconds (the server's over all its processes, and with --redis-url "
        "redis-server's); other = the rest of the machine's load meanwhile",
    ]
    for name, m in idle.items():
        notes.append(
            f"idle memory, {name}: {m['connections']:,} connections ({m['failed']} failed), "
            f"RSS {report.fmt(m['rss_kb_before'], 0)} -> {report.fmt(m['rss_kb_after'], 0)} KB, "
            f"{report.fmt(m['kb_per_connection'], 2)} KB per connection"
        )
    for name, steps in searches:
        failing = [s for s in steps if not s.passed]
        if failing and failing[-1].client_cores >= 0.9:
            notes.append(
                f"{name}: at N={failing[-1].streams:,} the load generator used "
                f"{failing[-1].client_cores:.0%} of a core: it may be the limit, not the server"
            )
        for s in failing:
            if s.error_samples:
                notes.append(f"{name}, N={s.streams:,}: {s.error_samples[:2]}")
    targets = [idle_target(idle), *streams_targets(sizes, searches[0][1], searches[1][1])]
    data = {
        "sizes": asdict(sizes),
        "idle": idle,
        "one_worker": [asdict(s) for s in found["one_worker"]],
        "two_workers": [asdict(s) for s in found["two_workers"]],
        "machine": report.machine(),
    }
    return report.Part(
        key="capacity",
        title="Capacity: memory per idle connection, most streams at 20 tokens/s",
        table=table,
        targets=targets,
        data=data,
        notes=notes,
    )


def run(options: report.Options) -> report.Part:
    return run_sizes(options, Sizes.of(options))


def run_sizes(options: report.Options, sizes: Sizes) -> report.Part:
    servers.require_installed()
    servers.require_redis_server()
    sys.path.insert(0, str(servers.ROOT))  # tests.support.redis_server
    ws_load.raise_fd_limit(max(sizes.connections, *sizes.streams))
    found = servers.run_async(measure_all(options, sizes))
    return build_part(sizes, found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 connections; 50, 100 streams")
    p.add_argument("--connections", type=int, help="idle connections (default 10,000)")
    p.add_argument("--streams", type=int, nargs="+", help="N to try in turn")
    p.add_argument("--tokens", type=int, help="tokens per stream (default 200)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = p.parse_args(argv)
    options = report.Options(quick=args.quick, wait_quiet_s=args.wait_quiet)
    sizes = Sizes.of(options)
    sizes = Sizes(
        connections=args.connections or sizes.connections,
        streams=tuple(args.streams or sizes.streams),
        tokens=args.tokens or sizes.tokens,
        one_server=sizes.one_server,
    )
    part = run_sizes(options, sizes)
    print(report.format_part(part))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    report.dump(report.RESULTS / f"{stamp}-capacity.json", part)
    return 0


if __name__ == "__main__":
    sys.exit(main())
