"""The per-token cost of the core alone, in one process, no sockets (a benchmark).

N streams of the simulated provider (token granularity, no pause) run through
the gateway into subscribers that do what a WebSocket connection does with each
event (take its frame, queue it in an outbox that a writer task drains). Prints
the process CPU per token (best of --repeat runs) and tokens/s.

`--src DIR` measures the tokenwire in another checkout's `src/` (an older
revision: the script speaks both the current API and the one before the
transport-neutral seam, commit cd1de97). `--instructions` runs two sizes under
valgrind's callgrind and prints instructions per token, a count that does not
depend on what else the machine is doing.

    .venv/bin/python bench/core_path.py
    .venv/bin/python bench/core_path.py --src /tmp/old/src --instructions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _setup(src: Path) -> None:
    sys.path.insert(0, str(src))


async def _run(streams: int, tokens: int) -> float:
    """Process CPU seconds for `streams` x `tokens`."""
    from tokenwire.providers.simulated import SimulatedProvider
    from tokenwire.settings import ProviderSettings, load_settings
    from tokenwire.transports.outbox import Outbox

    provider = SimulatedProvider(ProviderSettings(name="simulated", kind="simulated"))
    settings = load_settings(None, {"providers": [{"name": "simulated", "kind": "simulated"}]})
    seam = _NewSeam(settings, provider) if _has_new_seam() else _OldSeam(settings, provider)

    class Connection:
        def __init__(self) -> None:
            self.outbox = Outbox(1 << 40)

        def deliver(self, record: Any) -> None:
            self.outbox.put(seam.frame(record))
            if record.event_type.value == "stream_end":
                self.outbox.close()

    async def drain(connection: Connection) -> None:
        # `take_all` since the batched writes; `take` (one frame) before.
        outbox: Any = connection.outbox
        take = getattr(outbox, "take_all", None) or outbox.take
        while await take() is not None:
            pass

    connections = [Connection() for _ in range(streams)]
    writers = [asyncio.create_task(drain(c)) for c in connections]
    started = time.process_time()
    for n, connection in enumerate(connections):
        log = await seam.start(f"r{n}", tokens)
        log.subscribe(connection)
    await asyncio.gather(*writers)
    return time.process_time() - started


def _has_new_seam() -> bool:
    try:
        import tokenwire.core.spec  # noqa: F401
    except ImportError:
        return False
    return True


class _NewSeam:
    def __init__(self, settings: Any, provider: Any) -> None:
        from tokenwire.app import gateway_for
        from tokenwire.core.route import ProviderProfile, ProviderSlot
        from tokenwire.transports.frames import ws_frame

        self.gateway = gateway_for(
            settings, {"simulated": ProviderSlot(provider, ProviderProfile())}
        )
        self._ws_frame = ws_frame

    async def start(self, request_id: str, tokens: int) -> Any:
        from tokenwire.core.provider import Message
        from tokenwire.core.spec import Delivery, Generation, RequestSpec
        from tokenwire.protocol.messages import Granularity

        spec = RequestSpec(
            user_id="bench",
            messages=(Message(role="user", content="Explain token streaming."),),
            request_id=request_id,
            generation=Generation(options={"tokens": tokens, "delay_ms": 0}),
            delivery=Delivery(granularity=Granularity.TOKEN),
        )
        return await self.gateway.start(spec)

    def frame(self, record: Any) -> str:
        text: str = record.encoded(self._ws_frame)
        return text


class _OldSeam:
    def __init__(self, settings: Any, provider: Any) -> None:
        from tokenwire.core.request import ProviderSlot  # type: ignore[import-not-found]

        from tokenwire.app import gateway_for

        slot = ProviderSlot(provider, settings.providers[0])
        self.gateway = gateway_for(settings, {"simulated": slot})
        self._session = self.gateway.open_session("bench", {})

    async def start(self, request_id: str, tokens: int) -> Any:
        from tokenwire.protocol.messages import parse_client_message

        message = parse_client_message(
            json.dumps(
                {
                    "type": "ai_request",
                    "prompt": "Explain token streaming.",
                    "request_id": request_id,
                    "config": {"options": {"tokens": tokens, "delay_ms": 0}},
                    "stream_config": {"granularity": "token"},
                }
            )
        )
        return self.gateway.start(self._session, message)

    def frame(self, record: Any) -> str:
        text: str = record.frame
        return text


def _loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def _instructions(args: argparse.Namespace) -> float:
    """Instructions per token: the difference of two callgrind runs over their tokens."""
    small, large = 100, 100 + args.tokens
    counts = []
    for tokens in (small, large):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={tmp}/cg.out",
                    sys.executable,
                    __file__,
                    "--src",
                    str(args.src),
                    "--streams",
                    str(args.streams),
                    "--tokens",
                    str(tokens),
                    "--repeat",
                    "1",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        counts.append(int(re.findall(r"Collected : (\d+)", out.stderr)[-1]))
    return (counts[1] - counts[0]) / (args.streams * (large - small))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--src", type=Path, default=ROOT / "src", help="the tokenwire src/ to measure")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    args = p.parse_args()
    if args.instructions:
        args.streams, args.tokens = min(args.streams, 10), min(args.tokens, 1000)
        per_token = _instructions(args)
        print(f"{args.src}: {per_token:,.0f} instructions per token")
        return 0
    _setup(args.src.resolve())
    os.environ.setdefault("TOKENWIRE_LOGGING__LEVEL", "warning")
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    runner = _loop_runner()
    best = min(runner(_run(args.streams, args.tokens)) for _ in range(args.repeat))
    total = args.streams * args.tokens
    print(
        f"{args.src}: {args.streams} x {args.tokens} tokens, best of {args.repeat}: "
        f"{1e6 * best / total:.2f} us CPU per token, {total / best:,.0f} tokens/s of CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
