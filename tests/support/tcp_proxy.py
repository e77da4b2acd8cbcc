"""A TCP proxy on loopback whose connections a test can cut, as a network drop does:
both sides see their connection reset, with no close frame from either end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class CuttableProxy:
    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = 0
        """How many connections it has passed on (a reconnect makes one more)."""
        self.swallowing = False
        """While True, what clients send is dropped, as a link that dies on the way does."""
        self.swallowed = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def cut(self) -> None:
        """Reset every connection it carries now; new ones still pass."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def refuse(self) -> None:
        """Cut, and stop listening: connecting then is refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()

    async def close(self) -> None:
        await self.refuse()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers += [writer, up_writer]
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            pipe = asyncio.create_task(self._pipe(source, sink, upstream))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if upstream and self.swallowing:
                    self.swallowed += len(data)
                    continue
                sink.write(data)
                await sink.drain()
        sink.close()  # the other side closed: pass that on (a cut resets both at once)


@contextlib.asynccontextmanager
async def cuttable_proxy(target_port: int) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
