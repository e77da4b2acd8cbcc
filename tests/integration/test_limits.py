"""The request limits of `[limits]`, each with its typed error, on every transport that
starts a generation: the WebSocket's `ai_request`, SSE's `POST /api/streams`, and the
`/v1` dialects through the official `openai` and `anthropic` SDKs (CONTRACT.md,
"Limits and their defaults"). A refused request gets its error and nothing else."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support.providers import WatchedProvider
from tests.support.server import (
    RunningServer,
    WsClient,
    gateway_with,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.security.limits import Quotas
from tokenwire.settings import Settings, load_settings

TRANSPORTS = ("websocket", "sse", "chat", "responses", "messages")
HTTP_TRANSPORTS = TRANSPORTS[1:]
QUICK = {"tokens": 3, "delay_ms": 0}
SLOW = {"tokens": 100_000, "delay_ms": 50}
REQUEST_IDS = itertools.count()
ANSWER = 64  # the Anthropic dialect's required max_tokens, when a test sets none

STATUS = {
    "message_too_large": 413,
    "prompt_too_long": 413,
    "invalid_request": 400,
    "too_many_streams": 429,
    "rate_limited": 429,
    "budget_exceeded": 429,
}
# Each SDK's exception class and each dialect's own error type, by status.
OPENAI = {
    400: (openai.BadRequestError, "invalid_request_error"),
    413: (openai.APIStatusError, "invalid_request_error"),
    429: (openai.RateLimitError, "rate_limit_error"),
}
ANTHROPIC = {
    400: (anthropic.BadRequestError, "invalid_request_error"),
    413: (anthropic.RequestTooLargeError, "request_too_large"),
    429: (anthropic.RateLimitError, "rate_limit_error"),
}


def limited(prices: dict[str, float] | None = None, **limits: Any) -> Settings:
    """Two simulated providers, `quick` (3 deltas at once) and `slow` (one every 50 ms,
    for streams that stay running); a client that goes away cancels at once."""
    return simulated_settings(
        providers=[
            {"name": "quick", "kind": "simulated", "options": QUICK, **(prices or {})},
            {"name": "slow", "kind": "simulated", "options": SLOW},
        ],
        streams={"resume_grace_seconds": 0},
        limits=limits,
    )


def watched(
    provider: WatchedProvider, **limits: Any
) -> contextlib.AbstractAsyncContextManager[RunningServer]:
    """A server whose only provider is `provider`."""
    settings = simulated_settings(limits=limits, streams={"resume_grace_seconds": 0})
    return running_server(settings, gateway=gateway_with(provider, settings=settings))


@dataclass
class Refusal:
    """A request refused before it started, as its transport said it."""

    transport: str
    status: int | None  # None on the WebSocket: an error event
    error_type: str | None  # tokenwire's type: the event's, SSE's, or OpenAI's `code`
    kind: str | None = None  # the dialect's own type (OpenAI's `type`, Anthropic's)
    retry_after: float | None = None  # the error event's `retry_after`
    retry_after_header: str | None = None
    raised: type[Exception] | None = None  # the SDK's exception
    frames: list[dict[str, Any]] = field(default_factory=list)  # the request's, on a WebSocket


def assert_refused(refusal: Refusal | None, transport: str, error_type: str) -> Refusal:
    """`refusal` is `error_type` in `transport`'s own terms, and nothing else came of it."""
    assert refusal is not None, f"{transport}: the request was not refused"
    status = STATUS[error_type]
    if transport == "websocket":
        assert (refusal.status, refusal.error_type) == (None, error_type)
        # Its error event, and nothing else for its id: no stream_start, no stream_end.
        assert [f["event_type"] for f in refusal.frames] == ["error"]
    elif transport == "sse":
        assert (refusal.status, refusal.error_type) == (status, error_type)
    elif transport == "messages":
        raised, kind = ANTHROPIC[status]
        assert (refusal.status, refusal.kind) == (status, kind)
        assert refusal.raised is not None
        assert issubclass(refusal.raised, raised)
    else:
        raised, kind = OPENAI[status]
        assert (transport, refusal.status, refusal.error_type, refusal.kind) == (
            transport,
            status,
            error_type,
            kind,
        )
        assert refusal.raised is not None
        assert issubclass(refusal.raised, raised)
    return refusal


