"""WebSocket load benchmark for tokenwire (a benchmark, not a test).

Starts `tokenwire serve --provider simulated` as a subprocess (unless --url is
given), opens N WebSocket clients that offer permessage-deflate the way browsers
do, has each send `--requests` sequential ai_requests to the simulated provider,
and reports per N: delivered tokens/s, time to first token, client-side
inter-token gaps, server CPU per 1,000 tokens, whether the server accepted
deflate, and errors.

    .venv/bin/python bench/ws_load.py --clients 1 100 1000 --tokens 200
    .venv/bin/python bench/ws_load.py --clients 1000 --delay-ms 50 --server-deflate on

The default client is a small hand-written RFC 6455 client on asyncio (uvloop
when available) that looks at a frame's first bytes to tell token frames from
others and fully parses only the rare ones, so that the load generator costs
as little CPU per frame as can be had in Python. `--client websockets` uses
the websockets library instead, as a cross-check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
WS_PATH = "/ws/ai-stream"
# What Chrome and Firefox send.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFLATE_TAIL = b"\x00\x00\xff\xff"

# The server encodes `event_type` first and without spaces; frames that do not
# start like this are parsed in full, so the fast path is only a shortcut.
ENVELOPE = b'{"event_type":"'
TEXT_PREFIXES = (b'{"event_type":"token"', b'{"event_type":"chunk"')
END_PREFIX = b'{"event_type":"stream_end"'
ERROR_PREFIX = b'{"event_type":"error"'
STATUS_PREFIX = b'{"event_type":"connection_status"'

clock = time.perf_counter


# -- results ------------------------------------------------------------------


@dataclass
class RunResult:
    clients: int
    requests_per_client: int
    tokens: int
    delay_ms: float
    granularity: str
    client_impl: str
    server_deflate_setting: str
    connected: int = 0
    deflate_accepted: int = 0
    deflate_declined: int = 0
    connect_seconds: float = 0.0
    stream_seconds: float = 0.0
    requests_completed: int = 0
    tokens_delivered: int = 0
    text_frames: int = 0
    frames: int = 0
    wire_bytes: int = 0
    payload_bytes: int = 0
    tokens_per_s: float = 0.0
    frames_per_s: float = 0.0
    ttft_ms: dict[str, float] = field(default_factory=dict)
    gap_ms: dict[str, float] = field(default_factory=dict)
    server_cpu_s: float | None = None
    server_cpu_ms_per_1k_tokens: float | None = None
    server_cpu_us_per_frame: float | None = None
    server_rss_kb_idle: int | None = None
    server_rss_kb_connected: int | None = None
    server_rss_kb_after: int | None = None
    server_kb_per_connection: float | None = None
    client_cpu_s: float = 0.0
    client_cpu_share: float = 0.0
    other_load_cores: float | None = None
    load_before_cores: float | None = None
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class Stats:
    """What every client of one run adds to; read once the run is over."""

    def __init__(self, granularity: str, tokens: int) -> None:
        self.granularity = granularity
        self.tokens = tokens
        self.ttfts: list[float] = []
        self.gaps: list[float] = []
        self.tokens_delivered = 0
        self.text_frames = 0
        self.frames = 0
        self.wire_bytes = 0
        self.payload_bytes = 0
        self.completed = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.pending = 0
        self.all_done: asyncio.Future[None] | None = None

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(message[:300])

    def client_finished(self) -> None:
        self.pending -= 1
        if self.pending <= 0 and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)


class Stream:
    """One client's current request; shared by both client implementations."""

    __slots__ = ("failed", "last", "left", "ntext", "sent_at", "stats")

    def __init__(self, stats: Stats, requests: int) -> None:
        self.stats = stats
        self.left = requests
        self.sent_at = 0.0
        self.last = 0.0
        self.ntext = 0
        self.failed = False

    def begin(self, now: float) -> None:
        self.left -= 1
        self.sent_at = now
        self.last = 0.0
        self.ntext = 0
        self.failed = False

    def on_message(self, buf: bytes | bytearray, start: int, end: int, now: float) -> bool:
        """Account one text message; True when it ended the current request."""
        stats = self.stats
        stats.frames += 1
        stats.payload_bytes += end - start
        if buf.startswith(TEXT_PREFIXES, start, end):
            self._text(now)
            return False
        if buf.startswith(ENVELOPE, start, end) and not buf.startswith(
            (END_PREFIX, ERROR_PREFIX, STATUS_PREFIX), start, end
        ):
            return False  # stream_start, typing_indicator, metadata, progress
        try:
            obj = json.loads(buf[start:end])
            kind = obj.get("event_type") or obj.get("type")
        except (ValueError, AttributeError):
            stats.error(f"undecodable frame: {bytes(buf[start:end])[:120]!r}")
            return False
        if kind in ("token", "chunk"):
            self._text(now)
        elif kind == "stream_end":
            return self._end(obj)
        elif kind == "error":
            self.failed = True
            stats.error(f"error event: {json.dumps(obj.get('data'))}")
        return False

    def _text(self, now: float) -> None:
        stats = self.stats
        stats.text_frames += 1
        if self.ntext == 0:
            stats.ttfts.append(now - self.sent_at)
        else:
            stats.gaps.append(now - self.last)
        self.ntext += 1
        self.last = now

    def _end(self, obj: dict[str, Any]) -> bool:
        stats = self.stats
        data = obj.get("data") or {}
        status = data.get("status")
        delivered = (data.get("usage") or {}).get("completion_tokens", self.ntext)
        if status != "completed":
            if not self.failed:
                stats.error(f"stream_end status {status!r}: {json.dumps(data)[:200]}")
        elif data.get("total_chunks") != self.ntext:
            stats.error(f"received {self.ntext} text frames, stream_end says {data!r:.200}")
        elif stats.granularity == "token" and self.ntext != stats.tokens:
            stats.error(f"received {self.ntext} tokens, asked for {stats.tokens}")
        else:
            stats.completed += 1
            stats.tokens_delivered += delivered
        return True


