"""The owner's side: the logs this node runs, copied to Redis in order and in batches.

An append only marks its log dirty (appends stay synchronous and cost no I/O);
one task per store writes every dirty log in one pipelined round trip, one
script per log, each atomic. A change after a quiet spell is written at once;
while changes keep coming, a round of writes starts at most once per
`interval`, so that each script carries several events of its log rather than
one (a stream at 20 tokens/s gives one every 50 ms: the script, not the event,
is what costs). Clients on this node read the log itself and never wait for it;
other nodes' copies run up to `interval` behind.

A script refuses a batch when Redis's copy is not the one the owner built on
(Redis restarted or failed over and lost writes): the owner then writes the
whole log it still holds anew, under a new epoch, so that other nodes never
serve a copy with a hole in it. While Redis is unreachable the logs keep
serving this node's clients; the mirror retries with backoff.

A log stays here until its `stream_end` is in Redis; from then on every node,
this one too, reads it from Redis (one copy, one retention, one answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.log_records import optional_json, record_args
from tokenwire.backends.redis.log_scripts import (
    MIRROR_SCRIPT,
    REWRITE_SCRIPT,
    ScriptCall,
    run_scripts,
)
from tokenwire.backends.redis.write_queue import unavailable_errors
from tokenwire.core.eventlog import EventLog
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.events import EventType

logger = structlog.get_logger("tokenwire.redis.mirror")

RUNNING_KEEP_SECONDS = 24 * 3600.0
"""How long a running request's keys live without an end (an owner that died with
nobody following leaves them behind); a request that runs longer loses its copy."""
FOLLOWER_GRACE_SECONDS = 30.0
"""Keys outlive a request's end by at least this, so that followers on other nodes
read the end even when the retention is shorter (lookups still honour `ends_at`)."""
INDEX_KEEP_SECONDS = 24 * 3600.0
"""A user's list of requests lives this long past their last request's start or end."""
LOGS_PER_BATCH = 256
FIRST_RETRY_SECONDS = 0.1
MIRROR_INTERVAL_SECONDS = 0.1
"""The default `interval`: rounds of writes while changes keep coming."""


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass(eq=False)
class Mirrored:
    """An owned log and what Redis holds of it."""

    log: EventLog
    epoch: str
    keys: list[str] = field(default_factory=list)
    """The log's keys in Redis (meta, events), named once (each name is a hash)."""
    batch: int = 0
    """How many batches Redis holds (its meta's `batch`)."""
    first_seq: int = 1
    """The first seq Redis holds (its meta's `first_seq`): trimmed only when it moves."""
    upto: int = 0
    """The last seq Redis holds."""
    annotations: dict[str, Any] = field(default_factory=dict)
    """The annotations Redis holds (the values themselves, compared by identity)."""
    detached: bool = False
    """Redis's copy is no longer this node's to write (another node ended it)."""

    @property
    def key(self) -> RequestKey:
        return self.log.key

    def annotations_changed(self) -> bool:
        now = self.log.annotations
        return now.keys() != self.annotations.keys() or any(
            now[name] is not value for name, value in self.annotations.items()
        )


@dataclass(frozen=True)
class _Batch:
    mirrored: Mirrored
    call: ScriptCall
    upto: int
    annotations: dict[str, Any]
    first_seq: int
    rewrite_epoch: str | None = None
    ends: bool = False
    """The batch holds the request's `stream_end`."""


