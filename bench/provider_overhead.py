"""Time to first token: the official SDK called directly vs the same request through tokenwire.

    .venv/bin/python -m bench.provider_overhead [--requests 50] [--warmup 5] [--deltas 20]

For each of the openai and anthropic kinds, one fake upstream (tests/fakes, in a child
process) answers every request at once with `--deltas` text deltas. These paths are
timed from the moment the request is sent to the first text delta in hand:

    sdk        the official SDK, called directly (one client, connections kept alive)
    provider   tokenwire's provider adapter, in this process (the SDK plus the adapter)
    gateway    a WebSocket client -> `tokenwire serve` (a child process) -> the same fake
    chat       the openai SDK -> tokenwire's /v1/chat/completions -> the same fake
    responses  the openai SDK -> tokenwire's /v1/responses -> the same fake
    messages   the anthropic SDK -> tokenwire's /v1/messages -> the same fake

Every stream is read to its end, so that connections are reused as in steady use.
The paths take turns request by request, so that machine noise falls on all alike.
Prints the median and p90 in milliseconds, after `--warmup` untimed rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import anthropic
import httpx
import openai
from tests.fakes.anthropic_upstream import anthropic_answer
from tests.fakes.openai_upstream import ReplyScript, ScriptedUpstream, openai_answer
from websockets.asyncio.client import ClientConnection, connect

from tokenwire.core.provider import Message, Provider, ProviderRequest
from tokenwire.providers.anthropic_messages import AnthropicProvider
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.settings import ProviderSettings

PROMPT = "Say something short."
Timed = Callable[[], Awaitable[float]]


# -- the fake upstream, in a child process ------------------------------------


def serve_fake(kind: str, deltas: int, pipe: Connection) -> None:
    asyncio.run(_serve_fake(kind, deltas, pipe))


async def _serve_fake(kind: str, deltas: int, pipe: Connection) -> None:
    words = [f" w{i}" for i in range(deltas)]
    reply: ReplyScript
    if kind == "openai":
        reply = openai_answer(words, 12, deltas)
    else:
        reply = anthropic_answer(words, 12, deltas)
    async with ScriptedUpstream(reply) as upstream:
        pipe.send(upstream.url)
        await asyncio.Event().wait()


# -- the three paths ----------------------------------------------------------


def openai_sdk(url: str, model: str = "m") -> tuple[Timed, Callable[[], Awaitable[None]]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    async def once() -> float:
        started = time.perf_counter()
        first = 0.0
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            async for chunk in stream:
                if not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
        return first - started

    return once, client.close


def openai_responses(url: str, model: str) -> tuple[Timed, Callable[[], Awaitable[None]]]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    async def once() -> float:
        started = time.perf_counter()
        first = 0.0
        stream = await client.responses.create(model=model, input=PROMPT, stream=True)
        async with stream:
            async for event in stream:
                if not first and event.type == "response.output_text.delta":
                    first = time.perf_counter()
        return first - started

    return once, client.close


def anthropic_sdk(url: str, model: str = "m") -> tuple[Timed, Callable[[], Awaitable[None]]]:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0)

    async def once() -> float:
        started = time.perf_counter()
        first = 0.0
        stream = await client.messages.create(
            model=model,
            max_tokens=1024,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
        )
        async with stream:
            async for event in stream:
                if not first and event.type == "content_block_delta":
                    first = time.perf_counter()
        return first - started

    return once, client.close


def adapter(provider: Provider) -> tuple[Timed, Callable[[], Awaitable[None]]]:
    request = ProviderRequest(messages=(Message(role="user", content=PROMPT),))

    async def once() -> float:
        started = time.perf_counter()
        first = 0.0
        async with contextlib.aclosing(provider.stream(request)) as events:
            async for event in events:
                if not first and isinstance(event, str) and event:
                    first = time.perf_counter()
        return first - started

    return once, provider.aclose


def through_gateway(ws: ClientConnection, provider_name: str) -> Timed:
    async def once() -> float:
        started = time.perf_counter()
        first = 0.0
        await ws.send(
            json.dumps(
                {"type": "ai_request", "prompt": PROMPT, "config": {"provider": provider_name}}
            )
        )
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("event_type")
            if not first and kind in ("chunk", "token"):
                first = time.perf_counter()
            if kind == "error":
                raise RuntimeError(f"gateway error: {frame['data']}")
            if kind == "stream_end":
                return first - started

    return once


# -- running ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake(kind: str, deltas: int) -> tuple[BaseProcess, str]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve_fake, args=(kind, deltas, theirs), daemon=True)
    process.start()
    if not ours.poll(30):
        raise RuntimeError(f"the fake {kind} upstream did not start")
    return process, str(ours.recv())


def start_gateway(
    openai_url: str, anthropic_url: str, config: Path
) -> tuple[subprocess.Popen[bytes], str]:
    config.write_text(
        "[[providers]]\n"
        f'name = "oa"\nkind = "openai"\nmodel = "m"\nbase_url = "{openai_url}/v1"\n'
        "[[providers]]\n"
        f'name = "an"\nkind = "anthropic"\nmodel = "m"\nbase_url = "{anthropic_url}"\n'
    )
    port = free_port()
    env = {**os.environ, "TOKENWIRE_LOGGING__LEVEL": "warning"}
    command = [sys.executable, "-m", "tokenwire", "serve", "--config", str(config)]
    process = subprocess.Popen([*command, "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the gateway did not start")


async def measure(paths: dict[str, Timed], requests: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for once in paths.values():
            await once()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(requests):
        for name, once in paths.items():
            times[name].append(await once())
    return times


def report(kind: str, times: dict[str, list[float]]) -> None:
    sdk = statistics.median(times["sdk"])
    for name, values in times.items():
        ms = sorted(v * 1000 for v in values)
        median = statistics.median(ms)
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        extra = "" if name == "sdk" else f"  (+{median - sdk * 1000:.2f} ms vs sdk)"
        print(f"{kind:<10} {name:<9} median {median:7.2f} ms   p90 {p90:7.2f} ms{extra}")


async def run(args: argparse.Namespace, urls: dict[str, str], gateway_url: str) -> None:
    ws_url = gateway_url.replace("http", "ws", 1) + "/ws/ai-stream"
    async with connect(ws_url, max_size=2**24) as ws:
        await ws.recv()  # connection_status
        for kind, name in (("openai", "oa"), ("anthropic", "an")):
            settings = ProviderSettings(
                name=name,
                kind=kind,  # type: ignore[arg-type]
                model="m",
                base_url=urls[kind] + ("/v1" if kind == "openai" else ""),
            )
            closers = []
            if kind == "openai":
                sdk, close_sdk = openai_sdk(urls[kind])
                provider, close_provider = adapter(OpenAIProvider(settings))
                chat, close_chat = openai_sdk(gateway_url, name)
                responses, close_responses = openai_responses(gateway_url, name)
                dialects = {"chat": chat, "responses": responses}
                closers = [close_chat, close_responses]
            else:
                sdk, close_sdk = anthropic_sdk(urls[kind])
                provider, close_provider = adapter(AnthropicProvider(settings))
                messages, close_messages = anthropic_sdk(gateway_url, name)
                dialects = {"messages": messages}
                closers = [close_messages]
            paths = {
                "sdk": sdk,
                "provider": provider,
                "gateway": through_gateway(ws, name),
                **dialects,
            }
            try:
                times = await measure(paths, args.requests, args.warmup)
            finally:
                for close in (close_sdk, close_provider, *closers):
                    await close()
            report(kind, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args()
    fakes = {kind: start_fake(kind, args.deltas) for kind in ("openai", "anthropic")}
    urls = {kind: url for kind, (_, url) in fakes.items()}
    with tempfile.TemporaryDirectory() as tmp:
        gateway, gateway_url = start_gateway(
            urls["openai"], urls["anthropic"], Path(tmp) / "c.toml"
        )
        try:
            print(
                f"{args.requests} requests per path after {args.warmup} warm-up rounds, "
                f"{args.deltas} deltas per answer, {os.cpu_count()} cores"
            )
            asyncio.run(run(args, urls, gateway_url))
        finally:
            gateway.terminate()
            gateway.wait(10)
            for process, _ in fakes.values():
                process.terminate()
                process.join(10)


if __name__ == "__main__":
    main()
