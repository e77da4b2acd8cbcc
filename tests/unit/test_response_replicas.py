"""`previous_response_id` on a node whose copy of the response trails its owner: the
owner's client had `response.completed` a moment before this copy got the end."""

from __future__ import annotations

import asyncio
import json
import types

from tokenwire.core.eventlog import EventLog
from tokenwire.core.spec import RequestKey
from tokenwire.protocol.events import EventType
from tokenwire.transports.v1.responses import _check_previous, caught_up

KEY = RequestKey("ada", "resp_1")


def running_copy(*, replica: bool) -> EventLog:
    log = EventLog(KEY, None, 1 << 20, replica=replica)
    log.ingest(1, EventType.STREAM_START, 1.0, json.dumps({"request_id": "resp_1"}))
    return log


async def test_a_copy_that_gets_its_end_a_moment_later_is_waited_for() -> None:
    log = running_copy(replica=True)
    end = json.dumps({"status": "completed"})
    asyncio.get_running_loop().call_later(0.05, log.ingest, 2, EventType.STREAM_END, 1.0, end)

    await caught_up(log, within=10)

    assert log.finished
    assert log.subscriber_count == 0


async def test_a_copy_whose_end_does_not_come_is_given_up_on_after_the_bound() -> None:
    log = running_copy(replica=True)

    await caught_up(log, within=0.05)

    assert not log.finished
    assert log.subscriber_count == 0


async def test_a_log_of_this_node_is_taken_as_it_is() -> None:
    log = running_copy(replica=False)
    end = json.dumps({"status": "completed"})
    asyncio.get_running_loop().call_later(0.05, log.ingest, 2, EventType.STREAM_END, 1.0, end)

    await caught_up(log, within=10)

    assert not log.finished  # running here: the owner's own state, nothing to wait for


class OneLog:
    """A log store holding one log, as a node finds another node's response."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def get(self, key: RequestKey) -> EventLog | None:
        return self.log if key == self.log.key else None


async def test_continuing_at_once_on_another_node_is_not_told_the_response_still_runs() -> None:
    log = running_copy(replica=True)
    log.annotations["responses"] = {"store": True}
    end = json.dumps({"status": "completed", "finish_reason": "stop"})
    asyncio.get_running_loop().call_later(0.05, log.ingest, 2, EventType.STREAM_END, 1.0, end)
    gateway = types.SimpleNamespace(logs=OneLog(log))

    calls = await _check_previous(gateway, "ada", "resp_1")  # type: ignore[arg-type]

    assert calls == {}