def assert_retry_after(refusal: Refusal, at_least: float, at_most: float) -> None:
    """The event's `retry_after` in seconds, or a `retry-after` header of whole seconds
    (at least 1), within these bounds."""
    if refusal.transport == "websocket":
        assert refusal.retry_after is not None
        assert at_least <= refusal.retry_after <= at_most
        return
    header = refusal.retry_after_header
    assert header is not None, f"{refusal.transport}: no retry-after header"
    assert header.isdigit(), header
    assert max(1, math.floor(at_least)) <= int(header) <= math.ceil(at_most)


class Caller:
    """One user asking on every transport: a WebSocket, plain HTTP for SSE, and the two
    SDKs (without retries, so that a 429 reaches the test as the SDK's exception)."""

    def __init__(
        self,
        ws: WsClient,
        http: httpx.AsyncClient,
        held: contextlib.AsyncExitStack,
        oai: openai.AsyncOpenAI,
        claude: anthropic.AsyncAnthropic,
    ) -> None:
        self.ws = ws
        self.http = http
        self._held = held
        self._openai = oai
        self._anthropic = claude
        self.seen: dict[str | None, list[dict[str, Any]]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def of(cls, server: RunningServer, user: str = "ada") -> AsyncIterator[Caller]:
        query = {"user_id": user}
        async with contextlib.AsyncExitStack() as stack:
            ws = await stack.enter_async_context(ws_client(server, f"?user_id={user}"))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.url, params=query, timeout=30)
            )
            oai = openai.AsyncOpenAI(
                base_url=server.url + "/v1",
                api_key="unused",
                max_retries=0,
                default_query=query,
                timeout=30,
            )
            stack.push_async_callback(oai.close)
            claude = anthropic.AsyncAnthropic(
                base_url=server.url,
                api_key="unused",
                max_retries=0,
                default_query=query,
                timeout=30,
            )
            stack.push_async_callback(claude.close)
            # Held streams end first, while their clients still exist.
            held = await stack.enter_async_context(contextlib.AsyncExitStack())
            yield cls(ws, http, held, oai, claude)

    def new_id(self) -> str:
        # Unique across callers: two connections of one user share the user's ids.
        return f"r{next(REQUEST_IDS)}"

    async def ask(
        self,
        transport: str,
        prompt: str = "hi",
        *,
        max_tokens: int | None = None,
        asked_as: str = "max_tokens",
        provider: str = "quick",
        options: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Refusal | None:
        """One request to its end: None if it was answered, else how it was refused.
        `asked_as` names the dialect's max_tokens (`max_completion_tokens` for chat);
        `options` and `request_id` go only where the wire has them (WebSocket, SSE)."""
        config: dict[str, Any] = {"provider": provider}
        if max_tokens is not None:
            config["max_tokens"] = max_tokens
        if options is not None:
            config["options"] = options
        if transport == "websocket":
            return await self._websocket(prompt, config, request_id or self.new_id())
        if transport == "sse":
            return await self._sse(prompt, config, request_id or self.new_id())
        messages = [{"role": "user", "content": prompt}]
        limit = {} if max_tokens is None else {asked_as: max_tokens}
        try:
            if transport == "chat":
                await self._openai.chat.completions.create(
                    model=provider, messages=messages, **limit
                )
            elif transport == "responses":
                limit = {} if max_tokens is None else {"max_output_tokens": max_tokens}
                await self._openai.responses.create(model=provider, input=prompt, **limit)
            else:
                answer = max_tokens or ANSWER
                await self._anthropic.messages.create(
                    model=provider, max_tokens=answer, messages=messages
                )
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            return _sdk_refusal(transport, exc, body.get("code"), body.get("type"))
        except anthropic.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            assert body.get("type") == "error", body
            return _sdk_refusal(transport, exc, None, body["error"]["type"])
        return None

    async def hold(self, transport: str) -> Callable[[], Awaitable[None]]:
        """Start a long stream (on `slow`) and leave it running; returns how to end it."""
        if transport == "websocket":
            request_id = self.new_id()
            await self.ws.send(
                {
                    "type": "ai_request",
                    "prompt": "hold",
                    "request_id": request_id,
                    "config": {"provider": "slow"},
                }
            )
            await self.read_until(lambda f: f.get("request_id") == request_id)
            assert self.seen[request_id][0]["event_type"] == "stream_start"

            async def cancel() -> None:
                await self.ws.send({"type": "cancel_request", "request_id": request_id})

            return cancel
        if transport == "sse":
            body = {"prompt": "hold", "config": {"provider": "slow"}}
            response = await self._held.enter_async_context(
                self.http.stream("POST", "/api/streams", json=body)
            )
            assert response.status_code == 200
            return response.aclose
        messages = [{"role": "user", "content": "hold"}]
        stream: Any
        if transport == "chat":
            stream = await self._openai.chat.completions.create(
                model="slow", messages=messages, stream=True
            )
        elif transport == "responses":
            stream = await self._openai.responses.create(model="slow", input="hold", stream=True)
        else:
            stream = await self._anthropic.messages.create(
                model="slow", max_tokens=100_000, messages=messages, stream=True
            )
        self._held.push_async_callback(stream.close)
        return stream.close

    async def read_until(self, condition: Callable[[dict[str, Any]], bool]) -> None:
        """Read WebSocket frames, kept by request id, up to the first that meets `condition`."""
        while True:
            frame = await self.ws.recv(10)
            self.seen.setdefault(frame.get("request_id"), []).append(frame)
            if condition(frame):
                return

    async def settle(self) -> None:
        """Read everything the server sent before the answer to a ping sent now."""
        stamp = f"settle-{self.new_id()}"
        await self.ws.send({"type": "ping", "timestamp": stamp})
        await self.read_until(lambda f: f.get("type") == "pong" and f["timestamp"] == stamp)

    async def _websocket(
        self, prompt: str, config: dict[str, Any], request_id: str
    ) -> Refusal | None:
        await self.ws.send(
            {"type": "ai_request", "prompt": prompt, "request_id": request_id, "config": config}
        )
        ends = ("stream_end", "error")
        await self.read_until(
            lambda f: f.get("request_id") == request_id and f.get("event_type") in ends
        )
        frames = self.seen[request_id]
        if frames[-1]["event_type"] == "stream_end":
            return None
        await self.settle()  # what else comes for this request, if anything did
        data = frames[-1]["data"]
        assert data["request_id"] == request_id
        return Refusal(
            "websocket",
            None,
            data["error_type"],
            retry_after=data.get("retry_after"),
            frames=frames,
        )

    async def _sse(self, prompt: str, config: dict[str, Any], request_id: str) -> Refusal | None:
        body = {"prompt": prompt, "request_id": request_id, "config": config}
        response = await self.http.post("/api/streams", json=body)
        if response.status_code == 200:
            assert "event: stream_end" in response.text
            return None
        error = response.json()["error"]
        return Refusal(
            "sse",
            response.status_code,
            error["type"],
            retry_after=error.get("retry_after"),
            retry_after_header=response.headers.get("retry-after"),
        )


def _sdk_refusal(
    transport: str, exc: openai.APIStatusError | anthropic.APIStatusError, code: Any, kind: Any
) -> Refusal:
    return Refusal(
        transport,
        exc.status_code,
        code,
        kind,
        retry_after_header=exc.response.headers.get("retry-after"),
        raised=type(exc),
    )


def quotas(server: RunningServer) -> Quotas:
    admission = server.gateway.admission
    assert isinstance(admission, Quotas)
    return admission


# -- defaults -----------------------------------------------------------------------


def test_defaults_protect_the_server_and_leave_metering_off() -> None:
    settings = load_settings(None, {})
    limits = settings.limits
    protective = {
        "max_message_bytes": limits.max_message_bytes,
        "max_send_buffer_bytes": limits.max_send_buffer_bytes,
        "close_timeout_seconds": limits.close_timeout_seconds,
        "max_prompt_chars": limits.max_prompt_chars,
        "max_streams_per_connection": limits.max_streams_per_connection,
        "max_streams_per_user": limits.max_streams_per_user,
        "max_connections_per_user": limits.max_connections_per_user,
        "max_connections": limits.max_connections,
        "max_preferences_bytes": limits.max_preferences_bytes,
        "handshake_timeout_seconds": limits.handshake_timeout_seconds,
        "[streams] session_idle_seconds": settings.streams.session_idle_seconds,
        "ping_interval_seconds": limits.ping_interval_seconds,
        "ping_timeout_seconds": limits.ping_timeout_seconds,
    }
    for name, value in protective.items():
        assert 0 < value < math.inf, name
    # Finite and also small enough to protect: a connection cannot hold more streams
    # than its user may run, nor a user more connections than the server takes.
    assert limits.max_streams_per_connection <= limits.max_streams_per_user
    assert limits.max_connections_per_user <= limits.max_connections
    assert limits.max_message_bytes <= 16 * 1024 * 1024
    metering = {
        "max_tokens_cap": limits.max_tokens_cap,
        "requests_per_minute_per_user": limits.requests_per_minute_per_user,
        "tokens_per_minute_per_user": limits.tokens_per_minute_per_user,
        "budget_usd_per_user_per_day": limits.budget_usd_per_user_per_day,
    }
    assert metering == dict.fromkeys(metering, 0)


async def test_with_the_defaults_many_requests_and_big_answers_pass() -> None:
    """Metering off: no request bucket, no token bucket, no cap on max_tokens."""
    provider = WatchedProvider(tokens=3, delay_ms=0)
    async with watched(provider) as server, Caller.of(server) as caller:
        for _ in range(30):
            assert await caller.ask("websocket", provider="watched") is None
        assert await caller.ask("chat", provider="watched", max_tokens=1_000_000) is None
    assert provider.requests[-1].max_tokens == 1_000_000


# -- max_message_bytes ----------------------------------------------------------------


async def test_an_ai_request_over_max_message_bytes_closes_the_websocket_with_1009() -> None:
    provider = WatchedProvider()
    async with watched(provider, max_message_bytes=4096) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "x" * 4096})
        await eventually(lambda: client.ws.close_code is not None, 5)
        assert client.ws.close_code == 1009
        assert provider.requests == []


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
async def test_a_body_over_max_message_bytes_is_413(transport: str) -> None:
    async with running_server(limited(max_message_bytes=4096)) as server:
        async with Caller.of(server) as caller:
            refused = await caller.ask(transport, "x" * 4096)
            assert_refused(refused, transport, "message_too_large")
            assert await caller.ask(transport, "x" * 3000) is None
        assert server.gateway.stats.total_streams == 1


