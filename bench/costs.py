"""Instructions per token and per request: the cost figure kept for every release.

    .venv/bin/python bench/costs.py                      # measure the working tree, compare
    .venv/bin/python bench/costs.py --rev 0a1b2c3        # measure a commit instead
    .venv/bin/python bench/costs.py --record 0.2.0       # measure, then record as a release
    .venv/bin/python bench/costs.py --redis              # the same against a Redis-backed server
    .venv/bin/python bench/costs.py --redis-url redis://127.0.0.1:6390/0 --only ws
    make bench-costs                                     # the first line

Timings on a shared 2-core machine spread by tens of percent between runs; instructions
counted by valgrind's callgrind do not depend on what else the machine does. One server
(`tokenwire serve`, the simulated provider with no pause between deltas, PYTHONHASHSEED
fixed) runs under callgrind, and the load goes through it in phases; after each phase the
counters are dumped (`callgrind_control --dump`), so start-up and warm-up fall in a part of
their own. Each figure is the difference of two phases that differ only in what is counted:

    ws token        10 WebSocket streams x 600 tokens less 10 x 100, per extra token
    ws request      10 clients x 10 one-token requests less 10 x 5, per extra request
    chat token      10 streaming /v1/chat/completions x 600 tokens less x 100, per token
    chat request    40 streaming one-token /v1/chat/completions less 20, per extra request
    openai token    as chat token, through the openai provider to a fake upstream
                    (bench/fast_upstream.py, another process, not counted)
    openai request  as chat request, through the openai provider

The figures of each release are in bench/costs.json and in docs/benchmarks.md ("Cost per
release"); every run prints the change against the last recorded release, so that a
regression shows in the change that makes it. Exit status 1 when a figure is more than
`--tolerance` (10%: per request the counts spread by up to 8% between runs) above the last release.

With `--redis` (a private redis-server on a free port) or `--redis-url`, the server runs
with `--redis-url`: the same phases then count the owner's mirroring, the admission and
create scripts. redis-server's own CPU is outside callgrind's count: it is printed per
phase (`INFO cpu`, user + sys) and per token / request beside the instructions, not
compared with a release (Redis figures are not recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import ws_load

RECORD = report.ROOT / "bench" / "costs.json"
DOCS = report.ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench-costs:start -->", "<!-- bench-costs:end -->"
FIGURES = (
    "ws_token",
    "ws_request",
    "chat_token",
    "chat_request",
    "openai_token",
    "openai_request",
)
CONFIG = """
[[providers]]
name = "simulated"
kind = "simulated"
options = {{ delay_ms = 0, tokens = 100000 }}

[[providers]]
name = "up"
kind = "openai"
model = "m"
base_url = "{upstream}/v1"

[routing]
default_provider = "simulated"
"""


# -- the server under callgrind --------------------------------------------------------


class CountedServer:
    """`tokenwire serve` from `src` under callgrind; `dump()` closes a phase."""

    def __init__(
        self, src: Path, workdir: Path, upstream: str, redis_url: str | None = None
    ) -> None:
        self.src, self.workdir, self.upstream = src, workdir, upstream
        self.redis_url = redis_url
        self.port = ws_load.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.out = workdir / "callgrind.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.phases = 0

    def start(self) -> None:
        config = self.workdir / "tokenwire.toml"
        config.write_text(CONFIG.format(upstream=self.upstream))
        code = (
            f"import sys; sys.path.insert(0, {str(self.src)!r}); "
            "from tokenwire.cli import main; sys.exit(main())"
        )
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.out}",
            str(report.ROOT / ".venv" / "bin" / "python"),
            "-c",
            code,
            "serve",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *(["--redis-url", self.redis_url] if self.redis_url else []),
        ]
        env = {
            **os.environ,
            "PYTHONHASHSEED": "0",
            "TOKENWIRE_LOGGING__LEVEL": "warning",
            # the load generator is one address and one user: an operator load-testing
            # raises the guards meant for the public
            "TOKENWIRE_LIMITS__HANDSHAKES_PER_MINUTE_PER_ADDRESS": "1000000",
            "TOKENWIRE_LIMITS__MAX_CONNECTIONS_PER_USER": "100000",
            "TOKENWIRE_LIMITS__MAX_STREAMS_PER_USER": "100000",
        }
        self.log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + 300
        while not ws_load.healthy(self.base):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server under callgrind did not start: {self.workdir / 'server.log'}"
                )
            time.sleep(0.5)

    def dump(self) -> int:
        """Close the phase: dump the counters since the last dump, return its total."""
        assert self.proc is not None
        self.phases += 1
        subprocess.run(
            ["callgrind_control", "--dump", str(self.proc.pid)], check=True, capture_output=True
        )
        path = Path(f"{self.out}.{self.phases}")
        deadline = time.monotonic() + 60
        while not (path.exists() and "totals:" in path.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no {path}")
            time.sleep(0.2)
        return callgrind_total(path)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def redis_cpu_seconds(url: str) -> float:
    """redis-server's CPU so far (user + sys, main thread and children), from `INFO cpu`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def callgrind_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no total in {path}")


