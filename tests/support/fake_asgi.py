"""An in-memory ASGI WebSocket, for driving a `Connection` without a server or a socket.

The server side is a real `starlette.websockets.WebSocket` (its state checks
included) over an ASGI receive that takes from a queue the test fills, and an
ASGI send that records what the client got. The client's reading can be held:
while `reading` is clear, every send after the handshake waits, as it would on a
socket whose peer stopped reading.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket


class FakeClient:
    def __init__(self, query: str = "user_id=ada") -> None:
        self._inbound: asyncio.Queue[Message] = asyncio.Queue()
        self._inbound.put_nowait({"type": "websocket.connect"})
        self.received: list[Message] = []
        """What reached the client, in order (the handshake's accept included)."""
        self.reading = asyncio.Event()
        self.reading.set()
        self.sends_waiting = 0
        """Sends held because the client is not reading."""
        self.receive_calls = 0
        """How often the server asked for the client's next message."""
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": "/ws/ai-stream",
            "raw_path": b"/ws/ai-stream",
            "query_string": query.encode(),
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "subprotocols": [],
            "extensions": {},
        }
        self.websocket = WebSocket(scope, self._receive, self._send)

    # -- the client's side ------------------------------------------------------

    def send_json(self, obj: Any) -> None:
        self._inbound.put_nowait({"type": "websocket.receive", "text": json.dumps(obj)})

    def disconnect(self, code: int = 1000) -> None:
        self._inbound.put_nowait({"type": "websocket.disconnect", "code": code})

    def stop_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    @property
    def close_message(self) -> Message | None:
        """The server's close, once it reached the client."""
        return next((m for m in self.received if m["type"] == "websocket.close"), None)

    def texts(self, before_close: bool = False) -> list[dict[str, Any]]:
        """The text frames the client got, decoded (only those before the close, if asked)."""
        frames = []
        for message in self.received:
            if message["type"] == "websocket.close" and before_close:
                break
            if message["type"] == "websocket.send" and message.get("text") is not None:
                frames.append(json.loads(message["text"]))
        return frames

    # -- ASGI -----------------------------------------------------------------

    async def _receive(self) -> Message:
        self.receive_calls += 1
        return await self._inbound.get()

    async def _send(self, message: Message) -> None:
        if message["type"] != "websocket.accept" and not self.reading.is_set():
            self.sends_waiting += 1
            try:
                await self.reading.wait()
            finally:
                self.sends_waiting -= 1
        self.received.append(message)
