"""The chat page and its static files over plain HTTP: what a browser is sent, with
which headers, and what is open when authentication is on."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.support.auth import ADA_KEY, ENVIRON, api_key_settings, bearer
from tests.support.server import running_server

pytestmark = pytest.mark.asyncio(loop_scope="module")
HTML = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as client:
        yield client


async def test_a_browser_gets_the_chat_page_under_a_policy_that_allows_no_inline_script(
    http: httpx.AsyncClient,
) -> None:
    page = await http.get("/", headers=HTML)

    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert scripts == ['<script type="module" src="/static/chat.js">']
    for hook in ("prompt", "send", "cancel", "status"):
        assert f'data-testid="{hook}"' in page.text
    again = await http.get("/", headers={**HTML, "if-none-match": page.headers["etag"]})
    assert again.status_code == 304
    assert {"/docs", "/api"} <= set(re.findall(r'href="(/[^"]*)"', page.text))


async def test_every_file_the_page_loads_is_served_and_revalidated_before_reuse(
    http: httpx.AsyncClient,
) -> None:
    page = (await http.get("/", headers=HTML)).text
    loaded = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page))
    chat = (await http.get("/static/chat.js")).text
    loaded |= {"/static/" + name for name in re.findall(r'from "\./([\w.]+)"', chat)}

    assert loaded >= {"/static/chat.js", "/static/chat.css", "/static/tokenwire.js"}
    for path in sorted(loaded):
        response = await http.get(path)
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-cache", path
        again = await http.get(path, headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304, path
    assert (
        (await http.get("/static/tokenwire.js"))
        .headers["content-type"]
        .startswith("text/javascript")
    )


async def test_the_api_docs_assets_are_still_served_beside_the_page_s(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.get("/static/docs/swagger-ui.css")).status_code == 200
    assert (await http.get("/static/nothing-here.js")).status_code == 404


async def test_with_auth_on_the_page_its_files_and_the_list_are_open_and_nothing_else() -> None:
    async with (
        running_server(api_key_settings(), environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        open_paths = [
            (await http.get(path, headers=HTML)).status_code
            for path in ("/", "/static/chat.js", "/static/tokenwire.js", "/api")
        ]
        models = await http.get("/v1/models")
        with_key = await http.get("/v1/models", headers=bearer(ADA_KEY))

    assert open_paths == [200, 200, 200, 200]
    assert models.status_code == 401
    assert with_key.status_code == 200
