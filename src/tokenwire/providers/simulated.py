"""A deterministic stand-in model for tests, demos and benchmarks.

The same prompt and options always give the same deltas. Per-request options
(`config.options`): `tokens` (number of deltas, default 60), `delay_ms` (pause
between deltas, default 20), `fail_after` (raise a provider error after that
many deltas), `stall_after` (stop sending, without ending, after that many).
A request's `stop` strings end the answer at the first word equal to one of them.
It sees images: an answer to a request with images begins by saying what it got
(`[images: image/png 1234 bytes, https://...] `), so that demos and tests can tell.
Asked for structured output, it answers example JSON for the schema
(providers/example_json.py) in deltas of a few characters (`max_tokens` cuts them
as it cuts words); `ignore_format: true` makes it answer words anyway, which is how
tests see an answer that misses its schema.

It scripts tool calls: with `tool_calls: [{"name": ..., "arguments": {...}}]` the
answer is `text_before` (if any, word by word), then those calls, their
arguments' JSON sent `fragment_chars` characters at a time, one call after the
other or, with `interleave`, their fragments taking turns; it ends with finish
reason "tool_calls". `arguments` given as a string is sent verbatim, valid JSON
or not (to show what a malformed call does). A conversation whose last turn
holds tool results is answered with text that echoes them (`results: ...`), so
that a round trip ends. `fail_after` and `stall_after` count a call's
fragments as deltas.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
from collections.abc import AsyncGenerator, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tokenwire.core.provider import (
    FinishReason,
    ProviderEvent,
    ProviderRequest,
    Usage,
    estimate_tokens,
    images_of,
)
from tokenwire.core.structured import schema_of
from tokenwire.core.tools import ResponseFormat, ToolCallDelta, ToolCallEnd
from tokenwire.protocol.errors import ProviderError
from tokenwire.providers.example_json import example
from tokenwire.providers.options import configured_options, merged_options
from tokenwire.settings import ProviderSettings

_WORDS = [
    "stream",
    "token",
    "answer",
    "model",
    "latency",
    "socket",
    "event",
    "provider",
    "request",
    "client",
    "server",
    "chunk",
    "progress",
    "session",
    "cancel",
    "resume",
    "buffer",
    "frame",
    "deliver",
    "route",
    "fast",
    "reliable",
    "complete",
    "order",
    "sequence",
    "gateway",
    "network",
    "browser",
    "message",
    "text",
    "signal",
    "quiet",
]


STRUCTURED_DELTA_CHARS = 6
"""A structured answer's characters per delta: a few, like a model's tokens."""


class ScriptedCall(BaseModel):
    """A tool call the simulated answer makes."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    arguments: dict[str, Any] | Annotated[str, Field(max_length=1 << 20)] = Field(
        default_factory=dict
    )

    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)


class SimulatedOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    tokens: Annotated[int, Field(ge=0, le=1_000_000)] = 60
    delay_ms: Annotated[float, Field(ge=0, le=60_000)] = 20.0
    fail_after: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    stall_after: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    ignore_format: bool = False
    tool_calls: Annotated[list[ScriptedCall], Field(min_length=1, max_length=128)] | None = None
    text_before: Annotated[str, Field(max_length=100_000)] = ""
    """Text before the scripted calls, sent a word at a time."""
    fragment_chars: Annotated[int, Field(ge=1, le=1 << 20)] = 8
    interleave: bool = False

    @functools.cached_property
    def seed_json(self) -> str:
        """These options as `_seed` writes them: once per options (they are frozen, and
        the same few are asked again and again), not once per answer."""
        return json.dumps(self.model_dump(), sort_keys=True)


class SimulatedProvider:
    kind = "simulated"

    def __init__(self, settings: ProviderSettings) -> None:
        self._name = settings.name
        self._model = settings.model or "simulated-1"
        self._defaults = configured_options(SimulatedOptions, settings.options)
        self._recent: dict[frozenset[tuple[str, Any]], SimulatedOptions] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    def readiness(self) -> str | None:
        return None  # ready once built: clients connect on first use

    def validate(self, request: ProviderRequest) -> None:
        self._options(request)

    def expected_deltas(self, request: ProviderRequest) -> int | None:
        options = self._options(request)
        script = _script(request, options)
        if script is not None:
            return sum(isinstance(item, str) for item in script)
        if request.response_format is not None and not options.ignore_format:
            return None
        if request.max_tokens is not None:
            return min(options.tokens, request.max_tokens)
        return options.tokens

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        options = self._options(request)
        script = _script(request, options)
        if script is not None:
            async for item in _play(script, request, options):
                yield item
            return
        if request.response_format is not None and not options.ignore_format:
            async for event in _structured(request, request.response_format, options):
                yield event
            return
        count = options.tokens
        if request.max_tokens is not None:
            count = min(count, request.max_tokens)
        delay = options.delay_ms / 1000
        rng = random.Random(_seed(request, options))
        finish: FinishReason = "length" if count < options.tokens else "stop"
        sent = 0
        seen = _seen(request)
        stop_sequence: str | None = None
        for index in range(count):
            if options.fail_after is not None and index >= options.fail_after:
                raise ProviderError(f"simulated failure after {options.fail_after} deltas")
            if options.stall_after is not None and index >= options.stall_after:
                await asyncio.Event().wait()
            # Even at delay 0 the loop turns between deltas, as it would waiting on a
            # socket: a flat-out stream must not starve other clients' pings.
            await asyncio.sleep(delay)
            word = rng.choice(_WORDS)
            if word in request.stop:
                finish = "stop"  # a stop string ends the answer; it is not sent
                stop_sequence = word
                break
            sent += 1
            yield seen + word if index == 0 else " " + word
        yield Usage(
            prompt_tokens=estimate_tokens(request.prompt_text),
            completion_tokens=sent,
            finish_reason=finish,
            stop_sequence=stop_sequence,
        )

    async def aclose(self) -> None:
        return None

    def _options(self, request: ProviderRequest) -> SimulatedOptions:
        if not request.options:
            return self._defaults
        try:
            key = frozenset(request.options.items())
        except TypeError:  # an unhashable value: wrong anyway, let validation say how
            return self._parse(request)
        # Asked three times per request (validate, expected_deltas, stream): parse once.
        parsed = self._recent.get(key)
        if parsed is None:
            parsed = self._parse(request)
            if len(self._recent) >= 256:
                self._recent.clear()
            self._recent[key] = parsed
        return parsed

    def _parse(self, request: ProviderRequest) -> SimulatedOptions:
        return merged_options(self._defaults, SimulatedOptions, request, self)


