"""Chaos benchmark for several nodes (a benchmark, not a test).

Starts a private redis-server on a free port and three `tokenwire serve --provider
simulated --redis-url ...` nodes on loopback, then runs thousands of WebSocket streams
over them, each following a plan drawn at random: read to the end; drop the link
(no close frame) or reload (close 1001) once or several times, each time resuming
from the last `seq` seen on a node drawn at random; cancel part-way. Part-way
through, one node is killed with SIGKILL and, later, Redis is restarted (it keeps
nothing on disk, so what it held is gone).

Every event each client saw is then checked, per request: `seq` strictly +1 across
reconnects from 1 (a gap is loss, a `seq` seen before a repeat, a lower unseen one
reordering), exactly one ending, and the text equal to the simulated provider's
deterministic answer when the stream completed (a prefix of it when it was cancelled
or interrupted). The documented endings, `not_recovered`, `stream_interrupted`,
`backend_unavailable` and `unknown_request`, are counted apart: they are what the
contract promises instead of a silent gap, and never count as loss.

    .venv/bin/python bench/chaos.py                     # 3 nodes on Redis, ~2 min
    .venv/bin/python bench/chaos.py --backend memory    # one node, no kill, no restart
    .venv/bin/python bench/chaos.py --selftest          # the checker on made-up records

`--backend auto` (the default) uses Redis when `tokenwire serve` takes `--redis-url`.
`--inject skip|repeat` makes the client resume one `seq` too late or too early: a run
with it must report loss or repeats (it checks the checker end to end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ws_load

ROOT = ws_load.ROOT
sys.path.insert(0, str(ROOT))

# Endings the contract allows in place of the whole answer (never a silent gap).
DOCUMENTED = ("not_recovered", "stream_interrupted", "backend_unavailable", "unknown_request")
# Errors that end what a client can get of a request without a `stream_end`.
KILL_ENDINGS = ("stream_interrupted", "unknown_request", "not_recovered")
TERMINAL_ERRORS = ("not_recovered", "unknown_request", "backend_unavailable")
TEXT_EVENTS = ("chunk", "token")
# Every client here comes from 127.0.0.1, where a deployment's come from many addresses:
# the per-address handshake throttle (600 a minute) would refuse most reconnects.
NODE_ENV = {"TOKENWIRE_LIMITS__HANDSHAKES_PER_MINUTE_PER_ADDRESS": "1000000"}
PLANS = (("plain", 0.45), ("drop", 0.15), ("reload", 0.15), ("multi", 0.10), ("cancel", 0.15))


# -- what a client saw, and the checker -----------------------------------------------


@dataclass
class Seen:
    """One frame of a request, as the client received it."""

    seq: int | None
    kind: str
    text: str | None = None
    status: str | None = None
    error_type: str | None = None
    at: float = 0.0  # time.monotonic() when it arrived
    link: int = 0  # which of the request's connections brought it (0: the first)


@dataclass
class Record:
    request_id: str
    user_id: str
    prompt: str
    tokens: int
    delay_ms: float
    plan: str
    events: list[Seen] = field(default_factory=list)
    cancelled_by_client: bool = False
    reconnects: int = 0
    nodes: list[int] = field(default_factory=list)
    refused: str | None = None  # error_type when the ai_request itself was refused
    sent: bool = False  # the ai_request went out (later connections resume)
    owner: int | None = None  # the node the ai_request went to
    refused_at: float = 0.0
    started_at: float = 0.0
    timed_out: bool = False

    @property
    def last_seq(self) -> int:
        return max((e.seq for e in self.events if e.seq is not None), default=0)


@dataclass
class Verdict:
    ending: str  # completed, cancelled, error:<type>, <terminal error>, unterminated
    events: int = 0
    lost: int = 0
    repeated: int = 0
    reordered: int = 0
    endings: int = 0
    ending_at: float = 0.0
    wrong_text: bool = False
    problems: list[str] = field(default_factory=list)


def check(record: Record, expected: str | None) -> Verdict:
    """What a client saw of one request, against what the contract promises."""
    last = 0
    seen: dict[int, Seen] = {}
    parts: list[str] = []
    verdict = Verdict(ending="unterminated")
    stream_error: str | None = None
    for event in record.events:
        verdict.events += 1
        if event.kind.startswith("foreign:"):
            verdict.problems.append(f"another request's {event.kind[8:]}")
            continue
        if event.seq is not None:
            first = seen.get(event.seq)
            if first is not None:
                verdict.repeated += 1
                verdict.problems.append(
                    f"seq {event.seq} {event.kind} again on link {event.link} (node"
                    f" {record.nodes[event.link]}), first on link {first.link} (node"
                    f" {record.nodes[first.link]}), at {event.at:.2f} (monotonic)"
                    if record.nodes
                    else f"seq {event.seq} {event.kind} again"
                )
                continue
            seen[event.seq] = event
            if event.seq < last:
                verdict.reordered += 1
                continue
            verdict.lost += event.seq - last - 1
            last = event.seq
        if verdict.endings:
            verdict.problems.append(f"{event.kind} after the ending")
        if event.kind in TEXT_EVENTS:
            parts.append(event.text or "")
        elif event.kind == "error":
            stream_error = event.error_type
            if event.error_type in TERMINAL_ERRORS and event.seq is None:
                verdict.endings += 1
                verdict.ending = event.error_type or "error"
                verdict.ending_at = event.at
        elif event.kind == "stream_end":
            verdict.endings += 1
            verdict.ending_at = event.at
            status = event.status or "?"
            if status == "error":
                verdict.ending = f"error:{event.error_type or stream_error or '?'}"
            else:
                verdict.ending = status
    if verdict.endings > 1:
        verdict.problems.append(f"{verdict.endings} endings")
    if record.timed_out and verdict.endings == 0:
        verdict.problems.append("no ending before the timeout")
    text = "".join(parts)
    if expected is not None and verdict.ending != "unterminated":
        whole = verdict.ending == "completed"
        verdict.wrong_text = text != expected if whole else not expected.startswith(text)
        if verdict.wrong_text:
            verdict.problems.append(f"text {text[:60]!r}... is not the answer {expected[:60]!r}")
    if verdict.ending == "cancelled" and not record.cancelled_by_client:
        verdict.problems.append("cancelled, but the client never cancelled")
    if verdict.ending.startswith("error:") and verdict.ending[6:] not in DOCUMENTED:
        verdict.problems.append(f"ended with {verdict.ending}")
    return verdict


# -- the expected answers ---------------------------------------------------------------


async def expected_answers(records: list[Record]) -> dict[str, str]:
    """The simulated provider's answer to each request, computed in this process.

    The provider is deterministic in the prompt and its options (the delay among them,
    so it is run with the same delay, all answers at once)."""
    from tokenwire.core.provider import Message, ProviderRequest
    from tokenwire.providers.simulated import SimulatedProvider
    from tokenwire.settings import ProviderSettings

    provider = SimulatedProvider(ProviderSettings(name="simulated", kind="simulated"))

    async def one(record: Record) -> tuple[str, str]:
        request = ProviderRequest(
            messages=(Message(role="user", content=record.prompt),),
            options={"tokens": record.tokens, "delay_ms": record.delay_ms},
        )
        text = [d async for d in provider.stream(request) if isinstance(d, str)]
        return record.request_id, "".join(text)

    pairs = await asyncio.gather(*(one(r) for r in records if r.refused is None))
    return dict(pairs)


# -- nodes and Redis ----------------------------------------------------------------------


def serve_takes_redis() -> bool:
    exe = ROOT / ".venv" / "bin" / "tokenwire"
    out = subprocess.run([str(exe), "serve", "--help"], capture_output=True, text=True, check=False)
    return "--redis-url" in out.stdout


class Cluster:
    """The nodes under test, which of them are alive, and Redis."""

    def __init__(self, backend: str, count: int, log_dir: Path) -> None:
        self.backend = backend
        self.log_dir = log_dir
        self.redis: Any = None
        self.servers: list[ws_load.Server] = []
        self.ports: list[int] = []
        self.alive: list[bool] = []
        self.count = count

    def start(self) -> None:
        extra: list[str] = []
        if self.backend == "redis":
            from tests.support.redis_server import RedisServer

            self.redis = RedisServer(self.log_dir / "redis")
            self.redis.start()
            extra = ["--redis-url", self.redis.url]
        for _ in range(self.count):
            port = ws_load.free_port()
            exe = ROOT / ".venv" / "bin" / "tokenwire"
            cmd = [str(exe), "serve", "--provider", "simulated", "--host", "127.0.0.1"]
            server = ws_load.Server([*cmd, "--port", str(port), *extra], NODE_ENV, self.log_dir)
            server.start(f"http://127.0.0.1:{port}")
            assert server.proc is not None
            server.pid = server.proc.pid  # the node itself, not a child it may have
            self.servers.append(server)
            self.ports.append(port)
            self.alive.append(True)

    def pick(self, rng: random.Random) -> int:
        return rng.choice([i for i, up in enumerate(self.alive) if up])

    def kill(self, index: int) -> None:
        """SIGKILL: the node gets no chance to tell anyone."""
        self.alive[index] = False
        proc = self.servers[index].proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for server, up in zip(self.servers, self.alive, strict=True):
            if up:
                server.stop()
        if self.redis is not None:
            self.redis.stop()


# -- one stream -----------------------------------------------------------------------------


@dataclass
class Run:
    cluster: Cluster
    rng: random.Random
    inject: str | None
    idle_timeout: float
    started: int = 0
    marks: dict[str, float] = field(default_factory=dict)
    milestones: dict[int, asyncio.Event] = field(default_factory=dict)
    connect_failures: Counter[str] = field(default_factory=Counter)


def count_started(run: Run) -> None:
    run.started += 1
    for at, reached in run.milestones.items():
        if run.started >= at:
            reached.set()


def milestone(run: Run, at: float) -> asyncio.Event:
    """Set once `at` streams have started."""
    return run.milestones.setdefault(max(1, int(at)), asyncio.Event())


def choose_plan(rng: random.Random) -> str:
    return rng.choices([p for p, _ in PLANS], [w for _, w in PLANS])[0]


def parse(record: Record, raw: str | bytes) -> Seen | None:
    frame = json.loads(raw)
    kind = frame.get("event_type")
    data = frame.get("data") or {}
    if kind == "connection_status" or kind is None:
        return None
    if frame.get("request_id") not in (record.request_id, None) and data.get("request_id") != (
        record.request_id
    ):
        return Seen(seq=frame.get("seq"), kind=f"foreign:{kind}")
    return Seen(
        seq=frame.get("seq"),
        kind=kind,
        text=data.get("chunk") if kind == "chunk" else data.get("token"),
        status=data.get("status"),
        error_type=data.get("error_type"),
        at=time.monotonic(),
        link=len(record.nodes) - 1,
    )


def ended(record: Record) -> bool:
    last = record.events[-1] if record.events else None
    if last is None:
        return False
    if last.kind == "stream_end":
        return True
    return last.kind == "error" and last.seq is None and last.error_type in TERMINAL_ERRORS


async def follow(run: Run, record: Record, actions: list[tuple[int, str]]) -> str:
    """Connect to a node, start or resume the request, read until its end or an action.

    Returns "ended", "reconnect" (link lost, dropped or reloaded), or "timeout"."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    cluster = run.cluster
    node = cluster.pick(run.rng)
    record.nodes.append(node)
    url = f"ws://127.0.0.1:{cluster.ports[node]}/ws/ai-stream?user_id={record.user_id}"
    try:
        ws = await connect(url, open_timeout=10, ping_interval=None, max_size=None)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        run.connect_failures[type(exc).__name__] += 1
        await asyncio.sleep(0.05)
        return "reconnect"
    try:
        await asyncio.wait_for(ws.recv(), run.idle_timeout)  # connection_status
        starting = not record.sent
        if starting:
            message: dict[str, Any] = {
                "type": "ai_request",
                "request_id": record.request_id,
                "prompt": record.prompt,
                "stream_config": {"granularity": "token"},
                "config": {"options": {"tokens": record.tokens, "delay_ms": record.delay_ms}},
            }
        else:
            last_seq = record.last_seq
            if run.inject == "skip" and last_seq > 3:
                last_seq += 1
            elif run.inject == "repeat" and last_seq > 3:
                last_seq -= 1
            message = {"type": "resume", "request_id": record.request_id, "last_seq": last_seq}
        await ws.send(json.dumps(message))
        if starting:
            record.owner = node
        record.sent = True
        while True:
            seen = parse(record, await asyncio.wait_for(ws.recv(), run.idle_timeout))
            if seen is None:
                continue
            if starting and seen.kind == "error" and seen.seq is None and not record.events:
                record.refused = seen.error_type or "error"  # refused before it started
                record.refused_at = seen.at
                return "ended"
            record.events.append(seen)
            if ended(record):
                return "ended"
            texts = sum(1 for e in record.events if e.kind in TEXT_EVENTS)
            if actions and texts >= actions[0][0]:
                _, action = actions.pop(0)
                if action == "cancel":
                    record.cancelled_by_client = True
                    cancel = {"type": "cancel_request", "request_id": record.request_id}
                    await ws.send(json.dumps(cancel))
                elif action == "drop":
                    ws.transport.abort()  # no close frame: a lost link
                    return "reconnect"
                else:
                    await ws.close(code=1001)  # a page reload
                    return "reconnect"
    except ConnectionClosed:
        return "reconnect"
    except TimeoutError:
        return "timeout"
    finally:
        ws.transport.abort()


