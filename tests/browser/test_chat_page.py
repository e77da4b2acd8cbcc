"""The chat page at `/`, used as a person uses it, in a real headless Chromium that can
reach nothing but the server. One server and one browser serve the whole module; each
test has a page of its own (fresh storage).

The server's own log is the reference for what an answer said: a `resume` from 0 of
the same request (compact: its text in one chunk) after the page is done with it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Page, WebSocketRoute, expect

from tests.fakes.openai_upstream import (
    Exchange,
    Reply,
    ScriptedUpstream,
    openai_answer,
    openai_error,
)
from tests.support.auth import ADA_KEY, ENVIRON, api_key_settings
from tests.support.browser import OfflineBrowser, OfflinePage, offline_browser
from tests.support.server import (
    RunningServer,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("chat_page")]

# `simulated` answers in under a second; `slow` (by name only) in under two, time
# enough to cut or reload it part-way.
FAST = {"name": "simulated", "kind": "simulated", "options": {"delay_ms": 30, "tokens": 24}}
SLOW = {
    "name": "slow",
    "kind": "simulated",
    "auto": False,
    "options": {"delay_ms": 40, "tokens": 40},
}
# `endless` (by name only) outlasts any test: a stop always lands mid-answer.
ENDLESS = {
    "name": "endless",
    "kind": "simulated",
    "auto": False,
    "options": {"delay_ms": 50, "tokens": 2000},
}
# Model output that tries to run script, beside markdown that should render.
HOSTILE = [
    "Here is **bold** text and `inline <i>code</i>`.\n\n",
    "<img src=x onerror=\"window.pwned='img'\">\n\n",
    "<script>window.pwned='script'</script>\n\n",
    "```python\nprint('<b>hi</b>')\n```\n\n",
    "- [the docs](https://example.com/docs)\n",
    "- [a trap](javascript:window.pwned='link')\n",
]
ARTIFACTS = Path(os.environ.get("TOKENWIRE_ARTIFACTS", "build/artifacts"))


def hostile_or_busy(exchange: Exchange) -> Reply:
    """The hostile answer; a 429 that asks for 30 s to a prompt that mentions it."""
    if "429" in json.dumps(exchange.json()["messages"]):
        return openai_error(429, "slow down", "rate_limit_error", {"retry-after": "30"})
    return openai_answer(HOSTILE, 5, 40)(exchange)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with ScriptedUpstream(hostile_or_busy) as upstream:
        hostile = {
            "name": "hostile",
            "kind": "openai",
            "model": "m",
            "base_url": upstream.url + "/v1",
            "auto": False,
        }
        settings = simulated_settings(providers=[FAST, SLOW, ENDLESS, hostile])
        async with running_server(settings) as running:
            yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(server: RunningServer) -> AsyncIterator[OfflineBrowser]:
    async with offline_browser(server.url) as browser:
        yield browser


# -- helpers ----------------------------------------------------------------------------


async def open_chat(
    browser: OfflineBrowser, url: str, sent: list[Any] | None = None, **context: Any
) -> OfflinePage:
    """The chat page, connected; `sent` gathers the frames the page sends."""
    offline = await browser.new_page(**context)
    if sent is not None:
        offline.page.on(
            "websocket", lambda ws: ws.on("framesent", lambda f: sent.append(json.loads(f)))
        )
    await offline.page.goto(url + "/")
    await expect(offline.page.get_by_test_id("status")).to_have_text("Connected")
    return offline


async def ask(page: Page, prompt: str, provider: str | None = None) -> None:
    if provider is not None:
        await page.get_by_test_id("provider").select_option(provider)
    await page.get_by_test_id("prompt").fill(prompt)
    await page.get_by_test_id("prompt").press("Enter")


def answer_text(page: Page) -> Any:
    return page.get_by_test_id("answer").locator(".content")


async def finished(page: Page, state: str = "completed") -> str:
    await expect(page.get_by_test_id("status")).to_have_text(f"Connected · {state}", timeout=15_000)
    return await answer_text(page).inner_text()


async def sample(page: Page) -> dict[str, Any]:
    """What the latest answer shows now, read in one go."""
    result: dict[str, Any] = await page.evaluate(
        """() => {
            const answer = document.querySelector('[data-testid=answer]');
            const status = document.querySelector('[data-testid=status]');
            if (!answer) return {length: 0, streaming: false};
            const progress = answer.querySelector('progress');
            return {
                length: answer.querySelector('.content').innerText.length,
                streaming: status.dataset.answer === 'streaming',
                typing: !answer.querySelector('.typing').hidden,
                progress: progress.hidden ? null : progress.value,
                requestId: answer.dataset.requestId,
            };
        }"""
    )
    return result


async def until(page: Page, condition: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The first sample of the page for which `condition` holds."""
    async with asyncio.timeout(timeout):
        while True:
            now = await sample(page)
            if condition(now):
                return now
            await asyncio.sleep(0.01)


