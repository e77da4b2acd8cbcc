"""llama-cpp-python's own OpenAI-compatible server, started the way that does not crash.

As pip builds it by default, llama.cpp repacks some weights into extra CPU buffers
(`CPU_REPACK`, or `AMX` on CPUs that have it), and on some machines of this kind
their kernels crash on the first token (SIGSEGV, or SIGILL in an AMX instruction):
whether a machine crashes differs between machines of the same kind. The local
provider turns those buffers off (`use_extra_bufts`); run as

    python -m tests.support.llama_server --model FILE.gguf --chat_format gemma ...

from the repository's root, this module does the same for `python -m llama_cpp.server`,
with the provider's own override, and takes that server's arguments unchanged.

For tests, `running_llama_server` starts it on a port of its own choosing and
`LlamaServer.death` says how it ended (exit status, signal, its last log lines),
so that a crash is named instead of surfacing as a closed connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Below the per-test timeout (pyproject.toml), so that a slow start says so itself.
START_TIMEOUT = 120.0
LAST_LINES = 30
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    from tokenwire.providers.llama_library import default_model_params

    with default_model_params(extra_buffers=False):
        serve()


class LlamaServerDied(AssertionError):
    """The server is gone: the message names its exit status and its last log lines."""


def exit_description(returncode: int) -> str:
    """'exit status 1', or 'killed by SIGSEGV (exit status -11, 139 in a shell)'."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name} (exit status {returncode}, {128 - returncode} in a shell)"


@dataclass
class LlamaServer:
    process: subprocess.Popen[bytes]
    log: Path
    base_url: str = ""

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def tail(self, lines: int = LAST_LINES) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def death(self, wait: float = 0.0) -> str | None:
        """How the server ended, with its last log lines; None while it runs.

        `wait`: how long to give a process that is dying (a client can see its
        connection close before the process has exited) to be gone.
        """
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=wait)
        returncode = self.process.poll()
        if returncode is None:
            return None
        return (
            f"llama_cpp.server {exit_description(returncode)}; its last log lines:\n{self.tail()}"
        )


def _port(server: LlamaServer) -> int | None:
    for line in server.log_lines():
        if found := _LISTENING.search(line):
            return int(found.group(1))
    return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_llama_server(*args: str) -> Iterator[LlamaServer]:
    """The server on a loopback port it picks itself, once it answers `GET /v1/models`.

    `args` are `llama_cpp.server`'s own (`--model`, `--chat_format`, ...). Its output
    (llama.cpp's load log included: the server is verbose) goes to `server.log`.
    """
    command = [sys.executable, "-m", "tests.support.llama_server", *args]
    command += ["--host", "127.0.0.1", "--port", "0"]
    # Unbuffered: the server print()s some lines (a client's disconnect) to stdout.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="llama-server-") as tmp:
        log = Path(tmp) / "llama_server.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT, env=env
            )
        server = LlamaServer(process, log)
        try:
            _wait_until_it_answers(server)
            yield server
        finally:
            process.kill()
            process.wait(timeout=30)


def _wait_until_it_answers(server: LlamaServer) -> None:
    started = time.monotonic()
    while True:
        if (death := server.death()) is not None:
            raise LlamaServerDied(f"{death}\n(before answering GET /v1/models)")
        port = _port(server)
        if port is not None and _answers(f"http://127.0.0.1:{port}/v1/models"):
            server.base_url = f"http://127.0.0.1:{port}/v1"
            return
        if time.monotonic() - started > START_TIMEOUT:
            raise LlamaServerDied(
                f"llama_cpp.server did not answer GET /v1/models within {START_TIMEOUT:.0f} s; "
                f"its last log lines:\n{server.tail()}"
            )
        time.sleep(0.1)


if __name__ == "__main__":
    main()
