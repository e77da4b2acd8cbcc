"""`GET /` and `GET /api`: every endpoint the app serves, what it is for, and where the
API docs are (JSON; `/` is the chat page for a browser, `/api` a page of links)."""

from __future__ import annotations

import re

import httpx
from fastapi.routing import iter_route_contexts

from tests.support.server import running_server


async def test_every_route_of_the_app_is_listed_with_what_it_is_for() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        listed = (await http.get(server.url + "/")).json()["endpoints"]
        routes = server.server.config.app.routes

    served = {route.path for route in iter_route_contexts(routes)}
    assert set(listed) == served
    assert [path for path, entry in listed.items() if not entry["about"]] == []


async def test_the_list_names_the_apis_the_docs_and_their_methods() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        front = (await http.get(server.url + "/")).json()

    endpoints = front["endpoints"]
    assert endpoints["/v1/chat/completions"]["methods"] == ["POST"]
    assert endpoints["/v1/models"]["methods"] == ["GET"]
    assert endpoints["/v1/messages"]["methods"] == ["POST"]
    assert endpoints["/api/streams"]["methods"] == ["GET", "POST"]
    assert "WEBSOCKET" in endpoints["/ws/ai-stream"]["methods"]
    assert {"/docs", "/openapi.json"} <= set(endpoints)
    assert front["docs"] == {"swagger_ui": "/docs", "openapi": "/openapi.json"}


async def test_api_answers_the_same_list_as_json() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        front = (await http.get(server.url + "/")).json()
        api = (await http.get(server.url + "/api")).json()

    assert api == front


async def test_a_browser_gets_a_page_of_the_endpoints_that_links_the_docs() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        page = (await http.get(server.url + "/api", headers={"accept": "text/html"})).text

    links = set(re.findall(r'href="([^"]+)"', page))
    assert {"/", "/docs", "/openapi.json", "/healthz"} <= links
    assert "/v1/chat/completions" in page
