"""`SyncStreamClient`: the `StreamClient` for code without an event loop.

The async client runs on a loop of its own in a daemon thread; every call hands
a coroutine to that loop and waits for its result. A Ctrl-C (KeyboardInterrupt)
in the waiting thread leaves the loop's work running: the next `next()` on the
same stream picks up the very event it was waiting for, so that none is lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from tokenwire.clients.stream import Stream
from tokenwire.clients.stream_client import StreamClient
from tokenwire.protocol.server_events import RequestSummary, ServerEvent, StreamEnd

T = TypeVar("T")


class SyncStreamClient:
    """`with SyncStreamClient(url, token) as client:`
    `for event in client.stream("Hi"): ...`

    The same arguments and behaviour as `StreamClient` (reconnect and resume included).
    """

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tokenwire-client", daemon=True
        )
        self._thread.start()
        self._client: StreamClient = self._call(_build(url, token, options))

    def __enter__(self) -> SyncStreamClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # `__exit__` is not called when `__enter__` fails
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        return self._client.url

    @property
    def session_id(self) -> str | None:
        return self._client.session_id

    def connect(self) -> None:
        self._call(self._client.connect())

    def close(self) -> None:
        """Close the connection (1000) and stop the client's thread."""
        if self._loop.is_closed():
            return
        try:
            self._call(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def stream(self, prompt: str | None = None, **options: Any) -> SyncStream:
        return SyncStream(self, self._client.stream(prompt, **options))

    def attach(self, request_id: str, last_seq: int = 0, *, compact: bool = False) -> SyncStream:
        return SyncStream(self, self._client.attach(request_id, last_seq, compact=compact))

    def cancel(self, request_id: str) -> None:
        self._call(self._client.cancel(request_id))

    def list_requests(self) -> list[RequestSummary]:
        return self._call(self._client.list_requests())

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._submit(coroutine).result()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)


class SyncStream(Iterator[ServerEvent]):
    """A request's events as a plain iterator (see `Stream`)."""

    def __init__(self, client: SyncStreamClient, stream: Stream) -> None:
        self._client = client
        self._stream = stream
        self._pending: concurrent.futures.Future[ServerEvent] | None = None

    @property
    def request_id(self) -> str:
        return self._stream.request_id

    @property
    def text(self) -> str:
        return self._stream.text

    @property
    def end(self) -> StreamEnd | None:
        return self._stream.end

    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> ServerEvent:
        if self._pending is None:
            self._pending = self._client._submit(_next(self._stream))
        try:
            event = self._pending.result()
        except StopAsyncIteration:
            self._pending = None
            raise StopIteration from None
        except KeyboardInterrupt:
            raise  # the pending future is kept: the next call waits on it
        except BaseException:
            self._pending = None
            raise
        self._pending = None
        return event

    def cancel(self) -> None:
        self._client.cancel(self.request_id)


async def _build(url: str, token: str | None, options: dict[str, Any]) -> StreamClient:
    # Built on the client's loop, where its queues and tasks will live.
    return StreamClient(url, token, **options)


async def _next(stream: Stream) -> ServerEvent:
    return await stream.__anext__()
