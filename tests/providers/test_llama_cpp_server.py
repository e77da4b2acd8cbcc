"""The `openai` provider against a real OpenAI-compatible server: llama-cpp-python's own.

`python -m llama_cpp.server` serves the packaged Gemma 3 270M on a loopback port, once
for the module. It never sends a usage chunk, whatever `stream_options` asks: its streams
end with a `finish_reason`, then `data: [DONE]`, so the provider must complete them with
a local estimate. The server is a dev dependency (`llama-cpp-python[server]`); if it
cannot start, these tests fail with its output, they are never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import WsClient, free_port, of_type, running_server, ws_client
from tokenwire.core.provider import (
    Message,
    Provider,
    ProviderEvent,
    ProviderRequest,
    Usage,
    estimate_tokens,
    estimated_completion_tokens,
)
from tokenwire.providers.gguf_package import packaged_model_path
from tokenwire.providers.registry import build_provider
from tokenwire.settings import ProviderSettings, Settings, load_settings

pytestmark = pytest.mark.slow

START_TIMEOUT = 120.0
SHORT_PROMPT = "The capital of France is"
LONG_PROMPT = "Tell me a long story about a dragon who learns to fly."


@dataclass(frozen=True)
class LlamaServer:
    base_url: str
    started_in: float


def _output(log: Path) -> str:
    text = log.read_text(errors="replace")
    return text[-8000:]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(packaged_model_path()),
        "--chat_format",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "llama_server.log"
        with log.open("wb") as sink:
            started = time.monotonic()
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
            try:
                while not _answers(f"{base_url}/models"):
                    if process.poll() is not None:
                        pytest.fail(
                            f"llama_cpp.server exited with {process.returncode} before "
                            f"answering:\n{_output(log)}"
                        )
                    if time.monotonic() - started > START_TIMEOUT:
                        pytest.fail(
                            f"llama_cpp.server did not answer GET /v1/models within "
                            f"{START_TIMEOUT:.0f} s:\n{_output(log)}"
                        )
                    time.sleep(0.1)
                started_in = time.monotonic() - started
                print(f"llama_cpp.server answered after {started_in:.2f} s")
                yield LlamaServer(base_url, started_in)
            finally:
                process.kill()
                process.wait(timeout=30)


def llama_provider(server: LlamaServer) -> Provider:
    settings = ProviderSettings(name="llama", kind="openai", model="x", base_url=server.base_url)
    return build_provider(settings, 0)


def gateway_settings(server: LlamaServer) -> Settings:
    provider = {"name": "llama", "kind": "openai", "model": "x", "base_url": server.base_url}
    return load_settings(None, {"providers": [provider]})


def ask(prompt: str, max_tokens: int) -> ProviderRequest:
    return ProviderRequest(
        messages=(Message(role="user", content=prompt),), max_tokens=max_tokens, temperature=0
    )


async def collect(provider: Provider, request: ProviderRequest) -> list[ProviderEvent]:
    async with contextlib.aclosing(provider.stream(request)) as events:
        return [event async for event in events]


async def first(client: WsClient, event_type: str) -> dict[str, Any]:
    while (frame := await client.recv(60.0))["event_type"] != event_type:
        pass
    return frame


async def test_the_provider_completes_a_short_answer_with_estimated_usage(
    llama_server: LlamaServer,
) -> None:
    provider = llama_provider(llama_server)
    try:
        events = await collect(provider, ask(SHORT_PROMPT, 16))
    finally:
        await provider.aclose()

    *deltas, usage = events
    assert deltas
    assert all(isinstance(d, str) and d for d in deltas)
    assert isinstance(usage, Usage)
    assert usage.estimated is True
    assert usage.completion_tokens > 0
    text = "".join(d for d in deltas if isinstance(d, str))
    assert usage == Usage(
        prompt_tokens=estimate_tokens(SHORT_PROMPT),
        completion_tokens=estimated_completion_tokens(len(deltas), 16, text),
        estimated=True,
        finish_reason="length",  # 16 tokens asked for, none of them an end of text
    )
    assert usage.completion_tokens <= 16  # never above what was generated


async def test_an_answer_completes_over_the_websocket_with_estimated_usage(
    llama_server: LlamaServer,
) -> None:
    async with (
        running_server(gateway_settings(llama_server)) as server,
        ws_client(server) as client,
    ):
        frames = await client.ask(
            SHORT_PROMPT,
            request_id="r1",
            config={"max_tokens": 16, "temperature": 0},
            stream_config={"granularity": "token"},
        )

    assert not of_type(frames, "error"), frames
    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["provider_used"] == "llama"
    assert end["usage"]["estimated"] is True
    assert end["usage"]["prompt_tokens"] > 0
    text = "".join(f["data"]["token"] for f in of_type(frames, "token"))
    assert text
    # The provider's own estimate: never above the deltas (a token each here) nor max_tokens.
    deltas = len(of_type(frames, "token"))
    assert end["usage"]["completion_tokens"] == estimated_completion_tokens(deltas, 16, text) > 0


async def test_cancel_mid_answer_ends_at_once_and_frees_the_upstream(
    llama_server: LlamaServer,
) -> None:
    async with (
        running_server(gateway_settings(llama_server)) as server,
        ws_client(server) as client,
    ):
        await client.send(
            {
                "type": "ai_request",
                "prompt": LONG_PROMPT,
                "request_id": "long",
                "config": {"max_tokens": 1500, "temperature": 0},
                "stream_config": {"granularity": "token"},
            }
        )
        await first(client, "token")
        cancelling = time.monotonic()
        await client.send({"type": "cancel_request", "request_id": "long"})
        end = (await client.until_end("long", timeout=1.0))[-1]["data"]
        cancelled_in = time.monotonic() - cancelling

    assert end["status"] == "cancelled"
    assert cancelled_in < 1.0
    # The server runs one generation at a time: had the upstream connection stayed
    # open, it would still be writing the 1500 tokens (about two minutes here), and
    # this short answer would wait behind them.
    provider = llama_provider(llama_server)
    asking = time.monotonic()
    try:
        events = await asyncio.wait_for(collect(provider, ask(SHORT_PROMPT, 4)), 30.0)
    finally:
        await provider.aclose()
    assert isinstance(events[-1], Usage)
    print(f"a short answer after the cancel took {time.monotonic() - asking:.2f} s")
