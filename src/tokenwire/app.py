"""Builds the ASGI application from settings: the one place settings become plain values.

The core takes plain values (`GatewayConfig`, `ProviderProfile`), never the
settings model; this module reads the settings once and hands them down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from tokenwire import __version__
from tokenwire.backends.memory import MemoryConversationStore, MemoryLogStore
from tokenwire.backends.redis.availability import AdmitWhileReachable, RedisAvailability
from tokenwire.backends.redis.client import RedisBackend
from tokenwire.backends.redis.cluster import RedisCluster, owner_record_seconds
from tokenwire.backends.redis.conversations import RedisConversationStore
from tokenwire.backends.redis.limits import RedisConnections, RedisQuotas
from tokenwire.backends.redis.logs import RedisLogStore
from tokenwire.core.admission import Admission
from tokenwire.core.attempts import AttemptPolicy
from tokenwire.core.cluster import Cluster, SingleNode
from tokenwire.core.conversations import ConversationStore
from tokenwire.core.eventlog import LogStore
from tokenwire.core.gateway import Gateway, GatewayConfig
from tokenwire.core.images import ImageBounds
from tokenwire.core.orchestrator import StreamTuning
from tokenwire.core.route import ProviderProfile, ProviderSlot
from tokenwire.core.telemetry import FanOut, NoTelemetry, Telemetry
from tokenwire.observability.metrics import (
    MULTIPROCESS_VARIABLE,
    PrometheusMetrics,
    metrics_endpoint,
)
from tokenwire.protocol.errors import TokenwireError
from tokenwire.providers.images import FetchPolicy
from tokenwire.providers.registry import build_provider, default_concurrency
from tokenwire.routing.classify import load_classifier
from tokenwire.routing.health import HealthBook, HealthPolicy
from tokenwire.routing.router import RoutingPolicy, StrategyRouter
from tokenwire.security.access import AccessPolicy, is_loopback, networks, normalized_origins
from tokenwire.security.auth import (
    ApiKeyAuthenticator,
    Authenticator,
    JwtAuthenticator,
    NoAuthenticator,
)
from tokenwire.security.limits import (
    AddressThrottle,
    ConnectionLimit,
    Connections,
    LimitPolicy,
    Quotas,
)
from tokenwire.security.middleware import AccessMiddleware
from tokenwire.settings import (
    AuthSettings,
    ConfigError,
    LimitsSettings,
    ProviderSettings,
    RedisSettings,
    Settings,
)
from tokenwire.transports import api_docs, http, sse, web, websocket
from tokenwire.transports.stream_socket import STREAM_PATH, TokenwireApp, stream_socket
from tokenwire.transports.uvicorn_http import head_timeout_protocol
from tokenwire.transports.uvicorn_ws import TokenwireWebSocketProtocol
from tokenwire.transports.v1 import chat, messages, models, responses
from tokenwire.transports.v1.errors import anthropic_error, openai_error
from tokenwire.transports.v1.route import unrouted

if TYPE_CHECKING:  # the optional `otel` extra: imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider


def provider_profile(settings: ProviderSettings) -> ProviderProfile:
    return ProviderProfile(
        input_cost_per_mtok=settings.input_cost_per_mtok,
        output_cost_per_mtok=settings.output_cost_per_mtok,
        max_concurrency=default_concurrency(settings),
        silence_timeout=settings.timeout,
        strengths=tuple(settings.strengths),
        auto=settings.auto,
        capabilities=settings.capabilities,
    )


def image_bounds(limits: LimitsSettings) -> ImageBounds:
    return ImageBounds(
        max_images=limits.max_images_per_request,
        max_image_bytes=limits.max_image_bytes,
        max_request_bytes=limits.max_image_request_bytes,
    )


def fetch_policy(limits: LimitsSettings) -> FetchPolicy:
    return FetchPolicy(
        max_bytes=limits.max_image_bytes,
        timeout=limits.image_fetch_timeout_seconds,
        allow_private=limits.image_fetch_private_addresses,
    )


def gateway_config(settings: Settings) -> GatewayConfig:
    streams, routing = settings.streams, settings.routing
    return GatewayConfig(
        images=image_bounds(settings.limits),
        tuning=StreamTuning(
            chunk_max_chars=streams.chunk_max_chars,
            chunk_flush_seconds=streams.chunk_flush_ms / 1000,
            default_timeout=streams.request_timeout_seconds,
            first_token_timeout=streams.first_token_timeout_seconds,
            silence_timeout=streams.silence_timeout_seconds,
            max_timeout=streams.max_request_timeout_seconds,
            default_progress_every=streams.progress_every,
            attempts=AttemptPolicy(
                max_retries=routing.max_retries,
                retry_backoff_seconds=routing.retry_backoff_seconds,
                max_retry_wait_seconds=routing.max_retry_wait_seconds,
                queue_timeout_seconds=routing.queue_timeout_seconds,
                max_queued=routing.max_queued,
            ),
        ),
        session_idle_seconds=streams.session_idle_seconds,
        session_sweep_seconds=streams.session_sweep_seconds,
        resume_grace_seconds=streams.resume_grace_seconds,
    )


@dataclass
class Backends:
    """Where what nodes may share lives: in this process's memory (no `[redis] url`), or
    in Redis. `start` and `close` belong to the app's lifespan."""

    logs: LogStore
    conversations: ConversationStore
    cluster: Cluster
    admission: Admission
    connections: ConnectionLimit
    node_id: str = SingleNode.node_id
    redis: RedisBackend | None = None
    availability: RedisAvailability | None = None
    starters: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """What runs tasks of its own on Redis (the log store's mirror and reader)."""
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """What holds Redis work of its own (queued releases), closed before the client."""

    def readiness(self) -> str | None:
        """Why this node cannot take new requests for want of its backend (None: it can)."""
        return self.availability.reason if self.availability is not None else None

    async def start(self) -> None:
        if self.availability is not None:
            await self.availability.start()
        for start in self.starters:
            await start()

    async def close(self) -> None:
        # The gateway's shutdown closes the logs; what is left is the connection.
        for close in self.closers:
            await close()
        if self.availability is not None:
            await self.availability.close()
        if self.redis is not None:
            await self.redis.aclose()


