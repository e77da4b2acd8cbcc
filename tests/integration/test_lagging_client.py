"""A client that never reads while its streams produce tens of megabytes, against
`tokenwire serve` in a subprocess: the server's memory stays within a fixed bound
(its RSS, from /proc), the connection is aborted after `close_timeout_seconds`,
its streams end after the resume grace, and another client's pings are answered
within 100 ms throughout.

`test_slow_clients.py` holds the mechanics in-process (the 1013 a client that
reads again sees, the abort's timing, the grace counted from the 1013); this
file holds what they are for: bounded memory and nobody else slowed down, under
several flat-out streams, in the real server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.support.process import Process, serving
from tests.support.raw_ws import RawWebSocket
from tests.support.waiting import eventually

KiB, MiB = 1024, 1024 * 1024
STREAMS = 4
SEND_BUFFER = 256 * KiB
LOG_BYTES = 1 * MiB
RETAINED_LOGS = 2 * MiB
CLOSE_TIMEOUT = 2.0
GRACE = 5.0
LIMITS = {
    "TOKENWIRE_LIMITS__MAX_SEND_BUFFER_BYTES": str(SEND_BUFFER),
    "TOKENWIRE_LIMITS__CLOSE_TIMEOUT_SECONDS": str(CLOSE_TIMEOUT),
    "TOKENWIRE_STREAMS__MAX_LOG_BYTES": str(LOG_BYTES),
    "TOKENWIRE_STREAMS__MAX_RETAINED_LOG_BYTES": str(RETAINED_LOGS),
    "TOKENWIRE_STREAMS__RESUME_GRACE_SECONDS": str(GRACE),
}
# What the limits let the lagging connection hold: each running stream's log (its
# bound counts an event's data plus 128 bytes; in memory an event is its string, a
# float and three deque slots, about the same), the outbox (counted in UTF-8 bytes;
# each frame is a str, 49 bytes more, and a deque slot) and the transport's buffer
# (uvicorn waits below the high-water mark, 64 KiB). Finished logs are kept within
# RETAINED_LOGS, under what the running ones held. Twice that for object headers and
# allocator rounding, and 8 MiB for what CPython's and the C allocator keep of the
# per-token churn (arenas not given back, objects waiting for a collection).
HELD = STREAMS * LOG_BYTES + SEND_BUFFER + 64 * KiB
MEMORY_BOUND = 2 * HELD + 8 * MiB
PING_BOUND = 0.1
SAMPLE_EVERY = 0.05
WARM_UP_TOKENS = 500


def flood(n: int) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": f"flood {n}",
        "request_id": f"flood-{n}",
        "stream_config": {"granularity": "token"},
        "config": {"timeout": 60, "options": {"tokens": 1_000_000, "delay_ms": 0}},
    }


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


def sockets(pid: int) -> set[str]:
    """The server process's sockets, by inode."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:"):
                found.add(target)
    return found


class LogLines:
    """The server's JSON log lines as they come (read all along, so that the server
    never blocks on a full pipe), each with the monotonic time it was read."""

    def __init__(self, process: Process) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._task = asyncio.create_task(self._read(process))

    async def _read(self, process: Process) -> None:
        with contextlib.suppress(EOFError):
            while True:
                text = await process.line(timeout=3600)
                with contextlib.suppress(ValueError):
                    self.lines.append((time.monotonic(), json.loads(text)))

    def of(self, event: str, **fields: Any) -> list[tuple[float, dict[str, Any]]]:
        return [
            (at, line)
            for at, line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        ]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Samples:
    round_trips: list[float] = field(default_factory=list)
    peak_rss: int = 0