# -- the phases ---------------------------------------------------------------------------


async def websocket_load(base: str, clients: int, requests: int, tokens: int) -> None:
    args = ws_load.parser().parse_args(
        [
            "--tokens",
            str(tokens),
            "--requests",
            str(requests),
            "--delay-ms",
            "0",
            "--timeout",
            "900",
        ]
    )
    result = await ws_load.run_once(args, base, clients, None)
    if result.errors:
        raise RuntimeError(f"WebSocket phase failed: {result.error_samples[:3]}")


async def chat_stream(base: str, client: Any, max_tokens: int, model: str) -> None:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Count the cost of each token."}],
    }
    chunks = 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"/v1/chat/completions answered {response.status_code}: {await response.aread()!r}"
            )
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
    if chunks < max_tokens:
        raise RuntimeError(f"/v1/chat/completions streamed {chunks} chunks for {max_tokens} tokens")


async def chat_load(base: str, streams: int, max_tokens: int, model: str = "simulated") -> None:
    import httpx

    async with httpx.AsyncClient(timeout=900) as client:
        await asyncio.gather(
            *(chat_stream(base, client, max_tokens, model) for _ in range(streams))
        )


async def measure(server: CountedServer, only: str | None = None) -> dict[str, float]:
    base = server.base
    await websocket_load(base, 10, 2, 20)  # warm-up: imports, caches, first-use paths
    await chat_load(base, 4, 20)
    await chat_load(base, 4, 20, "up")
    server.dump()
    phases = {}
    redis_cpu: dict[str, float] = {}
    cpu_before = redis_cpu_seconds(server.redis_url) if server.redis_url else 0.0
    loads = (
        ("ws_token_small", websocket_load(base, 10, 1, 100)),
        ("ws_token_large", websocket_load(base, 10, 1, 600)),
        ("ws_request_small", websocket_load(base, 10, 5, 1)),
        ("ws_request_large", websocket_load(base, 10, 10, 1)),
        ("chat_token_small", chat_load(base, 10, 100)),
        ("chat_token_large", chat_load(base, 10, 600)),
        ("chat_request_small", chat_load(base, 20, 1)),
        ("chat_request_large", chat_load(base, 40, 1)),
        ("openai_token_small", chat_load(base, 10, 100, "up")),
        ("openai_token_large", chat_load(base, 10, 600, "up")),
        ("openai_request_small", chat_load(base, 20, 1, "up")),
        ("openai_request_large", chat_load(base, 40, 1, "up")),
    )
    for name, load in loads:
        if only is not None and not name.startswith(only):
            load.close()  # never awaited: not run
            continue
        await load
        await asyncio.sleep(0.5)  # let the server finish the phase's closes before counting
        phases[name] = server.dump()
        note = ""
        if server.redis_url:
            cpu_after = redis_cpu_seconds(server.redis_url)
            redis_cpu[name], cpu_before = cpu_after - cpu_before, cpu_after
            note = f", redis-server {redis_cpu[name] * 1000:.0f} ms CPU"
        print(f"  {name}: {phases[name]:,} instructions{note}", file=sys.stderr, flush=True)
    if redis_cpu:
        print_redis_cpu(redis_cpu)
    return {
        figure: (phases[f"{figure}_large"] - phases[f"{figure}_small"]) / extra
        for figure, extra in EXTRA.items()
        if f"{figure}_large" in phases
    }


EXTRA = {
    "ws_token": 10 * 500,
    "ws_request": 10 * 5,
    "chat_token": 10 * 500,
    "chat_request": 20,
    "openai_token": 10 * 500,
    "openai_request": 20,
}


