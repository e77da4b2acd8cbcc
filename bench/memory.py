"""Memory held per stream waiting in its resume grace, and per finished log kept.

    .venv/bin/python bench/memory.py [--streams 500] [--tokens 200]

In one process, through the gateway and the simulated provider, measured with
tracemalloc (Python allocations, after a full collection):

- in grace: N streams are started and followed, produce `--tokens` token events
  each, then lose their follower (a dropped connection) and wait in the grace;
  the figure is what the process holds for them, per stream, over what it held
  before they started;
- kept: the same N requests run to their end and their logs are retained for
  re-attaching; the figure is what the retained logs hold, per log.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from collections.abc import Callable

from tokenwire.app import gateway_for
from tokenwire.core.provider import Message
from tokenwire.core.route import ProviderProfile, ProviderSlot
from tokenwire.core.spec import Delivery, Generation, RequestSpec
from tokenwire.protocol.messages import Granularity
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.settings import ProviderSettings, load_settings


def held() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the streams did not get there")
        await asyncio.sleep(0.01)


async def settled(progress: Callable[[], int]) -> None:
    """Until `progress()` stops changing for a few polls."""
    last, still = -1, 0
    while still < 5:
        await asyncio.sleep(0.05)
        now = progress()
        still = still + 1 if now == last else 0
        last = now


class Follower:
    def __init__(self) -> None:
        self.events = 0

    def deliver(self, record: object) -> None:
        self.events += 1


async def measure(streams: int, tokens: int, granularity: Granularity) -> tuple[float, float]:
    settings = load_settings(
        None,
        {
            "providers": [{"name": "simulated", "kind": "simulated"}],
            "streams": {"resume_grace_seconds": 3600, "log_retention_seconds": 3600},
        },
    )
    provider = SimulatedProvider(ProviderSettings(name="simulated", kind="simulated"))
    gateway = gateway_for(settings, {"simulated": ProviderSlot(provider, ProviderProfile())})
    before = held()
    logs = []
    for n in range(streams):
        spec = RequestSpec(
            user_id="bench",
            request_id=f"r{n}",
            messages=(Message(role="user", content="Tell me how streaming works."),),
            # The answer stalls after `tokens`: the stream stays open, waiting.
            generation=Generation(
                options={"tokens": tokens + 1, "delay_ms": 0, "stall_after": tokens}
            ),
            delivery=Delivery(granularity=granularity, progress_every=0),
        )
        log = await gateway.start(spec)
        follower = Follower()
        log.subscribe(follower)
        gateway.add_follower(log.key, f"f{n}")
        logs.append((log, follower))
    await settled(lambda: sum(log.last_seq for log, _ in logs))  # every answer has stalled
    for n, (log, follower) in enumerate(logs):
        log.unsubscribe(follower)
        gateway.remove_follower(log.key, f"f{n}", "lost", lost=True)
    assert gateway.in_grace == streams
    in_grace = (held() - before) / streams

    for log, _ in logs:
        gateway.cancel(log.key)
    await until(lambda: not gateway.running)
    logs.clear()
    kept = (held() - before) / streams
    await gateway.shutdown(1)
    return in_grace, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    tracemalloc.start()
    for granularity in (Granularity.TOKEN, Granularity.CHUNK):
        in_grace, kept = asyncio.run(measure(args.streams, args.tokens, granularity))
        print(
            f"{granularity.value:>5} events, {args.tokens} tokens each, {args.streams} streams: "
            f"{in_grace / 1024:.1f} KiB per stream in its grace, "
            f"{kept / 1024:.1f} KiB per finished log kept"
        )


if __name__ == "__main__":
    main()
