"""Ctrl-C at the terminal that runs `tokenwire serve` stops it as cleanly as SIGTERM.

The server runs under a pseudo-terminal and Ctrl-C is typed into it, so that the
terminal driver sends SIGINT as it does for a user. These tests also fail if uvicorn
stops calling `Server.capture_signals`, the public hook `GracefulServer` overrides.
"""

from __future__ import annotations

import asyncio
import json
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


@pytest.mark.slow
async def test_ctrl_c_while_the_local_model_loads_exits_0_without_a_traceback() -> None:
    async with at_a_terminal(str(TOKENWIRE), "serve", "--port", "0", env=JSON_LOGS) as terminal:
        url = (await terminal.json_event("serving"))["url"]
        async with httpx.AsyncClient() as http:
            ready = (await http.get(url + "/readyz", timeout=30)).json()
        if ready.get("providers", {}).get("local") != "loading the model":
            pytest.skip(f"the model had loaded before Ctrl-C could be typed: {ready}")

        terminal.type(CTRL_C)
        status = await terminal.exit_status()

    assert status == 0
    assert_no_traceback(terminal)
