"""A real tokenwire server on a loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tokenwire.app import (
    Backends,
    backends_for,
    build_app,
    build_gateway,
    gateway_for,
    uvicorn_config,
)
from tokenwire.cli import GracefulServer
from tokenwire.core.gateway import Gateway
from tokenwire.core.tools import Capabilities
from tokenwire.settings import Settings, load_settings

# Bytes; the kernel doubles it and keeps a minimum of its own.
SMALL_SEND_BUFFER = 4096


def free_port() -> int:
    """A port free now, for what cannot be handed a bound socket; prefer port 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulated_settings(**tables: Any) -> Settings:
    """Settings serving only the simulated provider, with table overrides."""
    overrides: dict[str, Any] = {"providers": [{"name": "simulated", "kind": "simulated"}]}
    overrides.update(tables)
    return load_settings(None, overrides)


class RunningServer:
    def __init__(self, url: str, gateway: Gateway, server: GracefulServer) -> None:
        self.url = url
        self.ws_url = url.replace("http", "ws", 1) + "/ws/ai-stream"
        self.gateway = gateway
        self.server = server

    def shrink_send_buffer(self, client: tuple[str, int]) -> None:
        """Give the server's end of the connection from `client` (the client socket's own
        address) a send buffer of a few KiB, as a link whose window stays shut would.

        On loopback the kernel grows a socket's send buffer to megabytes (`tcp_wmem`)
        before a send waits: a test of a client that does not read would otherwise wait
        for the server to produce that much, which takes seconds of CPU on a loaded
        machine."""
        for connection in list(self.server.server_state.connections):
            transport = connection.transport
            if transport is not None and transport.get_extra_info("peername") == client:
                sock = transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SEND_BUFFER)
                return
        raise AssertionError(f"no connection from {client}")


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings | None = None,
    gateway: Gateway | None = None,
    environ: Mapping[str, str] | None = None,
    backends: Backends | None = None,
) -> AsyncIterator[RunningServer]:
    """A server on a free port; `environ` holds the secrets its settings name. A given
    gateway on Redis comes with the `backends` it was built with (`gateway_with`)."""
    settings = settings or simulated_settings()
    # Bound here and handed to uvicorn, as `tokenwire serve` does: a port chosen first
    # and bound later could be taken in between (by another xdist worker, say).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
        if gateway is None:
            backends = backends or backends_for(settings)
            gateway = build_gateway(settings, backends)
        app = build_app(settings, gateway, environ=environ or {}, backends=backends)
        config = uvicorn_config(settings, app, "127.0.0.1", port)
        server = GracefulServer(config, gateway, settings.server.shutdown_grace_seconds)
        # The test process keeps its own signal handlers.
        server.capture_signals = contextlib.nullcontext  # type: ignore[assignment,method-assign]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        try:
            yield RunningServer(f"http://127.0.0.1:{port}", gateway, server)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 20)


class WsClient:
    """A recording WebSocket client for tests."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    async def send(self, obj: Any) -> None:
        await self.ws.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return frame

    async def until_end(
        self, request_id: str | None = None, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Frames up to the stream_end of `request_id` (or of any request)."""
        frames = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                frames.append(frame)
                if frame.get("event_type") == "stream_end" and (
                    request_id is None or frame["request_id"] == request_id
                ):
                    return frames

    async def ask(self, prompt: str, **fields: Any) -> list[dict[str, Any]]:
        await self.send({"type": "ai_request", "prompt": prompt, **fields})
        return await self.until_end(fields.get("request_id"))


@contextlib.asynccontextmanager
async def ws_client(
    server: RunningServer, query: str = "", **options: Any
) -> AsyncIterator[WsClient]:
    """A connected client (`options` go to `websockets.connect`: headers, subprotocols)."""
    async with connect(server.ws_url + query, max_size=2**24, **options) as ws:
        client = WsClient(ws)
        client.hello = await client.recv()
        yield client


@contextlib.asynccontextmanager
async def dropping_client(ws_url: str) -> AsyncIterator[WsClient]:
    """A connected client that leaves without a close frame, as a lost link does: the test
    may drop it at any point (`client.ws.transport.abort()`), and it is dropped so at the
    end whatever happens."""
    ws = await connect(ws_url, max_size=2**24)
    client = WsClient(ws)
    try:
        client.hello = await client.recv()
        yield client
    finally:
        ws.transport.abort()


def of_type(frames: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("event_type") == event_type]


def gateway_with(
    *providers: Any,
    settings: Settings | None = None,
    capabilities: Capabilities | None = None,
    backends: Backends | None = None,
) -> Gateway:
    """A gateway serving these provider objects (the first is the default), each with
    `capabilities` (none beyond text unless given), on `backends` if given."""
    from tokenwire.core.route import ProviderProfile, ProviderSlot
    from tokenwire.settings import ProviderSettings

    names = [p.name for p in providers]
    settings = settings or simulated_settings()
    settings = settings.model_copy(
        update={
            "providers": [ProviderSettings(name=n, kind="simulated") for n in names],
            "routing": settings.routing.model_copy(update={"default_provider": names[0]}),
        }
    )
    profile = ProviderProfile(capabilities=capabilities or Capabilities())
    slots = {p.name: ProviderSlot(p, profile) for p in providers}
    return gateway_for(settings, slots, backends)
