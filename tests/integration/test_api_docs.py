"""`/docs`, Swagger UI, works without the internet: rendered in a real Chromium that can
reach only the server, and behind the same access rules as every other endpoint."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import expect

from tests.support.auth import ADA_KEY, ENVIRON, api_key_settings, bearer
from tests.support.browser import offline_page
from tests.support.server import running_server, simulated_settings


@pytest.mark.parametrize("auth", ["off", "api_key"])
async def test_swagger_ui_renders_every_operation_with_the_network_off(auth: str) -> None:
    settings, headers = simulated_settings(), None
    if auth == "api_key":  # the page and the document it fetches need the credential
        settings, headers = api_key_settings(), bearer(ADA_KEY)
    async with (
        running_server(settings, environ=ENVIRON) as server,
        offline_page(server.url, headers) as offline,
    ):
        async with httpx.AsyncClient(headers=headers) as http:
            paths = (await http.get(server.url + "/openapi.json")).json()["paths"]
        documented = set(paths)
        # One entry per operation: a path may have several (GET and DELETE of a response).
        operation_count = sum(len(operations) for operations in paths.values())

        await offline.page.goto(server.url + "/docs")
        operations = offline.page.locator(".opblock-summary-path[data-path]")
        chat = operations.filter(has_text="/v1/chat/completions")
        await expect(chat).to_be_visible(timeout=30_000)
        await expect(operations).to_have_count(operation_count, timeout=30_000)
        shown = await operations.evaluate_all("els => els.map(e => e.dataset.path)")

    assert "/v1/chat/completions" in documented
    assert set(shown) == documented
    assert offline.refused == []


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
async def test_with_auth_on_the_docs_need_a_credential_like_every_endpoint(path: str) -> None:
    async with (
        running_server(api_key_settings(), environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        without = await http.get(path)
        with_key = await http.get(path, headers=bearer(ADA_KEY))

    assert without.status_code == 401
    assert with_key.status_code == 200


async def test_with_auth_on_the_docs_scripts_and_styles_are_static_files_open_to_all() -> None:
    async with (
        running_server(api_key_settings(), environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        page = (await http.get("/docs", headers=bearer(ADA_KEY))).text
        assets = re.findall(r'(?:src|href)="(/static/docs/[^"]+)"', page)
        answers = [await http.get(asset) for asset in assets]

    assert len(assets) == 3  # the script, the style sheet, the icon
    assert [answer.status_code for answer in answers] == [200, 200, 200]


async def test_the_docs_page_does_not_send_the_document_s_address_to_a_validator() -> None:
    # Swagger UI skips its online validator for loopback addresses only, so the browser
    # test above cannot see it; on any other host it would ask validator.swagger.io.
    async with running_server() as server, httpx.AsyncClient() as http:
        page = (await http.get(server.url + "/docs")).text

    assert '"validatorUrl": null' in page
