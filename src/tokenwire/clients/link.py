"""Opening one WebSocket to tokenwire, with every way that can fail as a `ClientError`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from tokenwire.clients.errors import (
    AuthenticationRefused,
    ConnectionLost,
    HandshakeRefused,
    ServerUnreachable,
)
from tokenwire.protocol.server_events import Connected, ConnectionStatus, parse_server_frame

# A compact resume of a long answer is one frame of the whole text so far; the
# server's own bound on a request's log is 8 MiB by default.
MAX_FRAME_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Link:
    """An open connection and the session the server gave it."""

    ws: ClientConnection
    session_id: str


async def open_link(url: str, token: str | None, open_timeout: float) -> Link:
    """Connect and read the `connected` status; the credential, if any, goes as the
    `bearer.<token>` subprotocol (never in the URL, where logs would keep it)."""
    protocols = [Subprotocol(f"bearer.{token}")] if token else None
    try:
        ws = await connect(
            url, subprotocols=protocols, open_timeout=open_timeout, max_size=MAX_FRAME_BYTES
        )
    except InvalidStatus as exc:
        raise refusal(exc.response.status_code, exc.response.headers, exc.response.body) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise ServerUnreachable(f"cannot reach {url}: {_reason(exc)}") from exc
    try:
        hello = parse_server_frame(await ws.recv())
    except ConnectionClosed as exc:
        raise ConnectionLost(f"{url} closed the connection at once ({exc})") from exc
    if not (isinstance(hello, ConnectionStatus) and isinstance(hello.data, Connected)):
        await ws.close()
        raise ServerUnreachable(f"{url} did not greet as tokenwire does")
    return Link(ws, hello.data.session_id)


def refusal(status: int, headers: Any, body: bytes | bytearray | None) -> HandshakeRefused:
    """A refused handshake from its status and tokenwire's JSON error body."""
    error_type, message = f"http_{status}", f"the server refused the connection (HTTP {status})"
    try:
        error = json.loads(body or b"")["error"]
        error_type, message = str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry_after = _seconds(headers.get("retry-after")) if headers is not None else None
    kind = AuthenticationRefused if status in (401, 403) else HandshakeRefused
    return kind(status, error_type, message, retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # "connection refused", not asyncio's wording
    return str(exc) or type(exc).__name__
