"""The servers that bench/ceiling.py and bench/capacity.py put under load, started fresh per run.

tokenwire is `serve --provider simulated` with its per-user and per-address limits raised,
as an operator load-testing it would raise them: ws_load's clients are all one user
("anonymous") from 127.0.0.1, where a deployment's are many users from many addresses.
The relay is bench/relay.py on the same uvicorn options. Both get the same environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_load

ROOT = ws_load.ROOT
VENV_BIN = ROOT / ".venv" / "bin"
TOKENWIRE = VENV_BIN / "tokenwire"
PYTHON = VENV_BIN / "python"
RELAY = ROOT / "bench" / "relay.py"
T = TypeVar("T")

LOAD_ENV = {
    "TOKENWIRE_LIMITS__HANDSHAKES_PER_MINUTE_PER_ADDRESS": "10000000",
    "TOKENWIRE_LIMITS__MAX_CONNECTIONS_PER_USER": "1000000",
    "TOKENWIRE_LIMITS__MAX_STREAMS_PER_USER": "1000000",
    "TOKENWIRE_LIMITS__MAX_CONNECTIONS": "1000000",
}


def require_installed() -> None:
    """Fail early, naming what a fresh clone lacks."""
    for path in (TOKENWIRE, PYTHON):
        if not path.exists():
            raise RuntimeError(f"{path} is missing: run `make install` first")


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        raise RuntimeError(
            "redis-server is not installed (apt-get install redis-server): "
            "the --workers 2 --redis-url configuration needs it"
        )


def tokenwire_cmd(port: int, extra: list[str] | None = None) -> list[str]:
    cmd = [str(TOKENWIRE), "serve", "--provider", "simulated", "--host", "127.0.0.1"]
    return [*cmd, "--port", str(port), *(extra or [])]


def relay_cmd(port: int) -> list[str]:
    return [str(PYTHON), str(RELAY), "--host", "127.0.0.1", "--port", str(port)]


def load_args(
    clients: int, tokens: int, delay_ms: float = 0.0, stagger_ms: float = 0.0
) -> argparse.Namespace:
    """ws_load's options for one run (its defaults otherwise: deflate offered, raw client)."""
    return ws_load.parser().parse_args(
        [
            *("--clients", str(clients), "--tokens", str(tokens)),
            *("--delay-ms", str(delay_ms), "--stagger-ms", str(stagger_ms)),
        ]
    )


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its descendants (a supervisor and its workers)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # a worker that ended meanwhile
            total += ws_load.cpu_seconds(each)
    return total


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for child in ws_load.proc_children(pid):
        found += [child, *descendants(child)]
    return found


@contextlib.asynccontextmanager
async def serving(cmd: list[str], log_dir: Path) -> AsyncIterator[tuple[int, str]]:
    """A fresh server on `cmd`'s port, warmed up (ws_load's short streams), as (pid, url).

    The pid is the process started: under --workers the supervisor, whose tree holds the
    workers' CPU, and which stops them when it is stopped."""
    port = int(cmd[cmd.index("--port") + 1])
    url = f"http://127.0.0.1:{port}"
    server = ws_load.Server(cmd, LOAD_ENV, log_dir)
    server.start(url)
    assert server.proc is not None
    server.pid = server.proc.pid
    try:
        await ws_load.warm_up(load_args(10, 20), url)
        yield server.pid, url
    finally:
        server.stop()


async def measured_run(
    url: str,
    pid: int,
    load: argparse.Namespace,
    wait_quiet_s: float = 0.0,
    cpu: Callable[[int], float] = ws_load.cpu_seconds,
) -> ws_load.RunResult:
    """One run of ws_load's client (`load.clients[0]` clients), after waiting for quiet."""
    before = await ws_load.wait_quiet(0.15, wait_quiet_s) if wait_quiet_s else None
    result = await ws_load.run_once(load, url, load.clients[0], pid, cpu)
    result.load_before_cores = before
    return result


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop (the load generator's cheap loop) when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
