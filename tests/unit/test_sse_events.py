"""The body of an SSE response: events queued together go out as one part (one write),
in order; a quiet stream gets its heartbeat; a closed one ends."""

from __future__ import annotations

from typing import Any

from tokenwire.transports.outbox import Outbox
from tokenwire.transports.sse import RETRY_MS, _events, _Hold


class Follower:
    def __init__(self) -> None:
        self.outbox = Outbox(1 << 20)
        self.left: bool | None = None

    def leave(self, lost: bool) -> None:
        self.left = lost


def body(follower: Follower, heartbeat: float = 60.0) -> Any:
    hold = _Hold(release=lambda: None, expires_at=None, user="ada", client=None)
    return _events(follower, "r1", heartbeat, hold)  # type: ignore[arg-type]


async def test_events_queued_together_go_out_as_one_part_in_order() -> None:
    follower = Follower()
    events = body(follower)
    for seq in (1, 2, 3):
        follower.outbox.put(f"id: {seq}\n\n")
    assert await anext(events) == f"retry: {RETRY_MS}\nid: 1\n\nid: 2\n\nid: 3\n\n"
    follower.outbox.put("id: 4\n\n")
    follower.outbox.close()
    assert await anext(events) == "id: 4\n\n"
    assert [part async for part in events] == []
    assert follower.left is True


async def test_a_quiet_stream_gets_its_heartbeat() -> None:
    follower = Follower()
    events = body(follower, heartbeat=0.01)
    assert await anext(events) == ": heartbeat\n\n"
    follower.outbox.put("id: 1\n\n")
    assert await anext(events) == f"retry: {RETRY_MS}\nid: 1\n\n"
    await events.aclose()
