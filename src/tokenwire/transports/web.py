"""The chat page at `/` and its static files at `/static/`, served from the package.

The page is plain HTML, CSS and ES modules (no build step). Its policy allows scripts,
styles and connections from this server only (no inline script), so that model output
that slips past the page's renderer still runs nothing. Static files are revalidated
on every use (`no-cache` with an ETag: a 304 costs a few bytes), so a new release is
seen at once without versioned file names.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = "/static"
PAGE = "index.html"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


class PackageFiles(StaticFiles):
    """The package's static files, each revalidated before use."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["cache-control"] = "no-cache"
            response.headers["x-content-type-options"] = "nosniff"
        return response


def static_mount() -> Mount:
    # After the API docs' own `/static/docs` mount: the first mount that matches serves.
    return Mount(STATIC, PackageFiles(packages=[("tokenwire", "static")]), name="static")


def chat_page(request: Request) -> Response:
    """The page itself; it asks for a credential itself when the server wants one."""
    body, etag = _page()
    headers = {**PAGE_HEADERS, "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/html", headers=headers)


@cache
def _page() -> tuple[bytes, str]:
    body = files("tokenwire").joinpath("static", PAGE).read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:16]}"'


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")
