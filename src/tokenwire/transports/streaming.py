"""A streamed HTTP response that lets go of a client that does not read.

A send waits while the socket's buffers are full; a client that never reads
again (or vanished without a word) would keep it waiting for good, and with it
the socket, whatever the response holds, and a graceful shutdown. A send not
taken within `close_timeout` aborts the connection, as a WebSocket whose
client does not complete the close is aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tokenwire.transports.uvicorn_http import ABORT

logger = structlog.get_logger("tokenwire.http")

DEFAULT_CLOSE_TIMEOUT = 30.0


def close_timeout_of(request: Request) -> float:
    """The server's `close_timeout_seconds` (kept with the SSE settings)."""
    settings = getattr(request.app.state, "sse", None)
    timeout = getattr(settings, "close_timeout", DEFAULT_CLOSE_TIMEOUT)
    return float(timeout)


class EventStreamResponse(StreamingResponse):
    def __init__(self, *args: Any, close_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._close_timeout = close_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (scope.get("extensions") or {}).get(ABORT)
        abort: Callable[[], None] | None = found if callable(found) else None
        waiting_since: float | None = None
        aborted = False
        loop = asyncio.get_running_loop()

        async def sending(message: Message) -> None:
            nonlocal waiting_since
            if aborted:
                # uvicorn's send returns quietly once the connection is gone; without this
                # the body would be produced to its end (a foreground answer generated in
                # full) for nobody. Starlette ends the response on an OSError.
                raise OSError("the connection was aborted: its client does not read")
            waiting_since = loop.time()
            await send(message)
            waiting_since = None

        async def watch(abort: Callable[[], None]) -> None:
            nonlocal aborted
            while True:
                await asyncio.sleep(self._close_timeout / 2)
                if waiting_since is not None and loop.time() - waiting_since > self._close_timeout:
                    logger.warning("aborting a streamed response whose client does not read")
                    aborted = True
                    abort()
                    return

        watcher = asyncio.create_task(watch(abort)) if abort is not None else None
        try:
            await super().__call__(scope, receive, sending)
        except (OSError, ClientDisconnect):
            if not aborted:
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
            # The body's own clean-up (a foreground request cancelled) runs now, not
            # whenever the abandoned generator is collected.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()
