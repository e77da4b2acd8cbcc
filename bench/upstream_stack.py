"""The servers the HTTP parts of `make bench` measure: tokenwire in front of the fake upstream.

tokenwire runs from this checkout (`python -m tokenwire` with its `src/` first on the path)
with the `openai` provider `up` and the `anthropic` provider `claude`, both pointed at the
fake upstream, and the per-user and per-address guards raised as an operator load-testing
from one address would raise them (every benchmark client is one user on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import ws_load

OPENAI_PROVIDER = "up"
ANTHROPIC_PROVIDER = "claude"

LOAD_TEST_LIMITS = {
    "handshakes_per_minute_per_address": 10**7,
    "max_connections_per_user": 10**6,
    "max_streams_per_user": 10**6,
    "max_connections": 10**6,
}


def tokenwire_config(upstream_url: str) -> str:
    limits = "\n".join(f"{key} = {value}" for key, value in LOAD_TEST_LIMITS.items())
    return f"""\
[[providers]]
name = "{OPENAI_PROVIDER}"
kind = "openai"
model = "m"
base_url = "{upstream_url}/v1"

[[providers]]
name = "{ANTHROPIC_PROVIDER}"
kind = "anthropic"
model = "m"
base_url = "{upstream_url}"

[routing]
default_provider = "{OPENAI_PROVIDER}"

[limits]
{limits}
"""


class Tokenwire:
    """`tokenwire serve` on a free loopback port until `stop`; `log_dir` keeps its log."""

    def __init__(self, root: Path, upstream_url: str, log_dir: Path) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="tokenwire-bench-")
        config = Path(self._folder.name) / "tokenwire.toml"
        config.write_text(tokenwire_config(upstream_url))
        port = ws_load.free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "tokenwire", "serve", "--config", str(config)]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        source = str(root / "src")
        path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
        self._server = ws_load.Server(command, {"PYTHONPATH": path}, log_dir)
        self._server.start(self.url)
        assert self._server.pid is not None
        self.pid: int = self._server.pid

    @property
    def log_path(self) -> Path:
        return self._server.log_path

    def stop(self) -> None:
        self._server.stop()
        self._folder.cleanup()