async def one_stream(run: Run, index: int, slot: int, tag: str) -> Record:
    rng = run.rng
    plan = choose_plan(rng)
    tokens = rng.randint(20, 60)
    record = Record(
        request_id=f"chaos-{tag}-{index}",
        user_id=f"chaos-{tag}-u{slot}",
        prompt=f"chaos prompt {index} {rng.random():.6f}",
        tokens=tokens,
        delay_ms=rng.choice((5.0, 10.0, 20.0)),
        plan=plan,
        started_at=time.monotonic(),
    )
    actions: list[tuple[int, str]] = []
    if plan in ("drop", "reload"):
        actions = [(rng.randint(1, tokens - 1), plan)]
    elif plan == "multi":
        points = sorted(rng.sample(range(1, tokens), 3))
        actions = [(p, rng.choice(("drop", "reload"))) for p in points]
    elif plan == "cancel":
        actions = [(rng.randint(1, tokens - 1), "cancel")]
    deadline = time.monotonic() + 120
    while True:
        outcome = await follow(run, record, actions)
        if outcome == "ended":
            return record
        if outcome == "timeout" or time.monotonic() > deadline:
            record.timed_out = True
            return record
        record.reconnects += 1


# -- the run ------------------------------------------------------------------------------------


async def director(run: Run, args: argparse.Namespace, total: int) -> None:
    """Kill one node, then restart Redis, once enough streams have started."""
    cluster = run.cluster
    if cluster.backend != "redis":
        return
    kill_at = milestone(run, total * args.kill_at)
    restart_at = milestone(run, total * args.redis_restart_at)
    await kill_at.wait()
    run.marks["node_killed"] = time.monotonic()
    cluster.kill(len(cluster.servers) - 1)
    print(f"# killed node {len(cluster.servers) - 1} (SIGKILL) at stream {run.started}", flush=True)
    await restart_at.wait()
    run.marks["redis_restart"] = time.monotonic()
    await asyncio.to_thread(cluster.redis.restart)
    print(f"# restarted Redis (nothing kept) at stream {run.started}", flush=True)


