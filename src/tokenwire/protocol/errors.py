"""The one exception hierarchy of tokenwire, and its mapping onto the wire.

Every error a client can see is a `TokenwireError` subclass carrying its wire
`error_type`. How an error becomes an event payload, an HTTP status or a
WebSocket close code is decided here and nowhere else.
"""

from __future__ import annotations

import math
from typing import Any

from tokenwire.protocol.events import encode_json

EXCERPT_CHARS = 32


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped quotation of client input for an error message.

    Errors quote what they complain about so that the client can find it, but never
    more than `limit` characters of it, and always JSON-escaped, so that a hostile
    value can neither bloat the error nor break the line it is logged on.
    """
    text = value if isinstance(value, str) else encode_json(value)
    if len(text) <= limit:
        return encode_json(text)
    return f"{encode_json(text[:limit])}... ({len(text)} characters)"


class TokenwireError(Exception):
    """Base of every error that reaches a client."""

    error_type = "internal_error"
    # Set where an error about a request is raised before that request exists.
    request_id: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Extra fields a subclass adds to the error event."""
        return {}


class InvalidJSON(TokenwireError):
    error_type = "invalid_json"


class InvalidMessage(TokenwireError):
    """A frame that is JSON but not a client message (not an object, no type, binary)."""

    error_type = "invalid_message"


class UnknownMessageType(TokenwireError):
    error_type = "unknown_message_type"


class InvalidRequest(TokenwireError):
    """A well-formed message whose content is wrong (bad prompt, config, options)."""

    error_type = "invalid_request"


class NotJson(InvalidRequest):
    """An HTTP body not declared as JSON: the caller is told to send the content type."""


class PastTheEnd(InvalidRequest):
    """A re-attach after the `stream_end` of a finished request: nothing can come. The
    WebSocket answers it as `invalid_request`; SSE answers 204 so that EventSource stops."""


class UnsupportedFeature(TokenwireError):
    """A well-formed request for something the chosen provider (or tokenwire) does not
    offer: seeing images, counting tokens exactly, and soon calling tools."""

    error_type = "unsupported_feature"


class UnknownEndpoint(TokenwireError):
    """An HTTP path that nothing serves."""

    error_type = "not_found"


class MethodNotAllowed(TokenwireError):
    """An HTTP path that is served, called with a method it does not take."""

    error_type = "method_not_allowed"

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow


class UnknownRequest(TokenwireError):
    """A request id that is not running, or not the caller's to touch."""

    error_type = "unknown_request"


class UnknownModel(TokenwireError):
    """An HTTP dialect's `model` that names no provider (nor `auto`)."""

    error_type = "model_not_found"


class MessageTooLarge(TokenwireError):
    error_type = "message_too_large"


class NotRecovered(TokenwireError):
    """Events a client asked to replay are no longer held (the log dropped them)."""

    error_type = "not_recovered"


class SendBufferOverflow(TokenwireError):
    """The client did not read fast enough: what was queued for it is dropped."""

    error_type = "send_buffer_overflow"


class InvalidText(TokenwireError):
    """A text frame that is not UTF-8."""

    error_type = "invalid_text"


class ProviderError(TokenwireError):
    """The upstream failed, or ended its stream without its end marker."""

    error_type = "provider_error"
    # Worth trying the same provider again (5xx, a dropped connection, 429)?
    retryable = True
    # Does this failure say the provider is unwell (for its circuit breaker)?
    counts_against_provider = True


class UpstreamRejected(ProviderError):
    """The upstream refused the request itself (a 4xx other than 401/403/429)."""

    retryable = False
    counts_against_provider = False


class InvalidOutput(ProviderError):
    """A whole answer that does not meet the structured output the request asked for
    (core/structured.py): reported as such, never passed off as valid."""

    error_type = "invalid_output"
    retryable = False
    counts_against_provider = False


class ProviderAuthError(ProviderError):
    error_type = "provider_auth_error"
    retryable = False


class RateLimited(ProviderError):
    error_type = "rate_limited"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {} if self.retry_after is None else {"retry_after": self.retry_after}


class ProviderUnavailable(TokenwireError):
    """The provider asked for is out of service (its circuit is open)."""

    error_type = "provider_unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {} if self.retry_after is None else {"retry_after": round(self.retry_after, 3)}


class ProviderBusy(ProviderUnavailable):
    """Every candidate provider stayed at its concurrency limit for the queue timeout."""

    error_type = "provider_busy"


class CostLimitExceeded(TokenwireError):
    """No provider can answer within `config.cost_limit`, or the answer reached it."""

    error_type = "cost_limit_exceeded"


class RequestTimeout(TokenwireError):
    """A deadline passed: the request's own, the wait for a provider's first token, or
    the longest silence between tokens. `deadline` says which (`request`, `first_token`,
    `silence`); None where a provider's client library timed out by itself."""

    error_type = "timeout"

    def __init__(self, message: str, deadline: str | None = None) -> None:
        super().__init__(message)
        self.deadline = deadline

    def details(self) -> dict[str, Any]:
        return {} if self.deadline is None else {"deadline": self.deadline}


