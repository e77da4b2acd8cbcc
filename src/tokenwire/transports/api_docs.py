"""The interactive API docs, Swagger UI at `/docs`, that work offline.

FastAPI's own page loads its script, style and favicon from CDNs, and is blank
without the internet. This page is FastAPI's, pointed at the copies that the pinned
`fastapi-offline` package ships, served under `/static/docs/`. Like every static
file they need no credential (they hold nothing of this server's); the page and
`/openapi.json` do when authentication is on. There is no ReDoc page: ReDoc
fetches its logo from its vendor's CDN whatever it is given.
"""

from __future__ import annotations

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

ASSETS = "/static/docs"
SWAGGER_UI = "/docs"


def routes() -> list[BaseRoute]:
    return [
        Route(SWAGGER_UI, swagger_ui, include_in_schema=False),
        Mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"),
    ]


async def swagger_ui(request: Request) -> HTMLResponse:
    root, app = request.scope.get("root_path", ""), request.app
    return get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title}: Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        # The validator badge would send the document's address to swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