def backends_for(settings: Settings) -> Backends:
    """The memory backends, exactly as one process has always had them, or with `[redis]
    url` the Redis ones. Connects to nothing yet (`Backends.start` does)."""
    streams, policy = settings.streams, limit_policy(settings)
    if settings.redis.url is None:
        logs = MemoryLogStore(
            retention_seconds=streams.log_retention_seconds,
            max_log_bytes=streams.max_log_bytes,
            max_retained_bytes=streams.max_retained_log_bytes,
        )
        conversations = MemoryConversationStore(
            images=image_bounds(settings.limits),
            max_image_bytes=streams.max_conversation_image_bytes,
            max_tokens=streams.conversation_max_tokens,
            max_conversations=streams.max_conversations,
            idle_seconds=streams.conversation_idle_seconds,
        )
        return Backends(logs, conversations, SingleNode(), Quotas(policy), Connections(policy))
    redis = redis_backend(settings.redis)
    availability = RedisAvailability(
        redis.client.ping, reconnect_max_seconds=settings.redis.reconnect_max_seconds
    )
    quotas, connections = RedisQuotas(redis, policy), RedisConnections(redis, policy)
    redis_logs = RedisLogStore(
        redis,
        retention_seconds=streams.log_retention_seconds,
        max_log_bytes=streams.max_log_bytes,
        max_retained_bytes=streams.max_retained_log_bytes,
        reconnect_max_seconds=settings.redis.reconnect_max_seconds,
        mirror_interval_seconds=settings.redis.mirror_interval_seconds,
        guard=availability.check,
        owner_record_seconds=owner_record_seconds(
            streams.max_request_timeout_seconds, streams.log_retention_seconds
        ),
    )
    return Backends(
        logs=redis_logs,
        conversations=RedisConversationStore(
            redis,
            availability,
            max_tokens=streams.conversation_max_tokens,
            max_conversations=streams.max_conversations,
            idle_seconds=streams.conversation_idle_seconds,
            images=image_bounds(settings.limits),
        ),
        cluster=RedisCluster(
            redis,
            resume_grace_seconds=streams.resume_grace_seconds,
            retention_seconds=streams.log_retention_seconds,
            max_run_seconds=streams.max_request_timeout_seconds,
            availability=availability,
            owner_recorded_by_logs=True,
        ),
        admission=AdmitWhileReachable(quotas, availability),
        connections=connections,
        node_id=redis.node_id,
        redis=redis,
        availability=availability,
        starters=[redis_logs.start],
        closers=[quotas.aclose, connections.aclose],
    )


