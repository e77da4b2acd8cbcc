"""How a WebSocket connection's writer hands its frames to the transport: what queued
goes out in one write, and a connection whose frames keep coming writes at most once per
`WRITE_INTERVAL`, while a frame after a quiet spell goes out at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.support.fake_asgi import FakeClient
from tests.support.providers import WatchedProvider
from tests.support.server import gateway_with
from tests.support.waiting import eventually
from tokenwire.transports import websocket
from tokenwire.transports.uvicorn_ws import EXTENSION, TransportControl
from tokenwire.transports.websocket import Connection, WebSocketLimits


class RecordingControl(TransportControl):
    """Takes every batch at once, as an open socket with room does."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def send_texts(self, frames: Sequence[str]) -> bool:
        self.batches.append(list(frames))
        return True


async def writing() -> tuple[Connection, RecordingControl, asyncio.Task[None]]:
    client = FakeClient()
    control = RecordingControl()
    client.websocket.scope["extensions"][EXTENSION] = control
    conn = Connection(client.websocket, gateway_with(WatchedProvider()), WebSocketLimits())
    return conn, control, asyncio.create_task(conn._write_loop())


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_frames_queued_together_go_out_in_one_write() -> None:
    conn, control, writer = await writing()
    for frame in ("a", "b", "c"):
        conn._push_frame(frame)
    await eventually(lambda: control.batches)
    assert control.batches == [["a", "b", "c"]]
    writer.cancel()


async def test_frames_that_keep_coming_wait_for_the_next_write_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long enough that no stall of the machine ends it between two loop turns.
    monkeypatch.setattr(websocket, "WRITE_INTERVAL", 1.0)
    conn, control, writer = await writing()
    for count, frame in enumerate(("a", "b", "c"), start=1):
        # A request's opening frames, then its first text right behind them: each goes
        # out at once (a stream's first token must not wait for the interval).
        conn._push_frame(frame)
        await turns(3)
        assert len(control.batches) == count
    for frame in ("d", "e", "f"):
        conn._push_frame(frame)
        await turns(3)  # the writer would have taken each alone
    await eventually(lambda: len(control.batches) == 4)
    assert control.batches == [["a"], ["b"], ["c"], ["d", "e", "f"]]
    writer.cancel()


async def test_a_frame_after_a_quiet_spell_goes_out_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(websocket, "WRITE_INTERVAL", 0.05)
    conn, control, writer = await writing()
    for count, frame in enumerate(("a", "b", "c"), start=1):
        await asyncio.sleep(0.1)  # a paced stream: longer apart than the interval
        conn._push_frame(frame)
        await turns(3)  # the next turns of the loop, not the interval
        assert len(control.batches) == count
    assert control.batches == [["a"], ["b"], ["c"]]
    writer.cancel()
