"""Part (3) of `make bench`: tokenwire against LiteLLM's proxy on `/v1/chat/completions`.

    make litellm   # once: LiteLLM's proxy (pinned) in .venv-litellm
    python bench/litellm_compare.py [--quick]

One fake upstream (bench/fast_upstream.py, 50 tokens 20 ms apart), LiteLLM's proxy and
`tokenwire serve` in front of it, and the same client (bench/stream_load.py) streaming
`/v1/chat/completions` from each and from the upstream directly, at 1, 16 and 100
concurrent streams (each a keep-alive connection sending requests one after the other).
Prints the added time to first token (p50, p99) of each gateway, and each one's CPU per
1,000 tokens (LiteLLM's whole process tree), with the fake upstream's own for reference.
Without `.venv-litellm` the part says so and measures tokenwire alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import report
import stream_load
import upstream_stack
import ws_load
from fast_upstream import Upstream
from report import Options, Part, Target, fmt
from stream_load import CHAT, Plan

KEY = "litellm_compare"
MASTER_KEY = "sk-litellm-bench-master"
MODEL = "fake"
# It imports a great deal before it listens: about 40 s on a busy 2-core machine.
START_TIMEOUT = 180.0
CPU_RATIO_LIMIT = 10.0


def litellm_path(root: Path) -> Path:
    return root / ".venv-litellm" / "bin" / "litellm"


class LiteLLM:
    """LiteLLM's proxy (one worker, as it starts by default) forwarding `MODEL` to the upstream."""

    def __init__(self, root: Path, upstream_url: str, log_dir: Path) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="tokenwire-bench-litellm-")
        config = Path(self._folder.name) / "config.yaml"
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
        port = ws_load.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"litellm-{int(time.time())}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(litellm_path(root)),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"LiteLLM exited {self.proc.returncode}:\n{tail}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(self.url + "/health/liveliness", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.5)  # polling a process that gives no other sign
        self.stop()
        raise RuntimeError(
            f"LiteLLM did not listen within {START_TIMEOUT:.0f} s; log {self.log_path}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self._folder.cleanup()


@dataclass(frozen=True)
class Level:
    streams: int
    each: int


def levels(quick: bool) -> list[Level]:
    if quick:
        return [Level(1, 2), Level(16, 1)]
    return [Level(1, 10), Level(16, 3), Level(100, 1)]


async def measure(options: Options) -> Part:
    tokens, gap_ms = (20, 20.0) if options.quick else (50, 20.0)
    stream_load.raise_fd_limit(200)
    log_dir = report.RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    upstream = Upstream(tokens, gap_ms)
    tokenwire: upstream_stack.Tokenwire | None = None
    litellm: LiteLLM | None = None
    try:
        tokenwire = upstream_stack.Tokenwire(options.root, upstream.url, log_dir)
        if not litellm_path(options.root).exists():
            notes.append(
                f"LiteLLM's proxy is not installed ({litellm_path(options.root)}): run "
                "`make litellm` first; its figures and the targets against it are not measured"
            )
        else:
            try:
                litellm = LiteLLM(options.root, upstream.url, log_dir)
            except RuntimeError as exc:
                notes.append(f"LiteLLM's proxy did not start: {str(exc)[:300]}")
        gateways: dict[str, tuple[str, str, dict[str, str], int]] = {
            "direct": (upstream.url, "m", {}, upstream.pid),
            "tokenwire": (tokenwire.url, upstream_stack.OPENAI_PROVIDER, {}, tokenwire.pid),
        }
        if litellm is not None:
            gateways["litellm"] = (
                litellm.url,
                MODEL,
                {"Authorization": f"Bearer {MASTER_KEY}"},
                litellm.pid,
            )
        pids = {name: pid for name, (_, _, _, pid) in gateways.items()}
        pids["upstream"] = pids.pop("direct")
        for name, (url, model, headers, _) in gateways.items():
            if name != "direct":
                await stream_load.run_http(url, CHAT, model, Plan(4, each=2), tokens, {}, headers)
        runs: list[dict[str, Any]] = []
        for level in levels(options.quick):
            plan = Plan(level.streams, each=level.each)
            if options.wait_quiet_s:
                await ws_load.wait_quiet(0.3, options.wait_quiet_s)
            for name, (url, model, headers, _) in gateways.items():
                await asyncio.sleep(0.5)
                # Only the measured server's CPU and the upstream's: the other gateway idles.
                counted = {k: v for k, v in pids.items() if k in (name, "upstream")}
                outcome = await stream_load.run_http(
                    url, CHAT, model, plan, tokens, counted, headers
                )
                runs.append(
                    {
                        "streams": level.streams,
                        "each": level.each,
                        "server": name,
                        **asdict(outcome),
                    }
                )
    finally:
        for server in (litellm, tokenwire, upstream):
            if server is not None:
                server.stop()
    return part(options, tokens, gap_ms, runs, notes, litellm is not None)


def _added(runs: list[dict[str, Any]], streams: int, server: str, key: str) -> float | None:
    def ttft(name: str) -> float | None:
        run = next((r for r in runs if r["streams"] == streams and r["server"] == name), None)
        if run is None or run["errors"] or key not in run["ttft_ms"]:
            return None
        value: float = run["ttft_ms"][key]
        return value

    mine, direct = ttft(server), ttft("direct")
    return None if mine is None or direct is None else round(mine - direct, 3)


def _cpu_per_1k(run: dict[str, Any], process: str) -> float | None:
    seconds: float | None = run["cpu_s"].get(process)
    tokens: int = run["tokens"]
    if seconds is None or not tokens:
        return None
    return round(seconds / tokens * 1e6, 1)


def part(
    options: Options,
    tokens: int,
    gap_ms: float,
    runs: list[dict[str, Any]],
    notes: list[str],
    with_litellm: bool,
) -> Part:
    table = [
        [
            "server",
            "streams",
            "ttft p50",
            "ttft p99",
            "added p50",
            "added p99",
            "srv ms/1k tok",
            "upstream ms/1k tok",
            "errors",
        ]
    ]
    for run in runs:
        server = run["server"]
        table.append(
            [
                server,
                str(run["streams"]),
                fmt(run["ttft_ms"].get("p50")),
                fmt(run["ttft_ms"].get("p99")),
                "-" if server == "direct" else fmt(_added(runs, run["streams"], server, "p50")),
                "-" if server == "direct" else fmt(_added(runs, run["streams"], server, "p99")),
                "-" if server == "direct" else fmt(_cpu_per_1k(run, server)),
                fmt(_cpu_per_1k(run, "upstream")),
                str(run["errors"]),
            ]
        )
    notes = [
        f"/v1/chat/completions, {tokens} tokens {gap_ms:g} ms apart per stream "
        "(bench/fast_upstream.py); times in ms; added = through the gateway minus the upstream "
        "called directly by the same client",
        "srv ms/1k tok: the gateway's CPU (LiteLLM: its process tree) during the run per 1,000 "
        "tokens delivered",
        *notes,
        *[f"{r['server']} x{r['streams']}: {r['error_samples'][:2]}" for r in runs if r["errors"]],
    ]
    return Part(
        key=KEY,
        title="tokenwire against LiteLLM's proxy (/v1/chat/completions, same upstream and client)",
        table=table,
        targets=targets(options, runs, with_litellm),
        data={"machine": report.machine(), "tokens": tokens, "gap_ms": gap_ms, "runs": runs},
        notes=notes,
    )


def targets(options: Options, runs: list[dict[str, Any]], with_litellm: bool) -> list[Target]:
    remark = "" if with_litellm else "LiteLLM not installed or not started (`make litellm`)"
    if options.quick and with_litellm:
        remark = "quick run: tiny sizes"

    def cpu(server: str) -> float | None:
        # over every level together: the steadiest figure
        used = sum(r["cpu_s"].get(server, 0.0) for r in runs if r["server"] == server)
        delivered = sum(r["tokens"] for r in runs if r["server"] == server)
        return used / delivered * 1e6 if delivered and used else None

    mine, theirs = cpu("tokenwire"), cpu("litellm")
    ratio = round(theirs / mine, 2) if mine and theirs else None
    found = [
        Target(
            "LiteLLM's CPU per token / tokenwire's",
            ratio,
            CPU_RATIO_LIMIT,
            "higher",
            "x",
            remark or f"tokenwire {fmt(mine)} ms, LiteLLM {fmt(theirs)} ms per 1,000 tokens",
        )
    ]
    for level in levels(options.quick):
        theirs_added = _added(runs, level.streams, "litellm", "p99")
        mine_added = (
            _added(runs, level.streams, "tokenwire", "p99") if theirs_added is not None else None
        )
        found.append(
            Target(
                f"added TTFT p99 at {level.streams} streams, tokenwire (limit: LiteLLM's)",
                mine_added,
                theirs_added if theirs_added is not None else 0.0,
                "lower",
                " ms",
                remark,
            )
        )
    return found


def run(options: Options) -> Part:
    result: Part = stream_load.uvloop_runner()(measure(options))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that the part runs"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="seconds to wait for a quiet machine per level",
    )
    args = parser.parse_args()
    result = run(Options(quick=args.quick, wait_quiet_s=args.wait_quiet))
    print(report.format_part(result))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report.dump(report.RESULTS / f"{stamp}-{KEY}.json", result)


if __name__ == "__main__":
    main()
