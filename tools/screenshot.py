"""The README's screenshots of the chat page: a real server and the real page, driven
through a short exchange in headless Chromium, light and dark.

    .venv/bin/python tools/screenshot.py [--out docs/images]

The answer comes from a scripted OpenAI-compatible upstream on loopback (the test
suite's fake, provider `demo`), so that the picture shows markdown and code as a real
model would send them, the same every time; everything else is the shipped page.
Writes chat-page.png and chat-page-dark.png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from playwright.async_api import expect  # noqa: E402
from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer  # noqa: E402
from tests.support.browser import offline_browser  # noqa: E402
from tests.support.server import running_server, simulated_settings  # noqa: E402

PROMPT = "How do I stream an answer into my own web page?"
ANSWER = [
    "Import the browser module the server ships, then iterate over the ",
    "answer's events as they arrive:\n\n",
    "```js\n",
    'import { TokenwireClient } from "/static/tokenwire.js";\n\n',
    "const client = new TokenwireClient({ token });\n",
    "await client.connect();\n",
    'for await (const event of client.stream("Hi")) {\n',
    '  if (event.event_type === "chunk") out.append(event.data.chunk);\n',
    "}\n",
    "```\n\n",
    "- **Reconnects** on its own and resumes from the last `seq`: ",
    "no token lost, none repeated.\n",
    "- `answer.cancel()` stops the model upstream too.\n",
]
SIZE = {"width": 1100, "height": 720}


async def capture(out: Path) -> list[Path]:
    async with ScriptedUpstream(openai_answer(ANSWER, 14, 96, frame_delay=0.02)) as upstream:
        demo = {
            "name": "demo",
            "kind": "openai",
            "model": "scripted",
            "base_url": upstream.url + "/v1",
        }
        settings = simulated_settings(providers=[demo, {"name": "simulated", "kind": "simulated"}])
        async with running_server(settings) as server, offline_browser(server.url) as browser:
            written = []
            for scheme, name in (("light", "chat-page.png"), ("dark", "chat-page-dark.png")):
                offline = await browser.new_page(viewport=SIZE, color_scheme=scheme)
                page = offline.page
                await page.goto(server.url + "/")
                status = page.get_by_test_id("status")
                await expect(status).to_have_text("Connected")
                await page.get_by_test_id("prompt").fill(PROMPT)
                await page.get_by_test_id("prompt").press("Enter")
                await expect(status).to_have_text("Connected · completed", timeout=20_000)
                await page.get_by_test_id("prompt").blur()
                path = out / name
                await page.screenshot(path=path)
                await page.context.close()
                written.append(path)
            return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(capture(args.out)):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