# -- the raw client -------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, unfragmented, uncompressed client frame (allowed under deflate too)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    keystream = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_extensions(value: str) -> list[tuple[str, dict[str, str | None]]]:
    found: list[tuple[str, dict[str, str | None]]] = []
    for item in value.split(","):
        parts = [p.strip() for p in item.split(";") if p.strip()]
        if not parts:
            continue
        params: dict[str, str | None] = {}
        for p in parts[1:]:
            key, _, val = p.partition("=")
            params[key.strip().lower()] = val.strip().strip('"') or None
        found.append((parts[0].lower(), params))
    return found


class RawClient(asyncio.Protocol):
    """An RFC 6455 client that counts frames with as little Python as it can."""

    def __init__(
        self, host: str, port: int, path: str, offer_deflate: bool, stream: Stream, request: bytes
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._offer_deflate = offer_deflate
        self.stream = stream
        self._request_frame = client_frame(0x1, request)
        self._key = base64.b64encode(os.urandom(16))
        self._transport: asyncio.Transport | None = None
        self._upgraded = False
        self._awaiting_hello = True
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragmented_compressed = False
        self._inflate: Any = None
        self._inflate_bits = -15
        self._reset_inflate = False
        self.deflate: bool | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        lines = [
            f"GET {self._path} HTTP/1.1",
            f"Host: {self._host}:{self._port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key.decode()}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: tokenwire-bench",
        ]
        if self._offer_deflate:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        if not self.finished:
            self.finished = True
            self.stream.stats.error(f"connection lost mid-run: {exc}")
            self.stream.stats.client_finished()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = clock()
        self.stream.stats.wire_bytes += len(data)
        buf = self._buf
        buf += data
        if not self._upgraded and not self._handshake():
            return
        self._frames(now)

    # the opening handshake

    def _handshake(self) -> bool:
        buf = self._buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
        del buf[: head_end + 4]
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        problem = None
        if " 101 " not in head[0] + " ":
            problem = f"handshake refused: {head[0]}"
        elif headers.get("sec-websocket-accept") != accept:
            problem = "bad Sec-WebSocket-Accept"
        if problem is not None:
            self.connected.set_exception(ConnectionError(problem))
            self.finished = True
            self._abort()
            return False
        self.deflate = False
        for name, params in parse_extensions(headers.get("sec-websocket-extensions", "")):
            if name == "permessage-deflate":
                self.deflate = True
                bits = int(params.get("server_max_window_bits") or 15)
                self._inflate_bits = -bits
                self._reset_inflate = "server_no_context_takeover" in params
                self._inflate = zlib.decompressobj(self._inflate_bits)
        self._upgraded = True
        return True

    # frames

    def _frames(self, now: float) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        stream = self.stream
        while n - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            pos = end
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0xC0 == 0x80:  # final, uncompressed text: the fast path
                if self._awaiting_hello:
                    self._hello(buf, start, end)
                elif stream.on_message(buf, start, end, now):
                    self._request_ended(now)
            elif opcode in (0x0, 0x1, 0x2):
                self._data_frame(b0, bytes(buf[start:end]), now)
            elif opcode == 0x8:
                self._closed_by_server(bytes(buf[start:end]))
                break
            elif opcode == 0x9:
                self._send(client_frame(0xA, bytes(buf[start:end])))
        if pos:
            del buf[:pos]

    def _data_frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        if opcode != 0x0:
            self._fragmented_compressed = bool(b0 & 0x40)
        self._fragments.append(payload)
        if not b0 & 0x80:
            return
        message = b"".join(self._fragments)
        self._fragments.clear()
        if self._fragmented_compressed:
            if self._inflate is None:
                self.stream.stats.error("compressed frame without negotiated deflate")
                return
            message = self._inflate.decompress(message + DEFLATE_TAIL)
            if self._reset_inflate:
                self._inflate = zlib.decompressobj(self._inflate_bits)
        if opcode == 0x2 or (opcode == 0x0 and message[:1] != b"{"):
            self.stream.stats.error("binary frame from server")
            return
        if self._awaiting_hello:
            self._hello(message, 0, len(message))
        elif self.stream.on_message(message, 0, len(message), now):
            self._request_ended(now)

    def _closed_by_server(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if not self.finished:
            reason = payload[2:].decode(errors="replace")
            self.stream.stats.error(f"server closed mid-run: {code} {reason}")
            self.finished = True
            self.stream.stats.client_finished()
        self._send(client_frame(0x8, payload[:2]))
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"closed before hello: {code}"))

    # run control

    def _request_ended(self, now: float) -> None:
        stream = self.stream
        if stream.left > 0:
            self.send_request()
        elif not self.finished:
            self.finished = True
            stream.stats.client_finished()

    def _hello(self, buf: bytes | bytearray, start: int, end: int) -> None:
        self._awaiting_hello = False
        if not buf.startswith(STATUS_PREFIX, start, end):
            first = bytes(buf[start:end])[:100]
            self.stream.stats.error(f"first frame is not connection_status: {first!r}")
        if not self.connected.done():
            self.connected.set_result(None)

    def send_request(self) -> None:
        self.stream.begin(clock())
        self._send(self._request_frame)

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def close(self, timeout: float) -> None:
        self.finished = True
        self._send(client_frame(0x8, (1000).to_bytes(2, "big")))
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), timeout)
        except TimeoutError:
            self._abort()


