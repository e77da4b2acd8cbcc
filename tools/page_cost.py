"""What the chat page costs the server: the HTTP requests and bytes of one page load (and
of a reload, when the browser revalidates what it holds), and the WebSocket frames and
bytes of one answer of about 50 tokens. Measured in a real headless Chromium against a
real server (the simulated provider, 50 deltas 20 ms apart).

    .venv/bin/python tools/page_cost.py

Bytes are as Chromium counts them on the wire (headers and bodies; the server sends
no compression). WebSocket bytes are the frames' payloads (permessage-deflate is off
unless `[server] ws_per_message_deflate`), plus 2 to 8 bytes of framing each.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from playwright.async_api import Page, Request, WebSocket, expect  # noqa: E402
from tests.support.browser import offline_browser  # noqa: E402
from tests.support.server import running_server, simulated_settings  # noqa: E402

TOKENS = 50
DELAY_MS = 20  # 50 tokens/s, a hosted model's pace: text is coalesced every 40 ms


async def page_load(page: Page, url: str, reload: bool = False) -> list[dict[str, Any]]:
    requests: list[Request] = []

    def finished(request: Request) -> None:
        requests.append(request)

    page.on("requestfinished", finished)
    if reload:
        await page.reload()
    else:
        await page.goto(url)
    status = page.get_by_test_id("status")
    await expect(status).to_have_text("Connected")
    await expect(page.get_by_test_id("provider").locator("option")).to_have_count(2)
    page.remove_listener("requestfinished", finished)
    rows = []
    for request in requests:
        sizes = await request.sizes()
        response = await request.response()
        rows.append(
            {
                "path": request.url.removeprefix(url.rstrip("/")),
                "status": response.status if response else 0,
                "sent": sizes["requestHeadersSize"] + sizes["requestBodySize"],
                "received": sizes["responseHeadersSize"] + sizes["responseBodySize"],
            }
        )
    return rows


async def one_answer(page: Page) -> dict[str, int]:
    counts = {"frames_in": 0, "bytes_in": 0, "frames_out": 0, "bytes_out": 0}

    def received(payload: str | bytes) -> None:
        counts["frames_in"] += 1
        counts["bytes_in"] += len(payload.encode() if isinstance(payload, str) else payload)

    def sent(payload: str | bytes) -> None:
        counts["frames_out"] += 1
        counts["bytes_out"] += len(payload.encode() if isinstance(payload, str) else payload)

    sockets: list[WebSocket] = []

    def opened(socket: WebSocket) -> None:
        sockets.append(socket)

    page.on("websocket", opened)
    await page.reload()  # a fresh socket that the listeners below see from its start
    await expect(page.get_by_test_id("status")).to_have_text("Connected")
    socket = sockets[-1]
    socket.on("framereceived", received)
    socket.on("framesent", sent)
    await page.get_by_test_id("prompt").fill("Tell me about sockets")
    await page.get_by_test_id("prompt").press("Enter")
    await expect(page.get_by_test_id("status")).to_have_text(
        "Connected · completed", timeout=30_000
    )
    return counts


def table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    for row in rows:
        sizes = f"sent {row['sent']:>6} B  received {row['received']:>7} B"
        print(f"  {row['status']} {row['path']:<28} {sizes}")
    print(
        f"  {len(rows)} requests, sent {sum(r['sent'] for r in rows)} B, "
        f"received {sum(r['received'] for r in rows)} B"
    )


async def measure() -> None:
    simulated = {
        "name": "simulated",
        "kind": "simulated",
        "options": {"tokens": TOKENS, "delay_ms": DELAY_MS},
    }
    settings = simulated_settings(providers=[simulated])
    async with running_server(settings) as server, offline_browser(server.url) as browser:
        # A context of its own, not the offline page's: Playwright turns the HTTP
        # cache off in a context whose requests it routes, and a reload would not
        # revalidate. The server is on loopback; nothing else is asked for.
        page = await (await browser.browser.new_context()).new_page()
        table(
            "One page load (a browser that holds nothing):",
            await page_load(page, server.url + "/"),
        )
        table(
            "A reload (the browser revalidates what it holds):",
            await page_load(page, server.url + "/", reload=True),
        )
        counts = await one_answer(page)
    print(
        f"\nOne answer of {TOKENS} tokens over the WebSocket: {counts['frames_in']} frames in "
        f"({counts['bytes_in']} B of payload, the connection's greeting included), "
        f"{counts['frames_out']} out ({counts['bytes_out']} B)"
    )


if __name__ == "__main__":
    asyncio.run(measure())
