"""Server CPU per 1,000 tokens on a `/v1` dialect: two revisions, alternating (a benchmark).

    .venv/bin/python bench/v1_cpu.py --before beb83ad [--after WORKTREE] \\
        [--path /v1/chat/completions] [--kind openai] [--streams 100] [--tokens 50] \\
        [--gap-ms 20] [--rounds 3]

One fake upstream (tests/fakes, in a child process: `--kind openai` answers Chat
Completions, `anthropic` Messages) sends `--tokens` text deltas `--gap-ms` apart. Each
revision (checked out as bench/before_after.py does) is served with a provider of that
kind pointed at it; per round, `--streams` streaming requests to `--path` start evenly
over one second, from raw sockets, each read to its end. Rounds alternate between the
revisions, so that the machine's other load falls on both. Prints each round's server CPU
per 1,000 delivered tokens (user + system of the server process, `/proc`) and time to
first text, then the medians. Per-user limits are raised as an operator load-testing
would. The fake waits the gap before every frame, the role chunk included, so the first
text comes about two gaps in; time to first text is as contended as the machine, too:
compare the CPU (bench-http's added-latency part measures the time added).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.anthropic_upstream import anthropic_answer
from tests.fakes.openai_upstream import ReplyScript, ScriptedUpstream, openai_answer

import before_after
import ws_load

# What marks a text delta on each path: counted, and the first one timed.
DELTAS = {
    "/v1/chat/completions": b'"delta":{"content":',
    "/v1/responses": b'"type":"response.output_text.delta"',
    "/v1/messages": b'"type":"text_delta"',
}
LIMITS = {
    "TOKENWIRE_LIMITS__MAX_STREAMS_PER_USER": "100000",
    "TOKENWIRE_LIMITS__MAX_CONNECTIONS_PER_USER": "100000",
}
BODIES = {
    "/v1/chat/completions": {
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Say something short."}],
    },
    "/v1/responses": {"stream": True, "input": "Say something short."},
    "/v1/messages": {
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Say something short."}],
    },
}


def serve_fake(kind: str, tokens: int, gap: float, pipe: Connection) -> None:
    asyncio.run(_serve_fake(kind, tokens, gap, pipe))


async def _serve_fake(kind: str, tokens: int, gap: float, pipe: Connection) -> None:
    words = [f" w{i}" for i in range(tokens)]
    reply: ReplyScript = (
        openai_answer(words, 12, tokens, frame_delay=gap)
        if kind == "openai"
        else anthropic_answer(words, 12, tokens, frame_delay=gap)
    )
    async with ScriptedUpstream(reply) as upstream:
        pipe.send(upstream.url + ("/v1" if kind == "openai" else ""))
        await asyncio.Event().wait()


@contextlib.contextmanager
def fake_upstream(kind: str, tokens: int, gap: float) -> Iterator[str]:
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=serve_fake, args=(kind, tokens, gap, theirs))
    child.start()
    try:
        yield str(ours.recv())
    finally:
        child.terminate()
        child.join()


def server(src: Path, kind: str, upstream: str, port: int, log_dir: Path) -> ws_load.Server:
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); "
        "from tokenwire.cli import main; sys.exit(main())"
    )
    python = str(ws_load.ROOT / ".venv" / "bin" / "python")
    cmd = [python, "-c", code, "serve", "--provider", kind, "--base-url", upstream]
    cmd += ["--model", "m", "--host", "127.0.0.1", "--port", str(port)]
    env = {**LIMITS, "ANTHROPIC_API_KEY": "unused", "OPENAI_API_KEY": "unused"}
    return ws_load.Server(cmd, env, log_dir)


async def one_stream(
    port: int, request: bytes, mark: bytes, delay: float
) -> tuple[float | None, int]:
    """(seconds to the first delta or None, deltas) of one streamed response."""
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(request)
    received = b""
    first = None
    while data := await reader.read(65536):
        received += data
        if first is None and mark in received:
            first = time.perf_counter() - started
        if received.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end
            break
    writer.close()
    return first, received.count(mark)


async def round_of(args: argparse.Namespace, port: int, pid: int) -> dict[str, float]:
    body = json.dumps({"model": args.kind, **BODIES[args.path]}).encode()
    head = (
        f"POST {args.path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    request = head.encode() + body
    before = ws_load.cpu_seconds(pid)
    outcomes = await asyncio.gather(
        *(
            one_stream(port, request, DELTAS[args.path], i / args.streams)
            for i in range(args.streams)
        )
    )
    cpu = ws_load.cpu_seconds(pid) - before
    firsts = sorted(1000 * first for first, _ in outcomes if first is not None)
    deltas = sum(count for _, count in outcomes)
    if len(firsts) < args.streams:
        raise RuntimeError(f"{args.streams - len(firsts)} streams brought no text")
    return {
        "cpu_ms_per_1k": 1e6 * cpu / max(deltas, 1),
        "ttft_p50": firsts[len(firsts) // 2],
        "ttft_p99": firsts[min(len(firsts) - 1, int(0.99 * len(firsts)))],
    }


async def compare(args: argparse.Namespace, upstream: str, sources: dict[str, Path]) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-v1-cpu-"))
    servers: dict[str, tuple[ws_load.Server, int]] = {}
    try:
        for label, src in sources.items():
            port = ws_load.free_port()
            started = server(src, args.kind, upstream, port, log_dir)
            started.start(f"http://127.0.0.1:{port}")
            servers[label] = (started, port)
        warm_up = argparse.Namespace(**{**vars(args), "streams": 10})
        for running, port in servers.values():  # connections, imports, caches
            assert running.pid is not None
            await round_of(warm_up, port, running.pid)
        results: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        for number in range(args.rounds):
            for label, (running, port) in servers.items():
                assert running.pid is not None
                got = await round_of(args, port, running.pid)
                results[label].append(got)
                print(
                    f"round {number} {label:>10}: {got['cpu_ms_per_1k']:6.0f} ms CPU/1k tokens, "
                    f"ttft p50 {got['ttft_p50']:6.1f} p99 {got['ttft_p99']:7.1f} ms",
                    flush=True,
                )
        for label, rounds in results.items():
            medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            print(
                f"median     {label:>10}: {medians['cpu_ms_per_1k']:6.0f} ms CPU/1k tokens, "
                f"ttft p50 {medians['ttft_p50']:6.1f} p99 {medians['ttft_p99']:7.1f} ms"
            )
    finally:
        for running, _ in servers.values():
            running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a git revision")
    parser.add_argument("--after", default=before_after.WORKTREE)
    parser.add_argument("--path", choices=sorted(BODIES), default="/v1/chat/completions")
    parser.add_argument("--kind", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(fake_upstream(args.kind, args.tokens, args.gap_ms / 1000))
        sources = {
            before_after.describe(rev): stack.enter_context(before_after.checked_out(rev))
            for rev in (args.before, args.after)
        }
        asyncio.run(compare(args, upstream, sources))
    return 0


if __name__ == "__main__":
    sys.exit(main())
