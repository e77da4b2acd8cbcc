"""`tokenwire serve` as a user runs it: a real process, its output, its exit status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

TOKENWIRE = Path(sys.executable).parent / "tokenwire"


class Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""

    async def line(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise EOFError("the process closed its output")
        text = raw.decode().rstrip("\n")
        self.lines.append(text)
        return text

    async def until_event(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Read JSON log lines until one whose `event` is `event`; return it."""
        async with asyncio.timeout(timeout):
            while True:
                text = await self.line(timeout)
                with contextlib.suppress(ValueError):
                    record: dict[str, Any] = json.loads(text)
                    if record.get("event") == event:
                        return record

    async def rest(self, timeout: float = 30.0) -> list[str]:
        """Every line until the process ends."""
        with contextlib.suppress(EOFError):
            while True:
                await self.line(timeout)
        return self.lines

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `tokenwire ARGS` to its end: (exit status, everything it printed)."""
    proc = await asyncio.create_subprocess_exec(
        str(TOKENWIRE),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:  # timed out: a server that should have refused to start
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@contextlib.asynccontextmanager
async def serving(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Process]:
    """`tokenwire serve --port 0 ARGS` with JSON logs, once it says it serves."""
    proc = await asyncio.create_subprocess_exec(
        str(TOKENWIRE),
        "serve",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TOKENWIRE_LOGGING__FORMAT": "json", **(env or {})},
    )
    process = Process(proc)
    try:
        served = await process.until_event("serving")
        process.url = served["url"]
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def serving_url(proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> str:
    """The URL that a `tokenwire serve --port 0` writing JSON logs to `log` serves on,
    once its `serving` line says so (it is written once the port accepts connections).

    Port 0: the process binds a port of its own, so no other test or xdist worker can
    take it between choosing and binding.
    """
    deadline = time.monotonic() + timeout
    while True:
        for text in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(text)
                if isinstance(record, dict) and record.get("event") == "serving":
                    return str(record["url"])
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                f"tokenwire serve ({proc.wait()}) wrote no serving line:\n{log.read_text()}"
            )
        time.sleep(0.05)
