"""Ctrl-C at the terminal that runs `tokenwire serve` stops it as cleanly as SIGTERM.

The server runs under a pseudo-terminal and Ctrl-C is typed into it, so that the
terminal driver sends SIGINT as it does for a user. These tests also fail if uvicorn
stops calling `Server.capture_signals`, the public hook `GracefulServer` overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.process import TOKENWIRE
from tests.support.terminal import CTRL_C, Terminal, at_a_terminal

JSON_LOGS = {"TOKENWIRE_LOGGING__FORMAT": "json"}
LONG_ANSWER = {
    "type": "ai_request",
    "prompt": "long",
    "request_id": "c1",
    "config": {"options": {"tokens": 5000, "delay_ms": 5}},
}


def assert_no_traceback(terminal: Terminal) -> None:
    assert "Traceback" not in terminal.output, terminal.output
    assert "KeyboardInterrupt" not in terminal.output, terminal.output


async def test_ctrl_c_while_serving_ends_streams_closes_sockets_with_1001_and_exits_0() -> None:
    async with at_a_terminal(
        str(TOKENWIRE), "serve", "--provider", "simulated", "--port", "0", env=JSON_LOGS
    ) as terminal:
        url = (await terminal.json_event("serving"))["url"]
        frames: list[dict[str, Any]] = []
        async with connect(url.replace("http", "ws", 1) + "/ws/ai-stream") as ws:
            await ws.recv()
            await ws.send(json.dumps(LONG_ANSWER))
            await ws.recv()

            terminal.type(CTRL_C)

            try:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            except ConnectionClosed:
                pass
        assert ws.close_code == 1001
        status = await terminal.exit_status()

    assert frames[-1]["event_type"] == "stream_end"
    assert frames[-1]["data"]["status"] == "cancelled"
    assert frames[-1]["data"]["reason"] == "shutdown"
    assert status == 0
    assert_no_traceback(terminal)


# Installed in the server through PYTHONPATH: the step named by TOKENWIRE_TEST_HOLD waits,
# after saying so on descriptor 2, until the file TOKENWIRE_TEST_RELEASE exists. Ctrl-C
# then lands in that step on any machine, however fast it would otherwise be over.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os
    import time

    def _held(step):
        def wait(*args, **kwargs):
            os.write(2, f"holding {step}\\n".encode())
            deadline = time.monotonic() + 60
            while not os.path.exists(os.environ["TOKENWIRE_TEST_RELEASE"]):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            return step_functions[step](*args, **kwargs)
        return wait

    step_functions = {}
    hold = os.environ.get("TOKENWIRE_TEST_HOLD")
    if hold == "model load":
        import llama_cpp.llama_cpp as library
        step_functions[hold] = library.llama_model_load_from_file
        library.llama_model_load_from_file = _held(hold)
    elif hold == "provider build":
        from tokenwire.providers import simulated
        step_functions[hold] = simulated.SimulatedProvider.__init__
        simulated.SimulatedProvider.__init__ = _held(hold)
    """
)


@contextlib.asynccontextmanager
async def held_at(step: str, tmp_path: Path, *argv: str) -> AsyncIterator[Terminal]:
    """`tokenwire serve ARGV` at a terminal, held in `step` until `release(tmp_path)`."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {
        **JSON_LOGS,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "TOKENWIRE_TEST_HOLD": step,
        "TOKENWIRE_TEST_RELEASE": str(tmp_path / "release"),
    }
    async with at_a_terminal(str(TOKENWIRE), "serve", "--port", "0", *argv, env=env) as terminal:
        await terminal.until(f"holding {step}")
        yield terminal


def release(tmp_path: Path) -> None:
    (tmp_path / "release").touch()


@pytest.mark.slow
async def test_ctrl_c_while_the_local_model_loads_exits_0_without_a_traceback(
    tmp_path: Path,
) -> None:
    async with held_at("model load", tmp_path) as terminal:
        url = (await terminal.json_event("serving"))["url"]
        async with httpx.AsyncClient() as http:
            ready = (await http.get(url + "/readyz", timeout=30)).json()
        assert ready["providers"]["local"] == "loading the model"

        terminal.type(CTRL_C)
        release(tmp_path)  # the load ends; the shutdown waits for it
        status = await terminal.exit_status()

    assert status == 0
    assert_no_traceback(terminal)


async def test_ctrl_c_while_the_providers_are_built_exits_130_without_a_traceback(
    tmp_path: Path,
) -> None:
    async with held_at("provider build", tmp_path, "--provider", "simulated") as terminal:
        terminal.type(CTRL_C)
        status = await terminal.exit_status()

    assert status == 130  # interrupted before anything was served
    assert '"serving"' not in terminal.output
    assert_no_traceback(terminal)
