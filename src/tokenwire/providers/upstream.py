"""What the HTTP-based providers share about upstream failures.

One mapping from an upstream HTTP status to the gateway's error, one reading of
`retry-after`, and one scrubbing of secrets from an upstream's words.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tokenwire.protocol.errors import (
    ProviderAuthError,
    ProviderError,
    RateLimited,
    TokenwireError,
    UpstreamRejected,
)

END_MARKER_MISSING = "upstream stream ended without its end marker"

# Masked keys as upstreams quote them ("sk-proj-****abcd") and bare "sk-" keys.
_SECRET_LIKE = re.compile(r"\S*\*{4,}\S*|\bsk-[A-Za-z0-9_\-]{8,}")
_MESSAGE_LIMIT = 500


def scrub(text: str, api_key: str | None) -> str:
    """Remove the key, and anything that looks like one, from an upstream's words."""
    if api_key:
        text = text.replace(api_key, "[redacted]")
    text = _SECRET_LIKE.sub("[redacted]", text)
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "..."


def retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after` in seconds, given as a number or as an HTTP date."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def status_error(
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    rate_limited: bool = False,
    auth_refused: bool = False,
) -> TokenwireError:
    """The gateway's error for an upstream HTTP status (the message already scrubbed).

    A 4xx other than 401/403/429 is a `ProviderError`, not `InvalidRequest`: options
    are checked before sending, so what the upstream still rejects (an unknown model,
    a prompt over its context) is reported in the upstream's own words, without
    guessing whose fault it was.
    """
    if status == 429 or rate_limited:
        return RateLimited(f"upstream rate limit ({status}): {message}", retry_after(headers))
    if status in (401, 403) or auth_refused:
        return ProviderAuthError(f"upstream refused the credentials ({status}): {message}")
    if status < 400:
        # An error event in the middle of a successful (200) stream.
        return ProviderError(f"upstream failed mid-stream: {message}")
    if status >= 500:
        return ProviderError(f"upstream failed ({status}): {message}")
    return UpstreamRejected(f"upstream rejected the request ({status}): {message}")