async def drive(run: Run, args: argparse.Namespace) -> list[Record]:
    records: list[Record] = []
    tag = f"{os.getpid()}{int(time.time()) % 100000}"
    budget_end = time.monotonic() + args.duration
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.streams):
        queue.put_nowait(i)

    async def worker(slot: int) -> None:
        while time.monotonic() < budget_end:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            count_started(run)
            record = await one_stream(run, index, slot, tag)
            records.append(record)
            if record.refused is not None:
                # Refused at once (Redis lost, say): pause rather than burn the rest of the
                # streams on refusals while the nodes reconnect.
                await asyncio.sleep(0.5)

    chaos_task = asyncio.create_task(director(run, args, args.streams))
    try:
        async with asyncio.TaskGroup() as group:
            for slot in range(args.concurrency):
                group.create_task(worker(slot))
    finally:
        # A run cut short by --duration may never reach the director's marks.
        chaos_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chaos_task
    return records


def excused(record: Record, verdict: Verdict, marks: dict[str, float], killed: int) -> bool:
    """Whether a documented ending had a cause here: the owner's SIGKILL for
    `stream_interrupted`, `unknown_request` or `not_recovered` after it, the Redis
    restart for any of them (leases, logs and counters went with it). Without either
    (one memory node) none is excused."""
    restart = marks.get("redis_restart")
    if restart is not None and verdict.ending_at >= restart:
        return True
    kill = marks.get("node_killed")
    # A request whose owner was killed: followers elsewhere get stream_interrupted; a
    # client that was on the owner and resumes elsewhere may find that Redis never heard
    # of it (unknown_request) or holds less than it saw (not_recovered).
    return (
        verdict.ending.removeprefix("error:") in KILL_ENDINGS
        and kill is not None
        and record.owner == killed
        and verdict.ending_at >= kill
    )


