"""LiteLLM's proxy (a third-party OpenAI-compatible gateway) in front of a fake upstream.

`make litellm` installs it in a venv of its own (`.venv-litellm`: its pins differ from
tokenwire's). FACTS.md: it refuses to start without a master key, and fetches a cost
map at start unless `LITELLM_LOCAL_MODEL_COST_MAP=True`. It takes a port number, not a
bound socket, so the port is chosen just before it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port

LITELLM = Path(__file__).parents[2] / ".venv-litellm" / "bin" / "litellm"
MASTER_KEY = "sk-litellm-test-master"
MODEL = "fake"
# It imports a great deal before it listens: about 40 s on a busy 2-core machine.
START_TIMEOUT = 150.0


@dataclass(frozen=True)
class LiteLLMProxy:
    url: str
    """The OpenAI-compatible base URL (`.../v1`); `MODEL` names the fake upstream there."""


@contextlib.asynccontextmanager
async def running_litellm_proxy(upstream_url: str) -> AsyncIterator[LiteLLMProxy]:
    """The proxy on a free port, forwarding `MODEL` to `upstream_url` (an OpenAI-style
    server), until the block ends."""
    if not LITELLM.exists():
        pytest.fail(f"LiteLLM's proxy is not installed at {LITELLM}: `make litellm`")
    with tempfile.TemporaryDirectory(prefix="tokenwire-litellm-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            "      model: openai/m\n"
            f"      api_base: {upstream_url}/v1\n"
            "      api_key: unused\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        port = free_port()
        log = (Path(folder) / "litellm.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            str(LITELLM),
            *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await _ready(f"http://127.0.0.1:{port}", proc, Path(folder) / "litellm.log")
            yield LiteLLMProxy(url=f"http://127.0.0.1:{port}/v1")
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()


async def _ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Wait until the proxy answers its liveness probe; fail naming why it did not."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if proc.returncode is not None:
                pytest.fail(f"LiteLLM exited {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url + "/health/liveliness")).status_code == 200:
                    return
            await asyncio.sleep(0.2)  # polling a process that gives no other sign
    pytest.fail(f"LiteLLM did not listen within {START_TIMEOUT} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    """The end of the proxy's log, to say why it did not start."""
    with log.open(errors="replace") as text:
        return text.read()[-3000:]
