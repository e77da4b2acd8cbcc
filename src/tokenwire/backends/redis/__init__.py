"""Redis: what several nodes share (event logs, conversations, limits, cancels, leases).

`RedisBackend` is the one handle every Redis-backed part takes: the asyncio
client, the key prefix and this node's id. Keys of one request share a hash tag
(`{...}`), so that under Redis Cluster they live in one slot and a script may
touch them together.
"""

from tokenwire.backends.redis.client import RedisBackend, redis_errors

__all__ = ["RedisBackend", "redis_errors"]
