"""A node's control channel: what other nodes ask of the requests it runs.

Pub/sub channel `node_key(node, "control")`, one per node, to which only that
node subscribes. Messages (JSON): `{"type": "cancel", "user_id", "request_id",
"reason"}` and `{"type": "reconsider", "user_id", "request_id"}` (followers of the
request left elsewhere: count again). Pub/sub delivers at most once and only to a
node listening at that moment: a cancel that reached nobody is seen by its sender
(PUBLISH counts the receivers), and a lost `reconsider` is made up for by the
owner's periodic re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from tokenwire.backends.redis.client import RedisBackend, redis_errors
from tokenwire.core.spec import RequestKey

logger = structlog.get_logger("tokenwire.cluster")

# Between attempts to subscribe again after Redis was lost: from the first, doubling.
FIRST_RETRY_SECONDS = 0.05
LAST_RETRY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ControlMessage:
    kind: str
    """"cancel" or "reconsider"."""
    key: RequestKey
    reason: str = ""

    def encoded(self) -> bytes:
        return orjson.dumps(
            {
                "type": self.kind,
                "user_id": self.key.user_id,
                "request_id": self.key.request_id,
                "reason": self.reason,
            }
        )


def decoded(data: bytes | str) -> ControlMessage | None:
    """The message in `data`, or None if it is not one (logged: a defect of a sender)."""
    try:
        fields = orjson.loads(data)
        message = ControlMessage(
            str(fields["type"]),
            RequestKey(str(fields["user_id"]), str(fields["request_id"])),
            str(fields.get("reason", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        logger.warning("malformed control message ignored")
        return None
    if message.kind not in ("cancel", "reconsider"):
        logger.warning("unknown control message ignored", kind=message.kind)
        return None
    return message


class ControlListener:
    """Keeps this node subscribed to its control channel, through Redis restarts,
    and hands each message to `take`. Never ends on its own: its owner cancels it."""

    def __init__(
        self, backend: RedisBackend, take: Callable[[ControlMessage], None], poll: float
    ) -> None:
        self._backend = backend
        self._take = take
        self._poll = poll
        self.channel = backend.node_key(backend.node_id, "control")
        self.listening = asyncio.Event()
        """Set while subscribed (cleared when Redis is lost, until subscribed again)."""

    async def run(self) -> None:
        delay = FIRST_RETRY_SECONDS
        outage = False
        while True:
            try:
                await self._listen()
            except redis_errors as exc:
                if self.listening.is_set():
                    delay, outage = FIRST_RETRY_SECONDS, False
                self.listening.clear()
                if not outage:  # once per outage, not once per attempt
                    logger.warning("control channel lost, subscribing again", error=str(exc))
                    outage = True
            # Jittered, so that nodes that lost the same Redis do not all come back at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, LAST_RETRY_SECONDS)

    async def _listen(self) -> None:
        pubsub = self._backend.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            if not self.listening.is_set():
                logger.info("control channel subscribed", channel=self.channel)
            self.listening.set()
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=self._poll
                )
                if message is not None and message.get("type") == "message":
                    control = decoded(message["data"])
                    if control is not None:
                        self._take(control)
        finally:
            with contextlib.suppress(*redis_errors):
                await pubsub.aclose()
