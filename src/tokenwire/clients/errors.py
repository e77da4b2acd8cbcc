"""The client's exceptions: one small hierarchy under `ClientError`.

What the server says goes as `ServerError` with its wire `error_type`, so that one
`except ServerError as e: if e.error_type == "rate_limited": ...` handles any of
them; what went wrong on the way (no server, a refused handshake, a link that
could not be mended) has a class of its own.
"""

from __future__ import annotations

from tokenwire.protocol.server_events import ErrorData


class ClientError(Exception):
    """Base of every error `tokenwire.client` raises."""


class ServerUnreachable(ClientError):
    """No connection could be opened: nothing listens there, the name does not resolve,
    or the handshake timed out."""


class HandshakeRefused(ClientError):
    """The server answered the WebSocket handshake with an HTTP error."""

    def __init__(
        self, status: int, error_type: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{message} (HTTP {status}, {error_type})")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after


class AuthenticationRefused(HandshakeRefused):
    """401 or 403: a missing, bad or expired credential, or an origin not allowed.
    Retrying with the same credential cannot help, so the client never does."""


class ConnectionLost(ClientError):
    """The link dropped and could not be restored within the reconnect policy; the
    streams it carried are lost to this client (the server keeps them for its resume
    grace, so another client may still `attach`)."""


class ServerError(ClientError):
    """An `error` event: the server's own `error_type`, message and details."""

    def __init__(self, data: ErrorData) -> None:
        super().__init__(f"{data.error_type}: {data.error}")
        self.error_type: str = data.error_type
        self.message: str = data.error
        self.request_id: str | None = data.request_id
        self.retry_after: float | None = data.retry_after
        self.data = data


class RequestRefused(ServerError):
    """The server refused the request before it started: no `stream_start`, no
    `stream_end` (a bad request, a limit, an unknown request id to attach to)."""


class StreamFailed(ServerError):
    """The stream ended with status `error`. Raised after the `error` and `stream_end`
    events have been yielded, so that a loop that only prints text still stops with
    the reason."""
