"""Bodies that must be JSON are declared so: what to send when one is not.

`curl -d` without `-H 'content-type: application/json'` sends
`application/x-www-form-urlencoded`; a body of any type other than JSON is refused
(415, in the endpoint's own error shape) with a message that says what to send. A
browser can post a form or plain text to any address without asking first, but JSON
only after a CORS preflight, so this also keeps pages of other sites from starting
requests.
"""

from __future__ import annotations

from tokenwire.protocol.errors import NotJson, excerpt

SEND_JSON = "send the body as JSON with the header `Content-Type: application/json`"


def is_json(content_type: str | None) -> bool:
    """`application/json` or any `application/*+json`, whatever its parameters."""
    if content_type is None:
        return False
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def require_json(content_type: str | None) -> None:
    """Raise `NotJson`, saying what to send, unless the body is declared as JSON."""
    if is_json(content_type):
        return
    if content_type is None:
        raise NotJson(f"{SEND_JSON} (this request has no content type)")
    got = f"this request's is {excerpt(content_type, 64)}"
    if content_type.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        got += ", which curl -d sends unless given -H 'content-type: application/json'"
    raise NotJson(f"{SEND_JSON} ({got})")