async def watch_the_answer(page: Page) -> None:
    """Record, in the page, what the latest answer shows at each change (`window.seen`):
    every step of its growth, however slowly the test reads."""
    await page.evaluate(
        """() => {
            window.seen = [];
            const status = document.querySelector('[data-testid=status]');
            new MutationObserver(() => {
                const answer = document.querySelector('[data-testid=answer]');
                if (!answer) return;
                const progress = answer.querySelector('progress');
                window.seen.push({
                    length: answer.querySelector('.content').innerText.length,
                    streaming: status.dataset.answer === 'streaming',
                    typing: !answer.querySelector('.typing').hidden,
                    progress: progress.hidden ? 0 : progress.value,
                });
            }).observe(document.body, {subtree: true, childList: true, attributes: true,
                                       characterData: true});
        }"""
    )


def of_type_sent(sent: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in sent if frame.get("type") == kind]


async def user_of(page: Page) -> str:
    user: str = await page.evaluate("() => localStorage.getItem('tokenwire.user')")
    return user


async def logged(server: RunningServer, user: str, request_id: str) -> tuple[str, dict[str, Any]]:
    """The text the server sent for `request_id`, and its `stream_end`, from its log."""
    async with ws_client(server, f"?user_id={user}") as client:
        await client.send(
            {"type": "resume", "request_id": request_id, "last_seq": 0, "compact": True}
        )
        frames = await client.until_end(request_id)
    text = "".join(frame["data"]["chunk"] for frame in of_type(frames, "chunk"))
    return text, of_type(frames, "stream_end")[0]["data"]


async def screenshot(page: Page, name: str) -> None:
    await page.screenshot(path=ARTIFACTS / name)  # Playwright makes the directories


# -- streaming --------------------------------------------------------------------------


