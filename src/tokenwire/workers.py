"""`tokenwire serve --workers N`: N worker processes on one listening socket, under this one.

The supervisor binds the port, starts each worker (a fresh interpreter, as uvicorn's
`--workers` does) with the settings and the socket, and says `serving` once every
worker serves. A worker that dies after it served is started again; one that cannot
start stops them all (a configuration error: exit status 2, as in one process).
SIGTERM or Ctrl-C stops every worker gracefully, then the supervisor exits 0.
With metrics on, the workers share a private directory for prometheus-client's
multiprocess mode (any worker's `/metrics` sums them all); it goes with the supervisor.

Not uvicorn's `Multiprocess`: it runs a plain `uvicorn.Server` in each worker, with
no hook for the server class, and each worker must run tokenwire's own
(`cli.GracefulServer`: streams end `shutdown`, sockets close 1001, exit 0).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

import structlog
from prometheus_client.multiprocess import mark_process_dead

from tokenwire.observability.metrics import MULTIPROCESS_VARIABLE
from tokenwire.settings import Settings

logger = structlog.get_logger("tokenwire")

CONFIG_ERROR = 2
"""A worker's exit status when the configuration stops it (as `tokenwire serve`'s)."""
# The longest a worker may take to serve (a local model loads in it) before the
# supervisor gives up on it.
START_TIMEOUT_SECONDS = 600.0
# A worker that keeps dying is restarted at most this often.
RESTART_PAUSE_SECONDS = 1.0

Worker = Callable[[Settings, socket.socket, Connection], None]
"""What runs in a worker: serve `settings` on the socket; send one message on the
connection once serving. A module-level function (the worker imports it)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_spawn = multiprocessing.get_context("spawn")


@dataclass
class _Running:
    process: SpawnProcess
    started: Connection
    served: bool = False
    since: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        worker: Worker,
        on_serving: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self._settings = settings
        self._sock = sock
        self._worker = worker
        self._on_serving = on_serving
        self._stop = threading.Event()
        self._workers: list[_Running] = []
        self._announced = False
        self._metrics_dir: str | None = None

    def run(self) -> int:
        """Serve until a stop signal (0), or until a worker cannot start (its status)."""
        shared = shared_metrics() if self._settings.metrics.enabled else contextlib.nullcontext()
        with shared as metrics_dir:
            self._metrics_dir = metrics_dir
            return self._serve()

    def _serve(self) -> int:
        original = {sig: signal.signal(sig, self._stopping) for sig in STOP_SIGNALS}
        try:
            self._workers = [self._spawn() for _ in range(self._settings.server.workers)]
            status = 0
            while not self._stop.wait(0.1):
                failed = self._watch()
                if failed is not None:
                    status = failed
                    break
            self._stop_all()
            return status
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def _stopping(self, sig: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _spawn(self) -> _Running:
        receiving, sending = _spawn.Pipe(duplex=False)
        process = _spawn.Process(
            target=self._worker,
            args=(self._settings, self._sock, sending),
            name="tokenwire worker",
        )
        process.start()
        sending.close()
        return _Running(process, receiving)

    def _watch(self) -> int | None:
        """Note workers that began to serve, restart those that died; a worker that
        died before it served (or took too long to) gives the exit status."""
        for i, running in enumerate(self._workers):
            if not running.served and running.started.poll():
                # End of file instead: it died before serving, which is seen below.
                with contextlib.suppress(EOFError):
                    logger.info("worker serving", **running.started.recv())
                    running.served = True
            if running.process.is_alive():
                if running.served or time.monotonic() - running.since < START_TIMEOUT_SECONDS:
                    continue
                logger.error("worker did not start in time", pid=running.process.pid)
                return 1
            code = running.process.exitcode
            if not running.served:
                return CONFIG_ERROR if code == CONFIG_ERROR else 1
            logger.warning("worker died, starting another", pid=running.process.pid, code=code)
            if self._metrics_dir is not None and running.process.pid is not None:
                # Its live gauges (connections, active streams) died with it.
                mark_process_dead(running.process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if time.monotonic() - running.since < RESTART_PAUSE_SECONDS:
                time.sleep(RESTART_PAUSE_SECONDS)
            self._workers[i] = self._spawn()
        if not self._announced and all(running.served for running in self._workers):
            self._announced = True
            self._on_serving([{"pid": w.process.pid} for w in self._workers])
        return None

    def _stop_all(self) -> None:
        """SIGTERM to each worker (each stops gracefully), then wait; SIGKILL to those
        still there after the grace."""
        for running in self._workers:
            if running.process.is_alive():
                running.process.terminate()
        deadline = time.monotonic() + self._settings.server.shutdown_grace_seconds + 5
        for running in self._workers:
            running.process.join(max(0.0, deadline - time.monotonic()))
            if running.process.is_alive():
                running.process.kill()
                running.process.join()
            running.started.close()


@contextlib.contextmanager
def shared_metrics() -> Iterator[str]:
    """A private directory for the workers' metrics, named in the environment that each
    worker starts with (prometheus-client reads it at import), and removed at the end."""
    directory = tempfile.mkdtemp(prefix="tokenwire-metrics-")
    before = os.environ.get(MULTIPROCESS_VARIABLE)
    os.environ[MULTIPROCESS_VARIABLE] = directory
    try:
        yield directory
    finally:
        if before is None:
            os.environ.pop(MULTIPROCESS_VARIABLE, None)
        else:
            os.environ[MULTIPROCESS_VARIABLE] = before
        shutil.rmtree(directory, ignore_errors=True)
