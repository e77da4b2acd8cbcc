"""Builds the ASGI application from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from tokenwire.backends.memory import MemoryLogStore
from tokenwire.core.gateway import Gateway
from tokenwire.core.request import ProviderSlot
from tokenwire.providers.registry import build_provider
from tokenwire.routing.router import StrengthRouter
from tokenwire.settings import Settings
from tokenwire.transports import http, websocket


def build_gateway(settings: Settings) -> Gateway:
    slots = {
        p.name: ProviderSlot(build_provider(p, i), p) for i, p in enumerate(settings.providers)
    }
    return gateway_for(settings, slots)


def gateway_for(settings: Settings, slots: Mapping[str, ProviderSlot]) -> Gateway:
    """A gateway over these provider slots, routing and logs set up from settings."""
    streams = settings.streams
    logs = MemoryLogStore(
        retention_seconds=streams.log_retention_seconds,
        max_log_bytes=streams.max_log_bytes,
        max_retained_bytes=streams.max_retained_log_bytes,
    )
    router = StrengthRouter(slots, settings.default_provider, settings.routing.strategy)
    return Gateway(settings, slots, router, logs)


def build_app(settings: Settings, gateway: Gateway | None = None) -> Starlette:
    """The app; pass a gateway to share it with the server (for a graceful SIGTERM)."""
    gw = gateway or build_gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw.start_background()
        try:
            yield
        finally:
            if not gw.closing:
                await gw.shutdown(settings.server.shutdown_grace_seconds)

    app = Starlette(
        routes=[
            Route("/healthz", http.healthz),
            Route("/api/streaming/stats", http.streaming_stats),
            Route("/api/streaming/sessions", http.streaming_sessions),
            WebSocketRoute("/ws/ai-stream", websocket.ai_stream_endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.state.settings = settings
    return app