def redis_backend(settings: RedisSettings) -> RedisBackend:
    """The handle on Redis. redis-py's own retries are off: a lost Redis is noticed at
    once and `RedisAvailability` does the backoff."""
    assert settings.url is not None
    # Blocking: past max_connections a command waits for a connection (as long as a
    # command may take), where redis-py's default pool refuses at once at 100 (200
    # clients starting together had half their requests refused backend_unavailable).
    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        # A pooled connection idle this long is PINGed before its next command, so that
        # one broken by a Redis restart is found before a request relies on it.
        health_check_interval=1,
        retry=Retry(NoBackoff(), retries=0),
    )
    client = Redis.from_pool(pool)  # closing the client closes the pool
    return RedisBackend(client, prefix=settings.key_prefix, lease_seconds=settings.lease_seconds)


def build_gateway(settings: Settings, backends: Backends | None = None) -> Gateway:
    slots = {
        p.name: ProviderSlot(
            build_provider(p, i, fetch_policy(settings.limits)), provider_profile(p)
        )
        for i, p in enumerate(settings.providers)
    }
    return gateway_for(settings, slots, backends)


def gateway_for(
    settings: Settings, slots: Mapping[str, ProviderSlot], backends: Backends | None = None
) -> Gateway:
    """A gateway over these provider slots, routing and stores set up from settings
    (`backends`: the stores; by default `backends_for(settings)`)."""
    backends = backends or backends_for(settings)
    routing = settings.routing
    health = HealthBook(
        ((name, slot.profile.max_concurrency) for name, slot in slots.items()),
        HealthPolicy(
            failure_threshold=routing.circuit_failures,
            cooldown_seconds=routing.circuit_cooldown_seconds,
        ),
    )
    try:
        classifier = load_classifier(routing.classifier)
    except ValueError as exc:
        raise ConfigError(f"routing.classifier: {exc}") from None
    router = StrategyRouter(
        slots,
        health,
        RoutingPolicy(
            default_provider=settings.default_provider,
            default_strategy=routing.strategy,
            default_max_tokens=routing.default_max_tokens,
        ),
        classifier,
    )
    return Gateway(
        gateway_config(settings),
        slots,
        router,
        backends.logs,
        backends.conversations,
        health,
        admission=backends.admission,
        cluster=backends.cluster,
    )


def limit_policy(settings: Settings) -> LimitPolicy:
    limits = settings.limits
    return LimitPolicy(
        max_prompt_chars=limits.max_prompt_chars,
        images=image_bounds(limits),
        max_tokens_cap=limits.max_tokens_cap,
        max_streams_per_user=limits.max_streams_per_user,
        requests_per_minute_per_user=limits.requests_per_minute_per_user,
        tokens_per_minute_per_user=limits.tokens_per_minute_per_user,
        budget_usd_per_user_per_day=limits.budget_usd_per_user_per_day,
        max_connections=limits.max_connections,
        max_connections_per_user=limits.max_connections_per_user,
        handshakes_per_minute_per_address=limits.handshakes_per_minute_per_address,
        auth_failures_per_minute_per_address=limits.auth_failures_per_minute_per_address,
    )


