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
from typing import Any, Literal, Protocol, runtime_checkable

from tokenwire.core.tools import (
    ResponseFormat,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    ToolSpec,
)
from tokenwire.protocol.errors import UnsupportedFeature

Role = Literal["system", "user", "assistant", "tool"]
"""A "tool" turn holds the results (`ToolResultPart`) of the assistant's calls before it."""
MediaType = Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
MEDIA_TYPES: tuple[MediaType, ...] = ("image/png", "image/jpeg", "image/gif", "image/webp")
Detail = Literal["auto", "low", "high"]


@dataclass(frozen=True, slots=True)
class TextPart:
    """One block of a turn's text, kept as a block for the providers that take blocks."""

    text: str
    cache_control: Mapping[str, Any] | None = None
    """Anthropic's prompt-caching breakpoint on this block, as the client sent it."""


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image in a message: its bytes (from a data URL or base64), or an https URL.

    Exactly one of `data` and `url` is set. `media_type` is known for bytes; for a URL it
    is None until someone fetches it. `repr` never shows the bytes (they reach no log).
    """

    media_type: MediaType | None = None
    data: bytes | None = field(default=None, repr=False)
    url: str | None = None
    detail: Detail | None = None

    @property
    def size(self) -> int:
        """Bytes held in memory (0 for an image given by URL)."""
        return len(self.data) if self.data is not None else 0


Part = TextPart | ImagePart | ToolCallPart | ToolResultPart
"""A piece of a message's content, in order: text and images (user turns), text and tool
calls (assistant turns), tool results (tool turns)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation, in no dialect's format.

    `content` is always the turn's text (prompt length, trimming, stats and estimates
    read it). `parts` is empty for a plain text turn; otherwise it is the whole turn in
    order (text and images interleaved) and its text parts join to `content`.
    """

    role: Role
    content: str
    parts: tuple[Part, ...] = ()

    @classmethod
    def of_parts(cls, role: Role, parts: tuple[Part, ...]) -> Message:
        """A turn from its parts in order; a turn of plain text parts only is plain text
        (blocks that carry a `cache_control` stay blocks)."""
        text = "".join(p.text for p in parts if isinstance(p, TextPart))
        if all(isinstance(p, TextPart) and p.cache_control is None for p in parts):
            return cls(role=role, content=text)
        return cls(role=role, content=text, parts=parts)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart))

    @property
    def tool_calls(self) -> tuple[ToolCallPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolCallPart))

    @property
    def tool_results(self) -> tuple[ToolResultPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ToolResultPart))

    def content_parts(self) -> tuple[Part, ...]:
        """The turn in order: its parts, or its text as one part."""
        return self.parts or ((TextPart(self.content),) if self.content else ())


def images_of(messages: tuple[Message, ...]) -> tuple[ImagePart, ...]:
    return tuple(image for message in messages for image in message.images)


FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class Usage:
    """What an answer cost, and why it ended; a provider's stream ends with one."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    """True where the upstream reported no usage and these are tokenwire's own counts."""
    finish_reason: FinishReason = "stop"
    """"length" when the answer stopped at its token budget, "tool_calls" when it ended
    by calling tools, else "stop"."""
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
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    """None: the provider's default ("auto" when there are tools)."""
    parallel_tool_calls: bool | None = None
    """None: the provider's default; False: at most one call per answer."""
    response_format: ResponseFormat | None = None

    @property
    def prompt_text(self) -> str:
        return "\n".join(m.content for m in self.messages)

    @property
    def has_images(self) -> bool:
        return any(m.parts and m.images for m in self.messages)


ProviderEvent = str | Usage | ToolCallDelta | ToolCallEnd
"""Text deltas and tool-call news, then one `Usage`. Room is left here for reasoning
deltas (thinking, reasoning summaries) as a type of their own, not as text."""


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


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count a request's prompt tokens exactly, as its model will.

    Optional: a provider has this method or not, and `count_tokens` refuses for those
    that have not, so none repeats a refusal of its own."""

    async def count_tokens(self, request: ProviderRequest) -> int:
        """The prompt tokens `request` would cost; raises `InvalidRequest` for a request
        the provider cannot take, a `ProviderError` when its upstream fails."""
        ...


async def count_tokens(provider: Provider, request: ProviderRequest) -> int:
    """The exact prompt tokens of `request` on `provider`, or `UnsupportedFeature`."""
    if not isinstance(provider, TokenCounter):
        # An estimate would be worse than a refusal: callers budget by this number.
        raise UnsupportedFeature(
            f"provider '{provider.name}' (kind {provider.kind}) cannot count tokens exactly"
        )
    return await provider.count_tokens(request)


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