async def _structured(
    request: ProviderRequest, fmt: ResponseFormat, options: SimulatedOptions
) -> AsyncGenerator[ProviderEvent, None]:
    """Example JSON for the format's schema, a few characters a delta, within max_tokens."""
    text = json.dumps(example(schema_of(fmt)))
    pieces = [
        text[i : i + STRUCTURED_DELTA_CHARS] for i in range(0, len(text), STRUCTURED_DELTA_CHARS)
    ]
    limit = request.max_tokens if request.max_tokens is not None else len(pieces)
    for index, piece in enumerate(pieces[:limit]):
        if options.fail_after is not None and index >= options.fail_after:
            raise ProviderError(f"simulated failure after {options.fail_after} deltas")
        await asyncio.sleep(options.delay_ms / 1000)
        yield piece
    yield Usage(
        prompt_tokens=estimate_tokens(request.prompt_text),
        completion_tokens=min(limit, len(pieces)),
        finish_reason="length" if limit < len(pieces) else "stop",
    )


def _seen(request: ProviderRequest) -> str:
    """What the answer says it saw: each image's type and size, or its URL."""
    images = images_of(request.messages)
    if not images:
        return ""
    seen = [
        f"{image.media_type} {image.size} bytes" if image.data is not None else str(image.url)
        for image in images
    ]
    return f"[images: {', '.join(seen)}] "


def _script(request: ProviderRequest, options: SimulatedOptions) -> list[ProviderEvent] | None:
    """The scripted answer's deltas: an echo of tool results, or text then tool calls;
    None for the ordinary answer of random words."""
    # System turns are instructions, not the conversation's latest step (a dialect may
    # put them after the results they accompany).
    last = next((m for m in reversed(request.messages) if m.role != "system"), None)
    if last is not None and last.tool_results:
        echo = "; ".join(("error: " if r.is_error else "") + r.content for r in last.tool_results)
        return list(_words(f"results: {echo}"))
    if options.tool_calls is None:
        return None
    script: list[ProviderEvent] = list(_words(options.text_before))
    script.extend(_calls(options))
    return script


def _words(text: str) -> Iterator[str]:
    """`text` in word-sized deltas (each but the first with its leading space)."""
    for number, word in enumerate(text.split()):
        yield word if number == 0 else " " + word


def _calls(options: SimulatedOptions) -> list[ProviderEvent]:
    """Each call as an upstream with indexes would send it: the name on its first
    fragment, the arguments in `fragment_chars` pieces, an end after its last."""
    assert options.tool_calls is not None
    size = options.fragment_chars
    queues: list[list[ProviderEvent]] = []
    for index, call in enumerate(options.tool_calls):
        text = call.arguments_text()
        pieces = [text[at : at + size] for at in range(0, len(text), size)] or [""]
        queue: list[ProviderEvent] = [
            ToolCallDelta(index, upstream_id=f"sim_{index}", name=call.name, arguments=pieces[0])
        ]
        queue.extend(ToolCallDelta(index, arguments=piece) for piece in pieces[1:])
        queue.append(ToolCallEnd(index))
        queues.append(queue)
    if not options.interleave:
        return [item for queue in queues for item in queue]
    # Fragments take turns, one from each call still going.
    longest = max(len(queue) for queue in queues)
    return [queue[turn] for turn in range(longest) for queue in queues if turn < len(queue)]


async def _play(
    script: list[ProviderEvent], request: ProviderRequest, options: SimulatedOptions
) -> AsyncGenerator[ProviderEvent, None]:
    delay = options.delay_ms / 1000
    sent = 0
    for index, item in enumerate(script):
        if options.fail_after is not None and index >= options.fail_after:
            raise ProviderError(f"simulated failure after {options.fail_after} deltas")
        if options.stall_after is not None and index >= options.stall_after:
            await asyncio.Event().wait()
        await asyncio.sleep(delay)
        sent += isinstance(item, str)
        yield item
    calls = any(isinstance(item, ToolCallEnd) for item in script)
    yield Usage(
        prompt_tokens=estimate_tokens(request.prompt_text),
        completion_tokens=sent + sum(isinstance(i, ToolCallDelta) for i in script),
        finish_reason="tool_calls" if calls else "stop",
    )


def _seed(request: ProviderRequest, options: SimulatedOptions) -> int:
    # The JSON of `[[role, content], ..., options]` (sort_keys): a list's JSON is its
    # items' own JSON joined by ", ", so the options' part is spliced in from their memo.
    turns = [[m.role, m.content] for m in request.messages]
    material = (
        f"{json.dumps(turns)[:-1]}, {options.seed_json}]" if turns else f"[{options.seed_json}]"
    )
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")
