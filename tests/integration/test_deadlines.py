"""A request's deadlines on every transport, over real sockets: each ends a request with
`timeout`; a request's own values are honoured and bounded by the server's maximum; a
provider that never sends its first token makes way for the next; an answer that flows
for longer than the old 30 s deadline completes. How they count: core/deadlines.py; the
same rules on a virtual clock: tests/unit/test_deadlines.py."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.openai_upstream import Reply, ScriptedUpstream, chat_frames, openai_answer
from tests.support.server import RunningServer, of_type, running_server, simulated_settings
from tests.support.server import ws_client as connected
from tokenwire.settings import Settings, load_settings

TRANSPORTS = ("websocket", "sse", "chat", "responses", "messages")
DIALECTS = TRANSPORTS[2:]
MUTE = {"stall_after": 0}  # never sends a first token
STALLS = {"stall_after": 2, "delay_ms": 0}  # two tokens, then silence
# What each deadline's error says, whichever transport carries it.
SAYS = {
    "first_token_timeout": "sent no text within 0.3 s",
    "silence_timeout": "sent nothing for 0.3 s",
    "timeout": "no complete answer within 0.3 s",
}


def providers(**streams: Any) -> Settings:
    return simulated_settings(
        providers=[
            {"name": "mute", "kind": "simulated", "options": MUTE},
            {"name": "stalls", "kind": "simulated", "options": STALLS},
            {"name": "late", "kind": "simulated", "options": {"tokens": 1, "delay_ms": 500}},
            {"name": "quick", "kind": "simulated", "options": {"tokens": 2, "delay_ms": 0}},
        ],
        streams={"resume_grace_seconds": 0, **streams},
        routing={"circuit_failures": 2, "circuit_cooldown_seconds": 600},
    )


# The `/v1` header of each WebSocket `config` deadline key.
HEADERS = {
    "timeout": "tokenwire-timeout",
    "first_token_timeout": "tokenwire-first-token-timeout",
    "silence_timeout": "tokenwire-silence-timeout",
}


@dataclass
class Outcome:
    """What a client of one transport got: the text, and the error if there was one."""

    text: str = ""
    status: int = 200  # the HTTP status; 200 for a stream that started, and on a WebSocket
    error: dict[str, Any] | None = None  # the WebSocket's and SSE's `error` event data
    message: str = ""  # the error's message, in whichever shape it came
    frames: list[dict[str, Any]] = field(default_factory=list)


async def ask(
    server: RunningServer, transport: str, model: str, deadlines: dict[str, float]
) -> Outcome:
    """A streamed request to `model` with these deadlines (WebSocket `config` keys) asked
    for the way `transport` asks: in `config`, or as headers on the `/v1` APIs."""
    if transport == "websocket":
        async with connected(server) as client:
            await client.send(
                {"type": "ai_request", "prompt": "hi", "config": {"provider": model, **deadlines}}
            )
            frames = [await client.recv(30)]
            # A refused request gets its error (with no seq) and nothing else.
            while frames[-1]["event_type"] != "stream_end" and frames[-1]["seq"] is not None:
                frames.append(await client.recv(30))
        return _protocol_outcome(frames)
    headers = {HEADERS[key]: str(value) for key, value in deadlines.items()}
    path, body = {
        "sse": ("/api/streams", {"prompt": "hi", "config": {"provider": model, **deadlines}}),
        "chat": ("/v1/chat/completions", {"model": model, "messages": HI, "stream": True}),
        "responses": ("/v1/responses", {"model": model, "input": "hi", "stream": True}),
        "messages": (
            "/v1/messages",
            {"model": model, "messages": HI, "max_tokens": 64, "stream": True},
        ),
    }[transport]
    if transport == "sse":
        headers = {}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post(path, json=body, headers=headers)
    if response.status_code != 200:
        error = response.json()["error"]
        return Outcome(status=response.status_code, message=error["message"])
    events = sse_events(response.text)
    if transport == "sse":
        return _protocol_outcome([data for _, data in events])
    return _dialect_outcome(transport, events)


HI = [{"role": "user", "content": "hi"}]


def sse_events(body: str) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) of each SSE event with data (`[DONE]` kept as text)."""
    events = []
    for block in body.split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def _protocol_outcome(frames: list[dict[str, Any]]) -> Outcome:
    text = "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))
    errors = [f["data"] for f in of_type(frames, "error")]
    error = errors[0] if errors else None
    return Outcome(text, error=error, message=error["error"] if error else "", frames=frames)


def _dialect_outcome(transport: str, events: list[tuple[str | None, Any]]) -> Outcome:
    outcome = Outcome()
    for name, data in events:
        if transport == "chat" and isinstance(data, dict):
            if "error" in data:
                outcome.message = data["error"]["message"]
            for choice in data.get("choices", []):
                outcome.text += choice["delta"].get("content") or ""
        elif transport == "responses":
            if name == "response.output_text.delta":
                outcome.text += data["delta"]
            elif name == "response.failed":
                outcome.message = data["response"]["error"]["message"]
        elif transport == "messages":
            if name == "content_block_delta":
                outcome.text += data["delta"]["text"]
            elif name == "error":
                outcome.message = data["error"]["message"]
    return outcome


