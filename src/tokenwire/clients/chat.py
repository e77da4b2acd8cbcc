"""`tokenwire chat`: a conversation with a tokenwire server at the terminal.

Built on `SyncStreamClient`, so that the terminal's Ctrl-C (a KeyboardInterrupt in
the main thread) interrupts only the wait for the next event: the chat then sends
`cancel_request`, reads the answer to its `stream_end` and shows the prompt again.
Ctrl-C or Ctrl-D at the prompt leaves. Every turn carries one `conversation_id`,
so that the server answers with the history.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from tokenwire.clients.errors import (
    AuthenticationRefused,
    ClientError,
    HandshakeRefused,
    ServerError,
)
from tokenwire.clients.sync import SyncStream, SyncStreamClient
from tokenwire.protocol.server_events import StreamEnd

DEFAULT_URL = "ws://127.0.0.1:8000/ws/ai-stream"
TOKEN_ENV = "TOKENWIRE_TOKEN"
"""The environment variable `tokenwire chat` reads a credential from without --token."""


def run_chat(url: str, token: str | None, provider: str | None) -> int:
    """The chat's exit status: 0 when the user leaves, 1 when the server cannot be used."""
    console = Console(highlight=False)
    client = SyncStreamClient(url, token)
    try:
        client.connect()
    except ClientError as exc:
        client.close()
        print(f"tokenwire chat: {one_line(exc)}", file=sys.stderr)
        return 1
    try:
        return Chat(client, console, provider).run()
    finally:
        with contextlib.suppress(ClientError):
            client.close()


class Chat:
    def __init__(self, client: SyncStreamClient, console: Console, provider: str | None) -> None:
        self.client = client
        self.console = console
        self.provider = provider
        self.conversation_id = str(uuid.uuid4())

    def run(self) -> int:
        self.console.print(
            f"[dim]Connected to {self.client.url}. Ctrl-C stops an answer; "
            "Ctrl-D (or Ctrl-C at the prompt) leaves.[/]"
        )
        while True:
            try:
                prompt = self.console.input("[bold cyan]you>[/] ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return 0
            if not prompt.strip():
                continue
            try:
                self.answer(prompt)
            except ServerError as exc:
                self.console.print(Text(one_line(exc), style="red"), soft_wrap=True)
            except ClientError as exc:
                print(f"tokenwire chat: {one_line(exc)}", file=sys.stderr)
                return 1

    def answer(self, prompt: str) -> None:
        stream = self.client.stream(
            prompt, conversation_id=self.conversation_id, provider=self.provider
        )
        failure: ServerError | None = None
        with Live(
            AnswerView(stream),
            console=self.console,
            refresh_per_second=12,
            vertical_overflow="visible",
        ):
            try:
                follow(stream)
            except ServerError as exc:
                failure = exc
        if stream.end is not None:
            self.console.print(Text(summary(stream.end), style="dim"))
        if failure is not None:
            raise failure


class AnswerView:
    """The answer so far as markdown, parsed only when the screen is redrawn."""

    def __init__(self, stream: SyncStream) -> None:
        self.stream = stream

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = self.stream.text
        yield Markdown(text) if text else Text("…", style="dim")


def follow(stream: SyncStream) -> None:
    """Read the answer to its end; a Ctrl-C cancels it, and the end is still read."""
    try:
        for _ in stream:
            pass
    except KeyboardInterrupt:
        stream.cancel()
        for _ in _ignoring_interrupts(stream):
            pass


def _ignoring_interrupts(stream: SyncStream) -> Iterator[object]:
    # The server ends a cancelled stream at once: wait for that end whatever the user types.
    while True:
        try:
            yield next(stream)
        except StopIteration:
            return
        except KeyboardInterrupt:
            continue


def summary(end: StreamEnd) -> str:
    """Provider, model, time to first token and tokens per second of one answer."""
    data = end.data
    parts: list[str] = [] if data.status == "completed" else [data.status]
    parts += [data.provider_used or "?", data.model or "?"]
    if data.ttft is not None:
        parts.append(f"first token {data.ttft:.2f} s")
    rate = tokens_per_second(end)
    if rate is not None:
        parts.append(f"{rate:.1f} tokens/s")
    return " · ".join(parts)


def tokens_per_second(end: StreamEnd) -> float | None:
    data = end.data
    if data.usage is None or data.duration is None or data.ttft is None:
        return None
    streaming = data.duration - data.ttft
    if streaming <= 0 or data.usage.completion_tokens < 2:
        return None
    # The first token's time is the wait for it; the rate is of the rest.
    return (data.usage.completion_tokens - 1) / streaming


def one_line(error: ClientError) -> str:
    """What went wrong, in one line a person can act on."""
    if isinstance(error, AuthenticationRefused):
        return (
            f"the server refused the credential (HTTP {error.status}): {error.message}; "
            f"pass --token or set {TOKEN_ENV}"
        )
    if isinstance(error, HandshakeRefused | ServerError):
        retry = f"; retry after {error.retry_after:g} s" if error.retry_after is not None else ""
        return f"{error.error_type}: {error.message}{retry}"
    return str(error)
