"""Who is calling, on every transport."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def user_of(connection: HTTPConnection) -> str:
    """With authentication off, the caller is who the `user_id` parameter says."""
    return connection.query_params.get("user_id") or "anonymous"