# -- max_prompt_chars -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_prompt_over_max_prompt_chars_is_prompt_too_long(transport: str) -> None:
    async with (
        running_server(limited(max_prompt_chars=100)) as server,
        Caller.of(server) as caller,
    ):
        refused = await caller.ask(transport, "y" * 101)
        assert_refused(refused, transport, "prompt_too_long")
        assert await caller.ask(transport, "y" * 100) is None


async def test_max_prompt_chars_counts_every_message_of_a_request() -> None:
    async with (
        running_server(limited(max_prompt_chars=100)) as server,
        ws_client(server) as client,
    ):
        await client.send(
            {
                "type": "ai_request",
                "request_id": "turns",
                "messages": [
                    {"role": "system", "content": "s" * 50},
                    {"role": "user", "content": "u" * 30},
                    {"role": "assistant", "content": "a" * 10},
                    {"role": "user", "content": "u" * 11},
                ],
            }
        )
        error = await client.recv()
    assert error["event_type"] == "error"
    assert error["request_id"] == "turns"
    assert error["data"]["error_type"] == "prompt_too_long"
    assert error["data"]["request_id"] == "turns"


# -- max_tokens_cap ------------------------------------------------------------------------

CAPPED_FIELDS = [
    ("websocket", "max_tokens"),
    ("sse", "max_tokens"),
    ("chat", "max_tokens"),
    ("chat", "max_completion_tokens"),
    ("responses", "max_output_tokens"),
    ("messages", "max_tokens"),
]


