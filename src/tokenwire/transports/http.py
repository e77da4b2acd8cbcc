"""Plain HTTP endpoints: the front page, health, readiness, statistics and sessions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from tokenwire.core.gateway import Gateway
from tokenwire.core.stats import sessions_snapshot
from tokenwire.protocol.errors import TokenwireError, http_status, retry_after_header

ENDPOINTS = {
    "/ws/ai-stream": "WebSocket: the streaming protocol (docs/protocol.md)",
    "/healthz": "liveness: the process answers",
    "/readyz": "readiness: every provider can serve (503 with the reason otherwise)",
    "/api/streaming/stats": "streaming statistics",
    "/api/streaming/sessions": "open sessions",
    "/api/providers": "the providers and their live health",
    "/api/streams": "Server-Sent Events: POST to start a request, GET to list yours",
    "/api/streams/{id}/events": "Server-Sent Events: re-attach after Last-Event-ID",
}


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
    """What is served where, for a person who opened the address `make run` printed."""
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"service": "tokenwire", "endpoints": ENDPOINTS})
    rows = "".join(
        f"<li><code>{path}</code>: {meaning}</li>" for path, meaning in ENDPOINTS.items()
    )
    return HTMLResponse(
        "<!doctype html><meta charset=utf-8><title>tokenwire</title>"
        "<h1>tokenwire</h1><p>Streams AI answers token by token. Served here:</p>"
        f"<ul>{rows}</ul>"
    )


async def healthz(request: Request) -> JSONResponse:
    """Liveness: answers while the process does; readiness is `/readyz`'s."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    if gateway.closing:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
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
    gateway = _gateway(request)
    return JSONResponse(gateway.stats.snapshot(gateway.sessions, gateway.in_grace))


async def streaming_sessions(request: Request) -> JSONResponse:
    return JSONResponse(sessions_snapshot(_gateway(request).sessions))


async def providers(request: Request) -> JSONResponse:
    """Each provider's name, kind, model, whether routing may choose it, and live health;
    never a key."""
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
                    "health": describe(name) if describe is not None else None,
                }
                for name, slot in gateway.slots.items()
            ]
        }
    )