async def open_raw(
    host: str, port: int, path: str, offer_deflate: bool, stream: Stream, request: bytes
) -> RawClient:
    loop = asyncio.get_running_loop()
    client = RawClient(host, port, path, offer_deflate, stream, request)
    await loop.create_connection(lambda: client, host, port)
    await client.connected
    return client


# -- the websockets-library client (cross-check) ----------------------------------


class LibClient:
    def __init__(self, url: str, offer_deflate: bool, stream: Stream, request: bytes) -> None:
        self._url = url
        self._offer = offer_deflate
        self.stream = stream
        self._request = request.decode()
        self.deflate: bool | None = None
        self._ws: Any = None
        self._go = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self._ws = await connect(
            self._url,
            compression="deflate" if self._offer else None,
            max_size=None,
            ping_interval=None,
            open_timeout=60,
        )
        self.deflate = any(
            getattr(ext, "name", "") == "permessage-deflate" for ext in self._ws.protocol.extensions
        )
        hello = await self._ws.recv()
        if not hello.startswith(STATUS_PREFIX.decode()):
            raise ConnectionError(f"unexpected first frame {hello[:100]!r}")
        self._task = asyncio.create_task(self._run())

    def send_request(self) -> None:
        self._go.set()

    async def _run(self) -> None:
        stream, ws = self.stream, self._ws
        await self._go.wait()
        try:
            while stream.left > 0:
                stream.begin(clock())
                await ws.send(self._request)
                while True:
                    message = await ws.recv(decode=False)
                    if stream.on_message(message, 0, len(message), clock()):
                        break
        except Exception as exc:
            stream.stats.error(f"websockets client: {exc!r}")
        finally:
            stream.stats.client_finished()

    async def close(self, timeout: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), timeout)