@pytest.mark.parametrize(("transport", "asked_as"), CAPPED_FIELDS)
async def test_asking_for_more_than_max_tokens_cap_is_invalid_request(
    transport: str, asked_as: str
) -> None:
    provider = WatchedProvider(tokens=20, delay_ms=0)
    async with watched(provider, max_tokens_cap=5) as server, Caller.of(server) as caller:
        refused = await caller.ask(transport, max_tokens=6, asked_as=asked_as, provider="watched")
        assert_refused(refused, transport, "invalid_request")
        assert provider.requests == []
        assert (
            await caller.ask(transport, max_tokens=5, asked_as=asked_as, provider="watched") is None
        )
    assert [r.max_tokens for r in provider.requests] == [5]


@pytest.mark.parametrize("transport", ["websocket", "sse", "chat", "responses"])
async def test_a_request_that_asks_for_no_max_tokens_is_given_the_cap(transport: str) -> None:
    # The provider would say 20 deltas; the cap bounds max_tokens, not the provider's options.
    provider = WatchedProvider(tokens=20, delay_ms=0)
    async with watched(provider, max_tokens_cap=5) as server, Caller.of(server) as caller:
        assert await caller.ask(transport, provider="watched") is None
    assert [r.max_tokens for r in provider.requests] == [5]
    assert provider.deltas_sent == 5


# -- max_streams_per_connection and max_streams_per_user ------------------------------------


