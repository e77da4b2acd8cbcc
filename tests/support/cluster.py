"""Several `tokenwire serve` processes on one Redis: nodes of one deployment, as in production.

`gateway_cluster` starts N nodes (each `tokenwire serve --config FILE --port 0`, the
simulated provider answering slowly, the same Redis URL and a private key prefix),
waits until each says `serving` and answers `/readyz` 200, and gives their URLs. A
test may `kill()` one (SIGKILL, as a crash: no goodbye to Redis). Whatever happens
in the test, every process it started is gone when the block ends: each node runs in
a process group of its own (its workers with it), killed whole at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx

from tests.support.process import TOKENWIRE
from tests.support.redis_server import private_prefix

# Generous: a node starts in about a second, slower on a loaded 2-core machine.
START_TIMEOUT = 60.0


class NodeProcess:
    """One node: a `tokenwire serve` process (and its workers), its log, its URL."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.url = ""

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws/ai-stream"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL to the node and its workers at once: a crash, nothing said to anyone."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, within: float = 15.0) -> int | None:
        """SIGTERM (a graceful stop), then SIGKILL to whatever of the group is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(within)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def serving_line(self, timeout: float = START_TIMEOUT) -> dict[str, object]:
        """The node's `serving` log line, once written (the port then takes connections)."""
        deadline = time.monotonic() + timeout
        while True:
            for text in self.output().splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(text)
                    if isinstance(record, dict) and record.get("event") == "serving":
                        return record
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"tokenwire serve ({self.proc.poll()}) did not serve:\n{self.output()}"
                )
            await asyncio.sleep(0.05)

    async def until_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until `/readyz` answers 200 (Redis reached, providers ready)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.url + "/readyz")).status_code == 200:
                        return
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{self.url} never ready:\n{self.output()}")
                await asyncio.sleep(0.05)


def cluster_config(
    redis_url: str, key_prefix: str, tokens: int = 60, delay_ms: float = 50.0, extra: str = ""
) -> str:
    """A node's configuration: the simulated provider only, answering `tokens` words one
    every `delay_ms` (slow enough to act mid-stream), on this Redis and prefix."""
    return f"""
[redis]
url = "{redis_url}"
key_prefix = "{key_prefix}"

[[providers]]
name = "simulated"
kind = "simulated"
options = {{ tokens = {tokens}, delay_ms = {delay_ms} }}
{extra}
"""


def start_node(config: Path, log: Path, args: Sequence[str] = ()) -> NodeProcess:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TOKENWIRE), "serve", "--config", str(config), "--port", "0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENWIRE_LOGGING__FORMAT": "json"},
            # A group of its own: the node and its workers die together (`kill`, `stop`).
            start_new_session=True,
        )
    return NodeProcess(proc, log)


@contextlib.asynccontextmanager
async def gateway_cluster(
    workdir: Path,
    redis_url: str,
    nodes: int = 2,
    key_prefix: str | None = None,
    tokens: int = 60,
    delay_ms: float = 50.0,
    args: Sequence[str] = (),
    extra_config: str = "",
) -> AsyncIterator[list[NodeProcess]]:
    """`nodes` gateway processes sharing `redis_url` under one private key prefix, each
    ready; `args` go to each `tokenwire serve` (e.g. `--workers 2`)."""
    config = workdir / "tokenwire.toml"
    prefix = key_prefix or private_prefix()
    config.write_text(cluster_config(redis_url, prefix, tokens, delay_ms, extra_config))
    started: list[NodeProcess] = []
    try:
        for index in range(nodes):
            started.append(start_node(config, workdir / f"node-{index}.log", args))
        for node in started:
            node.url = str((await node.serving_line())["url"])
        await asyncio.gather(*(node.until_ready() for node in started))
        yield started
    finally:
        for node in started:
            node.stop()
