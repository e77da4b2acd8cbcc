"""The bounded send queue of a connection."""

import asyncio

from tokenwire.transports.outbox import Outbox


async def test_frames_come_out_in_order() -> None:
    outbox = Outbox(max_bytes=1000)
    for frame in ("a", "b", "c"):
        outbox.put(frame)
    assert await outbox.take_all() == ["a", "b", "c"]
    assert outbox.queued_bytes == 0


async def test_take_waits_for_a_frame() -> None:
    outbox = Outbox(max_bytes=1000)
    waiting = asyncio.create_task(outbox.take_all())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    outbox.put("late")
    assert await asyncio.wait_for(waiting, 1) == ["late"]


async def test_past_its_bound_the_outbox_drops_everything_and_ends() -> None:
    outbox = Outbox(max_bytes=10)
    outbox.put("12345")
    outbox.put("123456")
    assert outbox.overflowed
    assert len(outbox) == 0
    outbox.put("more")
    assert await outbox.take_all() is None


async def test_a_closed_outbox_drains_then_ends() -> None:
    outbox = Outbox(max_bytes=1000)
    outbox.put("last words")
    outbox.close()
    assert await outbox.take_all() == ["last words"]
    assert await outbox.take_all() is None


async def test_a_frame_put_after_close_is_dropped() -> None:
    outbox = Outbox(max_bytes=1000)
    outbox.put("why the connection closes")
    outbox.close()
    outbox.put("a late token")
    assert await outbox.take_all() == ["why the connection closes"]
    assert await outbox.take_all() is None


async def test_close_wakes_a_waiting_take() -> None:
    outbox = Outbox(max_bytes=1000)
    waiting = asyncio.create_task(outbox.take_all())
    await asyncio.sleep(0.01)
    outbox.close()
    assert await asyncio.wait_for(waiting, 1) is None


async def test_the_bound_counts_utf8_bytes_not_characters() -> None:
    # Four bytes a character: counted in characters, four times the bound would queue.
    outbox = Outbox(max_bytes=10_000)
    frame = "😀" * 500  # 2,000 bytes
    for _ in range(5):
        outbox.put(frame)
    assert outbox.queued_bytes == 10_000
    assert not outbox.overflowed
    outbox.put("😀")
    assert outbox.overflowed


async def test_taking_the_frames_gives_back_their_bytes() -> None:
    outbox = Outbox(max_bytes=30)
    outbox.put("é" * 10)
    outbox.put("plain")
    assert outbox.queued_bytes == 25
    await outbox.take_all()
    assert outbox.queued_bytes == 0
    outbox.put("x" * 30)  # room again for a whole bound
    assert not outbox.overflowed


async def test_discard_drops_the_backlog_without_ending() -> None:
    outbox = Outbox(max_bytes=1000)
    outbox.put("stale")
    outbox.discard()
    assert (len(outbox), outbox.queued_bytes, outbox.overflowed) == (0, 0, False)


async def test_take_all_waits_then_empties_the_outbox_in_order_and_ends() -> None:
    outbox = Outbox(max_bytes=1000)
    waiting = asyncio.create_task(outbox.take_all())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    for frame in ("a", "b", "c"):
        outbox.put(frame)
    assert await asyncio.wait_for(waiting, 1) == ["a", "b", "c"]
    assert outbox.queued_bytes == 0
    assert len(outbox) == 0
    outbox.put("last")
    outbox.close()
    assert await outbox.take_all() == ["last"]
    assert await outbox.take_all() is None


async def test_a_take_cancelled_while_waiting_leaves_the_outbox_usable() -> None:
    outbox = Outbox(max_bytes=1000)
    waiting = asyncio.create_task(outbox.take_all())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    outbox.put("after")
    assert await asyncio.wait_for(outbox.take_all(), 1) == ["after"]


async def test_an_overflow_wakes_a_waiting_take() -> None:
    outbox = Outbox(max_bytes=4)
    waiting = asyncio.create_task(outbox.take_all())
    await asyncio.sleep(0.01)
    outbox.put("too long")
    assert await asyncio.wait_for(waiting, 1) is None