def summarise(
    records: list[Record], answers: dict[str, str], marks: dict[str, float], killed: int
) -> dict[str, Any]:
    verdicts = [(r, check(r, answers.get(r.request_id))) for r in records if r.refused is None]
    endings = Counter(v.ending for _, v in verdicts)
    documented = {e: sum(n for k, n in endings.items() if k.endswith(e)) for e in DOCUMENTED}
    problems = [(r.request_id, p) for r, v in verdicts for p in v.problems]
    unexplained = [
        (r.request_id, f"{v.ending} with no node killed nor Redis restarted to cause it")
        for r, v in verdicts
        if v.ending.removeprefix("error:") in DOCUMENTED and not excused(r, v, marks, killed)
    ]
    problems += unexplained
    restart = marks.get("redis_restart")
    problems += [
        (r.request_id, f"refused with {r.refused} while Redis was not being restarted")
        for r in records
        if r.refused is not None
        and not (r.refused == "backend_unavailable" and restart and r.refused_at >= restart)
    ]
    return {
        "streams": len(records),
        "refused_at_start": dict(Counter(r.refused for r in records if r.refused is not None)),
        "events_checked": sum(v.events for _, v in verdicts),
        "reconnects": sum(r.reconnects for r in records),
        "plans": dict(Counter(r.plan for r in records)),
        "endings": dict(endings),
        "documented_endings": documented,
        "unexplained_documented_endings": len(unexplained),
        "lost": sum(v.lost for _, v in verdicts),
        "repeated": sum(v.repeated for _, v in verdicts),
        "reordered": sum(v.reordered for _, v in verdicts),
        "unterminated": sum(1 for _, v in verdicts if v.endings == 0),
        "ended_more_than_once": sum(1 for _, v in verdicts if v.endings > 1),
        "wrong_text": sum(1 for _, v in verdicts if v.wrong_text),
        "other_problems": len(problems),
        "problem_samples": problems[:20],
        # What the client saw of the first few requests with a problem, to find its cause.
        "problem_records": {
            r.request_id: {
                "nodes": r.nodes,
                "owner": r.owner,
                "events": [(e.seq, e.kind, e.link, round(e.at, 3)) for e in r.events],
            }
            for r, v in verdicts
            if r.request_id in {request_id for request_id, _ in problems}
        }
        if len(problems) <= 20
        else {},
    }


