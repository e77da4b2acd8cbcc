"""What a request asks for, in no transport's or dialect's terms.

Every way in (the WebSocket protocol, SSE, the OpenAI and Anthropic dialects)
builds a `RequestSpec`; the core never sees their message formats. A request
belongs to its user and is addressed by `RequestKey` (user, request id): two
users may use the same id without meeting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.provider import Message
from tokenwire.core.tools import ResponseFormat, ToolChoice, ToolSpec
from tokenwire.protocol.messages import Granularity, RoutingStrategy


class RequestKey(NamedTuple):
    user_id: str
    request_id: str


@dataclass(frozen=True, slots=True)
class Routing:
    """How to pick a provider: a forced one, or a strategy and priorities."""

    provider: str | None = None
    strategy: RoutingStrategy | None = None  # None: the server's default
    speed_priority: bool = True
    reliability_priority: bool = False
    cost_limit: float | None = None


@dataclass(frozen=True, slots=True)
class Generation:
    """What the model is asked to do beyond the messages."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """The provider's per-request options (WebSocket `config.options`, a dialect's fields)."""
    hints: Mapping[str, Any] = field(default_factory=dict)
    """Options that change no answer: passed on where the provider takes them, else dropped."""
    option_names: Mapping[str, str] = field(default_factory=dict)
    """A dialect's name for each option it set, so that a refusal names the client's field."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """How the answer's text is cut into events."""

    granularity: Granularity = Granularity.CHUNK
    progress_every: int | None = None  # None: the server's default; 0: no progress events


@dataclass(frozen=True, slots=True)
class RequestSpec:
    user_id: str
    messages: tuple[Message, ...]
    """The new turns; a conversation's earlier turns are the gateway's to add."""
    request_id: str | None = None  # None: the gateway names it
    conversation_id: str | None = None
    generation: Generation = field(default_factory=Generation)
    routing: Routing = field(default_factory=Routing)
    delivery: Delivery = field(default_factory=Delivery)
    deadlines: Deadlines = field(default_factory=Deadlines)  # unset: the server's defaults
    origin: str | None = None
    """The session that started the request, where there is one (shown in its events)."""
    client: str | None = None
    """The caller's network address, for audit lines."""
    prompt_length: int | None = None  # None: the length of the new turns' text
    history_from: str | None = None
    """Another conversation of the user's to continue from (its turns come first and
    are kept under `conversation_id` with the new ones); None: `conversation_id`'s own."""
    history: tuple[Message, ...] = ()
    """Earlier turns of the conversation, filled in by the gateway."""

    @property
    def key(self) -> RequestKey:
        assert self.request_id is not None, "the gateway names every request before it runs"
        return RequestKey(self.user_id, self.request_id)

    @property
    def conversation(self) -> tuple[Message, ...]:
        """Everything the model is shown: the history, then the new turns."""
        return self.history + self.messages

    @property
    def latest_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content if self.messages else ""
