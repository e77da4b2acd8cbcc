"""The one seam every model sits behind, owned by the core that drives it.

A provider turns a `ProviderRequest` into an async iterator of text deltas that
ends with one `Usage`. Closing the iterator early (`aclose()`, which happens on
cancel, timeout or a vanished client) must close the upstream at once, so that
no tokens keep being generated or paid for. A stream that ends without the
upstream's end marker raises `ProviderError`; it is never a completed answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """One block of a turn's text, kept as a block for the providers that take blocks."""

    text: str
    cache_control: Mapping[str, Any] | None = None
    """Anthropic's prompt-caching breakpoint on this block, as the client sent it."""


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation, in no dialect's format."""

    role: Role
    content: str
    """The turn's whole text: what prompt lengths, trimming and estimates count."""
    parts: tuple[TextPart, ...] = ()
    """The same text as the blocks the client sent, where it sent blocks that a provider
    may keep (the Messages dialect's); empty: `content` is one block."""


FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What an answer cost, and why it ended; a provider's stream ends with one."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    """True where the upstream reported no usage and these are tokenwire's own counts."""
    finish_reason: FinishReason = "stop"
    """"length" when the answer stopped at its token budget, else "stop"."""
    stop_sequence: str | None = None
    """Which of the request's `stop` strings ended the answer, where one did."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.estimated,
        }


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """What a provider is asked: the whole conversation, already assembled."""

    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    """Strings that end the answer where they would appear (not included)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Per-request options: each one the provider cannot honour refuses the request."""
    hints: Mapping[str, Any] = field(default_factory=dict)
    """Options that change no answer (an end-user id, a service tier, a caching key):
    passed on by the providers whose options name them, dropped by the others."""
    option_names: Mapping[str, str] = field(default_factory=dict)
    """What the client called each option (a dialect's field name), for refusals;
    an option not named here is `config.options.<key>`."""

    @property
    def prompt_text(self) -> str:
        return "\n".join(m.content for m in self.messages)


ProviderEvent = str | Usage


class Provider(Protocol):
    """A configured model endpoint. `name` is what clients and stats see."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def model(self) -> str: ...

    def readiness(self) -> str | None:
        """None once the provider can serve; else why not yet (a model still loading)."""

    def validate(self, request: ProviderRequest) -> None:
        """Raise `InvalidRequest` for options this provider cannot take."""

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        """How many deltas the answer will have, where known in advance (drives progress)."""

    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Text deltas, then one `Usage`; raises a `ProviderError` subclass on failure."""

    async def aclose(self) -> None:
        """Release clients and threads at shutdown."""


def estimate_tokens(text: str) -> int:
    """A rough local count (about four characters a token) for providers that report none."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimated_completion_tokens(
    deltas: int, max_tokens: int | None, text: str | None = None
) -> int:
    """An answer's tokens where its provider did not count them: never above the real count.

    Four characters a token overshoots on long words (" capital" is one token). But
    servers stream at least one token per delta (llama.cpp's exactly one), so the count
    of deltas is at most the real count, and no provider generates past `max_tokens`.
    The smallest of these never exceeds what was generated; it may fall short of it.
    """
    estimate = deltas if text is None else min(deltas, estimate_tokens(text))
    return estimate if max_tokens is None else min(estimate, max_tokens)
