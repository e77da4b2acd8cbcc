"""A real Chromium, Debian's, driven by Playwright, that reaches nothing but the server
under test: every other request is refused and recorded, as if the machine were offline.

Playwright's own browser download cannot work here; `make browser` installs Debian's
chromium, which Playwright drives through `executable_path`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright

CHROMIUM = "/usr/bin/chromium"
# As root Chromium runs only without its sandbox; the other flags keep it from calling
# home at start (updates, sync, QUIC probes), which a closed network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class OfflinePage:
    page: Page
    refused: list[str] = field(default_factory=list)


def installed_chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium")
    return CHROMIUM


class OfflineBrowser:
    """One headless Chromium whose pages may load only from one server; each page gets a
    context of its own (fresh storage), so that a module can share the browser."""

    def __init__(self, browser: Browser, server_url: str) -> None:
        self.browser = browser
        self.server_url = server_url

    async def new_page(
        self, headers: dict[str, str] | None = None, **context_options: Any
    ) -> OfflinePage:
        """A page in a new context (`context_options`: Playwright's, a viewport, say)."""
        context = await self.browser.new_context(extra_http_headers=headers, **context_options)
        offline = OfflinePage(await context.new_page())

        async def only_the_server(route: Route) -> None:
            if route.request.url.startswith(self.server_url + "/"):
                await route.continue_()
            else:
                offline.refused.append(route.request.url)
                await route.abort("internetdisconnected")

        await context.route("**/*", only_the_server)
        return offline


@contextlib.asynccontextmanager
async def offline_browser(server_url: str) -> AsyncIterator[OfflineBrowser]:
    """A fresh headless Chromium that may load only from `server_url`."""
    executable = installed_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            yield OfflineBrowser(browser, server_url)
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def offline_page(
    server_url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[OfflinePage]:
    """A page in a fresh headless Chromium that may load only from `server_url`, sending
    `headers` (a credential, say) with every request."""
    async with offline_browser(server_url) as browser:
        yield await browser.new_page(headers)
