"""A program run as a person runs it at a terminal.

The program gets a pseudo-terminal as its controlling terminal, in a session of its
own, so that typing Ctrl-C there makes the terminal driver send SIGINT to it, as a
user's Ctrl-C does. Everything it prints is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

CTRL_C = b"\x03"


class Terminal:
    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self._master = master
        self._output = bytearray()
        self._closed = False
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._read)

    @property
    def output(self) -> str:
        return self._output.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self._master, keys)

    async def json_event(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first JSON log line whose `event` is `event`, waiting for it if need be."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.output.splitlines():
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if isinstance(record, dict) and record.get("event") == event:
                            return record
                await self._more(f"no {event!r} line")

    async def until(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the program has printed `text`."""
        async with asyncio.timeout(timeout):
            while text not in self.output:
                await self._more(f"no {text!r}")

    async def exit_status(self, timeout: float = 60.0) -> int:
        """Wait for the program to end and for everything it printed."""
        async with asyncio.timeout(timeout):
            status = await self.proc.wait()
            while not self._closed:
                await self._more("output not closed")
        return status

    async def _more(self, waiting_for: str) -> None:
        if self._closed:
            raise AssertionError(f"{waiting_for}; the program printed:\n{self.output}")
        self._changed.clear()
        await self._changed.wait()

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every holder of the terminal's other end has closed it
            data = b""
        if data:
            self._output += data
        else:
            self._closed = True
            asyncio.get_running_loop().remove_reader(self._master)
        self._changed.set()

    def close(self) -> None:
        if not self._closed:
            asyncio.get_running_loop().remove_reader(self._master)
            self._closed = True
        os.close(self._master)


@contextlib.asynccontextmanager
async def at_a_terminal(*argv: str, env: dict[str, str] | None = None) -> AsyncIterator[Terminal]:
    """Run `argv` with a new pseudo-terminal as its controlling terminal; killed on leaving
    if still running. util-linux's `setsid --ctty` makes the terminal the controlling
    one without running Python code between fork and exec (unsafe with threads)."""
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            "setsid",
            "--ctty",
            "--wait",
            *argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, **(env or {})},
        )
    finally:
        os.close(slave)
    terminal = Terminal(proc, master)
    try:
        yield terminal
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        terminal.close()
