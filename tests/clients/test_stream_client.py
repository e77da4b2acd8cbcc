"""`tokenwire.client` against a real server: typed events, exactly-once text across a
cut link, cancel, list and attach, errors as exceptions, auth, and the sync wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from tests.support.auth import ADA_KEY, BOB_KEY, ENVIRON, api_key_settings
from tests.support.server import RunningServer, running_server
from tests.support.tcp_proxy import cuttable_proxy
from tests.support.waiting import eventually
from tokenwire.client import (
    AuthenticationRefused,
    Chunk,
    ConnectionLost,
    Metadata,
    ReconnectPolicy,
    RequestRefused,
    ServerEvent,
    StreamClient,
    StreamEnd,
    StreamFailed,
    StreamStart,
    SyncStreamClient,
    Token,
    TypingIndicator,
)
from tokenwire.clients.chat import one_line

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUICK = {"provider": "simulated", "config": {"options": {"tokens": 8, "delay_ms": 0}}}
# Long enough to be cut or cancelled part-way whatever the machine's load; the test
# ends it (cancel) or reads it whole either way, so its length costs nothing then.
LONG = {"provider": "simulated", "config": {"options": {"tokens": 2000, "delay_ms": 5}}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded() -> AsyncIterator[RunningServer]:
    """API keys on, and one request a minute per user."""
    settings = api_key_settings(limits={"requests_per_minute_per_user": 1})
    async with running_server(settings, environ=ENVIRON) as server:
        yield server


def url(server: RunningServer, user: str, port: int | None = None) -> str:
    address = server.ws_url
    if port is not None:
        address = address.replace(f":{urlsplit(address).port}/", f":{port}/")
    return f"{address}?user_id={user}"


async def read_all(events: AsyncIterator[ServerEvent]) -> list[ServerEvent]:
    return [event async for event in events]


async def collect(events: AsyncIterator[ServerEvent], into: list[ServerEvent]) -> None:
    async for event in events:
        into.append(event)


async def test_a_stream_yields_typed_events_in_order_and_ends_after_its_stream_end(
    server: RunningServer,
) -> None:
    async with StreamClient(url(server, "typed")) as client:
        stream = client.stream("Hi", **QUICK)
        events = await read_all(stream)

    assert [type(e) for e in events[:3]] == [StreamStart, TypingIndicator, Metadata]
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].data.status == "completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert stream.text == "".join(e.text for e in events if isinstance(e, Chunk))
    assert stream.text


async def test_a_link_cut_mid_answer_is_restored_and_every_token_arrives_exactly_once(
    server: RunningServer,
) -> None:
    options = {"provider": "simulated", "granularity": "token"}
    config = {"options": {"tokens": 120, "delay_ms": 2}}
    async with StreamClient(url(server, "cut")) as client:
        reference = client.stream("a story", config=config, **options)
        await read_all(reference)
    port = urlsplit(server.ws_url).port
    assert port is not None
    async with (
        cuttable_proxy(port) as proxy,
        StreamClient(url(server, "cut", proxy.port)) as client,
    ):
        stream = client.stream("a story", config=config, **options)
        events = []
        async for event in stream:
            events.append(event)
            if isinstance(event, Token) and event.data.index == 5:
                proxy.cut()

    assert proxy.connections == 2
    assert stream.text == reference.text
    assert [e.data.index for e in events if isinstance(e, Token)] == list(range(120))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_request_lost_with_the_link_is_sent_again_and_answered_once(
    server: RunningServer,
) -> None:
    port = urlsplit(server.ws_url).port
    assert port is not None
    async with StreamClient(url(server, "resent")) as client:
        reference = client.stream("Hi", **QUICK)
        await read_all(reference)
    async with (
        cuttable_proxy(port) as proxy,
        StreamClient(url(server, "resent", proxy.port)) as client,
    ):
        proxy.swallowing = True
        stream = client.stream("Hi", **QUICK)
        first = asyncio.ensure_future(anext(stream))
        await eventually(lambda: proxy.swallowed > 0)  # the ai_request went into the void
        proxy.swallowing = False
        proxy.cut()
        events = [await first, *await read_all(stream)]

    assert proxy.connections == 2
    assert stream.text == reference.text
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_a_link_that_cannot_be_restored_ends_the_stream_with_connection_lost(
    server: RunningServer,
) -> None:
    port = urlsplit(server.ws_url).port
    assert port is not None
    policy = ReconnectPolicy(attempts=2, first_delay=0.01)
    async with cuttable_proxy(port) as proxy:
        client = StreamClient(url(server, "lost", proxy.port), reconnect=policy)
        async with client:
            stream = client.stream("Hi", **LONG)
            async for event in stream:
                if isinstance(event, Chunk):
                    await proxy.refuse()
                    break
            with pytest.raises(ConnectionLost, match="2 attempts"):
                await read_all(stream)


async def test_cancel_ends_the_answer_with_a_cancelled_stream_end(server: RunningServer) -> None:
    async with StreamClient(url(server, "canceller")) as client:
        stream = client.stream("Hi", **LONG)
        async for event in stream:
            if isinstance(event, Chunk):
                await stream.cancel()
        assert stream.end is not None
        assert (stream.end.data.status, stream.end.data.reason) == (
            "cancelled",
            "cancelled by client",
        )


async def test_a_second_client_lists_the_request_and_attaches_to_the_same_answer(
    server: RunningServer,
) -> None:
    config = {"options": {"tokens": 40, "delay_ms": 2}}
    async with (
        StreamClient(url(server, "devices")) as phone,
        StreamClient(url(server, "devices")) as laptop,
    ):
        started = phone.stream("Hi", provider="simulated", config=config, conversation_id="c-1")
        await anext(started)
        [listed] = await laptop.list_requests()
        attached = laptop.attach(listed.request_id)
        attached_events, _ = await asyncio.gather(read_all(attached), read_all(started))

    assert (listed.request_id, listed.conversation_id) == (started.request_id, "c-1")
    assert attached.text == started.text
    assert attached_events[0].seq == 1
    assert isinstance(attached_events[-1], StreamEnd)


async def test_a_refused_request_raises_request_refused(server: RunningServer) -> None:
    async with StreamClient(url(server, "refused")) as client:
        with pytest.raises(RequestRefused) as refused:
            await read_all(client.stream("Hi", provider="nobody"))
    assert refused.value.error_type == "invalid_request"
    assert refused.value.request_id is not None


async def test_a_failed_stream_yields_its_end_then_raises_stream_failed(
    server: RunningServer,
) -> None:
    events: list[ServerEvent] = []
    async with StreamClient(url(server, "failing")) as client:
        stream = client.stream("Hi", provider="simulated", config={"options": {"fail_after": 2}})
        with pytest.raises(StreamFailed) as failed:
            await collect(stream, events)
    assert failed.value.error_type == "provider_error"
    assert isinstance(events[-1], StreamEnd)
    assert events[-1].data.status == "error"


async def test_a_bad_credential_is_refused_and_a_good_one_streams_as_its_user(
    guarded: RunningServer,
) -> None:
    with pytest.raises(AuthenticationRefused) as refused:
        async with StreamClient(guarded.ws_url, token="tw-key-nobody-0123456789abcdef"):
            pass
    assert refused.value.status == 401
    assert "credential" in one_line(refused.value)

    async with StreamClient(guarded.ws_url, token=ADA_KEY) as client:
        stream = client.stream("Hi", **QUICK)
        await read_all(stream)
        requests = await client.list_requests()
    assert [r.request_id for r in requests] == [stream.request_id]


async def test_a_rate_limited_request_is_refused_with_its_retry_after(
    guarded: RunningServer,
) -> None:
    async with StreamClient(guarded.ws_url, token=BOB_KEY) as client:
        await read_all(client.stream("Hi", **QUICK))
        with pytest.raises(RequestRefused) as refused:
            await read_all(client.stream("Again", **QUICK))
    assert refused.value.error_type == "rate_limited"
    assert refused.value.retry_after is not None
    assert one_line(refused.value).endswith(f"retry after {refused.value.retry_after:g} s")


async def test_the_sync_client_streams_cancels_and_lists_from_a_thread_without_a_loop(
    server: RunningServer,
) -> None:
    def use() -> tuple[Any, ...]:
        with SyncStreamClient(url(server, "sync")) as client:
            quick = client.stream("Hi", **QUICK)
            kinds = [type(event) for event in quick]
            long = client.stream("Hi", **LONG)
            for event in long:
                if isinstance(event, Chunk):
                    long.cancel()
            listed = client.list_requests()
        return kinds, quick.text, long.end, listed

    kinds, text, end, listed = await asyncio.to_thread(use)
    assert kinds[0] is StreamStart
    assert kinds[-1] is StreamEnd
    assert text
    assert end is not None
    assert end.data.status == "cancelled"
    assert [r.status for r in listed] == ["cancelled", "completed"]
