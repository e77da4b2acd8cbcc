"""The `openai` provider against a real OpenAI-compatible server: llama-cpp-python's own.

llama-cpp-python's server serves the packaged Gemma 3 270M on a loopback port, once
for the module, started by `tests/support/llama_server.py` without llama.cpp's extra
CPU buffers (which crash on the first token on some machines of this kind). It never
sends a usage chunk, whatever `stream_options` asks: its streams end with a
`finish_reason`, then `data: [DONE]`, so the provider must complete them with a local
estimate. The server is a dev dependency (`llama-cpp-python[server]`); if it cannot
start, or dies during a test, the test fails with its exit status and last log lines
(`conftest.py`); it is never skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.llama_server import LlamaServer, LlamaServerDied, running_llama_server
from tests.support.server import WsClient, of_type, running_server, ws_client
from tests.support.waiting import eventually
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

# One server for the module, so one xdist worker for the module (`--dist loadgroup`).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("llama_cpp_server")]

SHORT_PROMPT = "The capital of France is"
LONG_PROMPT = "Tell me a long story about a dragon who learns to fly."
# llama.cpp logs each buffer it loads the weights into, e.g.
# `load_tensors:   CPU_Mapped model buffer size =   235.16 MiB`.
MODEL_BUFFER = re.compile(r"load_tensors:\s+(\S+) model buffer size")
# How long a wait on the real model may last before it counts as a hang: its speed is
# the machine's (a 14 s first token and about 2.4 tokens/s were seen at load 17 on 2
# cores), so waits on it are bounded by this, not by the shorter test-client defaults.
MODEL_WAIT = 60.0
# What llama_cpp.server prints when a streaming client goes away mid-answer.
CLIENT_LEFT = "Disconnected from client"


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    model = str(packaged_model_path())
    with running_llama_server("--model", model, "--chat_format", "gemma", "--n_ctx", "2048") as s:
        yield s


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
    while (frame := await client.recv(MODEL_WAIT))["event_type"] != event_type:
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
        await client.send(
            {
                "type": "ai_request",
                "prompt": SHORT_PROMPT,
                "request_id": "r1",
                "config": {"max_tokens": 16, "temperature": 0},
                "stream_config": {"granularity": "token"},
            }
        )
        frames = await client.until_end("r1", timeout=MODEL_WAIT)

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


def test_the_server_keeps_the_weights_out_of_llama_cpps_extra_cpu_buffers(
    llama_server: LlamaServer,
) -> None:
    # Extra buffers on, a `CPU_REPACK` model buffer (`AMX` where the CPU has it) is
    # logged beside `CPU_Mapped`: those are the kernels that crash on some machines.
    buffers = {m.group(1) for line in llama_server.log_lines() if (m := MODEL_BUFFER.search(line))}
    assert buffers, llama_server.tail()
    assert buffers <= {"CPU", "CPU_Mapped"}, buffers


async def test_cancel_mid_answer_ends_the_stream_and_closes_the_upstream_connection(
    llama_server: LlamaServer,
) -> None:
    def clients_left() -> int:
        return "\n".join(llama_server.log_lines()).count(CLIENT_LEFT)

    before = clients_left()
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
        await client.send({"type": "cancel_request", "request_id": "long"})
        frames = await client.until_end("long", timeout=MODEL_WAIT)

        end = frames[-1]["data"]
        assert end["status"] == "cancelled"
        # The server generates until its client goes, one answer at a time: it noticed
        # the connection close while it was still writing the 1500 tokens (once it
        # ends an answer on its own, or for a newer request, it prints nothing).
        await eventually(lambda: clients_left() > before, MODEL_WAIT)

    # And it answers the next request.
    provider = llama_provider(llama_server)
    try:
        events = await asyncio.wait_for(collect(provider, ask(SHORT_PROMPT, 4)), MODEL_WAIT)
    finally:
        await provider.aclose()
    assert isinstance(events[-1], Usage)


# -- when the server dies -----------------------------------------------------------


def test_a_server_that_cannot_start_fails_with_its_exit_status_and_last_lines(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(LlamaServerDied) as died, running_llama_server("--model", str(missing)):
        pass
    assert "llama_cpp.server exit status 1;" in str(died.value)
    assert str(missing) in str(died.value)  # its own complaint, among its last lines


def test_a_server_killed_by_a_signal_is_named_by_the_signal_and_its_last_lines(
    tmp_path: Path,
) -> None:
    log = tmp_path / "server.log"
    crash = "import os, signal; print('last words', flush=True); os.kill(os.getpid(), 11)"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-c", crash], stdout=sink)
    death = LlamaServer(process, log).death(wait=30)
    assert death is not None
    assert "killed by SIGSEGV (exit status -11, 139 in a shell)" in death
    assert death.endswith("last words")