async def test_the_17th_concurrent_stream_on_a_connection_is_too_many_streams() -> None:
    async with running_server(limited()) as server, Caller.of(server) as caller:
        for _ in range(15):
            await caller.hold("websocket")
        # A 16th stream that ends by itself: the room it took is free again.
        assert await caller.ask("websocket") is None
        await caller.hold("websocket")
        refused = await caller.ask("websocket", provider="slow")
        assert_refused(refused, "websocket", "too_many_streams")
        # The user's own limit (64) is not what refused it: another connection may start.
        async with Caller.of(server) as other:
            assert await other.ask("websocket") is None


async def test_a_cancelled_stream_frees_its_room_on_the_connection() -> None:
    async with running_server(limited()) as server, Caller.of(server) as caller:
        ends = [await caller.hold("websocket") for _ in range(16)]
        assert_refused(await caller.ask("websocket"), "websocket", "too_many_streams")
        await ends[0]()
        await caller.read_until(lambda f: f.get("event_type") == "stream_end")
        assert await caller.ask("websocket") is None


async def test_max_streams_per_user_counts_the_streams_of_every_connection() -> None:
    async with (
        running_server(limited(max_streams_per_user=2)) as server,
        Caller.of(server) as first,
        Caller.of(server) as second,
        Caller.of(server, "bob") as bob,
    ):
        await first.hold("websocket")
        await second.hold("websocket")
        assert_refused(await first.ask("websocket"), "websocket", "too_many_streams")
        assert_refused(await second.ask("websocket"), "websocket", "too_many_streams")
        assert await bob.ask("websocket") is None


@pytest.mark.parametrize("dialect", ["chat", "responses", "messages"])
async def test_max_streams_per_user_is_one_count_across_transports(dialect: str) -> None:
    async with (
        running_server(limited(max_streams_per_user=3)) as server,
        Caller.of(server) as ada,
        Caller.of(server, "bob") as bob,
    ):
        await ada.hold("websocket")
        await ada.hold("sse")
        end_http = await ada.hold(dialect)
        assert quotas(server).running("ada") == 3
        for transport in TRANSPORTS:
            assert_refused(await ada.ask(transport), transport, "too_many_streams")
        assert await bob.ask(dialect) is None
        # A stream that ended gives its place back, whatever its transport.
        await end_http()
        await eventually(lambda: quotas(server).running("ada") == 2)
        assert await ada.ask("messages") is None


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_request_refused_after_its_admission_gives_its_stream_back(transport: str) -> None:
    # An unknown provider is found when the request is routed, after the limits let it in.
    async with (
        running_server(limited(max_streams_per_user=1)) as server,
        Caller.of(server) as caller,
    ):
        for _ in range(2):
            refused = await caller.ask(transport, provider="nowhere")
            assert_refused(refused, transport, "invalid_request")
        assert quotas(server).running("ada") == 0
        assert await caller.ask(transport) is None


# -- requests_per_minute_per_user -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_bucket_of_n_requests_a_minute_lets_exactly_n_through(transport: str) -> None:
    async with (
        running_server(limited(requests_per_minute_per_user=3)) as server,
        Caller.of(server) as caller,
    ):
        started = time.monotonic()
        answers = [await caller.ask(transport) for _ in range(4)]
        assert answers[:3] == [None, None, None]
        refused = assert_refused(answers[3], transport, "rate_limited")
        # One request comes back every 20 s: owed that, less what refilled meanwhile.
        assert_retry_after(refused, 20 - (time.monotonic() - started) - 1, 20)


async def test_the_request_bucket_is_shared_by_every_transport_and_kept_per_user() -> None:
    async with (
        running_server(limited(requests_per_minute_per_user=5)) as server,
        Caller.of(server) as ada,
        Caller.of(server, "bob") as bob,
    ):
        for transport in TRANSPORTS:
            assert await ada.ask(transport) is None, transport
        for transport in TRANSPORTS:
            assert_refused(await ada.ask(transport), transport, "rate_limited")
        assert await bob.ask("chat") is None


async def test_only_requests_that_start_a_generation_take_from_the_bucket() -> None:
    async with (
        running_server(limited(requests_per_minute_per_user=2)) as server,
        Caller.of(server) as caller,
    ):
        assert await caller.ask("websocket", request_id="first") is None
        for _ in range(5):
            await caller.ws.send({"type": "ping", "timestamp": 1})
            await caller.ws.send({"type": "list_requests"})
            await caller.ws.send({"type": "resume", "request_id": "first", "last_seq": 0})
            await caller.ws.send({"type": "cancel_request", "request_id": "first"})
            await caller.ws.send({"type": "update_preferences", "preferences": {"theme": "x"}})
            for path in ("/api/streams", "/api/streams/first/events", "/api/streaming/stats"):
                assert (await caller.http.get(path)).status_code == 200
            assert (await caller.http.delete("/api/streams/first")).status_code == 404
            assert (await caller.http.get("/v1/models")).status_code == 200
        await caller.settle()
        assert await caller.ask("sse") is None
        assert_refused(await caller.ask("chat"), "chat", "rate_limited")


