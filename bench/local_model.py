"""Time to first token and generation speed of the local model, through the provider.

    .venv/bin/python bench/local_model.py [--runs 5] [--max-tokens 128] [--threads N] [--busy]

Prints the medians over the runs, after one warm-up request. The answers are
plain completions of a fixed text, so each run generates `--max-tokens` tokens.
`--busy` keeps one core busy with another process while it measures (a
neighbour on a shared machine, or the gateway's own event loop streaming).
Without `--threads`, the provider's default thread count is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from typing import Any

from tokenwire.core.provider import Message, ProviderRequest, Usage
from tokenwire.providers.local import LocalProvider
from tokenwire.settings import ProviderSettings

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"


async def one_run(provider: LocalProvider, max_tokens: int) -> tuple[float, float, int]:
    request = ProviderRequest(
        messages=(Message(role="user", content=PROMPT),), max_tokens=max_tokens
    )
    started = time.perf_counter()
    first: float | None = None
    usage: Usage | None = None
    async with contextlib.aclosing(provider.stream(request)) as events:
        async for event in events:
            if isinstance(event, Usage):
                usage = event
            elif first is None and event:
                first = time.perf_counter()
    ended = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError("the model sent no text")
    tokens = usage.completion_tokens
    return first - started, (tokens - 1) / (ended - first), tokens


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--busy", action="store_true", help="hold one core busy meanwhile")
    args = parser.parse_args()
    neighbour = (
        await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
        if args.busy
        else None
    )
    try:
        await measure(args)
    finally:
        if neighbour is not None:
            neighbour.kill()
            await neighbour.wait()


async def measure(args: argparse.Namespace) -> None:
    options: dict[str, Any] = {"prompt_format": "plain", "repeat_penalty": 1.1}
    if args.threads:
        options["threads"] = args.threads
    if args.model_path:
        options["model_path"] = args.model_path
    started = time.perf_counter()
    provider = LocalProvider(ProviderSettings(name="local", kind="local", options=options))
    try:
        await one_run(provider, 8)  # waits for the model to load; warms the caches
        loaded = time.perf_counter() - started
        runs = [await one_run(provider, args.max_tokens) for _ in range(args.runs)]
    finally:
        await provider.aclose()
    ttft = statistics.median(r[0] for r in runs)
    speed = statistics.median(r[1] for r in runs)
    busy = ", one core held by another process" if args.busy else ""
    print(f"model: {provider.model} ({provider.threads} threads{busy})")
    print(f"load + first answer: {loaded:.2f} s")
    print(f"runs: {args.runs} x {runs[0][2]} tokens")
    print(f"time to first token (median): {ttft * 1000:.1f} ms")
    print(f"generation speed (median): {speed:.1f} tokens/s")
    print(
        "per run (ttft ms, tokens/s): "
        + ", ".join(f"({t * 1000:.0f}, {s:.1f})" for t, s, _ in runs)
    )


if __name__ == "__main__":
    asyncio.run(main())
