"""Who is calling, and from where, on every transport.

The access middleware puts both in the scope (`security/middleware.py`). Without
it (an app built for a test), the caller is who `user_id` says, as with
authentication off.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import HTTPConnection

from tokenwire.core.spec import RequestSpec
from tokenwire.security.middleware import CLIENT, identity_of


def user_of(connection: HTTPConnection) -> str:
    identity = identity_of(connection.scope)
    if identity is not None:
        return identity.user_id
    return connection.query_params.get("user_id") or "anonymous"


def client_of(connection: HTTPConnection) -> str | None:
    client = connection.scope.get(CLIENT)
    if isinstance(client, str):
        return client
    peer = connection.client
    return peer.host if peer is not None else None


def with_client(spec: RequestSpec, connection: HTTPConnection) -> RequestSpec:
    """`spec` with the caller's address, for the audit lines of the limits it meets."""
    return replace(spec, client=client_of(connection))
