"""The access middleware: origin, credential, admin rights and connection limits, for
every HTTP call and every WebSocket handshake, before the app sees it.

What it decides lands in the scope: `tokenwire.identity` (who), `tokenwire.client`
(from where) and, for a WebSocket, `tokenwire.subprotocol` (what to accept). A
refusal is the transport's own: an HTTP error in the endpoint's dialect (the
`render` function), or a refused WebSocket handshake (401, 403, 429) before any
event. Starlette's CORS middleware does not cover WebSocket routes; the origin
check here covers both, and answers browsers' CORS preflights for allowed
origins. A WebSocket, and a generation call of the `/v1` dialects for as long as
it runs, holds one of its user's connection slots (`[limits] max_connections`);
SSE responses take theirs in `transports/sse.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenwire.protocol.errors import (
    AuthenticationFailed,
    Forbidden,
    TokenwireError,
    http_status,
    retry_after_header,
)
from tokenwire.security.access import (
    ADMIN_PATHS,
    AccessPolicy,
    chosen_subprotocol,
    client_address,
    credential_of,
)
from tokenwire.security.audit import audit
from tokenwire.security.auth import Identity

Render = Callable[[str, TokenwireError], Response]

IDENTITY = "tokenwire.identity"
CLIENT = "tokenwire.client"
SUBPROTOCOL = "tokenwire.subprotocol"
# The /v1 calls that generate: each holds a connection while it runs, as a stream on
# the other transports does. Counted before the endpoint runs, so that a refused call
# starts nothing (whether it streams is only known from its body).
V1_GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/responses", "/v1/messages"})


class AccessMiddleware:
    def __init__(self, app: ASGIApp, policy: AccessPolicy, render: Render) -> None:
        self._app = app
        self._policy = policy
        self._render = render

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    # -- HTTP -----------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy, headers = self._policy, Headers(scope=scope)
        path: str = scope["path"]
        origin = headers.get("origin")
        scope[CLIENT] = self._client(scope, headers)
        if not policy.host_allowed(headers.get("host")):
            audit("host refused", reason=headers.get("host", "")[:200], client=scope[CLIENT])
            await self._refuse(scope, receive, send, Forbidden("this host name is not served"))
            return
        if origin is not None and not policy.origin_allowed(origin, headers.get("host")):
            audit("origin refused", reason=origin[:200], client=scope[CLIENT])
            await self._refuse(scope, receive, send, Forbidden("this origin is not allowed"))
            return
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        if origin is not None and preflight:
            await self._preflight(origin, headers.get("access-control-request-headers"), send)
            return
        release = _nothing
        if not policy.is_open(path):
            try:
                identity = scope[IDENTITY] = self._identity(scope, headers, path)
                if policy.connections is not None and _generates(scope):
                    release = await policy.connections.open(identity.user_id, scope[CLIENT])
            except TokenwireError as exc:
                await self._refuse(scope, receive, send, exc)
                return
        try:
            await self._app(scope, receive, _with_cors(send, origin) if origin else send)
        finally:
            release()

    async def _preflight(self, origin: str, requested: str | None, send: Send) -> None:
        # The SDKs send headers of their own (x-stainless-*, anthropic-*); credentials
        # travel in headers, never cookies, so the headers asked for may all be allowed.
        allowed = requested if requested and len(requested) <= 2048 else None
        response = Response(
            status_code=204,
            headers={
                "access-control-allow-origin": origin,
                "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
                "access-control-allow-headers": allowed or ", ".join(self._policy.cors_headers),
                "access-control-max-age": "600",
                "vary": "Origin",
            },
        )
        await response({"type": "http"}, _no_receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: TokenwireError
    ) -> None:
        self._policy.telemetry.refused(error)
        response = self._render(scope["path"], error)
        if isinstance(error, AuthenticationFailed):
            response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)

    # -- WebSocket ----------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy, headers = self._policy, Headers(scope=scope)
        client = scope[CLIENT] = self._client(scope, headers)
        try:
            if policy.throttle is not None and client is not None:
                policy.throttle.handshake(client)
            if not policy.host_allowed(headers.get("host")):
                audit("host refused", reason=headers.get("host", "")[:200], client=client)
                raise Forbidden("this host name is not served")
            origin = headers.get("origin")
            if origin is not None and not policy.origin_allowed(origin, headers.get("host")):
                audit("origin refused", reason=origin[:200], client=client)
                raise Forbidden("this origin is not allowed")
            identity = scope[IDENTITY] = self._identity(scope, headers, scope["path"])
            release = (
                await policy.connections.open(identity.user_id, client)
                if policy.connections is not None
                else _nothing
            )
        except TokenwireError as exc:
            policy.telemetry.refused(exc)
            await _refuse_handshake(receive, send, exc)
            return
        scope[SUBPROTOCOL] = chosen_subprotocol(scope.get("subprotocols") or ())
        try:
            await self._app(scope, receive, send)
        finally:
            release()

    # -- both -------------------------------------------------------------------

    def _client(self, scope: Scope, headers: Headers) -> str | None:
        peer = scope.get("client")
        return client_address(peer[0] if peer else None, headers, self._policy.trusted_proxies)

    def _identity(self, scope: Scope, headers: Headers, path: str) -> Identity:
        policy = self._policy
        query = QueryParams(scope.get("query_string", b""))
        client = scope.get(CLIENT)
        if not policy.authenticating:
            # Authentication off: the caller is who `user_id` says (CONTRACT.md).
            return policy.authenticator.authenticate(query.get("user_id") or None)
        credential = credential_of(headers, query, scope.get("subprotocols") or ())
        identity = policy.verify(credential, client)
        if path in ADMIN_PATHS and identity.user_id not in policy.admin_users:
            audit("admin view refused", reason=path, user=identity.user_id, client=client)
            raise Forbidden("this view is for administrators")
        return identity


def _generates(scope: Scope) -> bool:
    """A /v1 call that generates, or streams a stored response again."""
    method, path = scope["method"], scope["path"]
    if method == "POST":
        return path in V1_GENERATION_PATHS
    if method == "GET" and path.startswith("/v1/responses/"):
        return QueryParams(scope.get("query_string", b"")).get("stream") == "true"
    return False


def _with_cors(send: Send, origin: str) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["access-control-allow-origin"] = origin
            headers["access-control-expose-headers"] = "retry-after, tokenwire-request-id"
            headers.append("vary", "Origin")
        await send(message)

    return sending


async def _refuse_handshake(receive: Receive, send: Send, error: TokenwireError) -> None:
    """Refuse a WebSocket before accepting it: an HTTP status if the server can send one."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    body = orjson.dumps({"error": {"type": error.error_type, "message": error.message}})
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if isinstance(error, AuthenticationFailed):
        headers.append((b"www-authenticate", b"Bearer"))
    headers += [(k.encode(), v.encode()) for k, v in retry_after_header(error).items()]
    try:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": http_status(error),
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    except RuntimeError:
        # Without the HTTP-response extension: close before accepting (a 403 on the wire).
        await send({"type": "websocket.close", "code": 1008, "reason": error.error_type})


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _nothing() -> None:
    return None


def identity_of(scope: Any) -> Identity | None:
    identity = scope.get(IDENTITY)
    return identity if isinstance(identity, Identity) else None
