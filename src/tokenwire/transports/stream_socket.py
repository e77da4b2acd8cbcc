"""The WebSocket stream's way in, around FastAPI's middleware stack.

An idle connection holds, for as long as it lives, the coroutine frames of every
layer between the server and its handler. Through FastAPI that is eight layers
(server-error, telemetry, body-limit, exception and exit-stack middleware, the
router, the route and Starlette's session wrapper): some 9 KB per connection,
for layers that do nothing for this route (they act on HTTP, on FastAPI's
dependencies, or on exceptions the handler does not raise). `TokenwireApp` sends
a WebSocket on `STREAM_PATH` straight through the access middleware (origin,
credential, limits: the same checks, the same refusals) to the handler; every
other request goes through FastAPI as before.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from tokenwire.transports.websocket import ai_stream_endpoint

STREAM_PATH = "/ws/ai-stream"


class TokenwireApp(FastAPI):
    # Set by `build_app`: the handler behind the access middleware.
    stream_socket: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.stream_socket is not None
            and scope["type"] == "websocket"
            and scope["path"] == STREAM_PATH
            and not scope.get("root_path")
        ):
            scope["app"] = self  # what Starlette sets: the handler reads `app.state`
            await self.stream_socket(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def stream_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app of the stream's WebSocket (behind the access middleware)."""
    await ai_stream_endpoint(WebSocket(scope, receive, send))