def clean(summary: dict[str, Any]) -> bool:
    keys = ("lost", "repeated", "reordered", "unterminated", "ended_more_than_once", "wrong_text")
    return all(summary[k] == 0 for k in keys) and summary["other_problems"] == 0


async def chaos(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix="tokenwire-chaos-"))
    count = args.nodes if args.backend == "redis" else 1
    cluster = Cluster(args.backend, count, log_dir)
    cluster.start()
    run = Run(cluster, random.Random(args.seed), args.inject, args.idle_timeout)
    try:
        t0 = time.monotonic()
        cpu0 = time.process_time()
        records = await drive(run, args)
        wall = time.monotonic() - t0
        client_cpu = time.process_time() - cpu0
    finally:
        cluster.stop()
    print(f"server logs: {log_dir}", file=sys.stderr)
    answers = await expected_answers(records)
    summary = summarise(records, answers, run.marks, len(cluster.servers) - 1)
    summary.update(
        backend=args.backend,
        nodes=count,
        seconds=round(wall, 1),
        client_cpu_share=round(client_cpu / wall, 2) if wall else 0.0,
        chaos={k: round(v - t0, 1) for k, v in run.marks.items()},
        chaos_monotonic={k: round(v, 2) for k, v in run.marks.items()},
        connect_failures=dict(run.connect_failures),
        inject=args.inject,
        seed=args.seed,
    )
    return summary


