"""Who is calling, from where, and whether they may: what the access middleware decides by.

A credential arrives as `Authorization: Bearer <token>` (the OpenAI SDK's way),
`x-api-key` (the Anthropic SDK's), a WebSocket subprotocol `bearer.<token>`
(browsers cannot set headers on a WebSocket), or the `access_token` query
parameter (browsers; proxies may log it, so prefer the others). The client's
address is the peer's, or, when the peer is a trusted proxy, the last address in
`X-Forwarded-For` (all its lines) that is not one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers, QueryParams

from tokenwire.core.telemetry import NoTelemetry, Telemetry
from tokenwire.protocol.errors import AuthenticationFailed
from tokenwire.security.audit import audit
from tokenwire.security.auth import Authenticator, Identity
from tokenwire.security.limits import AddressThrottle, ConnectionLimit

BEARER_PROTOCOL = "bearer."
# Reachable without a credential (CONTRACT.md): probes, the chat page and its static
# files, and the list of endpoints (which `/` answered JSON clients before it was the page).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/api"})
OPEN_PREFIXES = ("/static/",)
ADMIN_PATHS = frozenset({"/api/streaming/stats", "/api/streaming/sessions", "/api/providers"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class AccessPolicy:
    authenticator: Authenticator
    allowed_origins: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()
    metrics_public: bool = False
    trusted_proxies: tuple[Network, ...] = ()
    throttle: AddressThrottle | None = None
    connections: ConnectionLimit | None = None
    # Authentication off on a loopback address: only loopback host names are served, so
    # that a page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding) is not.
    loopback_hosts_only: bool = False
    telemetry: Telemetry = field(default_factory=NoTelemetry)
    """Told of every refusal (it counts those a limit made)."""
    cors_headers: tuple[str, ...] = field(
        default=(
            "authorization",
            "content-type",
            "x-api-key",
            "last-event-id",
            "anthropic-version",
            "openai-beta",
            "tokenwire-timeout",
            "tokenwire-first-token-timeout",
            "tokenwire-silence-timeout",
        )
    )

    @property
    def authenticating(self) -> bool:
        return self.authenticator.mode != "none"

    def verify(self, credential: str | None, client: str | None) -> Identity:
        """The identity `credential` establishes; a failure is audited and counted
        against the client's address."""
        if self.throttle is not None and client is not None:
            self.throttle.check(client)
        try:
            return self.authenticator.authenticate(credential)
        except AuthenticationFailed as exc:
            if self.throttle is not None and client is not None:
                self.throttle.failed_authentication(client)
            audit("authentication failed", reason=exc.message, client=client)
            raise

    def renew(self, current: Identity, credential: str, client: str | None) -> Identity:
        """A fresh credential for an open connection: it must name the same user."""
        if not self.authenticating:
            raise AuthenticationFailed("authentication is off on this server")
        identity = self.verify(credential, client)
        if identity.user_id != current.user_id:
            audit(
                "authentication failed",
                reason="another user's credential",
                user=current.user_id,
                client=client,
            )
            raise AuthenticationFailed("the credential names another user")
        return identity

    def is_open(self, path: str) -> bool:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        return path == "/metrics" and self.metrics_public

    def host_allowed(self, host: str | None) -> bool:
        if not self.loopback_hosts_only:
            return True
        try:
            name = urlsplit(f"//{host or ''}").hostname or ""
        except ValueError:
            return False
        return name.endswith(".localhost") or is_loopback(name)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Exactly an allowed origin; with none configured, only the server's own."""
        normalized = origin.strip().lower().rstrip("/")
        if self.allowed_origins:
            return normalized in self.allowed_origins
        parts = urlsplit(normalized)
        return (
            parts.scheme in ("http", "https")
            and host is not None
            and parts.netloc == host.lower()
            and not parts.path
        )


def is_loopback(host: str) -> bool:
    """`localhost`, or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """`[server] trusted_proxies` as networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


def normalized_origins(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(o.strip().lower().rstrip("/") for o in origins if o.strip())


def client_address(peer: str | None, headers: Headers, trusted: tuple[Network, ...]) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy."""
    if peer is None or not trusted or not _in(peer, trusted):
        return peer
    # Several header lines are one list, in order (RFC 9110 5.3): a proxy may add a line
    # of its own after one that the client wrote.
    chain = ",".join(headers.getlist("x-forwarded-for"))
    forwarded = [part.strip() for part in chain.split(",")]
    for address in reversed([a for a in forwarded if a]):
        if not _in(address, trusted):
            return address
    return peer


def _in(address: str, nets: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def credential_of(headers: Headers, query: QueryParams, subprotocols: Iterable[str]) -> str | None:
    """The credential the caller presented, wherever it put it."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return api_key
    for protocol in subprotocols:
        if protocol.startswith(BEARER_PROTOCOL) and len(protocol) > len(BEARER_PROTOCOL):
            return protocol[len(BEARER_PROTOCOL) :]
    token = query.get("access_token", "").strip()
    return token or None


def chosen_subprotocol(offered: Iterable[str]) -> str | None:
    """The subprotocol to accept: the first one offered that is not a credential; the
    credential's only when it is all the client offered (browsers then require it)."""
    offered = list(offered)
    plain = [p for p in offered if not p.startswith(BEARER_PROTOCOL)]
    if plain:
        return plain[0]
    return offered[0] if offered else None
