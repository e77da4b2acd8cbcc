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

import pytest
from playwright.async_api import Page, Route, async_playwright

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


@contextlib.asynccontextmanager
async def offline_page(
    server_url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[OfflinePage]:
    """A page in a fresh headless Chromium that may load only from `server_url`, sending
    `headers` (a credential, say) with every request."""
    executable = installed_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=FLAGS)
        try:
            context = await browser.new_context(extra_http_headers=headers)
            offline = OfflinePage(await context.new_page())

            async def only_the_server(route: Route) -> None:
                if route.request.url.startswith(server_url + "/"):
                    await route.continue_()
                else:
                    offline.refused.append(route.request.url)
                    await route.abort("internetdisconnected")

            await context.route("**/*", only_the_server)
            yield offline
        finally:
            await browser.close()
