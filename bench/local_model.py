"""Part (5) of `make bench`: the local model through the gateway against llama.cpp called directly.

    .venv/bin/python -m bench.local_model [--quick] [--runs 5] [--max-tokens 128]
        [--threads N] [--extra-buffers auto|on|off] [--model-path FILE.gguf]
        [--busy] [--wait-quiet SECONDS] [--save]

Two processes hold the same model file with the same llama.cpp threads, context and CPU
buffers: `tokenwire serve` with one `local` provider (prompt format `plain`), asked over its
WebSocket (`granularity: token`), and a child process that calls llama-cpp-python's own
`Llama.generate` loop, with no gateway at all. They take turns, run by run, on the same
prompt with the same sampling (temperature 0), so that the machine's other load falls on
both alike; each answers one untimed warm-up first. For each side it prints the medians of
the time to first token (from sending the request, or calling the library, to the first
text in hand) and of the generation speed (tokens after the first, over the time from the
first to the last), and the gateway's added time to first token in per cent of the direct
one: the issue's targets are at least 80 tokens/s through the gateway and under 5% added.

Without `--threads` and `--extra-buffers`, both sides use the provider's defaults (the usable
CPUs but one; llama.cpp's extra CPU buffers where no CPU advertises AMX: see
`tokenwire/providers/cpus.py`). `--model-path` measures another GGUF file on both sides. `--quick`
(2 runs x 16 tokens) only checks that it works. `--busy` keeps one core busy with another
process meanwhile (a neighbour on a shared machine, or the gateway's other streams).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a file: the checkout's root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import llama_cpp
from bench import report
from websockets.asyncio.client import ClientConnection, connect

from tokenwire.providers.cpus import default_threads
from tokenwire.providers.local import choose_extra_buffers

PROMPT = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
N_CTX = 2048
# The provider's defaults (`SamplingOptions`), given to the direct side too.
SAMPLING: dict[str, Any] = {"top_k": 40, "top_p": 0.95, "repeat_penalty": 1.1}
TARGET_TOKENS_PER_S = 80.0
TARGET_ADDED_TTFT_PCT = 5.0

Buffers = bool | Literal["auto"]


@dataclass(frozen=True)
class Setup:
    runs: int = 5
    max_tokens: int = 128
    threads: int | None = None
    extra_buffers: Buffers = "auto"
    wait_quiet_s: float = 0.0
    # another GGUF file instead of the packaged model (both sides)
    model_path: Path | None = None
    # one core held by a busy loop meanwhile (a neighbour, or the gateway's other streams)
    busy: bool = False


@dataclass(frozen=True)
class Run:
    ttft_s: float
    tokens_per_s: float
    tokens: int
    prompt_tokens: int
    # CPU of the whole process that served the run (every thread), per generated token
    cpu_ms_per_token: float = 0.0


# -- llama.cpp called directly, in a child process ---------------------------------


def serve_direct(
    pipe: Connection, threads: int, extra_buffers: bool, model_path: Path | None
) -> None:
    """The child: load the model as the provider does, then answer ("run", max_tokens)."""
    from tokenwire.providers.gguf_package import packaged_model_path
    from tokenwire.providers.llama_library import open_model

    llama_cpp.llama_log_set(_silent, ctypes.c_void_p(0))  # the gateway's are off too (warning)
    # The provider's loader (no descriptors redirected), with the same parameters.
    path = model_path or packaged_model_path()
    llm = open_model(path, n_ctx=N_CTX, threads=threads, extra_buffers=extra_buffers)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    pipe.send("ready")
    while True:
        message = pipe.recv()
        if message is None:
            llm.close()
            return
        pipe.send(asdict(direct_run(llm, vocab, int(message))))


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silent(level: int, text: bytes, user_data: Any) -> None:
    pass


def direct_run(llm: Any, vocab: Any, max_tokens: int) -> Run:
    started, cpu = time.perf_counter(), time.process_time()
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    llm.reset()  # from an empty cache, as the provider evaluates every prompt afresh
    first = last = 0.0
    count = 0
    for token in llm.generate(prompt, temp=0.0, **SAMPLING):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.detokenize([token])  # a caller wants text, not token ids
        last = time.perf_counter()
        first = first or last
        count += 1
        if count >= max_tokens:
            break
    if count == 0:
        raise RuntimeError("llama.cpp generated nothing")
    cpu_ms = (time.process_time() - cpu) * 1000 / count
    return Run(first - started, rate(count, first, last), count, len(prompt), cpu_ms)


def rate(tokens: int, first: float, last: float) -> float:
    """Tokens after the first over the time from the first to the last."""
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


class Direct:
    def __init__(self, threads: int, extra_buffers: bool, model_path: Path | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        self.process = context.Process(
            target=serve_direct, args=(theirs, threads, extra_buffers, model_path), daemon=True
        )
        self.process.start()
        if not self._pipe.poll(120) or self._pipe.recv() != "ready":
            raise RuntimeError("llama.cpp's child process did not load the model")

    def run(self, max_tokens: int) -> Run:
        self._pipe.send(max_tokens)
        if not self._pipe.poll(300):
            raise RuntimeError("llama.cpp's child process did not answer")
        return Run(**self._pipe.recv())

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._pipe.send(None)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


# -- the same model through `tokenwire serve` ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(
    threads: int, extra_buffers: bool, max_tokens: int, model_path: Path | None
) -> str:
    path = f"model_path = {json.dumps(str(model_path))}, " if model_path else ""
    return (
        "[[providers]]\n"
        'name = "local"\nkind = "local"\n'
        f"options = {{ {path}threads = {threads}, "
        f"extra_buffers = {str(extra_buffers).lower()}, "
        f'prompt_format = "plain", n_ctx = {N_CTX}, max_tokens = {max_tokens} }}\n'
    )


class Gateway:
    def __init__(self, root: Path, config: Path) -> None:
        port = free_port()
        env = {
            **os.environ,
            "TOKENWIRE_LOGGING__LEVEL": "warning",
            "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, "-m", "tokenwire", "serve", "--config", str(config)]
        self.process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.close()
        raise RuntimeError("the gateway did not start")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def gateway_run(ws: ClientConnection, max_tokens: int, pid: int) -> Run:
    request = {
        "type": "ai_request",
        "prompt": PROMPT,
        "config": {"provider": "local", "max_tokens": max_tokens, "temperature": 0},
        "stream_config": {"granularity": "token", "progress_every": 0},
    }
    started, cpu = time.perf_counter(), process_cpu_seconds(pid)
    await ws.send(json.dumps(request))
    first = last = 0.0
    while True:
        frame = json.loads(await ws.recv())
        kind = frame.get("event_type")
        if kind == "token":
            last = time.perf_counter()
            first = first or last
        elif kind == "error":
            raise RuntimeError(f"gateway error: {frame.get('data')}")
        elif kind == "stream_end":
            data = frame["data"]
            if data.get("status") != "completed" or not first:
                raise RuntimeError(f"the gateway's stream did not complete: {data}")
            usage = data["usage"]
            tokens = int(usage["completion_tokens"])
            cpu_ms = (process_cpu_seconds(pid) - cpu) * 1000 / tokens
            prompt_tokens = int(usage["prompt_tokens"])
            return Run(first - started, rate(tokens, first, last), tokens, prompt_tokens, cpu_ms)


# -- measuring ------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """CPU of a process's live threads so far, in nanoseconds' resolution (0 once gone)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        return 0.0
    return total / 1e9


