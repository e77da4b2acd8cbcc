"""Memory per idle WebSocket connection, tokenwire against bench/relay.py, and where it goes.

RSS (bench/capacity.py's part (a) alone): the server's RSS after N greeted, idle clients,
minus before, over N. With --sites, a second run per server under tracemalloc (frames
kept: 25) says which lines allocated what the idle connections hold, per connection,
grouped by the innermost line of tokenwire, Starlette, FastAPI or structlog (or of the
relay) that the server's call into the app led to; the server's own protocol objects
(uvicorn, websockets) show as one line, about the same for both.

    .venv/bin/python bench/idle_memory.py --connections 2000
    .venv/bin/python bench/idle_memory.py --connections 500 --sites 25 --only tokenwire
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capacity
import servers
import ws_load

OWNED = ("tokenwire/", "starlette/", "fastapi/", "structlog/", "relay.py")
WARM_UP = 20  # connections made before the first snapshot: one-off caches stay out


def serve_traced(target: str, port: int, snapshots: Path) -> int:
    """The server, in this process: SIGUSR2 starts tracemalloc (after start-up, which it
    would slow down tenfold), each SIGUSR1 writes a snapshot to `snapshots`/<n>.snap."""
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        gc.collect()
        tracemalloc.take_snapshot().dump(str(snapshots / f"{taken}.snap.part"))
        os.rename(snapshots / f"{taken}.snap.part", snapshots / f"{taken}.snap")
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, lambda signum, frame: tracemalloc.start(25))
    if target == "relay":
        import relay

        return relay.main(["--port", str(port)])
    from tokenwire.cli import main

    return main(["serve", "--provider", "simulated", "--host", "127.0.0.1", "--port", str(port)])


async def sites(target: str, count: int, top: int) -> None:
    snapshots = Path(tempfile.mkdtemp(prefix="tokenwire-idle-"))
    port = ws_load.free_port()
    cmd = [sys.executable, __file__, "--serve-traced", target, str(port), str(snapshots)]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env={**os.environ, **servers.LOAD_ENV},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await _until_listening(port)
        proc.send_signal(signal.SIGUSR2)
        warm, _ = await capacity.connect_idle(url, WARM_UP)
        await asyncio.sleep(capacity.IDLE_SETTLE_S)
        before = await _snapshot(proc, snapshots / "0.snap")
        clients, failed = await capacity.connect_idle(url, count)
        await asyncio.sleep(capacity.IDLE_SETTLE_S)
        after = await _snapshot(proc, snapshots / "1.snap")
        await asyncio.gather(*(c.close(5) for c in clients + warm))
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    n = len(clients)
    if not n:
        print(f"{target}: no connection opened ({failed} failed)")
        return
    stats = after.compare_to(before, "traceback")
    print(f"{target}: {sum(s.size_diff for s in stats) / n / 1024:.2f} KB per idle connection")
    grouped: dict[str, list[int]] = {}
    for stat in stats:
        site = _site(stat.traceback)
        total = grouped.setdefault(site, [0, 0])
        total[0] += stat.size_diff
        total[1] += stat.count_diff
    for site, (size, blocks) in sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {size / n:7.0f} B {blocks / n:6.2f} blocks  {site}")


async def _until_listening(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise RuntimeError("the server did not listen within 60 s")


async def _snapshot(proc: asyncio.subprocess.Process, path: Path) -> tracemalloc.Snapshot:
    proc.send_signal(signal.SIGUSR1)
    return await asyncio.to_thread(_load_when_written, path)


def _load_when_written(path: Path) -> tracemalloc.Snapshot:
    # Written under another name, then renamed: once the name exists, the file is whole.
    while not path.exists():
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def _site(traceback: tracemalloc.Traceback) -> str:
    """The innermost line of the app (tokenwire, its frameworks, the relay) that led to
    an allocation; only frames inside the server's call into the app count."""
    for frame in reversed(traceback):
        name = frame.filename
        if "/uvicorn/" in name:
            break
        if any(owned in name for owned in OWNED):
            return f"{_short(name)}:{frame.lineno}"
    return "the server's protocol objects (uvicorn, websockets, asyncio)"


def _short(filename: str) -> str:
    return filename.split("site-packages/")[-1].split("/src/")[-1].split("/bench/")[-1]


async def rss(target: str, count: int) -> None:
    port = ws_load.free_port()
    cmd = servers.tokenwire_cmd(port) if target == "tokenwire" else servers.relay_cmd(port)
    result = await capacity.idle_memory(cmd, count, Path(tempfile.mkdtemp()))
    print(f"{target}: {result}", flush=True)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-traced":
        return serve_traced(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--sites", type=int, metavar="TOP", help="also: the TOP allocation sites")
    p.add_argument("--only", choices=("tokenwire", "relay"))
    args = p.parse_args()
    for target in [args.only] if args.only else ["tokenwire", "relay"]:
        asyncio.run(rss(target, args.connections))
        if args.sites:
            asyncio.run(sites(target, args.connections, args.sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
