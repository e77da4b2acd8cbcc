"""Errors in each HTTP dialect's own shape, so that each SDK raises its own exception class.

The status comes from the one mapping in `protocol/errors.py`; the body is what
the dialect's clients parse: OpenAI's `{"error": {"message", "type", "param",
"code"}}` and Anthropic's `{"type": "error", "error": {"type", "message"}}`. A
`retry-after` header goes with every error that has a `retry_after`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

from tokenwire.protocol.errors import TokenwireError, http_headers, http_status

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    410: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    410: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def openai_error_body(error: TokenwireError) -> dict[str, Any]:
    status = http_status(error)
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "error": {
            "message": error.message,
            "type": kind,
            "param": None,
            "code": error.error_type,
        }
    }


def openai_error(error: TokenwireError) -> JSONResponse:
    return JSONResponse(
        openai_error_body(error), status_code=http_status(error), headers=http_headers(error)
    )


def anthropic_error_body(error: TokenwireError) -> dict[str, Any]:
    status = http_status(error)
    kind = _ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def anthropic_error(error: TokenwireError) -> JSONResponse:
    return JSONResponse(
        anthropic_error_body(error),
        status_code=http_status(error),
        headers=http_headers(error),
    )


def speaks_anthropic(path: str, headers: Mapping[str, str]) -> bool:
    """Whether a call is Anthropic's: under `/v1/messages`, or sent by an Anthropic client
    (its SDKs send `anthropic-version` and `x-api-key` on every call, `/v1/models`
    included; OpenAI's send neither)."""
    return (
        path == "/v1/messages"
        or path.startswith("/v1/messages/")
        or "anthropic-version" in headers
        or "x-api-key" in headers
    )


def dialect_error(
    path: str, headers: Mapping[str, str]
) -> Callable[[TokenwireError], JSONResponse]:
    """The error renderer of the dialect a call speaks."""
    return anthropic_error if speaks_anthropic(path, headers) else openai_error


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    type: str
    error: AnthropicErrorDetail


_MEANINGS = {
    400: "a malformed body or an invalid parameter",
    402: "no provider fits the request's cost limit",
    404: "an unknown model, response or request",
    410: "events no longer held",
    413: "the body is too large",
    415: "the body is not declared as JSON (send Content-Type: application/json)",
    429: "rate limited, or every provider busy (see retry-after)",
    500: "a defect in tokenwire",
    502: "the upstream provider failed",
    503: "the provider is out of service, or the server is shutting down",
    504: "no answer within the deadline",
}


# Answered by the HTTP protocol before any route runs (transports/uvicorn_http.py), in
# plain text: a URL or header past the bounds of request_head.py (a long query string).
_HEAD_TOO_LARGE = {
    "description": "the request head is too large (a URL line or header over 8 KiB)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def documented(body: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The error responses of a dialect's operations, for the OpenAPI document."""
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": body, "description": text} for status, text in _MEANINGS.items()
    }
    return {**errors, 431: _HEAD_TOO_LARGE}