def wait_quiet(longest: float, threshold: float = 0.3) -> float:
    """Wait up to `longest` seconds for the other load to drop under `threshold` cores."""
    deadline = time.monotonic() + longest
    while True:
        busy, own = machine_busy_seconds(), time.process_time()
        time.sleep(1.0)
        load = machine_busy_seconds() - busy - (time.process_time() - own)
        if load < threshold or time.monotonic() > deadline:
            return round(load, 2)


async def alternate(
    setup: Setup, ws: ClientConnection, direct: Direct, pids: list[int]
) -> tuple[list[Run], list[Run], float]:
    """The two sides in turn, `setup.runs` each, after one warm-up each; and the cores
    busy meanwhile with anything but these processes (rough: /proc/stat's tick)."""
    pid = pids[0]
    await gateway_run(ws, 8, pid)
    direct.run(8)
    gateway: list[Run] = []
    plain: list[Run] = []

    def ours() -> float:
        return time.process_time() + sum(process_cpu_seconds(pid) for pid in pids)

    busy, own, wall = machine_busy_seconds(), ours(), time.monotonic()
    for number in range(setup.runs):
        # Who goes first alternates too: a run just after the other side's may find
        # the caches cold or the CPU's clock changed.
        if number % 2 == 0:
            gateway.append(await gateway_run(ws, setup.max_tokens, pid))
            plain.append(direct.run(setup.max_tokens))
        else:
            plain.append(direct.run(setup.max_tokens))
            gateway.append(await gateway_run(ws, setup.max_tokens, pid))
    other = (machine_busy_seconds() - busy - (ours() - own)) / (time.monotonic() - wall)
    return gateway, plain, max(0.0, other)


