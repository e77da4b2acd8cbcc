"""Audit lines: refused handshakes, failed authentications and limit hits.

One structured line each (`tokenwire.audit`, at warning level, so that they show
at the default level and are easy to route apart), with the user where known, the
reason and the client's address. Never a credential, a prompt or an answer.
"""

from __future__ import annotations

import structlog

_logger = structlog.get_logger("tokenwire.audit")


def audit(event: str, *, reason: str, user: str | None = None, client: str | None = None) -> None:
    _logger.warning(event, audit=True, reason=reason, user=user, client=client)