def print_redis_cpu(cpu: dict[str, float]) -> None:
    """redis-server's CPU per extra token / request, as the instructions are figured."""
    for figure, extra in EXTRA.items():
        large, small = cpu.get(f"{figure}_large"), cpu.get(f"{figure}_small")
        if large is None or small is None:
            continue
        per = (large - small) / extra * 1e6
        print(f"  redis-server CPU per {figure.replace('_', ' ')}: {per:.0f} us", file=sys.stderr)


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of its own on a free port (as the tests and bench/nodes.py start it)."""
    sys.path.insert(0, str(report.ROOT))
    from tests.support.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="tokenwire-costs-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@contextlib.contextmanager
def source_of(rev: str | None) -> Iterator[Path]:
    """The working tree's src/, or that of `rev` checked out in a temporary worktree."""
    if rev is None:
        yield report.ROOT / "src"
        return
    with tempfile.TemporaryDirectory(prefix="tokenwire-costs-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(report.ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
        )
        try:
            yield tree / "src"
        finally:
            subprocess.run(
                ["git", "-C", str(report.ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
            )


def count(src: Path, redis_url: str | None = None, only: str | None = None) -> dict[str, float]:
    from fast_upstream import Upstream

    upstream = Upstream(tokens=100_000, gap_ms=0.0)
    with tempfile.TemporaryDirectory(prefix="tokenwire-callgrind-") as tmp:
        server = CountedServer(src, Path(tmp), upstream.url, redis_url)
        server.start()
        try:
            try:
                import uvloop

                return uvloop.run(measure(server, only))
            except ImportError:
                return asyncio.run(measure(server, only))
        finally:
            server.stop()
            upstream.stop()


# -- the record ---------------------------------------------------------------------------


def load_record() -> list[dict[str, Any]]:
    return json.loads(RECORD.read_text()) if RECORD.exists() else []


def describe(rev: str | None) -> str:
    args = ["git", "-C", str(report.ROOT), "rev-parse", "--short", rev or "HEAD"]
    commit = subprocess.run(args, capture_output=True, text=True, check=False).stdout.strip()
    if (
        rev is None
        and subprocess.run(
            ["git", "-C", str(report.ROOT), "diff", "--quiet", "HEAD", "--", "src"]
        ).returncode
    ):
        commit += "+changes"
    return commit


def comparison(figures: dict[str, float], last: dict[str, Any] | None) -> list[list[str]]:
    rows = [["figure", "instructions"] + ([last["release"], "change"] if last else [])]
    for name in (n for n in FIGURES if n in figures):
        row = [name.replace("_", " "), f"{figures[name]:,.0f}"]
        before = last["figures"].get(name) if last else None
        if last:
            change = f"{100 * (figures[name] / before - 1):+.1f}%" if before else "-"
            row += [f"{before:,.0f}" if before else "-", change]
        rows.append(row)
    return rows


def docs_table(record: list[dict[str, Any]]) -> str:
    rows = [["release", "commit", "date", *(name.replace("_", " ") for name in FIGURES)]]
    for entry in record:
        figures = entry["figures"]
        cells = [f"{figures[n]:,.0f}" if n in figures else "-" for n in FIGURES]
        rows.append([entry["release"], entry["commit"], entry["date"], *cells])
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def write_docs(record: list[dict[str, Any]]) -> None:
    docs = DOCS.read_text()
    block = f"{START}\n{docs_table(record)}\n{END}"
    if START in docs and END in docs:
        docs = docs[: docs.index(START)] + block + docs[docs.index(END) + len(END) :]
    else:
        docs = docs.rstrip() + "\n\n## Cost per release\n\n" + block + "\n"
    DOCS.write_text(docs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rev", help="measure this commit (default: the working tree)")
    p.add_argument("--record", metavar="RELEASE", help="record the figures as this release's")
    p.add_argument(
        "--tolerance", type=float, default=10.0, help="percent above the last release that fails"
    )
    p.add_argument("--redis-url", help="run the server on this Redis (--redis-url)")
    p.add_argument("--redis", action="store_true", help="run the server on a private redis-server")
    p.add_argument(
        "--only",
        choices=("ws", "chat", "openai"),
        help="only these phases (quicker; nothing recorded or compared)",
    )
    args = p.parse_args(argv)
    if (args.redis or args.redis_url or args.only) and args.record:
        p.error("--record takes the full in-memory run (no --redis, --redis-url, --only)")
    record = load_record()
    # Redis figures are not the release's: shown, never compared (they would fail it).
    last = record[-1] if record and not (args.redis or args.redis_url) else None
    print(
        f"# counting instructions of {describe(args.rev)} under callgrind (a few minutes)",
        file=sys.stderr,
    )
    with contextlib.ExitStack() as stack, source_of(args.rev) as src:
        redis_url = args.redis_url
        if args.redis:
            redis_url = stack.enter_context(private_redis())
        figures = count(src, redis_url, args.only)
    print(report.format_table(comparison(figures, last)))
    if args.record:
        entry = {
            "release": args.record,
            "commit": describe(args.rev),
            "date": time.strftime("%Y-%m-%d"),
            "figures": {name: round(figures[name]) for name in FIGURES},
        }
        record = [e for e in record if e["release"] != args.record] + [entry]
        RECORD.write_text(json.dumps(record, indent=2) + "\n")
        write_docs(record)
        print(
            f"recorded as {args.record} in {RECORD.relative_to(report.ROOT)} and docs/benchmarks.md"
        )
    if last and not args.record:
        limit = 1 + args.tolerance / 100
        worse = [n for n in figures if figures[n] > last["figures"].get(n, float("inf")) * limit]
        if worse:
            print(f"more than {args.tolerance:g}% above {last['release']}: {', '.join(worse)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