@contextlib.contextmanager
def neighbour(busy: bool) -> Iterator[None]:
    """With `busy`, another process keeps one core busy meanwhile."""
    if not busy:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        process.kill()
        process.wait()


def measure(setup: Setup, root: Path) -> dict[str, Any]:
    threads = setup.threads or default_threads(1)
    buffers = choose_extra_buffers(setup.extra_buffers)
    quiet = wait_quiet(setup.wait_quiet_s) if setup.wait_quiet_s > 0 else None
    with tempfile.TemporaryDirectory() as tmp, neighbour(setup.busy):
        config = Path(tmp) / "tokenwire.toml"
        config.write_text(gateway_config(threads, buffers, setup.max_tokens, setup.model_path))
        gateway = Gateway(root, config)
        try:
            direct = Direct(threads, buffers, setup.model_path)
            try:
                ws_url = gateway.url.replace("http", "ws", 1) + "/ws/ai-stream"

                async def session() -> tuple[list[Run], list[Run], float]:
                    async with connect(ws_url, max_size=2**24, ping_interval=None) as ws:
                        await ws.recv()  # connection_status
                        pids = [gateway.process.pid, direct.process.pid or 0]
                        return await alternate(setup, ws, direct, pids)

                through, plain, other = asyncio.run(session())
            finally:
                direct.close()
        finally:
            gateway.close()
    return {
        "threads": threads,
        "extra_buffers": buffers,
        "runs": setup.runs,
        "max_tokens": setup.max_tokens,
        "model_path": str(setup.model_path) if setup.model_path else None,
        "busy": setup.busy,
        "other_load_cores": round(other, 2),
        "other_load_before_cores": quiet,
        "gateway": [asdict(r) for r in through],
        "direct": [asdict(r) for r in plain],
    }


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(data: dict[str, Any], quick: bool) -> report.Part:
    ttft = {side: median(data[side], "ttft_s") * 1000 for side in ("gateway", "direct")}
    speed = {side: median(data[side], "tokens_per_s") for side in ("gateway", "direct")}
    cpu = {side: median(data[side], "cpu_ms_per_token") for side in ("gateway", "direct")}
    added_ms = ttft["gateway"] - ttft["direct"]
    added_pct = 100 * added_ms / ttft["direct"] if ttft["direct"] else None
    data["medians"] = {
        "ttft_ms": ttft,
        "tokens_per_s": speed,
        "cpu_ms_per_token": cpu,
        "added_ttft_ms": added_ms,
    }
    table = [["path", "ttft ms", "tokens/s", "CPU ms/token", "tokens", "prompt tokens"]]
    for side, title in (
        ("direct", "llama.cpp called directly"),
        ("gateway", "through the gateway (WebSocket)"),
    ):
        table.append(
            [
                title,
                report.fmt(ttft[side], 1),
                report.fmt(speed[side], 1),
                report.fmt(cpu[side], 2),
                str(data[side][0]["tokens"]),
                str(data[side][0]["prompt_tokens"]),
            ]
        )
    buffers = (
        "extra CPU buffers (weight repacking)" if data["extra_buffers"] else "no extra CPU buffers"
    )
    held = "; one core held by a busy loop" if data["busy"] else ""
    notes = [
        f"{data['runs']} runs x {data['max_tokens']} tokens per side, alternating, "
        "after a warm-up each; "
        f"{data['threads']} llama.cpp thread(s), {buffers}, temperature 0{held}",
        "medians; CPU is the serving process's, all threads (the gateway's event loop too)",
        f"gateway's added time to first token: {added_ms:+.1f} ms",
        f"other load meanwhile: {data['other_load_cores']:.2f} cores (rough; anything above ~0.2 "
        "makes these figures pessimistic)",
    ]
    remark = "quick run: few tokens, not a measurement" if quick else ""
    targets = [
        report.Target(
            "local model tokens/s through the gateway",
            round(speed["gateway"], 1),
            TARGET_TOKENS_PER_S,
            "higher",
            remark=remark or f"llama.cpp alone: {speed['direct']:.1f}",
        ),
        report.Target(
            "gateway's added time to first token (local model)",
            None if added_pct is None else round(added_pct, 2),
            TARGET_ADDED_TTFT_PCT,
            "lower",
            unit="%",
            remark=remark or f"{added_ms:+.1f} ms on {ttft['direct']:.1f} ms",
        ),
    ]
    return report.Part(
        key="local_model",
        title="(5) The local model: through the gateway against llama.cpp called directly",
        table=table,
        targets=targets,
        data=data,
        notes=notes,
    )


