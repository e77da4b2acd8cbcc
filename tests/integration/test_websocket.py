"""The WebSocket transport against a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.providers import WatchedProvider
from tests.support.raw_ws import RawWebSocket, client_frame
from tests.support.server import (
    gateway_with,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.core.spec import RequestKey

SLOW = {"options": {"tokens": 5000, "delay_ms": 5}}
FAST = {"options": {"tokens": 20, "delay_ms": 0}}


async def test_cancel_ends_the_stream_at_once_and_closes_the_provider_stream() -> None:
    provider = WatchedProvider()
    async with (
        running_server(gateway=gateway_with(provider)) as server,
        ws_client(server) as client,
    ):
        await client.send(
            {"type": "ai_request", "prompt": "go", "request_id": "c1", "config": SLOW}
        )
        while (await client.recv())["event_type"] not in ("chunk", "token"):
            pass
        await client.send({"type": "cancel_request", "request_id": "c1"})
        frames = await client.until_end("c1", timeout=AT_ONCE)
        assert frames[-1]["data"]["status"] == "cancelled"
        # The provider's stream (25 s long) was closed before the stream_end went out.
        assert provider.closed.is_set()
        sent = provider.deltas_sent
        assert sent < 5000
        await asyncio.sleep(0.1)
        assert provider.deltas_sent == sent


async def test_several_streams_on_one_connection_interleave_with_their_own_seq() -> None:
    async with running_server() as server, ws_client(server) as client:
        for rid in ("a", "b", "c"):
            await client.send(
                {
                    "type": "ai_request",
                    "prompt": rid,
                    "request_id": rid,
                    "config": {"options": {"tokens": 30, "delay_ms": 2}},
                }
            )
        frames: list[dict] = []
        ended: set[str] = set()
        while len(ended) < 3:
            frame = await client.recv()
            frames.append(frame)
            if frame["event_type"] == "stream_end":
                ended.add(frame["request_id"])
        for rid in ("a", "b", "c"):
            mine = [f for f in frames if f["request_id"] == rid]
            assert [f["seq"] for f in mine] == list(range(1, len(mine) + 1))
        first_ends = next(i for i, f in enumerate(frames) if f["event_type"] == "stream_end")
        assert {f["request_id"] for f in frames[:first_ends]} == {"a", "b", "c"}


async def test_without_a_resume_grace_a_vanished_client_s_streams_are_cancelled_at_once() -> None:
    provider = WatchedProvider()
    settings = simulated_settings(streams={"resume_grace_seconds": 0})
    async with running_server(
        settings, gateway=gateway_with(provider, settings=settings)
    ) as server:
        ws = await connect(server.ws_url)
        await ws.recv()
        await ws.send(
            '{"type": "ai_request", "prompt": "x", "config": {"options": '
            '{"tokens": 5000, "delay_ms": 5}}}'
        )
        await ws.recv()
        assert server.gateway.running == 1
        ws.transport.abort()  # no close frame: the network went away
        # The provider's stream would run for 25 s.
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        assert provider.deltas_sent < 5000
        await eventually(lambda: len(server.gateway.sessions) == 0, AT_ONCE)
        assert server.gateway.running == 0


async def test_a_client_close_frame_cancels_its_streams_at_once() -> None:
    provider = WatchedProvider()
    async with running_server(gateway=gateway_with(provider)) as server:
        async with connect(server.ws_url) as ws:
            await ws.recv()
            await ws.send(
                '{"type": "ai_request", "prompt": "x", "config": {"options": '
                '{"tokens": 5000, "delay_ms": 5}}}'
            )
            await ws.recv()
        # Not after the resume grace (10 s), nor at the stream's end (25 s).
        await asyncio.wait_for(provider.closed.wait(), AT_ONCE)
        assert provider.deltas_sent < 5000


async def test_a_request_s_stream_start_comes_before_the_answer_to_the_next_message() -> None:
    # Both in one write, so that the server reads them together: a client that closes
    # once its ping is answered must have seen its requests start (test_ws_fuzz.py does).
    async with running_server() as server:
        ws = await RawWebSocket.connect(int(server.url.rsplit(":", 1)[1]))
        await ws.recv()  # connection_status
        request = b'{"type": "ai_request", "prompt": "x", "request_id": "first"}'
        ping = b'{"type": "ping", "timestamp": "next"}'
        ws.writer.write(client_frame(0x1, request) + client_frame(0x1, ping))
        kinds = []
        while "pong" not in kinds:
            frame = json.loads((await ws.recv()).payload)
            kinds.append(frame.get("event_type") or frame["type"])
        assert kinds[:4] == ["stream_start", "typing_indicator", "metadata", "pong"], kinds
        ws.abort()


async def test_a_request_rejected_before_it_starts_gets_only_an_error() -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "x",
                "request_id": "bad",
                "config": {"options": {"tokens": "many"}},
            }
        )
        error = await client.recv()
        assert error["event_type"] == "error"
        assert error["data"]["error_type"] == "invalid_request"
        assert "tokens" in error["data"]["error"]
        assert error["request_id"] == "bad"
        assert error["seq"] is None
        await client.send({"type": "ping", "timestamp": 1})
        assert (await client.recv())["type"] == "pong"
        assert server.gateway.stats.total_streams == 0


async def test_unknown_provider_name_is_an_invalid_request() -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "x", "config": {"provider": "nope"}})
        error = await client.recv()
        assert error["data"]["error_type"] == "invalid_request"
        assert "nope" in error["data"]["error"]


async def test_a_request_id_in_use_is_rejected() -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.send(
            {"type": "ai_request", "prompt": "x", "request_id": "dup", "config": SLOW}
        )
        await client.recv()
        await client.send({"type": "ai_request", "prompt": "y", "request_id": "dup"})
        while True:
            frame = await client.recv()
            if frame["event_type"] == "error":
                break
        assert frame["data"]["error_type"] == "invalid_request"
        assert "already in use" in frame["data"]["error"]
        assert frame["request_id"] == "dup"


async def test_only_the_user_who_started_a_request_may_cancel_it() -> None:
    async with (
        running_server() as server,
        ws_client(server, "?user_id=alice") as alice,
        ws_client(server, "?user_id=mallory") as mallory,
    ):
        await alice.send({"type": "ai_request", "prompt": "x", "request_id": "a1", "config": SLOW})
        await alice.recv()
        await mallory.send({"type": "cancel_request", "request_id": "a1"})
        error = await mallory.recv()
        assert error["data"]["error_type"] == "unknown_request"
        assert server.gateway.is_running(RequestKey("alice", "a1"))


async def test_an_idle_session_is_closed_by_the_sweeper() -> None:
    settings = simulated_settings(
        streams={"session_idle_seconds": 0.2, "session_sweep_seconds": 0.1}
    )
    async with running_server(settings) as server, connect(server.ws_url) as ws:
        await ws.recv()
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), AT_ONCE)
        assert ws.close_code == 1000
        assert len(server.gateway.sessions) == 0


async def test_a_frame_over_the_configured_limit_closes_with_1009() -> None:
    settings = simulated_settings(limits={"max_message_bytes": 4096})
    async with running_server(settings) as server, connect(server.ws_url) as ws:
        await ws.recv()
        await ws.send('{"type": "ping", "timestamp": "' + "é" * 3000 + '"}')
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 2)
        except ConnectionClosed:
            pass
        assert ws.close_code == 1009


async def test_stats_count_streams_by_status_and_provider() -> None:
    async with running_server() as server, ws_client(server, "?user_id=stat") as client:
        await client.ask("one", config=FAST)
        await client.ask("two", config={"options": {"tokens": 5, "delay_ms": 0, "fail_after": 2}})
        async with httpx.AsyncClient() as http:
            stats = (await http.get(server.url + "/api/streaming/stats")).json()
        assert stats["streams"]["total_streams"] == 2
        assert stats["streams"]["active_streams"] == 0
        assert stats["streams"]["by_status"] == {"completed": 1, "cancelled": 0, "error": 1}
        sim = stats["providers"]["simulated"]
        assert sim["streams"] == 2
        assert sim["errors"] == 1
        assert sim["completion_tokens"] == 20 + 2
        assert stats["performance"]["distinct_users"] == 1
        assert (
            stats["sessions"]["active_session_details"][client.hello["session_id"]]["state"]
            == "idle"
        )


async def test_preferences_merge_with_those_from_the_query() -> None:
    async with (
        running_server() as server,
        ws_client(server, "?model_preference=fast&language=en") as client,
    ):
        await client.send({"type": "update_preferences", "preferences": {"language": "fr"}})
        ack = await client.recv()
        assert ack["data"]["preferences"] == {"model_preference": "fast", "language": "fr"}


async def test_conversation_turns_are_kept_so_the_client_need_not_resend_them() -> None:
    provider = WatchedProvider()
    async with (
        running_server(gateway=gateway_with(provider)) as server,
        ws_client(server) as client,
    ):
        first = await client.ask("My name is Ada.", conversation_id="chat-1", config=FAST)
        answer = "".join(c["data"]["chunk"] for c in of_type(first, "chunk"))
        await client.ask("What is my name?", conversation_id="chat-1", config=FAST)
        sent = provider.requests[-1].messages
        assert [(m.role, m.content) for m in sent] == [
            ("user", "My name is Ada."),
            ("assistant", answer),
            ("user", "What is my name?"),
        ]
        await client.ask("Unrelated", conversation_id="chat-2", config=FAST)
        assert len(provider.requests[-1].messages) == 1


async def test_messages_are_sent_before_the_prompt() -> None:
    provider = WatchedProvider()
    async with (
        running_server(gateway=gateway_with(provider)) as server,
        ws_client(server) as client,
    ):
        await client.ask(
            "and now?",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
            config=FAST,
        )
        roles = [m.role for m in provider.requests[-1].messages]
        assert roles == ["system", "user", "assistant", "user"]


async def test_a_client_that_stops_reading_is_disconnected_and_its_stream_cancelled() -> None:
    provider = WatchedProvider()
    # No resume grace: the server's close of a too-slow client counts as a lost link,
    # which would otherwise leave the stream running for the grace window.
    settings = simulated_settings(
        limits={"max_send_buffer_bytes": 64 * 1024}, streams={"resume_grace_seconds": 0}
    )
    gateway = gateway_with(provider, settings=settings)
    async with running_server(settings, gateway=gateway) as server:
        # A tiny client queue: the client stops reading from its socket almost at once.
        ws = await connect(server.ws_url, max_queue=1, max_size=2**24)
        await ws.recv()
        await ws.send(
            '{"type": "ai_request", "prompt": "x", "stream_config": {"granularity": "token"},'
            ' "config": {"timeout": 60, "options": {"tokens": 1000000, "delay_ms": 0}}}'
        )
        await asyncio.wait_for(provider.closed.wait(), 20)
        for _ in range(100):
            if len(server.gateway.sessions) == 0:
                break
            await asyncio.sleep(0.05)
        assert len(server.gateway.sessions) == 0
        assert server.gateway.running == 0
        assert provider.deltas_sent < 1000000
        ws.transport.abort()