class LogMirror:
    def __init__(
        self,
        backend: RedisBackend,
        retention_seconds: float,
        max_retained_bytes: int,
        reconnect_max_seconds: float,
        clock: Callable[[], float],
        interval: float = MIRROR_INTERVAL_SECONDS,
    ) -> None:
        self._backend = backend
        self._interval = interval
        self._retention = retention_seconds
        self._max_retained_bytes = max_retained_bytes
        self._reconnect_max = reconnect_max_seconds
        self._clock = clock
        self.logs: dict[RequestKey, Mirrored] = {}
        self._dirty: dict[RequestKey, None] = {}
        # Ended logs that Redis does not hold whole yet, oldest first, and their bytes.
        self._ended: dict[RequestKey, Mirrored] = {}
        self._ended_bytes = 0
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set by `flush`: the next round starts at once, not an interval after the last."""
        self._idle = asyncio.Event()
        self._idle.set()

    # -- what the store tells it ------------------------------------------------

    def add(self, log: EventLog, epoch: str) -> None:
        """A log created in Redis with `epoch` (meta written, nothing else)."""
        self.logs[log.key] = Mirrored(log, epoch, self._keys(log.key))

    def changed(self, log: EventLog) -> None:
        mirrored = self.logs.get(log.key)
        if mirrored is None or mirrored.log is not log or mirrored.detached:
            return
        self._dirty[log.key] = None
        self._idle.clear()
        self._wake.set()

    def finished(self, log: EventLog) -> None:
        """The request ended: its copy in Redis gets its end and retention with the next
        batch. Past `max_retained_bytes` of ended logs that Redis does not hold yet, the
        oldest are given up (Redis unreachable for long: this node's memory comes first)."""
        mirrored = self.logs.get(log.key)
        if mirrored is None or mirrored.log is not log:
            return
        if mirrored.detached:
            self.forget(log.key)
            return
        self.changed(log)
        self._ended[log.key] = mirrored
        self._ended_bytes += log.held_bytes
        while self._ended_bytes > self._max_retained_bytes:
            oldest = next(iter(self._ended.values()))
            logger.warning("ended log given up before redis held it", request_id=oldest.key[1])
            self.forget(oldest.key)

    def check_all(self) -> None:
        """Redis may have lost what it held: check (and if need be rewrite) every log."""
        for key, mirrored in self.logs.items():
            if not mirrored.detached:
                self._dirty[key] = None
        if self._dirty:
            self._idle.clear()
            self._wake.set()

    def forget(self, key: RequestKey) -> None:
        self.logs.pop(key, None)
        ended = self._ended.pop(key, None)
        if ended is not None:
            self._ended_bytes -= ended.log.held_bytes
        self._dirty.pop(key, None)  # `run` sets idle once no write is in flight

    def ends_at(self, mirrored: Mirrored) -> float | None:
        """When a finished log's retention ends (its end's time, plus the retention)."""
        if not mirrored.log.finished:
            return None
        end = next(mirrored.log.records(mirrored.log.last_seq - 1))
        return end.timestamp + self._retention

    # -- the task ---------------------------------------------------------------

    async def run(self) -> None:
        """Write dirty logs until cancelled; never raises for a Redis lost."""
        delay = FIRST_RETRY_SECONDS
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                started = loop.time()
                failed = await self._write_round()
                if failed is not None:
                    exc_info = None if isinstance(failed, unavailable_errors) else failed
                    logger.warning(
                        "mirroring to redis failed; retrying", delay=delay, exc_info=exc_info
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._reconnect_max)
                    self.check_all()
                    continue
                delay = FIRST_RETRY_SECONDS
                if self._dirty:
                    # Changes came while writing: flat out. Let each log gather more events
                    # for its next script (unless `flush` wants them now).
                    await self._pause(started + self._interval - loop.time())
            self._idle.set()

    async def _write_round(self) -> BaseException | None:
        """Write what is dirty now, `LOGS_PER_BATCH` logs a round trip; the error if a
        write failed (its logs put back in front, dirty again: order per log holds)."""
        round_keys = list(self._dirty)
        for start in range(0, len(round_keys), LOGS_PER_BATCH):
            keys = [k for k in round_keys[start : start + LOGS_PER_BATCH] if k in self._dirty]
            for key in keys:
                del self._dirty[key]
            try:
                await self._write([self.logs[k] for k in keys if k in self.logs])
            except Exception as exc:
                self._dirty = dict.fromkeys(keys) | self._dirty
                return exc
        return None

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._hurry.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), seconds)

    async def flush(self, within: float) -> bool:
        """Wait (at most `within` seconds) until Redis holds every change; True if so.
        Rounds of writes follow each other at once meanwhile (no `interval` between)."""
        self._hurry.set()
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        finally:
            self._hurry.clear()
        return True

    async def _write(self, logs: list[Mirrored]) -> None:
        batches = [self._batch(m) for m in logs if not m.detached]
        # A user's index outlives their last request's end (a plain command: other slot).
        ends = [b.mirrored.key for b in batches if b.ends]
        indexes = [index_kept(self._backend, key, self._retention) for key in ends]
        answers = await run_scripts(
            self._backend.client, [b.call for b in batches], prelude=indexes
        )
        rewrites: list[_Batch] = []
        for batch, answer in zip(batches, answers, strict=True):
            if answer == "ok":
                self._written(batch)
            elif answer in ("epoch", "lost"):
                rewrite = self._rewrite(batch.mirrored)
                if rewrite is not None:
                    rewrites.append(rewrite)
            else:
                self._let_go(batch.mirrored, answer)
        if not rewrites:
            return
        for batch in rewrites:
            logger.warning("redis lost a log; writing it anew", request_id=batch.mirrored.key[1])
        calls = [b.call for b in rewrites]
        # The lease renewed first: no follower may take a log written anew for ownerless.
        prelude = [lease_renewal(self._backend)]
        for batch in rewrites:
            log = batch.mirrored.log
            prelude += index_entry(self._backend, log.key, log.created_at, self._retention)
        answers = await run_scripts(self._backend.client, calls, prelude=prelude)
        for batch, answer in zip(rewrites, answers, strict=True):
            if answer == "ok":
                self._written(batch)
            else:
                self._let_go(batch.mirrored, answer)

    def _written(self, batch: _Batch) -> None:
        mirrored = batch.mirrored
        if batch.rewrite_epoch is not None:
            mirrored.epoch = batch.rewrite_epoch
            mirrored.batch = 0
        mirrored.batch += 1
        mirrored.upto = batch.upto
        mirrored.first_seq = batch.first_seq
        mirrored.annotations = batch.annotations
        log = mirrored.log
        if log.finished and mirrored.upto == log.last_seq and self.logs.get(log.key) is mirrored:
            self.forget(log.key)  # Redis holds it whole: every node reads it there now

    def _let_go(self, mirrored: Mirrored, answer: str) -> None:
        """Redis's copy is not this node's any more: `discarded` (forgotten by a client)
        or `ended` (another node wrote its end, taking this node for dead)."""
        logger.warning("log no longer mirrored", request_id=mirrored.key[1], why=answer)
        if answer == "discarded" or mirrored.log.finished:
            self.forget(mirrored.key)
        else:
            mirrored.detached = True  # its clients here still read it to its end

    # -- script arguments -------------------------------------------------------

    def _keys(self, key: RequestKey) -> list[str]:
        return [self._backend.request_key(key, "meta"), self._backend.request_key(key, "events")]

    def _keep_millis(self, ends_at: float | None) -> int:
        if ends_at is None:
            return int(RUNNING_KEEP_SECONDS * 1000)
        left = max(ends_at - self._clock(), FOLLOWER_GRACE_SECONDS)
        return int(left * 1000)

    def _batch(self, mirrored: Mirrored) -> _Batch:
        log = mirrored.log
        after = max(mirrored.upto, log.first_held_seq - 1)
        records = list(log.records(after))
        upto = records[-1].seq if records else mirrored.upto
        annotations = dict(log.annotations)
        changed = mirrored.annotations_changed()
        ends = bool(records) and records[-1].event_type is EventType.STREAM_END
        ends_at = self.ends_at(mirrored) if ends else None
        args: list[str | int] = [
            mirrored.epoch,
            mirrored.batch,
            # "": Redis's copy starts where it did (nothing to trim)
            log.first_held_seq if log.first_held_seq != mirrored.first_seq else "",
            orjson.dumps(annotations).decode() if changed else "",
            (log.status or "") if ends else "",
            repr(ends_at) if ends_at is not None else "",
            self._keep_millis(ends_at),
            len(records),
            *record_args(records),
        ]
        call = (MIRROR_SCRIPT, mirrored.keys, args)
        return _Batch(mirrored, call, upto, annotations, log.first_held_seq, ends=ends)

    def _rewrite(self, mirrored: Mirrored) -> _Batch | None:
        log = mirrored.log
        ends_at = self.ends_at(mirrored)
        if ends_at is not None and ends_at <= self._clock():
            self.forget(mirrored.key)  # its retention is over: nothing to write back
            return None
        records = list(log.records(log.first_held_seq - 1))
        annotations = dict(log.annotations)
        epoch = new_epoch()
        args: list[str | int] = [
            epoch,
            optional_json(log.origin),
            optional_json(log.conversation_id),
            repr(log.created_at),
            self._backend.node_id,
            log.status or "" if log.finished else "",
            repr(ends_at) if ends_at is not None else "",
            self._keep_millis(ends_at),
            log.first_held_seq,
            log.last_seq,
            orjson.dumps(annotations).decode(),
            len(records),
            *record_args(records),
        ]
        call = (REWRITE_SCRIPT, mirrored.keys, args)
        first_seq = log.first_held_seq
        return _Batch(mirrored, call, log.last_seq, annotations, first_seq, rewrite_epoch=epoch)


def index_entry(
    backend: RedisBackend, key: RequestKey, created_at: float, retention_seconds: float
) -> list[Sequence[str | int]]:
    """The commands that list a request among its user's (kept if listed already)."""
    index = backend.user_key(key.user_id, "requests")
    return [
        ("ZADD", index, "NX", repr(created_at), key.request_id),
        index_kept(backend, key, retention_seconds),
    ]


def index_kept(
    backend: RedisBackend, key: RequestKey, retention_seconds: float
) -> Sequence[str | int]:
    """The command that keeps a user's index past their latest request's start or end."""
    index = backend.user_key(key.user_id, "requests")
    return ("PEXPIRE", index, int((INDEX_KEEP_SECONDS + retention_seconds) * 1000))


def lease_renewal(backend: RedisBackend) -> Sequence[str | int]:
    """The command that renews this node's lease (as `NodeLease` does), to send along."""
    lease = backend.node_key(backend.node_id, "lease")
    return ("SET", lease, "1", "PX", max(1, int(backend.lease_seconds * 1000)))