def run(options: report.Options, setup: Setup | None = None) -> report.Part:
    """The suite's entry point."""
    if setup is None:
        setup = Setup(wait_quiet_s=options.wait_quiet_s)
    if options.quick:
        setup = Setup(
            runs=2,
            max_tokens=16,
            threads=setup.threads,
            extra_buffers=setup.extra_buffers,
            wait_quiet_s=0.0,
            model_path=setup.model_path,
            busy=setup.busy,
        )
    return summarise(measure(setup, options.root), options.quick)


def parse_buffers(value: str) -> Buffers:
    choices: dict[str, Buffers] = {"auto": "auto", "on": True, "off": False}
    if value not in choices:
        raise argparse.ArgumentTypeError("auto, on or off")
    return choices[value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs x 16 tokens: does it work?")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--extra-buffers", type=parse_buffers, default="auto", metavar="auto|on|off"
    )
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--model-path", type=Path, default=None, help="another GGUF file")
    parser.add_argument("--busy", action="store_true", help="hold one core busy meanwhile")
    parser.add_argument("--save", action="store_true", help="JSON to bench/results/")
    args = parser.parse_args()
    options = report.Options(quick=args.quick, wait_quiet_s=args.wait_quiet)
    setup = Setup(
        args.runs,
        args.max_tokens,
        args.threads,
        args.extra_buffers,
        args.wait_quiet,
        args.model_path,
        args.busy,
    )
    part = run(options, setup)
    print(report.format_part(part))
    if args.save:
        path = report.RESULTS / f"local_model-{time.strftime('%Y%m%d-%H%M%S')}.json"
        report.dump(path, {"machine": report.machine(), "part": part})
        print(f"\nsaved: {path}")


if __name__ == "__main__":
    main()