async def test_an_answer_grows_as_it_streams_with_typing_and_progress_then_its_footer(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    sent: list[dict[str, Any]] = []
    offline = await open_chat(browser, server.url, sent)
    page = offline.page
    await watch_the_answer(page)

    await page.get_by_test_id("strategy").select_option("cost_optimized")
    await ask(page, "Tell me about sockets")
    shown = await finished(page)

    seen = await page.evaluate("() => window.seen")
    streaming = [s for s in seen if s["streaming"] and s["length"] > 0]
    assert len({s["length"] for s in streaming}) >= 2  # it grew while streaming
    assert [s["length"] for s in streaming] == sorted(s["length"] for s in streaming)
    assert any(s["typing"] for s in streaming)
    assert any(s["progress"] for s in streaming)
    request = of_type_sent(sent, "ai_request")[0]
    assert request["config"] == {"routing_strategy": "cost_optimized"}
    assert request["conversation_id"].startswith("c-")
    text, end = await logged(server, await user_of(page), request["request_id"])
    assert shown == text
    footer = await page.get_by_test_id("answer").locator(".meta").inner_text()
    assert footer.startswith("simulated · ")
    assert "first token" in footer
    assert "tokens/s" in footer
    assert f"{end['usage']['completion_tokens']} tokens" in footer
    await expect(page.get_by_test_id("answer").locator(".typing")).to_be_hidden()
    await expect(page.get_by_test_id("answer").locator("progress")).to_be_hidden()
    await screenshot(page, "chat-page.png")
    assert offline.refused == []


async def test_model_output_with_html_renders_inert_while_its_markdown_renders(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    offline = await open_chat(browser, server.url)
    page = offline.page

    await ask(page, "Show me some markup", provider="hostile")
    shown = await finished(page)

    answer = page.get_by_test_id("answer")
    assert await page.evaluate("() => window.pwned") is None
    assert await answer.locator("img, script, i, b").count() == 0
    assert "<img src=x onerror=" in shown
    assert "<script>" in shown
    await expect(answer.locator("strong")).to_have_text("bold")
    await expect(answer.locator("p code")).to_have_text("inline <i>code</i>")
    await expect(answer.locator("pre code")).to_have_text("print('<b>hi</b>')")
    links = answer.locator("a")
    await expect(links).to_have_count(1)
    assert await links.get_attribute("href") == "https://example.com/docs"
    assert await links.get_attribute("rel") == "noopener noreferrer"
    assert "[a trap](javascript:" in shown
    assert offline.refused == []


async def test_an_upstream_rate_limit_is_shown_plainly_with_when_to_retry(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    page = (await open_chat(browser, server.url)).page

    await ask(page, "Answer 429 please", provider="hostile")
    await finished(page, "error")

    error = page.get_by_test_id("answer").get_by_test_id("error")
    await expect(error).to_have_text(
        "Rate limited. Upstream rate limit (429): slow down. Try again in 30 s."
    )
    await expect(page.get_by_test_id("answer")).to_have_attribute("data-state", "error")


# -- stopping ---------------------------------------------------------------------------


async def stats(server: RunningServer) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        body: dict[str, Any] = (await http.get(server.url + "/api/streaming/stats")).json()
    return body["streams"]["by_status"]


async def test_the_stop_button_stops_the_answer_and_the_server_agrees(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    sent: list[dict[str, Any]] = []
    page = (await open_chat(browser, server.url, sent)).page
    cancelled_before = (await stats(server)).get("cancelled", 0)

    await ask(page, "A long story please", provider="endless")
    running = await until(page, lambda s: s["streaming"] and s["length"] > 0)
    await page.get_by_test_id("cancel").click()
    shown = await finished(page, "cancelled")

    assert {"type": "cancel_request", "request_id": running["requestId"]} in sent
    text, end = await logged(server, await user_of(page), running["requestId"])
    assert end["status"] == "cancelled"
    assert shown == text
    assert len(shown) > 0
    assert (await stats(server)).get("cancelled", 0) == cancelled_before + 1
    await expect(page.get_by_test_id("answer")).to_have_attribute("data-state", "cancelled")
    await expect(page.get_by_test_id("cancel")).to_be_hidden()


async def test_enter_sends_shift_enter_breaks_the_line_and_esc_stops(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    page = (await open_chat(browser, server.url)).page
    prompt = page.get_by_test_id("prompt")
    await page.get_by_test_id("provider").select_option("endless")

    await prompt.press_sequentially("line one")
    await prompt.press("Shift+Enter")
    await prompt.press_sequentially("line two")
    assert await prompt.input_value() == "line one\nline two"
    assert await page.get_by_test_id("answer").count() == 0
    await prompt.press("Enter")
    await until(page, lambda s: s["streaming"] and s["length"] > 0)
    await page.keyboard.press("Escape")
    await finished(page, "cancelled")

    assert await prompt.input_value() == ""
    await expect(page.locator(".turn.user .bubble")).to_have_text("line one\nline two")
    await page.get_by_test_id("new-chat").click()
    await expect(page.locator(".turn")).to_have_count(0)


# -- losing the link, reloading ---------------------------------------------------------


async def test_a_cut_socket_reconnects_and_the_answer_resumes_without_loss_or_repeat(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    offline = await browser.new_page()
    page = offline.page
    connections: list[dict[str, Any]] = []

    async def cut_after_three_chunks(ws: WebSocketRoute) -> None:
        upstream = ws.connect_to_server()
        seen: dict[str, Any] = {"sent": [], "delivered": [], "cut": False, "closing": []}
        connections.append(seen)

        def to_server(message: str | bytes) -> None:
            seen["sent"].append(json.loads(message))
            upstream.send(message)

        def to_page(message: str | bytes) -> None:
            if seen["cut"]:
                return
            event = json.loads(message)
            seen["delivered"].append(event)
            ws.send(message)
            if len(connections) == 2 and len(seen["delivered"]) == 1:
                # A frame the page already has, again: it must show it once.
                ws.send(json.dumps(connections[0]["delivered"][-1]))
            chunks = [e for e in seen["delivered"] if e["event_type"] == "chunk"]
            if len(connections) == 1 and len(chunks) == 3:
                seen["cut"] = True  # a lost link: neither side says goodbye
                seen["closing"] += [
                    asyncio.ensure_future(ws.close(code=4000, reason="link lost")),
                    asyncio.ensure_future(upstream.close(code=4000, reason="link lost")),
                ]

        ws.on_message(to_server)
        upstream.on_message(to_page)

    await page.route_web_socket("**/ws/ai-stream*", cut_after_three_chunks)
    await page.goto(server.url + "/")
    await expect(page.get_by_test_id("status")).to_have_text("Connected")
    await ask(page, "Keep going through the outage", provider="slow")
    shown = await finished(page)

    first, second = connections[0], connections[1]
    request_id = of_type(first["delivered"], "stream_start")[0]["request_id"]
    last_seen = max(e["seq"] for e in first["delivered"] if e["seq"] is not None)
    resume = {"type": "resume", "request_id": request_id, "last_seq": last_seen, "compact": False}
    assert resume in second["sent"]
    text, _ = await logged(server, await user_of(page), request_id)
    assert shown == text
    assert len(connections) == 2
    assert offline.refused == []


async def test_a_reload_mid_answer_shows_it_at_once_and_finishes_it(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    sent: list[dict[str, Any]] = []
    page = (await open_chat(browser, server.url, sent)).page

    await ask(page, "Survive a reload", provider="slow")
    before = await until(page, lambda s: s["streaming"] and s["length"] > 0)
    await page.reload()
    after = await until(page, lambda s: s["length"] >= before["length"])
    shown = await finished(page)

    assert after["requestId"] == before["requestId"]
    assert {
        "type": "resume",
        "request_id": before["requestId"],
        "last_seq": 0,
        "compact": True,
    } in sent
    text, _ = await logged(server, await user_of(page), before["requestId"])
    assert shown == text
    await page.reload()  # the conversation, kept across reloads
    await expect(page.locator(".turn.user .bubble")).to_have_text("Survive a reload")
    assert await answer_text(page).inner_text() == text


# -- authentication ---------------------------------------------------------------------


async def test_with_auth_on_a_bad_key_is_refused_and_a_good_one_connects(
    browser: OfflineBrowser,
) -> None:
    async with running_server(api_key_settings(), environ=ENVIRON) as server:
        offline = await OfflineBrowser(browser.browser, server.url).new_page()
        try:
            page = offline.page
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.on("websocket", lambda ws: urls.append(ws.url))
            await page.goto(server.url + "/")
            token = page.get_by_test_id("token")
            await expect(token).to_be_visible()

            await token.fill("tw-key-nobody-0123456789")
            await page.get_by_test_id("token-submit").click()
            await expect(page.get_by_test_id("credential-error")).to_contain_text("refused")
            await token.fill(ADA_KEY)
            await page.get_by_test_id("token-submit").click()
            await expect(page.get_by_test_id("status")).to_have_text("Connected")
            # /v1/models answered the credential too: the selector lists the provider.
            await expect(page.get_by_test_id("provider").locator("option")).to_have_count(2)
            stored = await page.evaluate("() => sessionStorage.getItem('tokenwire.credential')")
        finally:
            await page.context.close()

    assert stored == ADA_KEY
    assert offline.refused == []
    assert any("/ws/ai-stream" in url for url in urls)
    assert [url for url in urls if "tw-key" in url] == []


# -- a phone ----------------------------------------------------------------------------


async def test_on_a_phone_sized_screen_nothing_overflows_and_a_tap_sends(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    offline = await open_chat(browser, server.url, viewport={"width": 390, "height": 844})
    page = offline.page

    await page.get_by_test_id("prompt").fill("Hi from a phone")
    await page.get_by_test_id("send").click()
    await finished(page)

    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    for hook in ("prompt", "send", "status", "provider"):
        box = await page.get_by_test_id(hook).bounding_box()
        assert box is not None, hook
        assert 0 <= box["x"] <= box["x"] + box["width"] <= 390, hook
        assert box["y"] + box["height"] <= 844, hook
    await screenshot(page, "chat-page-phone.png")


# -- the ES module ----------------------------------------------------------------------


async def test_the_es_module_streams_lists_and_reattaches_exactly(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    page = (await open_chat(browser, server.url)).page

    result = await page.evaluate(
        """async () => {
            const tw = await import('/static/tokenwire.js');
            const client = new tw.TokenwireClient({userId: 'module-user'});
            await client.connect();
            const streamed = [];
            const answer = client.stream('Hello module', {config: {provider: 'simulated'}});
            for await (const event of answer) streamed.push(event);
            const listed = await client.listRequests();
            const again = [];
            for await (const event of client.attach(answer.requestId)) again.push(event);
            const models = await tw.listModels();
            client.close();
            const text = (events) => events.filter(e => e.event_type === 'chunk')
                .map(e => e.data.chunk).join('');
            return {
                requestId: answer.requestId,
                types: streamed.map(e => e.event_type),
                seqs: streamed.map(e => e.seq),
                text: text(streamed),
                again: text(again),
                compacted: again.filter(e => e.event_type === 'chunk').length,
                listed: listed.map(r => [r.request_id, r.status]),
                models: models.map(m => m.id),
                state: client.state,
            };
        }"""
    )

    assert result["types"][0] == "stream_start"
    assert result["types"][-1] == "stream_end"
    assert result["seqs"] == list(range(1, len(result["seqs"]) + 1))
    text, _ = await logged(server, "module-user", result["requestId"])
    assert result["text"] == result["again"] == text
    assert result["compacted"] == 1
    assert [result["requestId"], "completed"] in result["listed"]
    assert result["models"] == ["simulated", "slow", "endless", "hostile", "auto"]
    assert result["state"] == "closed"


async def test_the_markdown_renderer_builds_each_block_and_leaves_html_as_text(
    server: RunningServer, browser: OfflineBrowser
) -> None:
    page = (await browser.new_page()).page
    await page.goto(server.url + "/api")  # a page of the server's origin, without the chat
    cases = {
        "# Title\n\nSome *em* and **strong** and `a<b>`": (
            "<h1>Title</h1><p>Some <em>em</em> and <strong>strong</strong> and "
            "<code>a&lt;b&gt;</code></p>"
        ),
        "- one\n- two\n\n1. first\n2. second": (
            "<ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>"
        ),
        "```js\nlet x = '<b>';\n```": (
            "<pre><code data-language=\"js\">let x = '&lt;b&gt;';</code></pre>"
        ),
        "```\nstill streaming": "<pre><code>still streaming</code></pre>",
        "[ok](http://a.example/) [no](data:text/html,x)": (
            '<p><a href="http://a.example/" rel="noopener noreferrer" target="_blank">ok</a>'
            " [no](data:text/html,x)</p>"
        ),
        "<b onmouseover=x>hi</b>\n> quoted": (
            "<p>&lt;b onmouseover=x&gt;hi&lt;/b&gt;</p><blockquote><p>quoted</p></blockquote>"
        ),
    }

    rendered = await page.evaluate(
        """async (inputs) => {
            const { renderMarkdown } = await import('/static/markdown.js');
            return inputs.map((text) => {
                const box = document.createElement('div');
                box.append(renderMarkdown(text));
                return box.innerHTML;
            });
        }""",
        list(cases),
    )

    assert dict(zip(cases, rendered, strict=True)) == cases
