"""What the gateway asks of the other nodes that serve the same users.

In one process there are none (`SingleNode`): every request runs here. With a
shared backend (Redis), a request runs on the node that started it (its owner),
and any node may follow, resume, list or cancel it. The gateway keeps its own
runs; for a request that runs elsewhere it goes through this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenwire.core.spec import RequestKey


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node as the stats endpoints show it."""

    node_id: str
    running: int
    """Requests running on the node (it owns them)."""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Its open sessions: session id to `Session.describe()`."""


class LocalRuns(Protocol):
    """The gateway, as the cluster sees it: the requests that run on this node."""

    def cancel_here(self, key: RequestKey, reason: str) -> bool:
        """Cancel a request running on this node; False if it does not run here."""

    def reconsider(self, key: RequestKey) -> None:
        """Followers of a request of this node's left elsewhere: cancel it if nobody
        follows it anywhere now (`Cluster.followed_elsewhere`)."""

    def report(self) -> NodeReport:
        """This node, now (what the cluster publishes for the other nodes' stats)."""


class Cluster(Protocol):
    node_id: str

    @property
    def shared(self) -> bool:
        """True when other nodes may run, follow or cancel this node's requests."""

    async def start(self, local: LocalRuns) -> None:
        """Begin taking other nodes' messages about this node's requests."""

    async def close(self) -> None: ...

    async def started(self, key: RequestKey) -> None:
        """This node runs `key` from now (its owner): cancels elsewhere reach it here.
        Never raises for a backend out of reach: the request then runs node-locally."""

    def ended(self, key: RequestKey) -> None:
        """The run of `key` here is over; must not block."""

    async def cancel(self, key: RequestKey, reason: str) -> bool:
        """Cancel a request running on another node; False if none runs it. Raises
        `BackendUnavailable` when the other nodes cannot be reached."""

    def follow(self, key: RequestKey, follower: str) -> None:
        """`follower` here receives a request that runs on another node."""

    def unfollow(self, key: RequestKey, follower: str, lost: bool) -> None:
        """`follower` here left a request that runs on another node (`lost`: it keeps
        the resume grace, as on one node)."""

    async def followed_elsewhere(self, key: RequestKey) -> bool:
        """Whether a follower on another node (or one in its grace there) still counts
        for this node's request `key`. Raises `BackendUnavailable` when it cannot tell."""

    async def others(self) -> list[NodeReport]:
        """The other nodes alive, as they last reported (`BackendUnavailable` when the
        backend cannot be reached)."""


class SingleNode:
    """No other nodes: nothing runs, follows or cancels elsewhere."""

    node_id = "local"

    @property
    def shared(self) -> bool:
        return False

    async def start(self, local: LocalRuns) -> None:
        return None

    async def close(self) -> None:
        return None

    async def started(self, key: RequestKey) -> None:
        return None

    def ended(self, key: RequestKey) -> None:
        return None

    async def cancel(self, key: RequestKey, reason: str) -> bool:
        return False

    def follow(self, key: RequestKey, follower: str) -> None:
        return None

    def unfollow(self, key: RequestKey, follower: str, lost: bool) -> None:
        return None

    async def followed_elsewhere(self, key: RequestKey) -> bool:
        return False

    async def others(self) -> list[NodeReport]:
        return []
