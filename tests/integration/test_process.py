"""The `tokenwire serve` process: start-up errors, SIGTERM, and what it logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.process import TOKENWIRE, serving_url


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/ws/ai-stream"
        self.log = log


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TOKENWIRE), "serve", "--provider", "simulated", "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENWIRE_LOGGING__FORMAT": "json"},
        )
    yield Served(proc, serving_url(proc, log), log)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def test_sigterm_ends_streams_as_cancelled_and_closes_sockets_with_1001(
    served: Served,
) -> None:
    async with connect(served.ws_url) as ws:
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "type": "ai_request",
                    "prompt": "long",
                    "request_id": "s1",
                    "config": {"options": {"tokens": 5000, "delay_ms": 5}},
                }
            )
        )
        await ws.recv()
        served.proc.send_signal(signal.SIGTERM)
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
        except ConnectionClosed:
            pass
        assert ws.close_code == 1001
    end = frames[-1]
    assert end["event_type"] == "stream_end"
    assert end["data"]["status"] == "cancelled"
    assert end["data"]["reason"] == "shutdown"
    assert served.proc.wait(10) == 0


async def test_info_logs_carry_ids_but_never_prompt_or_answer_text(served: Served) -> None:
    prompt = "my-secret-prompt-text"
    async with connect(served.ws_url) as ws:
        await ws.recv()
        await ws.send(
            json.dumps(
                {
                    "type": "ai_request",
                    "prompt": prompt,
                    "request_id": "L1",
                    "config": {"options": {"tokens": 10, "delay_ms": 0}},
                }
            )
        )
        answer = ""
        while True:
            frame = json.loads(await ws.recv())
            if frame["event_type"] == "chunk":
                answer += frame["data"]["chunk"]
            if frame["event_type"] == "stream_end":
                break
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(10)
    lines = [
        json.loads(line) for line in served.log.read_text().splitlines() if line.startswith("{")
    ]
    events = {line["event"] for line in lines}
    assert {"session opened", "session closed", "stream ended"} <= events
    ended = next(line for line in lines if line["event"] == "stream ended")
    assert ended["request_id"] == "L1"
    assert ended["provider"] == "simulated"
    assert ended["chunks"] >= 1
    assert ended["duration"] > 0
    text = served.log.read_text()
    assert prompt not in text
    assert answer.strip()
    assert answer.strip() not in text


def test_a_wrong_config_stops_start_up_with_one_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_message_bytes = 'lots'\n")
    result = subprocess.run(
        [str(TOKENWIRE), "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "limits.max_message_bytes: expected an integer" in result.stderr
