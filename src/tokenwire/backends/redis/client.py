"""The Redis handle: client, key names, this node's identity."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenwire.core.spec import RequestKey

# What means "Redis cannot be reached now" (as against a defect in a command).
redis_errors = (RedisConnectionError, RedisTimeoutError, OSError)


def _digest(*parts: str) -> str:
    # User ids and request ids are the client's strings: hashed, so that no character
    # of theirs (":", "{", "}") can change which key or slot a name means.
    joined = "\0".join(parts).encode()
    return hashlib.blake2b(joined, digest_size=12).hexdigest()


@dataclass
class RedisBackend:
    client: Redis
    prefix: str = "tokenwire:"
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    lease_seconds: float = 3.0

    def key(self, *parts: str) -> str:
        """A key of this deployment: the prefix, then `parts` joined by ':'."""
        return self.prefix + ":".join(parts)

    def request_key(self, key: RequestKey, part: str) -> str:
        """The key `part` (events, meta...) of one request; one hash tag per request."""
        return f"{self.prefix}req:{{{_digest(key.user_id, key.request_id)}}}:{part}"

    def user_key(self, user_id: str, part: str) -> str:
        """The key `part` of one user (their requests, conversations, counters)."""
        return f"{self.prefix}user:{{{_digest(user_id)}}}:{part}"

    def node_key(self, node_id: str, part: str) -> str:
        return f"{self.prefix}node:{node_id}:{part}"

    async def aclose(self) -> None:
        await self.client.aclose()
