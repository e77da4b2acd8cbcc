"""`tokenwire chat` as a person uses it, on a pseudo-terminal: a question answered, Ctrl-C
stopping an answer (and only the answer), a second question in the same conversation,
Ctrl-D leaving; and the one-line errors of a server it cannot use."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from tests.support.auth import ENVIRON, api_key_settings
from tests.support.process import TOKENWIRE
from tests.support.providers import WatchedProvider
from tests.support.server import free_port, gateway_with, running_server
from tests.support.terminal import CTRL_C, Terminal, at_a_terminal
from tests.support.waiting import eventually
from tokenwire.cli import main
from tokenwire.core.provider import ProviderEvent, ProviderRequest

CTRL_D = b"\x04"
ENTER = b"\r"
ENDLESS = "tell me a story that never ends"


class Steered(WatchedProvider):
    """Short answers, except to the endless story: a sentence, then nothing until
    cancelled (so that Ctrl-C lands mid-answer however busy the machine)."""

    endless_closed = False

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        if request.messages[-1].content != ENDLESS:
            async for item in super().stream(request):
                yield item
            return
        self.requests.append(request)
        try:
            yield "Once upon a time"
            await asyncio.Event().wait()
        finally:
            self.endless_closed = True


async def shown(terminal: Terminal, text: str, times: int) -> None:
    await eventually(lambda: terminal.output.count(text) >= times, timeout=60)


async def test_chat_answers_stops_on_ctrl_c_keeps_the_conversation_and_leaves_on_ctrl_d() -> None:
    steered = Steered("steered", tokens=5, delay_ms=1)
    async with running_server(gateway=gateway_with(steered)) as server:
        address = server.ws_url + "?user_id=chatter"
        async with at_a_terminal(str(TOKENWIRE), "chat", "--url", address) as terminal:
            await terminal.until("you>")
            terminal.type(b"first question" + ENTER)
            await terminal.until("tokens/s")

            terminal.type(ENDLESS.encode() + ENTER)
            await terminal.until("Once upon a time")
            terminal.type(CTRL_C)
            await terminal.until("cancelled · steered")
            await shown(terminal, "you>", 3)

            terminal.type(b"second question" + ENTER)
            await shown(terminal, "tokens/s", 2)
            await shown(terminal, "you>", 4)
            terminal.type(CTRL_D)
            status = await terminal.exit_status()

        statuses = [r["status"] for r in await server.gateway.requests_of("chatter")]

    assert status == 0, terminal.output
    assert "Traceback" not in terminal.output
    assert statuses == ["completed", "cancelled", "completed"]
    assert len(steered.requests) == 3
    conversation = [m.content for m in steered.requests[-1].messages]
    # The cancelled turn leaves no trace; the first is the history of the second.
    assert conversation[0] == "first question"
    assert conversation[-1] == "second question"
    assert ENDLESS not in conversation
    assert steered.endless_closed  # the cancel reached the provider


async def test_chat_says_in_one_line_that_it_cannot_reach_the_server(
    capfd: pytest.CaptureFixture[str],
) -> None:
    address = f"ws://127.0.0.1:{free_port()}/ws/ai-stream"
    status = await asyncio.to_thread(main, ["chat", "--url", address])
    assert status == 1
    assert capfd.readouterr().err == f"tokenwire chat: cannot reach {address}: connection refused\n"


async def test_chat_says_in_one_line_that_the_token_from_the_environment_was_refused(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tw-key-nobody-0123456789abcdef"
    monkeypatch.setenv("TOKENWIRE_TOKEN", secret)
    async with running_server(api_key_settings(), environ=ENVIRON) as server:
        status = await asyncio.to_thread(main, ["chat", "--url", server.ws_url])
    out, err = capfd.readouterr()
    assert status == 1
    [line] = err.splitlines()
    assert line.startswith("tokenwire chat: the server refused the credential (HTTP 401)")
    assert secret not in out + err