class RequestCancelled(TokenwireError):
    """The request was cancelled (from another connection of its user) before it answered."""

    error_type = "request_cancelled"


class ShuttingDown(TokenwireError):
    error_type = "shutting_down"


class AuthenticationFailed(TokenwireError):
    """A credential is missing, malformed, expired or not ours (never says which secret)."""

    error_type = "authentication_failed"


class Forbidden(TokenwireError):
    """Known caller, not allowed here: an origin not allowed, an admin view for a non-admin."""

    error_type = "forbidden"


class PromptTooLong(TokenwireError):
    error_type = "prompt_too_long"


class ImageLimitExceeded(TokenwireError):
    """Past `max_images_per_request`, `max_image_bytes` or `max_image_request_bytes`."""

    error_type = "image_limit_exceeded"


class TooManyStreams(TokenwireError):
    """Past `max_streams_per_connection` or `max_streams_per_user`."""

    error_type = "too_many_streams"


class TooManyConnections(TokenwireError):
    """Past `max_connections` or `max_connections_per_user`, or too many handshakes."""

    error_type = "too_many_connections"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {} if self.retry_after is None else {"retry_after": round(self.retry_after, 3)}


class RequestRateLimited(TooManyConnections):
    """The caller's own request or token rate (not a provider's)."""

    error_type = "rate_limited"


class BudgetExceeded(TooManyConnections):
    """The caller's spend today reached `budget_usd_per_user_per_day`."""

    error_type = "budget_exceeded"


class BackendUnavailable(TokenwireError):
    """The shared store (Redis) that this request needs cannot be reached from this node."""

    error_type = "backend_unavailable"


class StreamInterrupted(TokenwireError):
    """The node that ran the request died (its lease lapsed) before the request ended."""

    error_type = "stream_interrupted"


class InternalError(TokenwireError):
    """A defect in tokenwire itself; the message never carries internals."""

    error_type = "internal_error"


_HTTP_STATUS: dict[type[TokenwireError], int] = {
    InvalidJSON: 400,
    InvalidMessage: 400,
    UnknownMessageType: 400,
    InvalidRequest: 400,
    UnsupportedFeature: 400,
    NotJson: 415,
    UnknownEndpoint: 404,
    MethodNotAllowed: 405,
    UnknownRequest: 404,
    UnknownModel: 404,
    NotRecovered: 410,
    MessageTooLarge: 413,
    RateLimited: 429,
    ProviderBusy: 429,
    ProviderUnavailable: 503,
    CostLimitExceeded: 402,
    ProviderAuthError: 502,
    ProviderError: 502,
    RequestTimeout: 504,
    ShuttingDown: 503,
    BackendUnavailable: 503,
    StreamInterrupted: 502,
    RequestCancelled: 409,
    AuthenticationFailed: 401,
    Forbidden: 403,
    PromptTooLong: 413,
    ImageLimitExceeded: 413,
    TooManyStreams: 429,
    TooManyConnections: 429,
}

_CLOSE_CODE: dict[type[TokenwireError], int] = {
    AuthenticationFailed: 1008,
    Forbidden: 1008,
    TooManyConnections: 1013,
    InvalidText: 1007,
    MessageTooLarge: 1009,
    SendBufferOverflow: 1013,
    ShuttingDown: 1001,
}


def error_payload(error: TokenwireError, request_id: str | None) -> dict[str, Any]:
    """The `data` of an `error` event."""
    return {
        "error": error.message,
        "error_type": error.error_type,
        "request_id": request_id,
        **error.details(),
    }


def http_status(error: TokenwireError) -> int:
    for cls in type(error).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]
    return 500


def retry_after_header(error: TokenwireError) -> dict[str, str]:
    """`retry-after` for an HTTP answer to an error that has a `retry_after`, in whole
    seconds (rounded up: a client that waits that long finds room)."""
    seconds = getattr(error, "retry_after", None)
    if seconds is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def http_headers(error: TokenwireError) -> dict[str, str]:
    """The headers an HTTP answer to `error` carries: `retry-after`, and the `allow` of a 405."""
    headers = retry_after_header(error)
    if isinstance(error, MethodNotAllowed):
        headers["allow"] = ", ".join(error.allow)
    return headers


def close_code(error: TokenwireError) -> int:
    """The WebSocket close code for an error that ends a connection."""
    for cls in type(error).__mro__:
        if cls in _CLOSE_CODE:
            return _CLOSE_CODE[cls]
    return 1011


def _error_classes() -> dict[str, type[TokenwireError]]:
    found: dict[str, type[TokenwireError]] = {}
    pending: list[type[TokenwireError]] = [TokenwireError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.error_type, cls)
        pending.extend(cls.__subclasses__())
    return found


def error_for(error_type: str, message: str, retry_after: float | None = None) -> TokenwireError:
    """The error of wire type `error_type` (as an `error` event describes it)."""
    cls = _error_classes().get(error_type, InternalError)
    if issubclass(cls, RateLimited | ProviderUnavailable | TooManyConnections):
        return cls(message, retry_after)
    error = cls(message)
    if retry_after is not None:
        error.retry_after = retry_after  # type: ignore[attr-defined]
    return error
