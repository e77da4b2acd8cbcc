"""Plain HTTP endpoints: health, statistics and sessions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from tokenwire.core.gateway import Gateway
from tokenwire.core.stats import sessions_snapshot


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def healthz(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    if gateway.closing:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ok", "providers": sorted(gateway.slots)})


async def streaming_stats(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    return JSONResponse(gateway.stats.snapshot(gateway.sessions))


async def streaming_sessions(request: Request) -> JSONResponse:
    return JSONResponse(sessions_snapshot(_gateway(request).sessions))
