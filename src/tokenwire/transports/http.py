"""Plain HTTP endpoints: the front page, health, readiness, statistics and sessions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from html import escape
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, WebSocketRoute

from tokenwire.core.gateway import Gateway
from tokenwire.core.stats import cluster_sessions, cluster_snapshot, sessions_snapshot
from tokenwire.protocol.errors import TokenwireError, http_status, retry_after_header
from tokenwire.transports.web import chat_page, wants_html

# What each path is for, as the front page says it; a route without an entry here is
# a test failure (tests/integration/test_front_page.py), so that none goes unlisted.
ABOUT = {
    "/": "the chat page for a browser; this list as JSON for any other client",
    "/api": "this list (JSON, or HTML for a browser)",
    "/healthz": "liveness: the process answers",
    "/readyz": "readiness: every provider can serve and Redis, if used, answers "
    "(503 with the reason otherwise)",
    "/ws/ai-stream": "WebSocket: the streaming protocol, docs/protocol.md "
    "(a plain GET is answered 426)",
    "/api/streams": "Server-Sent Events: POST to start a request, GET to list yours",
    "/api/streams/{request_id}/events": "Server-Sent Events: re-attach after Last-Event-ID",
    "/api/streams/{request_id}": "DELETE to cancel a request",
    "/api/streaming/stats": "streaming statistics (admin)",
    "/api/streaming/sessions": "open sessions (admin)",
    "/api/providers": "the providers and their live health (admin)",
    "/v1/models": "OpenAI and Anthropic APIs: the provider names to use as model, and auto",
    "/v1/models/{model_id}": "OpenAI and Anthropic APIs: one model",
    "/v1/chat/completions": "OpenAI Chat Completions",
    "/v1/responses": "OpenAI Responses",
    "/v1/responses/{response_id}": "OpenAI Responses: retrieve, resume a stream, or DELETE",
    "/v1/responses/{response_id}/input_items": "OpenAI Responses: a response's input items",
    "/v1/responses/{response_id}/cancel": "OpenAI Responses: cancel a background response",
    "/v1/messages": "Anthropic Messages",
    "/v1/messages/count_tokens": "Anthropic Messages: count a request's input tokens",
    "/metrics": "Prometheus metrics (text format), docs/deployment.md",
    "/openapi.json": "the OpenAPI document of the HTTP APIs",
    "/docs": "interactive API docs (Swagger UI)",
    "/static/docs": "the API docs' scripts and styles",
    "/static": "the chat page's scripts and styles, and tokenwire.js (docs/clients.md)",
}
DOCS = {"swagger_ui": "/docs", "openapi": "/openapi.json"}


def endpoints(routes: Sequence[BaseRoute]) -> dict[str, dict[str, Any]]:
    """Every path the app serves, with its methods and what it is for."""
    served: dict[str, dict[str, Any]] = {}
    for route in iter_route_contexts(routes):
        if route.path is None:
            continue
        entry = served.setdefault(route.path, {"methods": [], "about": ABOUT.get(route.path)})
        if isinstance(route.original_route, WebSocketRoute):
            methods = {"WEBSOCKET"}
        elif isinstance(route.original_route, Mount):
            methods = {"GET"}
        else:
            methods = (route.methods or set()) - {"HEAD"}
        entry["methods"] = sorted(set(entry["methods"]) | methods)
    return served


def error_response(error: TokenwireError) -> JSONResponse:
    """An error in tokenwire's own HTTP shape (the SSE and admin endpoints)."""
    body = {"error": {"type": error.error_type, "message": error.message, **error.details()}}
    if error.request_id is not None:
        body["error"]["request_id"] = error.request_id
    return JSONResponse(body, status_code=http_status(error), headers=retry_after_header(error))


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def front_page(request: Request) -> Response:
    """The chat page for a person who opened the address `make run` printed; the list of
    endpoints (`/api`) for a program (JSON unless the client asks for HTML)."""
    if wants_html(request):
        return chat_page(request)
    return _index_json(request)


async def api_index(request: Request) -> Response:
    """What is served where: JSON, or a page with links for a browser."""
    if not wants_html(request):
        return _index_json(request)
    rows = "".join(
        f"<tr><td>{_link(path, entry['methods'])}</td><td>{' '.join(entry['methods'])}</td>"
        f"<td>{escape(entry['about'] or '')}</td></tr>"
        for path, entry in endpoints(request.app.routes).items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>tokenwire: endpoints</title>"
        '<h1>tokenwire</h1><p>Streams AI answers token by token. The chat page: <a href="/">/</a>. '
        'API docs: <a href="/docs">/docs</a> (Swagger UI) and '
        '<a href="/openapi.json">/openapi.json</a>. Served here:</p>'
        f"<table><tr><th>path</th><th>methods</th><th>what</th></tr>{rows}</table>"
    )


def _index_json(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "service": "tokenwire",
            "version": request.app.version,
            "docs": DOCS,
            "endpoints": endpoints(request.app.routes),
        }
    )


def _link(path: str, methods: list[str]) -> str:
    shown = escape(path)
    if methods == ["GET"] and "{" not in path and not path.startswith("/static/"):
        return f'<a href="{shown}"><code>{shown}</code></a>'
    return f"<code>{shown}</code>"


async def healthz(request: Request) -> JSONResponse:
    """Liveness: answers while the process does; readiness is `/readyz`'s."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    if gateway.closing:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    # Redis lost: new requests are refused here, so the load balancer should send them
    # elsewhere; the node itself lives on and serves its running streams.
    backend = request.app.state.backend_readiness()
    if backend is not None:
        return JSONResponse({"status": "not_ready", "reason": backend}, status_code=503)
    waiting = gateway.unready_providers()
    if waiting:
        return JSONResponse({"status": "not_ready", "providers": waiting}, status_code=503)
    return JSONResponse({"status": "ready", "providers": sorted(gateway.slots)})


async def upgrade_required(request: Request) -> JSONResponse:
    """A plain GET on a WebSocket endpoint: say what it wants instead of 404."""
    return JSONResponse(
        {"error": "this endpoint speaks WebSocket: send an Upgrade request"},
        status_code=426,
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )


async def streaming_stats(request: Request) -> JSONResponse:
    """This node's streams and sessions, and under `cluster` every node alive (one
    without Redis) with the streams running on each."""
    gateway = _gateway(request)
    body = gateway.stats.snapshot(gateway.sessions, gateway.in_grace)
    body["node_id"] = request.app.state.node_id
    body["cluster"] = cluster_snapshot(*await gateway.nodes())
    return JSONResponse(body)


async def streaming_sessions(request: Request) -> JSONResponse:
    """The open sessions; with other nodes, theirs too, each with its `node_id`."""
    gateway = _gateway(request)
    body = sessions_snapshot(gateway.sessions)
    if gateway.cluster.shared:
        body = cluster_sessions(body, *await gateway.nodes())
    return JSONResponse(body)


async def providers(request: Request) -> JSONResponse:
    """Each provider's name, kind, model, whether routing may choose it, whether it sees
    images, its capabilities, and live health; never a key."""
    gateway = _gateway(request)
    describe = request.app.state.describe_health
    return JSONResponse(
        {
            "providers": [
                {
                    "name": name,
                    "kind": slot.provider.kind,
                    "model": slot.provider.model,
                    "auto": slot.profile.auto,
                    "vision": slot.profile.vision,
                    "capabilities": asdict(slot.profile.capabilities),
                    "health": describe(name) if describe is not None else None,
                }
                for name, slot in gateway.slots.items()
            ]
        }
    )