def report(summary: dict[str, Any]) -> None:
    rows = [
        ("streams", summary["streams"]),
        ("refused at start", summary["refused_at_start"] or 0),
        ("events checked", summary["events_checked"]),
        ("reconnects (resumes)", summary["reconnects"]),
        ("failed connects", summary["connect_failures"] or 0),
        ("lost", summary["lost"]),
        ("repeated", summary["repeated"]),
        ("reordered", summary["reordered"]),
        ("unterminated", summary["unterminated"]),
        ("ended more than once", summary["ended_more_than_once"]),
        ("wrong text", summary["wrong_text"]),
        ("other problems", summary["other_problems"]),
    ]
    rows += [(f"ending {k}", v) for k, v in sorted(summary["endings"].items())]
    rows += [(f"documented {k}", v) for k, v in summary["documented_endings"].items()]
    rows += [("of them unexplained", summary["unexplained_documented_endings"])]
    print(
        f"# {summary['backend']}, {summary['nodes']} node(s), {summary['seconds']} s, "
        f"client cpu {summary['client_cpu_share']:.0%}, chaos at {summary['chaos']}"
    )
    for name, value in rows:
        print(f"{name:>28}  {value}")
    for request_id, problem in summary["problem_samples"]:
        print(f"    {request_id}: {problem}")


# -- the checker on made-up records ----------------------------------------------------------


