"""An https server on loopback that serves images, under a certificate from a test CA.

What tokenwire fetches for a provider that needs bytes is fetched from here: each
path is scripted (`server.routes["/cat.png"] = Route(body=PNG)`): a body, a status,
a redirect, a pause before the body. HTTP/1.1 is written by hand so that what goes
over the wire (a Content-Length that lies, a body that never comes) is the test's.
The client trusts the CA through `server.client_context()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trustme

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(48))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(40))


@dataclass
class Route:
    body: bytes = PNG
    status: int = 200
    location: str | None = None
    # Hold the body back until this event is set (a server too slow to answer).
    hold: asyncio.Event | None = None
    # False: no Content-Length, the body runs until the connection closes.
    length: bool = True


class ImageServer:
    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            route = self.routes.get(path, Route(body=b"not found", status=404))
            headers = [f"HTTP/1.1 {route.status} X"]
            if route.length:
                headers.append(f"Content-Length: {len(route.body)}")
            else:
                headers.append("Connection: close")
            if route.location is not None:
                headers.append(f"Location: {route.location}")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
            await writer.drain()
            if route.hold is not None:
                await route.hold.wait()
            writer.write(route.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def running_image_server() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    await server.start()
    try:
        yield server
    finally:
        for route in server.routes.values():
            if route.hold is not None:
                route.hold.set()
        await server.stop()