# -- the server under test ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def proc_children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process's live threads, in ns resolution where /proc allows."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def wait_quiet(threshold: float, longest: float) -> float:
    """Wait until the machine's other load stays under `threshold` cores; return that load."""
    deadline = time.monotonic() + longest
    while True:
        busy0, own0 = machine_busy_seconds(), time.process_time()
        await asyncio.sleep(1.0)
        load = machine_busy_seconds() - busy0 - (time.process_time() - own0)
        if load < threshold or time.monotonic() > deadline:
            return round(load, 2)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Server:
    def __init__(self, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.cmd = cmd
        self.env = env
        self.log_path = log_dir / f"server-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def start(self, base: str) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{tail}")
            if healthy(base):
                self.pid = self._serving_pid(self.proc.pid)
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz within 90 s; log {self.log_path}")

    @staticmethod
    def _serving_pid(root: int) -> int:
        """The process that serves: the root, or (under a wrapper) its deepest descendant."""
        pid = root
        while children := proc_children(pid):
            pid = children[-1]
        return pid

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Under a wrapper, stop the server and let the wrapper end by itself (a profiler
        # then writes its output).
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid or proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- one run -------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, round(q * last))] * 1000, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0), "n": len(ordered)}


async def run_once(
    args: argparse.Namespace,
    url: str,
    clients: int,
    server_pid: int | None,
    cpu: Callable[[int], float] | None = None,
) -> RunResult:
    """One run of N clients; `cpu` reads the server's CPU seconds (default `cpu_seconds`:
    one process; several workers need their whole tree)."""
    loop = asyncio.get_running_loop()
    # Looked up now, not bound as a default: nodes.py swaps `cpu_seconds` for its runs.
    server_cpu = cpu or cpu_seconds
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    ws_url = f"ws://{host}:{port}{WS_PATH}"
    request = json.dumps(
        {
            "type": "ai_request",
            "prompt": args.prompt,
            "config": {"options": {"tokens": args.tokens, "delay_ms": args.delay_ms}},
            "stream_config": {"granularity": args.granularity},
        },
        separators=(",", ":"),
    ).encode()
    result = RunResult(
        clients=clients,
        requests_per_client=args.requests,
        tokens=args.tokens,
        delay_ms=args.delay_ms,
        granularity=args.granularity,
        client_impl=args.client,
        server_deflate_setting=args.server_deflate,
    )
    stats = Stats(args.granularity, args.tokens)
    stats.pending = clients
    stats.all_done = loop.create_future()
    opened: list[RawClient | LibClient] = []
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def connect_one() -> None:
        stream = Stream(stats, args.requests)
        async with gate:
            try:
                if args.client == "raw":
                    client: RawClient | LibClient = await asyncio.wait_for(
                        open_raw(host, port, WS_PATH, not args.no_deflate_offer, stream, request),
                        60,
                    )
                else:
                    client = LibClient(ws_url, not args.no_deflate_offer, stream, request)
                    await asyncio.wait_for(client.open(), 60)
            except (OSError, TimeoutError, ConnectionError) as exc:
                stats.error(f"connect failed: {exc!r}")
                stats.client_finished()
                return
        opened.append(client)

    rss_idle = rss_kb(server_pid) if server_pid else None
    t0 = clock()
    await asyncio.gather(*(connect_one() for _ in range(clients)))
    result.connect_seconds = round(clock() - t0, 3)
    result.connected = len(opened)
    result.deflate_accepted = sum(1 for c in opened if c.deflate)
    result.deflate_declined = sum(1 for c in opened if c.deflate is False)
    rss_connected = rss_kb(server_pid) if server_pid else None
    # Connected clients must not count a hello or stray frame as streaming traffic.
    stats.frames = stats.payload_bytes = stats.wire_bytes = 0
    connect_errors = stats.errors

    cpu0 = server_cpu(server_pid) if server_pid else None
    own0 = time.process_time()
    busy0 = machine_busy_seconds()
    start = clock()
    if args.stagger_ms > 0 and len(opened) > 1:
        step = args.stagger_ms / 1000 / len(opened)
        for i, client in enumerate(opened):
            loop.call_at(loop.time() + i * step, client.send_request)
    else:
        for client in opened:
            client.send_request()
    timeout = args.timeout or 60 + args.requests * args.tokens * args.delay_ms / 1000 * 3
    timed_out = False
    if opened:
        try:
            await asyncio.wait_for(asyncio.shield(stats.all_done), timeout)
        except TimeoutError:
            timed_out = True
    elapsed = clock() - start
    own_cpu = time.process_time() - own0
    cpu1 = server_cpu(server_pid) if server_pid else None
    busy = machine_busy_seconds() - busy0
    if timed_out:
        stats.error(f"run timed out after {timeout:.0f} s with {stats.pending} clients unfinished")

    result.server_rss_kb_after = rss_kb(server_pid) if server_pid else None
    await asyncio.gather(*(c.close(5) for c in opened))

    result.stream_seconds = round(elapsed, 4)
    result.requests_completed = stats.completed
    result.tokens_delivered = stats.tokens_delivered
    result.text_frames = stats.text_frames
    result.frames = stats.frames
    result.wire_bytes = stats.wire_bytes
    result.payload_bytes = stats.payload_bytes
    result.tokens_per_s = round(stats.tokens_delivered / elapsed, 1) if elapsed else 0.0
    result.frames_per_s = round(stats.frames / elapsed, 1) if elapsed else 0.0
    result.ttft_ms = percentiles(stats.ttfts)
    result.gap_ms = percentiles(stats.gaps)
    result.client_cpu_s = round(own_cpu, 3)
    result.client_cpu_share = round(own_cpu / elapsed, 3) if elapsed else 0.0
    if cpu0 is not None and cpu1 is not None:
        used = cpu1 - cpu0
        result.server_cpu_s = round(used, 3)
        if stats.tokens_delivered:
            result.server_cpu_ms_per_1k_tokens = round(used / stats.tokens_delivered * 1e6, 2)
        if stats.frames:
            result.server_cpu_us_per_frame = round(used / stats.frames * 1e6, 2)
        if elapsed >= 0.5:
            # What else ran on the machine meanwhile, in cores (tick resolution: rough).
            result.other_load_cores = round(max(0.0, (busy - used - own_cpu) / elapsed), 2)
    result.server_rss_kb_idle = rss_idle
    result.server_rss_kb_connected = rss_connected
    if rss_idle is not None and rss_connected is not None and opened:
        result.server_kb_per_connection = round((rss_connected - rss_idle) / len(opened), 1)
    result.errors = stats.errors
    result.error_samples = stats.error_samples
    if connect_errors:
        result.error_samples.insert(0, f"{connect_errors} errors while connecting")
    return result


