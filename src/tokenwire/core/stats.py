"""Streaming statistics: counters the core updates, read by the stats endpoints."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from tokenwire.core.cluster import NodeReport
from tokenwire.core.provider import Usage
from tokenwire.core.sessions import SessionRegistry
from tokenwire.core.tools import ToolCallPart
from tokenwire.protocol.events import StreamStatus


@dataclass
class ProviderTotals:
    streams: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 9),
        }


# Per-user totals are kept for this many users, the least recently active dropped first.
MAX_USERS_TRACKED = 10_000


@dataclass
class UserTotals:
    streams: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 9),
        }


@dataclass
class StreamOutcome:
    provider: str
    status: StreamStatus
    duration: float
    ttft: float | None
    chunks: int
    text_bytes: int
    usage: Usage | None
    cost_usd: float
    user_id: str = ""
    tool_calls: tuple[ToolCallPart, ...] = ()
    """The calls of an answer that completed with them (for its conversation)."""


class StreamingStats:
    def __init__(self) -> None:
        self.total_streams = 0
        self.active_streams = 0
        self.bytes_streamed = 0
        self._finished = 0
        self._duration_sum = 0.0
        self._ttft_sum = 0.0
        self._ttft_count = 0
        self._by_status = {status: 0 for status in StreamStatus}
        self.providers: dict[str, ProviderTotals] = {}
        self.users: OrderedDict[str, UserTotals] = OrderedDict()
        self.resumes_served = 0
        self.not_recovered = 0

    def stream_started(self) -> None:
        self.total_streams += 1
        self.active_streams += 1

    def stream_ended(self, outcome: StreamOutcome) -> None:
        self.active_streams -= 1
        self._finished += 1
        self._duration_sum += outcome.duration
        self.bytes_streamed += outcome.text_bytes
        self._by_status[outcome.status] += 1
        if outcome.ttft is not None:
            self._ttft_sum += outcome.ttft
            self._ttft_count += 1
        totals = self.providers.setdefault(outcome.provider, ProviderTotals())
        totals.streams += 1
        if outcome.status is StreamStatus.COMPLETED:
            totals.completed += 1
        elif outcome.status is StreamStatus.CANCELLED:
            totals.cancelled += 1
        else:
            totals.errors += 1
        if outcome.usage is not None:
            totals.prompt_tokens += outcome.usage.prompt_tokens
            totals.completion_tokens += outcome.usage.completion_tokens
        totals.cost_usd += outcome.cost_usd
        self._count_user(outcome)

    def _count_user(self, outcome: StreamOutcome) -> None:
        user = self.users.pop(outcome.user_id, None) or UserTotals()
        self.users[outcome.user_id] = user
        while len(self.users) > MAX_USERS_TRACKED:
            self.users.popitem(last=False)
        user.streams += 1
        if outcome.usage is not None:
            user.prompt_tokens += outcome.usage.prompt_tokens
            user.completion_tokens += outcome.usage.completion_tokens
        user.cost_usd += outcome.cost_usd

    def snapshot(self, sessions: SessionRegistry, in_grace: int = 0) -> dict[str, Any]:
        live = list(sessions)
        users = sessions.user_count
        return {
            "sessions": sessions_snapshot(sessions),
            "streams": {
                "total_streams": self.total_streams,
                "active_streams": self.active_streams,
                "avg_stream_duration": self._duration_sum / self._finished
                if self._finished
                else 0.0,
                "avg_ttft": self._ttft_sum / self._ttft_count if self._ttft_count else 0.0,
                "bytes_streamed": self.bytes_streamed,
                "by_status": {status.value: n for status, n in self._by_status.items()},
                "in_resume_grace": in_grace,
                "resumes_served": self.resumes_served,
                "not_recovered": self.not_recovered,
            },
            "providers": {name: t.as_dict() for name, t in self.providers.items()},
            "users": {name: t.as_dict() for name, t in self.users.items()},
            "performance": {
                "avg_session_duration": sum(s.duration for s in live) / len(live) if live else 0.0,
                "distinct_users": users,
                "sessions_per_user": len(live) / users if users else 0.0,
            },
        }


def sessions_snapshot(sessions: SessionRegistry) -> dict[str, Any]:
    return {
        "total_sessions": sessions.total_opened,
        "active_sessions": len(sessions),
        "active_session_details": {s.session_id: s.describe() for s in sessions},
    }


def cluster_snapshot(nodes: list[NodeReport], reachable: bool) -> dict[str, Any]:
    """This node (first in `nodes`) and the others alive: what runs where. `reachable`
    False: the other nodes could not be asked (only this one is shown)."""
    return {
        "node_id": nodes[0].node_id,
        "reachable": reachable,
        "nodes_alive": len(nodes),
        "streams_running": sum(node.running for node in nodes),
        "nodes": {
            node.node_id: {"streams_running": node.running, "sessions": len(node.sessions)}
            for node in nodes
        },
    }


def cluster_sessions(
    local: dict[str, Any], nodes: list[NodeReport], reachable: bool
) -> dict[str, Any]:
    """`local` (this node's `sessions_snapshot`, this node first in `nodes`) with every
    other node's sessions, each saying on which node it is."""
    here = nodes[0].node_id
    details = {
        sid: {**about, "node_id": here} for sid, about in local["active_session_details"].items()
    }
    for node in nodes[1:]:
        for sid, about in node.sessions.items():
            details[sid] = {**about, "node_id": node.node_id}
    return {
        **local,
        "active_sessions": len(details),
        "active_session_details": details,
        "reachable": reachable,
        "nodes": {node.node_id: len(node.sessions) for node in nodes[1:]}
        | {here: local["active_sessions"]},
    }