def authenticator_for(auth: AuthSettings, environ: Mapping[str, str]) -> Authenticator:
    """The configured authenticator; a missing secret or unreadable key stops start-up."""
    try:
        if auth.mode == "api_key":
            if not auth.api_keys_env:
                raise ValueError("auth.api_keys_env: required when auth.mode is 'api_key'")
            return ApiKeyAuthenticator.from_environment(auth.api_keys_env, environ)
        if auth.mode == "jwt":
            return JwtAuthenticator.from_settings(
                secret_env=auth.jwt_secret_env,
                public_key_file=auth.jwt_public_key_file,
                jwks_file=auth.jwks_file,
                audience=auth.jwt_audience,
                issuer=auth.jwt_issuer,
                environ=environ,
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return NoAuthenticator()


def access_policy(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    connections: ConnectionLimit | None = None,
) -> AccessPolicy:
    """Who may call, and how often; `connections` counts open connections (the
    backends' own, shared by every node with Redis)."""
    auth, limits = settings.auth, limit_policy(settings)
    try:
        proxies = networks(settings.server.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"server.trusted_proxies: {exc}") from None
    return AccessPolicy(
        authenticator=authenticator_for(auth, os.environ if environ is None else environ),
        allowed_origins=normalized_origins(auth.allowed_origins),
        admin_users=frozenset(auth.admin_users),
        metrics_public=auth.metrics_public,
        trusted_proxies=proxies,
        loopback_hosts_only=auth.mode == "none" and is_loopback(settings.server.host),
        throttle=AddressThrottle(limits),
        connections=connections or Connections(limits),
    )


def refusal(path: str, error: TokenwireError) -> Response:
    """A refused HTTP call, in the error shape of the API it called."""
    if path.startswith("/v1/messages"):
        return anthropic_error(error)
    if path.startswith("/v1/"):
        return openai_error(error)
    return http.error_response(error)


def websocket_limits(settings: Settings) -> websocket.WebSocketLimits:
    limits = settings.limits
    return websocket.WebSocketLimits(
        max_message_bytes=limits.max_message_bytes,
        max_send_buffer_bytes=limits.max_send_buffer_bytes,
        close_timeout=limits.close_timeout_seconds,
        max_streams=limits.max_streams_per_connection,
        max_preferences_bytes=limits.max_preferences_bytes,
    )


def build_app(
    settings: Settings,
    gateway: Gateway | None = None,
    environ: Mapping[str, str] | None = None,
    access: AccessPolicy | None = None,
    backends: Backends | None = None,
) -> FastAPI:
    """The app; pass a gateway to share it with the server (for a graceful SIGTERM), and
    `environ` to read secrets from somewhere other than the process's environment (or
    the access policy itself, built before anything slow). A gateway built on Redis
    comes with the `backends` it was built with: the app starts and closes them."""
    if gateway is None:
        backends = backends or backends_for(settings)
        gateway = build_gateway(settings, backends)
    elif backends is None and settings.redis.url is not None:
        raise ValueError("a gateway on Redis needs its backends: build_app(..., backends=)")
    gw = gateway
    access = access or access_policy(
        settings, environ, backends.connections if backends is not None else None
    )
    node_id = backends.node_id if backends is not None else SingleNode.node_id
    metrics = metrics_for(settings, gw, node_id) if settings.metrics.enabled else None
    traces = tracer_provider_for(settings) if settings.metrics.tracing else None
    instruments: list[Telemetry] = [] if metrics is None else [metrics]
    if traces is not None:
        instruments.append(tracing_with(traces))
    if instruments:
        telemetry = instruments[0] if len(instruments) == 1 else FanOut(*instruments)
        access.telemetry = telemetry
        # Only the silent default is replaced: a gateway built with instruments keeps them.
        if type(gw.telemetry) is NoTelemetry:
            gw.telemetry = telemetry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if backends is not None:
            await backends.start()
        gw.start_background()
        sampler = (
            asyncio.create_task(metrics.sample_loop_lag(), name="loop lag")
            if metrics is not None
            else None
        )
        try:
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            if not gw.closing:
                await gw.shutdown(settings.server.shutdown_grace_seconds)
            if backends is not None:
                await backends.close()
            if traces is not None:
                # The last spans go out (the exporter's own timeouts bound this).
                await asyncio.to_thread(traces.shutdown)

    app = TokenwireApp(
        title="tokenwire",
        version=__version__,
        summary="Streams AI answers token by token; OpenAI- and Anthropic-compatible HTTP APIs.",
        routes=[
            Route("/", http.front_page),
            Route("/api", http.api_index),
            Route("/healthz", http.healthz),
            Route("/readyz", http.readyz),
            Route("/api/streaming/stats", http.streaming_stats),
            Route("/api/streaming/sessions", http.streaming_sessions),
            Route("/api/providers", http.providers),
            Route("/api/streams", sse.start_stream, methods=["POST"]),
            Route("/api/streams", sse.list_streams, methods=["GET"]),
            Route("/api/streams/{request_id}/events", sse.attach_stream, methods=["GET"]),
            Route("/api/streams/{request_id}", sse.cancel_stream, methods=["DELETE"]),
            # Served by `app.stream_socket` (stream_socket.py); listed for the route table.
            WebSocketRoute(STREAM_PATH, websocket.ai_stream_endpoint),
            Route("/ws/ai-stream", http.upgrade_required),
            *api_docs.routes(),
            *([Route("/metrics", metrics_endpoint(metrics))] if metrics is not None else []),
            web.static_mount(),
        ],
        # FastAPI's own pages load from CDNs; api_docs serves Swagger UI from the package.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.openapi = lambda: _documented_errors_only(app)  # type: ignore[method-assign]
    dialects = (models.router, chat.router, responses.router, messages.router)
    for router in dialects:
        app.include_router(router)
    app.state.v1_routes = [route for router in dialects for route in router.routes]
    app.add_exception_handler(HTTPException, unrouted)
    app.add_middleware(AccessMiddleware, policy=access, render=refusal)
    app.stream_socket = AccessMiddleware(stream_socket, policy=access, render=refusal)
    app.state.access = access
    app.state.gateway = gw
    app.state.ws_limits = websocket_limits(settings)
    app.state.sse = sse.SseSettings(
        heartbeat_seconds=settings.streams.sse_heartbeat_seconds,
        max_body_bytes=settings.limits.max_message_bytes,
        max_buffer_bytes=settings.limits.max_send_buffer_bytes,
        close_timeout=settings.limits.close_timeout_seconds,
    )
    app.state.node_id = node_id
    app.state.metrics = metrics
    app.state.backend_readiness = backends.readiness if backends is not None else _always_ready
    health = gw.observer
    app.state.describe_health = health.describe if isinstance(health, HealthBook) else None
    return app


def metrics_for(settings: Settings, gateway: Gateway, node_id: str) -> PrometheusMetrics:
    """The Prometheus metrics of this process; with `--workers`, the supervisor's
    `PROMETHEUS_MULTIPROC_DIR` (which prometheus-client itself reads) makes them shared."""
    metrics = PrometheusMetrics(
        node_id, gateway.slots, multiprocess_dir=os.environ.get(MULTIPROCESS_VARIABLE)
    )
    health = gateway.observer

    def circuits() -> dict[str, str]:
        if not isinstance(health, HealthBook):
            return {}
        return {name: health[name].state.value for name in gateway.slots}

    metrics.watch(lambda: gateway.in_grace, circuits)
    return metrics


def tracer_provider_for(settings: Settings) -> TracerProvider:
    """The OpenTelemetry tracer provider `[metrics]` asks for; without the `otel` extra,
    the one message that says what to install."""
    try:
        from tokenwire.observability.tracing import tracer_provider
    except ImportError as exc:
        raise ConfigError(
            f"metrics.tracing: OpenTelemetry is not installed ({exc.name} is missing); "
            "install the extra: pip install 'tokenwire[otel]'"
        ) from None
    metrics = settings.metrics
    return tracer_provider(metrics.service_name, metrics.otlp_endpoint)


def tracing_with(provider: TracerProvider) -> Telemetry:
    from tokenwire.observability.tracing import Tracing

    return Tracing(provider.get_tracer("tokenwire"))


def _always_ready() -> str | None:
    return None


def _documented_errors_only(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without FastAPI's 422: invalid bodies are the dialects' 400s."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def uvicorn_config(settings: Settings, app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """How uvicorn serves the app, for the command line and the tests alike."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=TokenwireWebSocketProtocol,
        http=head_timeout_protocol(settings.limits.handshake_timeout_seconds),
        ws_ping_interval=settings.limits.ping_interval_seconds,
        ws_ping_timeout=settings.limits.ping_timeout_seconds,
        # The app enforces the message limit itself, after reading the whole frame, so
        # that the client sees a clean 1009 close instead of a reset mid-send;
        # uvicorn's cap only bounds what a single frame may make it buffer.
        ws_max_size=4 * settings.limits.max_message_bytes,
        ws_per_message_deflate=settings.server.ws_per_message_deflate,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_seconds) + 1,
        # uvicorn would believe X-Forwarded-For from any loopback peer; `[server]
        # trusted_proxies` alone decides whose header names the client (security/access.py).
        proxy_headers=False,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