# -- reporting -------------------------------------------------------------------------


COLUMNS = (
    ("N", 6),
    ("tokens/s", 10),
    ("ttft p50", 9),
    ("ttft p99", 9),
    ("gap p50", 8),
    ("gap p99", 8),
    ("gap max", 8),
    ("srv ms/1k tok", 13),
    ("srv us/frame", 12),
    ("client cpu", 10),
    ("other load", 10),
    ("wire B/frame", 12),
    ("deflate", 8),
    ("errors", 6),
)


def header() -> str:
    return "  ".join(name.rjust(width) for name, width in COLUMNS)


def row(r: RunResult) -> str:
    def ms(d: dict[str, float], key: str) -> str:
        return f"{d[key]:.1f}" if key in d else "-"

    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    if r.connected == 0:
        deflate = "-"
    elif r.deflate_accepted == r.connected:
        deflate = "yes"
    elif r.deflate_accepted == 0:
        deflate = "no"
    else:
        deflate = f"{r.deflate_accepted}/{r.connected}"
    cells = (
        str(r.clients),
        f"{r.tokens_per_s:,.0f}",
        ms(r.ttft_ms, "p50"),
        ms(r.ttft_ms, "p99"),
        ms(r.gap_ms, "p50"),
        ms(r.gap_ms, "p99"),
        ms(r.gap_ms, "max"),
        num(r.server_cpu_ms_per_1k_tokens, ".1f"),
        num(r.server_cpu_us_per_frame, ".1f"),
        f"{r.client_cpu_share:.0%}",
        num(r.other_load_cores, ".2f"),
        f"{r.wire_bytes / r.frames:.0f}" if r.frames and r.wire_bytes else "-",
        deflate,
        str(r.errors),
    )
    return "  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True))


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# -- main ------------------------------------------------------------------------------


