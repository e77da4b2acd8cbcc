"""The FastAPI route class of the HTTP dialects: hostile-input checks and dialect errors.

FastAPI documents the request and response models (OpenAPI at `/openapi.json`)
and validates bodies with them; before it does, a body must be declared as JSON
(`Content-Type: application/json`) and goes through the same checks as a
WebSocket frame (size, NaN and Infinity, nesting depth), and every
failure, FastAPI's validation errors included, answers in the dialect's own
error shape rather than FastAPI's.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tokenwire.protocol.errors import InvalidRequest, MessageTooLarge, TokenwireError
from tokenwire.protocol.messages import decode_json, describe_errors
from tokenwire.transports.content_type import require_json
from tokenwire.transports.v1.errors import anthropic_error, openai_error

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class DialectRoute(APIRoute):
    render_error: Callable[[TokenwireError], Response] = staticmethod(openai_error)

    def get_route_handler(self) -> Handler:
        original = super().get_route_handler()
        render = type(self).render_error
        takes_body = self.body_field is not None

        async def handler(request: Request) -> Response:
            try:
                if takes_body:
                    require_json(request.headers.get("content-type"))
                    await _check_body(request)
                return await original(request)
            except RequestValidationError as exc:
                return render(InvalidRequest(describe_errors(exc.errors())))
            except TokenwireError as exc:
                return render(exc)

        return handler


class OpenAIRoute(DialectRoute):
    render_error = staticmethod(openai_error)


class AnthropicRoute(DialectRoute):
    render_error = staticmethod(anthropic_error)


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
        decode_json(body.decode("utf-8", "replace"), what="the body")