# -- each deadline, on each transport ------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_provider_that_sends_no_first_token_in_time_ends_in_timeout(
    transport: str,
) -> None:
    async with running_server(providers()) as server:
        outcome = await ask(server, transport, "mute", {"first_token_timeout": 0.3})

    assert_timed_out(outcome, transport, "first_token_timeout")
    assert outcome.text == ""


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_provider_silent_for_too_long_after_its_first_tokens_ends_in_timeout(
    transport: str,
) -> None:
    async with running_server(providers()) as server:
        outcome = await ask(server, transport, "stalls", {"silence_timeout": 0.3})

    assert_timed_out(outcome, transport, "silence_timeout")
    assert len(outcome.text.split()) == 2  # what came before the silence was delivered


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_whole_request_s_deadline_ends_it_in_timeout(transport: str) -> None:
    async with running_server(providers()) as server:
        outcome = await ask(server, transport, "mute", {"timeout": 0.3})

    assert_timed_out(outcome, transport, "timeout")


def assert_timed_out(outcome: Outcome, transport: str, key: str) -> None:
    """The request ended in `timeout` for the deadline set by `key`, in `transport`'s terms."""
    assert SAYS[key] in outcome.message, outcome
    before_text = key != "silence_timeout"
    if transport in ("websocket", "sse"):
        assert outcome.error is not None
        assert outcome.error["error_type"] == "timeout"
        assert outcome.error["deadline"] == {"timeout": "request"}.get(
            key, key.removesuffix("_timeout")
        )
        end = outcome.frames[-1]
        assert (end["event_type"], end["data"]["status"]) == ("stream_end", "error")
    elif transport in ("chat", "messages") and before_text:
        assert outcome.status == 504  # before any text, an HTTP error, as the real APIs do
    else:
        assert outcome.status == 200  # the stream had begun: its own error event


# -- a request's own values: honoured, and bounded -----------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_may_wait_longer_for_its_first_token_than_the_server_default(
    transport: str,
) -> None:
    # `late` sends its one token after 0.5 s: past the server's 0.3 s, within the 30 s
    # the second request asks for.
    async with running_server(providers(first_token_timeout_seconds=0.3)) as server:
        by_default = await ask(server, transport, "late", {})
        asked_for = await ask(server, transport, "late", {"first_token_timeout": 30})

    assert SAYS["first_token_timeout"] in by_default.message
    assert asked_for.message == ""
    assert len(asked_for.text.split()) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_deadline_above_the_server_maximum_is_refused_naming_the_maximum(
    transport: str,
) -> None:
    settings = providers(request_timeout_seconds=50, max_request_timeout_seconds=100)
    async with running_server(settings) as server:
        refused = await ask(server, transport, "quick", {"silence_timeout": 100.5})
        allowed = await ask(server, transport, "quick", {"silence_timeout": 100})

    assert "at most 100 seconds on this server" in refused.message
    assert refused.text == ""
    if transport == "websocket":
        assert refused.error is not None
        assert refused.error["error_type"] == "invalid_request"
        assert [f["event_type"] for f in refused.frames] == ["error"]  # nothing started
    else:
        assert refused.status == 400
    if transport in DIALECTS:
        assert refused.message.startswith("tokenwire-silence-timeout:")
    assert allowed.message == ""
    assert len(allowed.text.split()) == 2


@pytest.mark.parametrize("transport", DIALECTS)
async def test_a_deadline_header_that_is_not_a_number_of_seconds_is_a_400(transport: str) -> None:
    path, body = {
        "chat": ("/v1/chat/completions", {"model": "quick", "messages": HI}),
        "responses": ("/v1/responses", {"model": "quick", "input": "hi"}),
        "messages": ("/v1/messages", {"model": "quick", "messages": HI, "max_tokens": 8}),
    }[transport]
    refused = {}
    async with running_server(providers()) as server, httpx.AsyncClient() as http:
        for value in ("abc", "-1", "0", "inf", "nan", "1e3", "", "5s", "0x10"):
            response = await http.post(
                server.url + path, json=body, headers={"tokenwire-timeout": value}
            )
            refused[value] = (response.status_code, response.json()["error"])

    for value, (status, error) in refused.items():
        assert status == 400, value
        assert error["message"].startswith("tokenwire-timeout: expected a number of seconds")
        assert error["type"] == "invalid_request_error"