def raise_fd_limit(clients: int) -> None:
    """Room for the clients' sockets here and the server's (it inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * clients + 1024
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    want = max(want, soft)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * clients + 64:
        print(f"warning: fd limit {want} is low for {clients} clients", file=sys.stderr)


def server_command(args: argparse.Namespace, port: int) -> list[str]:
    if args.server_cmd:
        cmd = shlex.split(args.server_cmd.format(port=port, root=ROOT))
    else:
        exe = ROOT / ".venv" / "bin" / "tokenwire"
        cmd = [str(exe), "serve", "--provider", "simulated", "--host", "127.0.0.1"]
        cmd += ["--port", str(port)]
    for extra in args.server_arg:
        cmd += shlex.split(extra)
    if args.server_wrapper:
        cmd = shlex.split(args.server_wrapper.format(port=port)) + cmd
    return cmd


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env: dict[str, str] = {}
    if args.server_deflate != "default":
        value = "true" if args.server_deflate == "on" else "false"
        env["TOKENWIRE_SERVER__WS_PER_MESSAGE_DEFLATE"] = value
    for item in args.server_env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--server-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


async def warm_up(args: argparse.Namespace, url: str) -> None:
    """A few short streams first, so the measured run does not pay for first-use costs."""
    warm = argparse.Namespace(**{**vars(args), "tokens": 20, "delay_ms": 0, "requests": 2})
    result = await run_once(warm, url, min(10, max(args.clients)), None)
    if result.errors:
        print(f"warning: warm-up had errors: {result.error_samples[:3]}", file=sys.stderr)


async def measure(args: argparse.Namespace, n: int, log_dir: Path) -> RunResult:
    """One measured run with N clients, against a fresh server unless --url is given."""
    server: Server | None = None
    if args.url:
        url = args.url.rstrip("/")
        pid = args.server_pid
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = Server(server_command(args, port), server_env(args), log_dir)
        server.start(url)
        pid = server.pid
    try:
        if not args.no_warmup:
            await warm_up(args, url)
        load_before = None
        if args.wait_quiet:
            load_before = await wait_quiet(args.quiet_cores, args.wait_quiet)
            if load_before >= args.quiet_cores:
                print(f"warning: other load {load_before} cores at start", file=sys.stderr)
        result = await run_once(args, url, n, pid)
        result.load_before_cores = load_before
    finally:
        if server is not None:
            server.stop()
    return result


def median_result(runs: list[RunResult]) -> RunResult:
    """Each figure's median over repeated runs (errors are summed)."""

    def med(values: list[float]) -> float:
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def med_opt(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(med(present), 2) if present else None

    first = runs[0]
    merged = RunResult(**{**asdict(first), "error_samples": []})
    for name in ("tokens_per_s", "frames_per_s", "client_cpu_share", "stream_seconds"):
        setattr(merged, name, round(med([getattr(r, name) for r in runs]), 3))
    for name in ("wire_bytes", "frames", "deflate_accepted", "connected"):
        setattr(merged, name, int(med([getattr(r, name) for r in runs])))
    for name in (
        "server_cpu_ms_per_1k_tokens",
        "server_cpu_us_per_frame",
        "other_load_cores",
        "server_kb_per_connection",
    ):
        setattr(merged, name, med_opt([getattr(r, name) for r in runs]))
    for name in ("ttft_ms", "gap_ms"):
        keys = set.intersection(*(set(getattr(r, name)) for r in runs))
        setattr(merged, name, {k: round(med([getattr(r, name)[k] for r in runs]), 3) for k in keys})
    merged.errors = sum(r.errors for r in runs)
    return merged


async def bench(args: argparse.Namespace) -> tuple[list[RunResult], list[RunResult]]:
    results: list[RunResult] = []
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-bench-"))
    print(header(), flush=True)
    # Repeats go round all N in turn, so that a burst of outside load spreads over them.
    for _ in range(args.repeat):
        for n in args.clients:
            result = await measure(args, n, log_dir)
            results.append(result)
            print(row(result), flush=True)
            for sample in result.error_samples[:3]:
                print(f"    error: {sample}", flush=True)
            if args.pause_s:
                await asyncio.sleep(args.pause_s)
    medians: list[RunResult] = []
    if args.repeat > 1:
        print(f"# median of {args.repeat} runs", flush=True)
        for n in args.clients:
            medians.append(median_result([r for r in results if r.clients == n]))
            print(row(medians[-1]), flush=True)
    if not args.url:
        print(f"server logs: {log_dir}", file=sys.stderr)
    return results, medians


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 100, 1000], help="N, run in turn")
    p.add_argument("--requests", type=int, default=1, help="sequential requests per client")
    p.add_argument("--repeat", type=int, default=1, help="run each N this often; print medians")
    p.add_argument("--tokens", type=int, default=200, help="tokens per answer")
    p.add_argument("--delay-ms", type=float, default=0.0, help="simulated pause between tokens")
    p.add_argument("--granularity", choices=("token", "chunk"), default="token")
    p.add_argument("--prompt", default="Explain how token streaming works.")
    p.add_argument(
        "--stagger-ms",
        type=float,
        default=0.0,
        help="spread the clients' first requests evenly over this many ms (default: all at once)",
    )
    p.add_argument("--client", choices=("raw", "websockets"), default="raw")
    p.add_argument(
        "--no-deflate-offer",
        action="store_true",
        help="do not offer permessage-deflate (browsers always offer it)",
    )
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--timeout", type=float, default=0.0, help="seconds per run (default: derived)")
    p.add_argument("--url", help="use a running server (http://host:port) instead of starting one")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, to measure CPU")
    p.add_argument(
        "--server-deflate",
        choices=("default", "on", "off"),
        default="default",
        help="set TOKENWIRE_SERVER__WS_PER_MESSAGE_DEFLATE for the started server",
    )
    p.add_argument("--server-arg", action="append", default=[], help="extra serve arguments")
    p.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server")
    p.add_argument(
        "--server-cmd",
        help="server command template ({port}, {root}); default: .venv/bin/tokenwire serve ...",
    )
    p.add_argument(
        "--server-wrapper",
        help="prefix for the server command, e.g. a profiler ('... record -o x --');"
        " CPU is measured on its deepest child",
    )
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other load to drop under --quiet-cores",
    )
    p.add_argument("--quiet-cores", type=float, default=0.15)
    p.add_argument("--pause-s", type=float, default=1.0, help="pause between runs")
    p.add_argument("--save", action="store_true", help="write JSON to bench/results/")
    p.add_argument("--label", default="", help="name for the saved results file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    raise_fd_limit(max(args.clients))
    try:
        import uvloop

        runner: Any = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        runner, loop_name = asyncio.run, "asyncio"
    info = machine()
    print(
        f"# {info['date']}  {info['nproc']} x {info['cpu']}  Python {info['python']}  "
        f"loop={loop_name}  client={args.client}  "
        f"tokens={args.tokens} delay_ms={args.delay_ms:g} requests={args.requests} "
        f"granularity={args.granularity} server_deflate={args.server_deflate}",
        flush=True,
    )
    results, medians = runner(bench(args))
    if args.save:
        out_dir = ROOT / "bench" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{args.label or 'ws_load'}.json"
        payload = {
            "machine": info,
            "argv": sys.argv,
            "loop": loop_name,
            "results": [asdict(r) for r in results],
            "medians": [asdict(r) for r in medians],
        }
        (out_dir / name).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"saved bench/results/{name}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
