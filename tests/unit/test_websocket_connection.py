"""One WebSocket connection driven directly, over an in-memory ASGI WebSocket: what it
queues and sends around its close, without a server or a socket in between."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.support.fake_asgi import FakeClient
from tests.support.providers import WatchedProvider
from tests.support.server import gateway_with
from tests.support.stores import SlowHistory
from tests.support.waiting import eventually
from tokenwire.core.gateway import Gateway
from tokenwire.core.spec import RequestKey
from tokenwire.transports.websocket import Connection, WebSocketLimits

SLOW = {"tokens": 5000, "delay_ms": 5}
LIMITS = WebSocketLimits(close_timeout=5.0)


@contextlib.asynccontextmanager
async def serving(gateway: Gateway, client: FakeClient) -> AsyncIterator[Connection]:
    """A connection serving `client` in its own task; cancelled, and the gateway shut, after."""
    conn = Connection(client.websocket, gateway, LIMITS)
    task = asyncio.create_task(conn.serve())
    try:
        yield conn
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await gateway.shutdown(1)


def ask(request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": "hello",
        "request_id": request_id,
        "config": {"options": SLOW},
        **fields,
    }


async def test_nothing_is_queued_for_a_connection_once_its_close_frame_is_out() -> None:
    # Given a connection following a slow request
    provider = WatchedProvider()
    gateway = gateway_with(provider)
    client = FakeClient()
    async with serving(gateway, client) as conn:
        client.send_json(ask("slow"))
        await eventually(lambda: any(f["event_type"] == "chunk" for f in client.texts()))

        # When its close frame has gone out, the client never answers it, and the
        # request keeps streaming for 100 ms
        await conn.close(1000, "bye")
        await eventually(lambda: client.close_message is not None)
        deltas_at_close = provider.deltas_sent
        await asyncio.sleep(0.1)
        assert gateway.is_running(RequestKey("ada", "slow"))
        assert provider.deltas_sent > deltas_at_close

        # Then nothing of it was queued for the connection
        assert conn._outbox.queued_bytes == 0


async def test_a_request_set_up_while_its_connection_closes_sends_nothing_before_the_close() -> (
    None
):
    # Given a client that does not read yet (its connection_status waits in the send)
    # and a conversation store whose reads wait until released
    gateway = gateway_with(WatchedProvider())
    store = SlowHistory()
    gateway.conversations = store
    client = FakeClient()
    client.stop_reading()
    key = RequestKey("ada", "late")
    async with serving(gateway, client) as conn:
        await eventually(lambda: client.sends_waiting == 1)

        # When a request with a conversation is held in history(), the connection
        # starts closing, and then the store and the client's reads are released
        client.send_json(ask("late", conversation_id="c"))
        await store.reading.wait()
        closing = asyncio.create_task(conn.close(1000, "idle timeout"))
        await asyncio.sleep(0)  # the close has begun
        assert not closing.done()
        store.release.set()
        # The request is set up, the reader waits for the next message, and the run
        # has written its opening events, all before the client reads again.
        await eventually(lambda: gateway.is_running(key) and client.receive_calls == 3)
        log = await gateway.logs.get(key)
        assert log is not None
        await eventually(lambda: log.last_seq >= 3)
        client.resume_reading()
        await closing
        await eventually(lambda: client.close_message is not None)

        # Then the only text frame before the close frame is the initial connection_status
        before_close = client.texts(before_close=True)
        assert [f["event_type"] for f in before_close] == ["connection_status"]
        assert before_close[0]["data"]["status"] == "connected"
        assert client.close_message == {
            "type": "websocket.close",
            "code": 1000,
            "reason": "idle timeout",
        }


async def test_the_frame_queued_before_a_close_is_the_last_the_client_gets() -> None:
    # Given a connection following a slow request, whose client has stopped reading
    gateway = gateway_with(WatchedProvider())
    client = FakeClient()
    key = RequestKey("ada", "slow")
    async with serving(gateway, client) as conn:
        client.send_json(ask("slow"))
        await eventually(lambda: any(f["event_type"] == "chunk" for f in client.texts()))
        client.stop_reading()
        log = await gateway.logs.get(key)
        assert log is not None

        # When its credential expires (an error event, then the close), and the request
        # streams on while the backlog waits for the client
        conn._expired()
        seq_at_close = log.last_seq
        await eventually(lambda: log.last_seq > seq_at_close + 3)
        client.resume_reading()
        await eventually(lambda: client.close_message is not None)

    # Then that event is the last frame before the close: nothing the stream sent after
    # the close began was queued behind it
    before_close = client.texts(before_close=True)
    assert before_close[-1]["event_type"] == "error"
    assert before_close[-1]["data"]["error_type"] == "authentication_failed"
    assert client.close_message is not None
    assert client.close_message["code"] == 1008
    assert max(f["seq"] or 0 for f in before_close) <= seq_at_close


async def test_an_idle_connection_holds_no_writer_and_still_answers_and_closes() -> None:
    # Given a greeted connection that follows no stream
    gateway = gateway_with(WatchedProvider())
    client = FakeClient()
    async with serving(gateway, client) as conn:
        await eventually(lambda: len(client.texts()) == 1)

        # Then it holds no writer task (an idle connection's memory: issue 26)
        await eventually(lambda: conn._writer is None)

        # When the client pings, the pong still goes out, and the writer goes again
        client.send_json({"type": "ping", "timestamp": 1})
        await eventually(lambda: any(f.get("type") == "pong" for f in client.texts()))
        await eventually(lambda: conn._writer is None)

        # When a request streams, the writer stays for it, then goes with its end
        client.send_json(ask("short", config={"options": {"tokens": 3}}))
        await eventually(lambda: any(f.get("event_type") == "stream_end" for f in client.texts()))
        await eventually(lambda: conn._writer is None)

        # When the server closes it, the close frame goes out
        await conn.close(1000, "bye")
        await eventually(lambda: client.close_message is not None)
    assert client.close_message == {"type": "websocket.close", "code": 1000, "reason": "bye"}


async def test_a_writer_that_fails_on_a_defect_closes_its_connection_with_1011() -> None:
    # Given a connection whose sends of text fail on a defect (not a lost link)
    gateway = gateway_with(WatchedProvider())
    client = FakeClient()
    real_send = client.websocket.send

    async def failing(message: Any) -> None:
        if message["type"] == "websocket.send":
            raise RuntimeError("a defect")
        await real_send(message)

    client.websocket.send = failing  # type: ignore[method-assign]
    async with serving(gateway, client) as conn:
        # When it sends its greeting, then the connection is closed, saying why
        await eventually(lambda: client.close_message is not None)
        assert client.close_message == {
            "type": "websocket.close",
            "code": 1011,
            "reason": "internal error while sending",
        }
        # and its session ends once the client has gone
        session = conn.session
        assert session is not None
        client.disconnect(1011)
        await eventually(lambda: gateway.sessions.get(session.session_id) is None)