# -- tokens_per_minute_per_user -------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tokens_a_minute_are_counted_from_usage_once_a_request_ended(
    transport: str,
) -> None:
    async with (
        running_server(limited(tokens_per_minute_per_user=100)) as server,
        Caller.of(server) as caller,
        Caller.of(server, "bob") as bob,
    ):
        request = {
            "type": "ai_request",
            "prompt": "hi",
            "request_id": "big",
            "config": {"provider": "quick", "options": {"tokens": 150, "delay_ms": 5}},
        }
        await caller.ws.send(request)
        await caller.read_until(lambda f: f.get("event_type") == "stream_start")
        # Still running: nothing is counted yet, so another request may start.
        assert await caller.ask("sse") is None
        await caller.read_until(
            lambda f: f.get("request_id") == "big" and f.get("event_type") == "stream_end"
        )
        ended = time.monotonic()
        used = caller.seen["big"][-1]["data"]["usage"]["total_tokens"]
        assert used > 150
        refused = assert_refused(await caller.ask(transport), transport, "rate_limited")
        # The bucket owes what went past it, refilled at 100 a minute: less by what
        # refilled while the refused request was on its way (seconds on a loaded machine).
        owed = used + 3 - 100  # the SSE request's 3 tokens too, and a token to start with
        refilled = time.monotonic() - ended
        assert_retry_after(refused, owed * 0.6 - refilled - 1, (owed + 5) * 0.6)
        assert await bob.ask(transport) is None


# -- budget_usd_per_user_per_day ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_spend_reaching_the_daily_budget_is_refused_until_the_next_utc_day(
    transport: str,
) -> None:
    # 3 output tokens at $100,000 per million: each answer costs $0.30.
    settings = limited(prices={"output_cost_per_mtok": 100_000.0}, budget_usd_per_user_per_day=0.6)
    async with (
        running_server(settings) as server,
        Caller.of(server) as caller,
        Caller.of(server, "bob") as bob,
    ):
        assert await caller.ask("websocket") is None
        assert await caller.ask("sse") is None
        refused = assert_refused(await caller.ask(transport), transport, "budget_exceeded")
        until_midnight = 86_400 - time.time() % 86_400
        assert_retry_after(refused, until_midnight - 5, until_midnight + 5)
        # The budget is each user's own.
        assert await bob.ask(transport) is None
    assert server.gateway.stats.users["ada"].cost_usd == pytest.approx(0.6)


async def test_a_request_is_admitted_while_the_spend_so_far_is_under_the_budget() -> None:
    settings = limited(prices={"output_cost_per_mtok": 100_000.0}, budget_usd_per_user_per_day=1)
    async with running_server(settings) as server, Caller.of(server) as caller:
        # $0, $0.30, $0.60, $0.90 spent before each: under the budget, even the last one,
        # which takes the spend past it.
        for transport in ("websocket", "sse", "chat", "responses"):
            assert await caller.ask(transport) is None, transport
        assert_refused(await caller.ask("messages"), "messages", "budget_exceeded")


# -- a refused request gets only its error --------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_refused_request_leaves_nothing_behind(transport: str) -> None:
    provider = WatchedProvider(tokens=3, delay_ms=0)
    async with (
        watched(provider, max_prompt_chars=10) as server,
        Caller.of(server) as caller,
    ):
        refused = await caller.ask(transport, "z" * 11, provider="watched", request_id="mine")
        assert_refused(refused, transport, "prompt_too_long")
        await caller.ws.send({"type": "list_requests"})
        await caller.read_until(lambda f: f.get("data", {}).get("status") == "request_list")
        listed = caller.seen[None][-1]["data"]["requests"]
        assert listed == []
        assert (await caller.http.get("/api/streams")).json() == {"requests": []}
        assert provider.requests == []
        assert server.gateway.stats.total_streams == 0
        assert quotas(server).running("ada") == 0
        # Its id was never taken (the dialects choose their own ids).
        assert await caller.ask(transport, provider="watched", request_id="mine") is None