async def ping(ws: ClientConnection) -> float:
    """The round trip of the protocol's ping; a second without its pong fails the test."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(1):
            await ws.send(json.dumps({"type": "ping", "timestamp": started}))
            while json.loads(await ws.recv()).get("type") != "pong":
                pass
    except TimeoutError:
        raise AssertionError("a ping went unanswered for a second") from None
    return time.perf_counter() - started


async def sample(
    ws: ClientConnection, pid: int, bound: int, samples: Samples, stop: asyncio.Event
) -> None:
    """Every ~50 ms until `stop`: a ping's round trip and the server's RSS, each
    checked as it is taken, so that a breach ends the test at once."""
    while not stop.is_set():
        started = time.monotonic()
        samples.round_trips.append(await ping(ws))
        samples.peak_rss = max(samples.peak_rss, rss(pid))
        assert samples.peak_rss <= bound, f"RSS {samples.peak_rss / MiB:.1f} MiB past the bound"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                stop.wait(), max(0.0, SAMPLE_EVERY - (time.monotonic() - started))
            )


async def bytes_per_token(ws: ClientConnection) -> float:
    """A short stream read in full: wire bytes of its frames per token (progress
    and the other events included), and a warm server for the baseline."""
    await ws.send(
        json.dumps(
            {
                **flood(0),
                "request_id": "warm-up",
                "config": {"options": {"tokens": WARM_UP_TOKENS, "delay_ms": 0}},
            }
        )
    )
    total = 0
    while True:
        frame = await ws.recv()
        total += len(frame)
        if json.loads(frame).get("event_type") == "stream_end":
            return total / WARM_UP_TOKENS


async def test_a_client_that_never_reads_costs_bounded_memory_and_slows_no_one() -> None:
    async with serving("--provider", "simulated", env=LIMITS) as server:
        pid, port = server.proc.pid, int(server.url.rsplit(":", 1)[1])
        logs = LogLines(server)
        ws_url = server.url.replace("http", "ws", 1) + "/ws/ai-stream"
        async with connect(ws_url + "?user_id=watcher") as watcher:
            await watcher.recv()  # connection_status
            per_token = await bytes_per_token(watcher)
            baseline = rss(pid)
            samples, stop = Samples(peak_rss=baseline), asyncio.Event()

            # given a client that sends its requests and then never reads
            before = sockets(pid)
            laggard = await RawWebSocket.connect(
                port, path="/ws/ai-stream?user_id=laggard", receive_buffer=4096
            )
            await eventually(lambda: len(sockets(pid) - before) == 1, 5)
            (its_socket,) = sockets(pid) - before
            for n in range(STREAMS):
                await laggard.send_text(json.dumps(flood(n)).encode())
            flooded = time.monotonic()

            async def story() -> tuple[float, float, float]:
                # when its send buffer overflows, it is closed (1013)...
                await eventually(lambda: logs.of("closing connection"), 20)
                overflowed = logs.of("closing connection")[0][0]
                # ...and aborted after the close timeout, since it never reads
                await eventually(lambda: its_socket not in sockets(pid), CLOSE_TIMEOUT + 5)
                aborted = time.monotonic()
                # its streams run on into their logs for the grace, then end
                await eventually(lambda: len(ended()) == STREAMS, GRACE + 10)
                stop.set()
                return overflowed, aborted, ended()[-1][0]

            def ended() -> list[tuple[float, dict[str, Any]]]:
                return logs.of("stream ended", user_id="laggard")

            async with asyncio.TaskGroup() as group:
                group.create_task(sample(watcher, pid, baseline + MEMORY_BOUND, samples, stop))
                timeline = group.create_task(story())
            overflowed, aborted, streams_ended = timeline.result()
            laggard.abort()
        async with httpx.AsyncClient(base_url=server.url) as http:
            stats = (await http.get("/api/streaming/stats")).json()
        await logs.close()

    (_, closing), *_ = logs.of("closing connection")
    assert closing["reason"] == "client too slow: send buffer overflow"
    assert CLOSE_TIMEOUT - 0.3 < aborted - overflowed < CLOSE_TIMEOUT + 1.5
    ends = [line for _, line in ended()]
    assert {line["status"] for line in ends} == {"cancelled"}
    assert {line["reason"] for line in ends} == {"nobody re-attached within the resume grace"}
    produced = stats["users"]["laggard"]["completion_tokens"] * per_token
    assert produced > 20 * MiB, f"only {produced / MiB:.1f} MiB produced"

    growth = samples.peak_rss - baseline
    trips = sorted(samples.round_trips)
    duration = streams_ended - flooded
    print(
        f"\n{STREAMS} streams produced {produced / MiB:.0f} MiB in {duration:.1f} s;"
        f" peak RSS growth {growth / MiB:.2f} MiB (bound {MEMORY_BOUND / MiB:.2f} MiB)"
        f"\nping round trips, {len(trips)} samples: median {statistics.median(trips) * 1e3:.2f}"
        f" ms, p90 {trips[int(len(trips) * 0.9)] * 1e3:.2f}, p99"
        f" {trips[int(len(trips) * 0.99)] * 1e3:.2f}, max {trips[-1] * 1e3:.2f} ms"
    )
    assert growth <= MEMORY_BOUND
    assert len(trips) >= duration / SAMPLE_EVERY / 2, "pings were not sampled all along"
    assert trips[-1] < PING_BOUND, trips[-10:]