async def test_the_sdks_send_deadlines_as_extra_or_default_headers() -> None:
    async with running_server(providers()) as server:
        chat = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        messages = anthropic.AsyncAnthropic(
            base_url=server.url,
            api_key="-",
            max_retries=0,
            default_headers={"tokenwire-first-token-timeout": "0.3"},
        )
        with pytest.raises(openai.APIStatusError) as from_openai:
            await chat.chat.completions.create(
                model="mute",
                messages=HI,  # type: ignore[arg-type]
                extra_headers={"tokenwire-first-token-timeout": "0.3"},
            )
        with pytest.raises(anthropic.APIStatusError) as from_anthropic:
            await messages.messages.create(model="mute", max_tokens=8, messages=HI)  # type: ignore[arg-type]
        await chat.close()
        await messages.close()

    assert from_openai.value.status_code == 504
    assert from_openai.value.code == "timeout"
    assert from_anthropic.value.status_code == 504
    assert SAYS["first_token_timeout"] in str(from_anthropic.value)


# -- fallback, and the providers' health -------------------------------------------------


async def test_when_the_first_provider_never_sends_a_first_token_the_next_one_answers() -> None:
    never = Reply(frames=chat_frames(["unsent"], 1, 1), cut_after=0, then="stall")
    async with (
        ScriptedUpstream(never) as silent,
        ScriptedUpstream(openai_answer(["from", " the", " spare"], 3, 3)) as spare,
    ):
        settings = load_settings(
            None,
            {
                "providers": [
                    {
                        "name": "primary",
                        "kind": "openai",
                        "model": "m",
                        "base_url": silent.url + "/v1",
                    },
                    {
                        "name": "spare",
                        "kind": "openai",
                        "model": "m",
                        "base_url": spare.url + "/v1",
                    },
                ],
                "routing": {"default_provider": "primary", "max_retries": 2},
            },
        )
        async with running_server(settings) as server:
            async with connected(server) as client:
                frames = await client.ask("hi", config={"first_token_timeout": 0.5})
            health = await provider_health(server)
        exchange = await silent.exchange()

    end = frames[-1]["data"]
    assert (end["status"], end["provider_used"]) == ("completed", "spare")
    assert "".join(f["data"]["chunk"] for f in of_type(frames, "chunk")) == "from the spare"
    [fallback] = [m["data"] for m in of_type(frames, "metadata") if "fallback_from" in m["data"]]
    assert fallback["fallback_from"] == "primary"
    assert fallback["fallback_reason"].startswith("timeout: provider primary sent no text")
    assert len(silent.exchanges) == 1  # not retried: the next provider was asked at once
    assert exchange.client_closed.is_set()  # the silent upstream was let go
    assert health["primary"]["error_rate"] > 0
    assert health["spare"]["error_rate"] == 0


async def test_missing_first_tokens_open_a_circuit_but_the_client_s_own_deadline_does_not() -> None:
    async with running_server(providers()) as server, connected(server) as client:
        for _ in range(3):
            frames = await client.ask("hi", config={"provider": "mute", "timeout": 0.2})
            assert of_type(frames, "error")[0]["data"]["deadline"] == "request"
        after_own_deadline = (await provider_health(server))["mute"]

        for _ in range(2):  # circuit_failures
            frames = await client.ask("hi", config={"provider": "mute", "first_token_timeout": 0.2})
            assert of_type(frames, "error")[0]["data"]["deadline"] == "first_token"
        after_missing_first_tokens = (await provider_health(server))["mute"]

    assert after_own_deadline["state"] == "closed"
    assert after_own_deadline["error_rate"] == 0
    assert after_missing_first_tokens["state"] == "open"


async def provider_health(server: RunningServer) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        rows = (await http.get(server.url + "/api/providers")).json()["providers"]
    return {row["name"]: row["health"] for row in rows}


# -- the long answer -------------------------------------------------------------------------

SLOW_DELTAS = 31  # one a second, and a frame before and after them: about 35 s


@pytest.mark.slow  # about 35 s of wall time by design: the answer must outlive 30 s
async def test_a_long_answer_through_a_slow_upstream_outlives_30_s() -> None:
    # A Responses stream without max_output_tokens, through the openai provider, from an
    # upstream that sends a delta a second for over 30 s: it used to end in
    # `response.failed` `timeout` at 30 s. The first-token and silence deadlines asked
    # for (10 s) are far above the 1 s gaps and far below the answer's length: a silence
    # timer not re-armed by every delta would cut it off.
    deltas = [f"word{i} " for i in range(SLOW_DELTAS)]
    async with ScriptedUpstream(openai_answer(deltas, 5, SLOW_DELTAS, frame_delay=1.0)) as slow:
        settings = load_settings(
            None,
            {
                "providers": [
                    {"name": "gpt", "kind": "openai", "model": "m", "base_url": slow.url + "/v1"}
                ]
            },
        )
        async with running_server(settings) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
            started = time.monotonic()
            stream = await client.responses.create(
                model="gpt",
                input="Tell me a long story",
                stream=True,
                extra_headers={
                    "tokenwire-first-token-timeout": "10",
                    "tokenwire-silence-timeout": "10",
                },
            )
            kinds, text = [], ""
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    text += event.delta
            took = time.monotonic() - started
            await client.close()

    assert kinds[-1] == "response.completed"
    assert "response.failed" not in kinds
    assert text == "".join(deltas)
    assert took > 30
