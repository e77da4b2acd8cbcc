"""One typed settings model, built once at start-up and handed down.

Sources, weakest first: the TOML file given with `--config`, environment
variables `TOKENWIRE_<TABLE>__<KEY>`, command-line flags. A wrong file stops
start-up with one message naming the key; nothing starts half-configured.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tokenwire.config_errors import (
    ENV_PREFIX,
    PROVIDERS_VARIABLE,
    Sources,
    describe,
    nearest,
    variable,
)
from tokenwire.core.tools import Capabilities, StructuredOutput
from tokenwire.protocol.messages import RoutingStrategy, Seconds
from tokenwire.routing.classify import TaskType

ProviderKind = Literal["openai", "anthropic", "bedrock", "local", "simulated"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic", "bedrock", "local", "simulated")

_HOSTED = Capabilities(
    tools=True, parallel_tool_calls=True, vision=True, structured_output="native"
)
# CONTRACT.md's defaults per kind. The packaged local model (a 270M base model) calls no
# tools and sees no images, but follows a grammar; the simulated one scripts tool calls,
# describes the images it got and answers JSON of a schema itself.
CAPABILITIES_BY_KIND: dict[ProviderKind, Capabilities] = {
    "openai": _HOSTED,
    "anthropic": _HOSTED,
    "bedrock": replace(_HOSTED, structured_output="tool"),
    "local": Capabilities(structured_output="grammar"),
    "simulated": _HOSTED,
}

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
MiB = 1024 * 1024
REDIS_SCHEMES = ("redis", "rediss", "unix")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerSettings(_Table):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # Off by default: deflate roughly doubles CPU per frame for small token frames.
    ws_per_message_deflate: bool = False
    # How long SIGTERM waits for streams to end and sockets to close before exiting.
    shutdown_grace_seconds: Positive = 5.0
    # Proxies (addresses or CIDR networks) whose X-Forwarded-For names the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Worker processes sharing the port under one supervisor; above 1 needs [redis] url.
    workers: Annotated[int, Field(ge=1, le=256)] = 1


_DEADLINE_KEYS = (
    "request_timeout_seconds",
    "first_token_timeout_seconds",
    "silence_timeout_seconds",
)


class StreamSettings(_Table):
    progress_every: Annotated[int, Field(ge=0)] = 10
    chunk_flush_ms: Positive = 40.0
    chunk_max_chars: Annotated[int, Field(ge=1)] = 256
    # Deadlines (docs/configuration.md): the whole request, each provider's first token,
    # the longest silence between tokens; a request may ask for each up to the maximum.
    request_timeout_seconds: Seconds = 600.0
    first_token_timeout_seconds: Seconds = 60.0
    silence_timeout_seconds: Seconds = 60.0
    max_request_timeout_seconds: Seconds = 3600.0
    log_retention_seconds: NonNegative = 300.0
    max_log_bytes: Annotated[int, Field(ge=1024)] = 8 * MiB
    max_retained_log_bytes: Annotated[int, Field(ge=0)] = 256 * MiB
    resume_grace_seconds: NonNegative = 10.0
    # A comment line on an SSE stream that has sent nothing for this long.
    sse_heartbeat_seconds: Positive = 15.0
    session_idle_seconds: Positive = 3600.0
    session_sweep_seconds: Positive = 300.0
    conversation_max_tokens: Annotated[int, Field(ge=1)] = 4096
    # Conversations are kept per user, at most this many in all, each forgotten after
    # this long unused.
    max_conversations: Annotated[int, Field(ge=1)] = 10_000
    # Bytes of images that all kept conversations hold together (the least recently
    # used conversations go first past it).
    max_conversation_image_bytes: Annotated[int, Field(ge=0)] = 256 * MiB
    conversation_idle_seconds: Positive = 3600.0


class ProviderSettings(_Table):
    name: Annotated[str, Field(min_length=1)]
    kind: ProviderKind
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    input_cost_per_mtok: NonNegative = 0.0
    output_cost_per_mtok: NonNegative = 0.0
    max_concurrency: Annotated[int, Field(ge=1)] | None = None
    timeout: Positive | None = None
    strengths: list[str] = Field(default_factory=list)
    # Whether routing may choose it (`model: "auto"`, no `config.provider`); false:
    # reachable only by name, as the stand-in that a bare `tokenwire serve` adds.
    auto: bool = True
    # Capabilities; each None: by kind (`CAPABILITIES_BY_KIND`). Whether it calls tools,
    # several in one answer, sees images, and how it produces structured output.
    tools: bool | None = None
    parallel_tool_calls: bool | None = None
    vision: bool | None = None
    structured_output: StructuredOutput | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def capabilities(self) -> Capabilities:
        """The kind's capabilities, with what this table says instead."""
        by_kind = CAPABILITIES_BY_KIND[self.kind]
        given = {
            key: getattr(self, key)
            for key in ("tools", "parallel_tool_calls", "vision", "structured_output")
            if getattr(self, key) is not None
        }
        capabilities = replace(by_kind, **given)
        # A provider that calls no tools calls none in parallel either.
        return replace(
            capabilities,
            parallel_tool_calls=capabilities.parallel_tool_calls and capabilities.tools,
        )

    @model_validator(mode="after")
    def _parallel_needs_tools(self) -> ProviderSettings:
        if self.parallel_tool_calls and self.tools is False:
            raise ValueError("parallel_tool_calls: true needs tools = true")
        return self

    @field_validator("strengths")
    @classmethod
    def _strengths_are_task_types(cls, strengths: list[str]) -> list[str]:
        known = [task.value for task in TaskType]
        for strength in strengths:
            if strength not in known:
                raise ValueError(
                    f"{strength!r} is not a task type; expected some of: {', '.join(known)}"
                )
        return strengths

    def api_key(self) -> str | None:
        """The key, read from the environment at the moment it is needed; never stored."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class RoutingSettings(_Table):
    default_provider: str | None = None
    strategy: RoutingStrategy = RoutingStrategy.INTELLIGENT
    # "package.module:function" from a prompt's text to a task type; None: the built-in rules.
    classifier: str | None = None
    # Retries on one provider, before any text, for 5xx, dropped connections and 429.
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=60)] = 0.25
    # A provider whose retry-after asks for longer is not retried (the next one is tried).
    max_retry_wait_seconds: Annotated[float, Field(ge=0, le=600)] = 5.0
    # The circuit breaker: failures in a row that open it, and how long it stays open.
    circuit_failures: Annotated[int, Field(ge=1, le=1000)] = 3
    circuit_cooldown_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Waiting for a provider at its max_concurrency: how long, and how many may wait.
    queue_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10.0
    max_queued: Annotated[int, Field(ge=0)] = 100
    # The answer budget assumed in cost estimates when a request sets no max_tokens.
    default_max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] = 512


class AuthSettings(_Table):
    mode: Literal["none", "api_key", "jwt"] = "none"
    jwt_secret_env: str | None = None
    jwt_public_key_file: str | None = None
    jwks_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    api_keys_env: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    admin_users: list[str] = Field(default_factory=list)
    metrics_public: bool = False


class LimitsSettings(_Table):
    max_message_bytes: Annotated[int, Field(ge=1024)] = 1 * MiB
    # Frames queued for one connection beyond what its socket takes; past it the
    # client is too slow and is disconnected.
    max_send_buffer_bytes: Annotated[int, Field(ge=4096)] = 8 * MiB
    # How long a client has to complete a close the server started before its
    # connection is cut (and its socket and buffers released).
    close_timeout_seconds: Positive = 30.0
    # Protective limits: finite by default.
    max_prompt_chars: Annotated[int, Field(ge=1)] = 200_000
    max_streams_per_connection: Annotated[int, Field(ge=1)] = 16
    max_streams_per_user: Annotated[int, Field(ge=1)] = 64
    max_connections_per_user: Annotated[int, Field(ge=1)] = 32
    max_connections: Annotated[int, Field(ge=1)] = 10_000
    max_preferences_bytes: Annotated[int, Field(ge=256, le=1 * MiB)] = 16 * 1024
    handshakes_per_minute_per_address: Annotated[int, Field(ge=1)] = 600
    auth_failures_per_minute_per_address: Annotated[int, Field(ge=1)] = 30
    handshake_timeout_seconds: Positive = 10.0
    ping_interval_seconds: Positive = 20.0
    ping_timeout_seconds: Positive = 20.0
    # Images (protective): per request in count and decoded bytes, per image in bytes,
    # and the fetch of an https image for a provider that needs bytes (bedrock).
    max_images_per_request: Annotated[int, Field(ge=0)] = 20
    max_image_bytes: Annotated[int, Field(ge=1)] = 5 * MiB
    max_image_request_bytes: Annotated[int, Field(ge=1)] = 20 * MiB
    image_fetch_timeout_seconds: Positive = 10.0
    image_fetch_private_addresses: bool = False
    # Metering limits: off (0) until the operator sets them.
    max_tokens_cap: Annotated[int, Field(ge=0)] = 0
    requests_per_minute_per_user: Annotated[int, Field(ge=0)] = 0
    tokens_per_minute_per_user: Annotated[int, Field(ge=0)] = 0
    budget_usd_per_user_per_day: NonNegative = 0.0


class RedisSettings(_Table):
    # Unset: one process, everything in its memory. Set: logs, conversations, stored
    # responses, per-user limits and cancels are shared by every node on this Redis.
    url: str | None = None
    # Every key tokenwire writes starts with this (several deployments on one Redis).
    key_prefix: str = "tokenwire:"
    # A node renews its lease this often divided by 3; a node whose lease lapsed is dead,
    # and the requests it ran end for their followers with `stream_interrupted`.
    lease_seconds: Positive = 3.0
    # How long one Redis command may take before the node counts Redis as lost.
    socket_timeout_seconds: Positive = 2.0
    # Reconnect backoff after Redis is lost: doubles from 0.1 s up to this.
    reconnect_max_seconds: Positive = 5.0
    # Connections a node keeps to Redis for commands (a request's admission, its log's
    # mirror, a cancel); more at once wait for one, up to socket_timeout_seconds. The
    # log reader and the control channel hold one more each.
    max_connections: Annotated[int, Field(ge=2, le=10_000)] = 64
    # While a node's requests keep streaming, it copies their logs to Redis at most this
    # often, several events per log and write (a quiet spell's first event at once). Its
    # own clients never wait for it; other nodes' copies run up to this far behind, and
    # a node that dies takes up to this much of what its clients saw with it.
    mirror_interval_seconds: Annotated[float, Field(ge=0, le=1)] = 0.1

    @field_validator("url")
    @classmethod
    def _url_names_redis(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in REDIS_SCHEMES or not rest.strip("/"):
            # The URL may hold a password: name its scheme, never echo it.
            given = f"scheme {scheme!r}" if sep else "no scheme"
            raise ValueError(
                f"not a Redis URL ({given}); expected redis://host:port/db, "
                "rediss://host:port/db (TLS) or unix:///path/to/redis.sock"
            )
        return url


class LoggingSettings(_Table):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Table):
    # Serve Prometheus metrics at /metrics (a credential needed unless [auth] metrics_public).
    enabled: bool = True
    # OpenTelemetry spans of each request (routing, provider attempts); needs the `otel` extra.
    tracing: bool = False
    # Where spans go (OTLP over HTTP, e.g. http://collector:4318/v1/traces); unset with
    # tracing on: the OpenTelemetry SDK's own environment (OTEL_EXPORTER_OTLP_*) decides.
    otlp_endpoint: str | None = None
    # The `service.name` of the spans.
    service_name: str = "tokenwire"


def default_providers() -> list[ProviderSettings]:
    """Without configuration: the packaged model, and the simulated stand-in by name only
    (filler words must never answer a real question routed to `auto`)."""
    return [
        ProviderSettings(name="local", kind="local"),
        ProviderSettings(name="simulated", kind="simulated", auto=False),
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOKENWIRE_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    providers: list[ProviderSettings] = Field(default_factory=default_providers)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _providers_are_coherent(self) -> Settings:
        if not self.providers:
            raise ValueError("providers: at least one provider is needed")
        seen: set[str] = set()
        for i, p in enumerate(self.providers):
            if p.name in seen:
                raise ValueError(f"providers[{i}].name: duplicate provider name {p.name!r}")
            seen.add(p.name)
            if p.api_key_env and p.api_key_env not in os.environ:
                raise ValueError(
                    f"providers[{i}].api_key_env: environment variable {p.api_key_env} is not set"
                )
        default = self.routing.default_provider
        if default is not None and default not in seen:
            raise ValueError(f"routing.default_provider: no provider is named {default!r}")
        if default is not None and not self._provider(default).auto:
            raise ValueError(
                f"routing.default_provider: provider {default!r} has auto = false, "
                "so routing never chooses it"
            )
        return self

    @model_validator(mode="after")
    def _workers_share_redis(self) -> Settings:
        if self.server.workers > 1 and self.redis.url is None:
            raise ValueError(
                f"server.workers: {self.server.workers} workers need [redis] url "
                "(--redis-url): workers that share nothing could not resume, cancel or "
                "count each other's requests"
            )
        return self

    @model_validator(mode="after")
    def _deadlines_within_the_maximum(self) -> Settings:
        streams = self.streams
        maximum = streams.max_request_timeout_seconds
        for key in _DEADLINE_KEYS:
            if getattr(streams, key) > maximum:
                raise ValueError(
                    f"streams.{key}: {getattr(streams, key):g} is above "
                    f"streams.max_request_timeout_seconds ({maximum:g})"
                )
        return self

    @property
    def default_provider(self) -> str:
        """The given default, else the first provider that routing may choose."""
        routable = [p.name for p in self.providers if p.auto] or [self.providers[0].name]
        return self.routing.default_provider or routable[0]

    def _provider(self, name: str) -> ProviderSettings:
        return next(p for p in self.providers if p.name == name)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Strongest first: flags (init values), then the environment, then the file.
        file_source = InitSettingsSource(settings_cls, init_kwargs=_file_data.get() or {})
        return (init_settings, env_settings, file_source)


_file_data: ContextVar[dict[str, Any] | None] = ContextVar("tokenwire_config_file", default=None)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build the settings from file, environment and flags, or raise `ConfigError`."""
    check_environment(os.environ)
    text = read_config_text(config_file) if config_file else ""
    token = _file_data.set(parse_config(config_file, text) if config_file else {})
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        sources = Sources(overrides or {}, os.environ, config_file, text)
        raise ConfigError(describe_config_error(exc, sources)) from None
    except SettingsError as exc:  # what check_environment let through, in one line
        raise ConfigError(f"environment: {exc}") from None
    finally:
        _file_data.reset(token)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse, naming it, any `TOKENWIRE_<TABLE>__<KEY>` variable that is not a setting, and
    any value of a list or table setting that is not JSON.

    Only names of that form (and `TOKENWIRE_PROVIDERS`) are configuration; other names
    that merely begin with `TOKENWIRE_` (test harnesses set `TOKENWIRE_ROOT`) are not.
    """
    tables = {
        name: field.annotation
        for name, field in Settings.model_fields.items()
        if name != "providers"
    }
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        if upper == PROVIDERS_VARIABLE:
            _check_json(name, value)
            continue
        table, sep, key = upper.removeprefix(ENV_PREFIX).lower().partition("__")
        if not sep:
            continue
        if table == "providers":
            raise ConfigError(f"{name}: set the whole provider list as JSON in TOKENWIRE_PROVIDERS")
        model = tables.get(table)
        if model is None:
            known = ", ".join(sorted(tables))
            guess = nearest(table, tables)
            hint = f"; did you mean {variable(guess, key)}?" if guess else ""
            raise ConfigError(f"{name}: unknown table {table!r} (tables: {known}, providers){hint}")
        fields = model.model_fields if isinstance(model, type) else {}
        field = fields.get(key)
        if field is None:
            guess = nearest(key, fields)
            hint = f"; did you mean {variable(table, guess)}?" if guess else ""
            raise ConfigError(f"{name}: unknown key {table}.{key}{hint}")
        if get_origin(field.annotation) in (list, dict) or field.annotation in (list, dict):
            _check_json(name, value)


def _check_json(name: str, value: str) -> None:
    try:
        json.loads(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc})") from None


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None


def parse_config(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def describe_config_error(exc: ValidationError, sources: Sources | None = None) -> str:
    """One line naming the key, and where its value came from when `sources` are given."""
    return describe(exc, Settings, sources)
