"""The FastAPI route class of the HTTP dialects: hostile-input checks and dialect errors.

FastAPI documents the request and response models (OpenAPI at `/openapi.json`)
and validates bodies with them; before it does, a body must be declared as JSON
(`Content-Type: application/json`) and goes through the same checks as a
WebSocket frame (size, NaN and Infinity, nesting depth), and every
failure, FastAPI's validation errors included, answers in the dialect's own
error shape rather than FastAPI's. So does a path under `/v1` that nothing serves
(404) or a method its path does not take (405, with an `allow` header): see
`unrouted`, the app's handler of Starlette's routing errors.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from tokenwire.protocol.errors import (
    InvalidJSON,
    InvalidRequest,
    MessageTooLarge,
    MethodNotAllowed,
    TokenwireError,
    UnknownEndpoint,
    excerpt,
)
from tokenwire.protocol.messages import decode_json, describe_errors
from tokenwire.transports.content_type import require_json
from tokenwire.transports.v1.errors import anthropic_error, dialect_error, openai_error

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DialectRoute(APIRoute):
    render_error: Callable[[TokenwireError], Response] = staticmethod(openai_error)

    def renderer(self, request: Request) -> Callable[[TokenwireError], Response]:
        """How this route's errors are rendered for this call."""
        return type(self).render_error

    def get_route_handler(self) -> Handler:
        original = super().get_route_handler()
        takes_body = self.body_field is not None
        body_type = self.body_field.field_info.annotation if self.body_field else None

        async def handler(request: Request) -> Response:
            render = self.renderer(request)
            try:
                if takes_body:
                    require_json(request.headers.get("content-type"))
                    await _check_body(request)
                return await original(request)
            except RequestValidationError as exc:
                return render(InvalidRequest(_described(exc.errors(), body_type)))
            except TokenwireError as exc:
                return render(exc)

        return handler


class OpenAIRoute(DialectRoute):
    render_error = staticmethod(openai_error)


class AnthropicRoute(DialectRoute):
    render_error = staticmethod(anthropic_error)


class EitherRoute(DialectRoute):
    """A path both dialects serve (`/v1/models`): errors in the shape of the caller's."""

    def renderer(self, request: Request) -> Callable[[TokenwireError], Response]:
        return dialect_error(request.url.path, request.headers)


def _described(errors: Sequence[Any], body_type: Any) -> str:
    """FastAPI's validation errors, named as the client knows the fields: a body's from
    its top (no `body.` prefix), a query parameter's by its name."""
    in_body, elsewhere = [], []
    for error in errors:
        where, *loc = error["loc"]
        if where == "body" and loc:
            in_body.append({**error, "loc": tuple(loc)})
        else:
            elsewhere.append({**error, "loc": tuple(loc) or (where,)})
    described = [describe_errors(in_body, model=body_type)] if in_body else []
    return "; ".join(described + ([describe_errors(elsewhere)] if elsewhere else []))


async def _check_body(request: Request) -> None:
    limit: int = request.app.state.sse.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise MessageTooLarge(f"the body exceeds {limit} bytes")
    try:
        body = await request.body()
    except ClientDisconnect:
        # Gone, or cut off by the body's deadline: the answer reaches nobody.
        raise InvalidRequest("the body did not arrive in full") from None
    if len(body) > limit:
        raise MessageTooLarge(f"the body exceeds {limit} bytes")
    if body:
        # FastAPI reads the body through `Request.json()`, which keeps what it parsed in
        # `_json`: handing it the value checked here spares a second parse of every body
        # (stdlib json, slower than orjson: about as much again on a long conversation).
        # Whatever passes these checks, json.loads reads as the same value.
        request._json = decode_json(utf8_text(body), what="the body")


def utf8_text(body: bytes) -> str:
    """The body as text, or `InvalidJSON` naming the first byte that is not UTF-8 (JSON
    is UTF-8; replacing such bytes would hand the model text the client never sent)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSON(f"the body is not valid UTF-8 (at byte {exc.start})") from None


def under_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


async def unrouted(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (no such path, a method the path does not take): in the
    dialect's shape under `/v1`, FastAPI's own elsewhere."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if not under_v1(path) or exc.status_code not in (404, 405):
        return await http_exception_handler(request, exc)
    call = f"{request.method[:16]} {excerpt(path, 128)}"
    render = dialect_error(path, request.headers)
    if exc.status_code == 404:
        return render(UnknownEndpoint(f"no such endpoint: {call}"))
    allow = _methods_of(request)
    return render(MethodNotAllowed(f"{call}: expected {' or '.join(allow)}", allow))


def _methods_of(request: Request) -> tuple[str, ...]:
    """Every method some route takes at this path. Starlette's 405 names only the first
    route that matched, and several share a path here (`/v1/responses/{id}`); the app
    keeps its `/v1` routes in `state.v1_routes` (FastAPI nests included routers)."""
    methods: set[str] = set()
    for route in request.app.state.v1_routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return tuple(sorted(methods))