def selftest() -> None:
    """Each kind of fault the checker must see, on a record built by hand."""
    answer = "a b c"
    head = [Seen(1, "stream_start"), Seen(2, "typing_indicator"), Seen(3, "metadata")]
    a, b, c = Seen(4, "token", "a"), Seen(5, "token", " b"), Seen(6, "token", " c")
    end = Seen(7, "stream_end", status="completed")

    def verdict(*events: Seen, cancelled: bool = False) -> Verdict:
        record = Record("r", "u", "p", 3, 0.0, "plain", [*head, *events])
        record.cancelled_by_client = cancelled
        return check(record, answer)

    interrupted = (
        Seen(5, "error", error_type="stream_interrupted"),
        Seen(6, "stream_end", status="error", error_type="stream_interrupted"),
    )
    cases: list[tuple[str, Verdict, Any]] = [
        (
            "a whole answer",
            verdict(a, b, c, end),
            lambda v: (
                (v.ending, v.lost, v.repeated, v.reordered, v.problems)
                == ("completed", 0, 0, 0, [])
            ),
        ),
        ("a gap", verdict(a, c, end), lambda v: v.lost == 1 and v.wrong_text),
        ("a repeat", verdict(a, b, b, c, end), lambda v: v.repeated == 1 and not v.wrong_text),
        ("a swap", verdict(b, a, c, end), lambda v: v.reordered == 1 and v.lost == 1),
        (
            "two ends",
            verdict(a, b, c, end, Seen(None, "stream_end", status="completed")),
            lambda v: v.endings == 2 and v.problems,
        ),
        ("no end", verdict(a), lambda v: v.ending == "unterminated" and v.endings == 0),
        ("other text", verdict(a, Seen(5, "token", " x"), c, end), lambda v: v.wrong_text),
        (
            "a cancel",
            verdict(a, Seen(5, "stream_end", status="cancelled"), cancelled=True),
            lambda v: v.ending == "cancelled" and not v.problems,
        ),
        (
            "a cancel nobody asked for",
            verdict(a, Seen(5, "stream_end", status="cancelled")),
            lambda v: bool(v.problems),
        ),
        (
            "an owner that died",
            verdict(a, *interrupted),
            lambda v: v.ending == "error:stream_interrupted" and not v.problems,
        ),
        (
            "not recovered",
            verdict(a, Seen(None, "error", error_type="not_recovered")),
            lambda v: v.ending == "not_recovered" and v.endings == 1 and not v.problems,
        ),
        (
            "another request's event",
            verdict(a, Seen(5, "foreign:token"), b, c, end),
            lambda v: bool(v.problems),
        ),
    ]
    failed = [f"{name}: {v}" for name, v, holds in cases if not holds(v)]
    owned = Record("r", "u", "p", 3, 0.0, "plain", owner=2)
    cut_off = Verdict(ending="error:stream_interrupted", ending_at=5.0)
    gone = Verdict(ending="not_recovered", ending_at=5.0)
    excuses = [
        ("nothing happened", excused(owned, gone, {}, 2), False),
        ("after the Redis restart", excused(owned, gone, {"redis_restart": 4.0}, 2), True),
        ("before the Redis restart", excused(owned, gone, {"redis_restart": 6.0}, 2), False),
        ("its owner killed", excused(owned, cut_off, {"node_killed": 4.0}, 2), True),
        ("another node killed", excused(owned, cut_off, {"node_killed": 4.0}, 1), False),
        ("not_recovered, owner killed", excused(owned, gone, {"node_killed": 4.0}, 2), True),
        ("not_recovered before the kill", excused(owned, gone, {"node_killed": 6.0}, 2), False),
        ("not_recovered, other killed", excused(owned, gone, {"node_killed": 4.0}, 1), False),
    ]
    failed += [name for name, got, want in excuses if got != want]
    if failed:
        raise SystemExit("checker self-test failed:\n" + "\n".join(failed))
    print(f"checker self-test: {len(cases) + len(excuses)} cases pass")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("auto", "redis", "memory"), default="auto")
    p.add_argument("--nodes", type=int, default=3, help="nodes with Redis (memory: always 1)")
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=120, help="streams at once")
    p.add_argument("--duration", type=float, default=150, help="start no stream after this (s)")
    p.add_argument("--idle-timeout", type=float, default=30, help="a silent stream is stuck (s)")
    p.add_argument("--kill-at", type=float, default=0.3, help="kill a node at this share started")
    p.add_argument("--redis-restart-at", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=24)
    p.add_argument(
        "--inject", choices=("skip", "repeat"), help="a faulty client, to check the checker"
    )
    p.add_argument("--selftest", action="store_true", help="only the checker, on made-up records")
    p.add_argument("--out", type=Path, help="JSON file (default bench/results/<stamp>-chaos.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    selftest()
    if args.selftest:
        return 0
    if args.backend == "auto":
        args.backend = "redis" if serve_takes_redis() else "memory"
        if args.backend == "memory":
            print("# `tokenwire serve` has no --redis-url yet: one memory node", flush=True)
    ws_load.raise_fd_limit(args.concurrency * 4)
    summary = asyncio.run(chaos(args))
    summary["machine"] = ws_load.machine()
    report(summary)
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = ROOT / "bench" / "results" / f"{stamp}-chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"saved {out}", file=sys.stderr)
    return 0 if clean(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
