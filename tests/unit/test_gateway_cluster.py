"""The gateway with other nodes, without Redis: a cluster double stands for them, so
that what the gateway asks of the cluster, and when, is plain to see."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.gateway_nodes import with_cluster
from tests.support.providers import WatchedProvider
from tests.support.recording import Inbox
from tests.support.server import gateway_with
from tests.support.stores import SharedLogs
from tests.support.waiting import AT_ONCE, eventually
from tokenwire.backends.memory import MemoryLogStore
from tokenwire.core.cluster import NodeReport, SingleNode
from tokenwire.core.gateway import Gateway
from tokenwire.core.provider import Message
from tokenwire.core.spec import Generation, RequestKey, RequestSpec
from tokenwire.core.stats import cluster_sessions, cluster_snapshot, sessions_snapshot
from tokenwire.protocol.errors import BackendUnavailable, UnknownRequest

SLOW = {"tokens": 5000, "delay_ms": 5}
KEY = RequestKey("ada", "r1")


class OtherNodes(SingleNode):
    """A cluster whose other nodes are what the test says they are (what it does not
    override does nothing, as with no other nodes)."""

    node_id = "here"

    def __init__(self) -> None:
        self.running_elsewhere: set[RequestKey] = set()
        self.followed = False
        self.unavailable = False
        self.asked: list[str] = []
        self.follows: list[tuple[RequestKey, str, str]] = []
        self.reports: list[NodeReport] = []
        self.checked = asyncio.Event()

    @property
    def shared(self) -> bool:
        return True

    async def cancel(self, key: RequestKey, reason: str) -> bool:
        self.asked.append("cancel")
        if self.unavailable:
            raise BackendUnavailable("Redis is out of reach")
        return key in self.running_elsewhere

    def follow(self, key: RequestKey, follower: str) -> None:
        self.follows.append((key, follower, "live"))

    def unfollow(self, key: RequestKey, follower: str, lost: bool) -> None:
        self.follows.append((key, follower, "lost" if lost else "left"))

    async def followed_elsewhere(self, key: RequestKey) -> bool:
        self.asked.append("followed_elsewhere")
        self.checked.set()
        if self.unavailable:
            raise BackendUnavailable("Redis is out of reach")
        return self.followed

    async def others(self) -> list[NodeReport]:
        if self.unavailable:
            raise BackendUnavailable("Redis is out of reach")
        return self.reports


def spec(request_id: str = "r1") -> RequestSpec:
    return RequestSpec(
        user_id="ada",
        messages=(Message(role="user", content="hello"),),
        request_id=request_id,
        generation=Generation(options=SLOW),
    )


def node(cluster: OtherNodes, logs: MemoryLogStore | None = None) -> Gateway:
    logs = MemoryLogStore(300.0, 8 << 20, 64 << 20) if logs is None else logs
    return with_cluster(gateway_with(WatchedProvider()), cluster, SharedLogs(logs))


async def checked(cluster: OtherNodes) -> None:
    await asyncio.wait_for(cluster.checked.wait(), AT_ONCE)
    await asyncio.sleep(0)  # the gateway decides in the step that got the answer


async def test_a_cancel_of_a_request_running_here_does_not_ask_the_other_nodes() -> None:
    cluster = OtherNodes()
    gateway = node(cluster)
    await gateway.start(spec())
    await gateway.cancel_anywhere(KEY)
    assert gateway.is_cancelled(KEY)
    assert cluster.asked == []
    await gateway.shutdown(AT_ONCE)


async def test_a_cancel_of_a_request_running_elsewhere_goes_to_the_cluster() -> None:
    cluster = OtherNodes()
    cluster.running_elsewhere.add(KEY)
    gateway = node(cluster)
    await gateway.cancel_anywhere(KEY)
    assert cluster.asked == ["cancel"]
    with pytest.raises(UnknownRequest) as unknown:
        await gateway.cancel_anywhere(RequestKey("ada", "nowhere"))
    assert unknown.value.request_id == "nowhere"
    cluster.unavailable = True
    with pytest.raises(BackendUnavailable) as unavailable:
        await gateway.cancel_anywhere(KEY)
    assert unavailable.value.request_id == "r1"


async def test_the_last_follower_here_leaving_cancels_only_if_nobody_follows_elsewhere() -> None:
    cluster = OtherNodes()
    gateway = node(cluster)
    phone = gateway.open_session("ada", {})
    log = await gateway.start(spec(), follower=phone)
    cluster.followed = True
    gateway.close_session(phone, "client closed the connection")
    await checked(cluster)
    assert not gateway.is_cancelled(KEY)
    cluster.followed, cluster.checked = False, asyncio.Event()
    gateway.reconsider(KEY)  # a follower elsewhere left
    await eventually(lambda: log.status == "cancelled", AT_ONCE)
    await gateway.shutdown(AT_ONCE)


async def test_followers_elsewhere_out_of_reach_count_for_nothing() -> None:
    cluster = OtherNodes()
    cluster.unavailable = True
    gateway = node(cluster)
    phone = gateway.open_session("ada", {})
    log = await gateway.start(spec(), follower=phone)
    gateway.close_session(phone, "client closed the connection")
    await eventually(lambda: log.status == "cancelled", AT_ONCE)
    assert cluster.asked == ["followed_elsewhere"]
    await gateway.shutdown(AT_ONCE)


async def test_reconsider_leaves_a_request_that_someone_here_follows() -> None:
    cluster = OtherNodes()
    gateway = node(cluster)
    phone = gateway.open_session("ada", {})
    await gateway.start(spec(), follower=phone)
    gateway.reconsider(KEY)
    await asyncio.sleep(0)
    assert cluster.asked == []
    assert not gateway.is_cancelled(KEY)
    await gateway.shutdown(AT_ONCE)


async def test_a_request_running_elsewhere_is_followed_through_the_cluster_until_it_ends() -> None:
    logs = MemoryLogStore(300.0, 8 << 20, 64 << 20)
    owner, here = OtherNodes(), OtherNodes()
    a, b = node(owner, logs), node(here, logs)
    await a.start(spec())
    phone = b.open_session("ada", {})
    laptop = b.open_session("ada", {})
    await b.resume(KEY, Inbox(), 0, follower=phone)
    await b.resume(KEY, Inbox(), 0, follower=laptop)
    assert phone.following == {"r1"}
    b.close_session(laptop, "client went away", lost=True)
    a.cancel(KEY)
    await eventually(lambda: not phone.following, AT_ONCE)
    assert here.follows == [
        (KEY, phone.session_id, "live"),
        (KEY, laptop.session_id, "live"),
        (KEY, laptop.session_id, "lost"),
        (KEY, phone.session_id, "left"),  # its end: the follower here counts no more
    ]
    await a.shutdown(AT_ONCE)
    await b.shutdown(AT_ONCE)


async def test_the_stats_of_the_cluster_show_every_node_or_this_one_when_out_of_reach() -> None:
    cluster = OtherNodes()
    cluster.reports = [NodeReport("there", 2, {"s2": {"user_id": "bob", "state": "idle"}})]
    gateway = node(cluster)
    gateway.open_session("ada", {})
    nodes, reachable = await gateway.nodes()
    assert reachable
    assert cluster_snapshot(nodes, reachable)["nodes"] == {
        "here": {"streams_running": 0, "sessions": 1},
        "there": {"streams_running": 2, "sessions": 1},
    }
    listed = cluster_sessions(sessions_snapshot(gateway.sessions), nodes, reachable)
    assert sorted(s["node_id"] for s in listed["active_session_details"].values()) == [
        "here",
        "there",
    ]
    assert listed["active_sessions"] == 2
    cluster.unavailable = True
    nodes, reachable = await gateway.nodes()
    assert not reachable
    assert cluster_snapshot(nodes, reachable)["nodes_alive"] == 1
