"""Assembling an answer's tool calls from a provider's news of them (no I/O).

Providers report calls as `ToolCallDelta` / `ToolCallEnd` (core/tools.py), each
keyed by what their upstream correlates fragments by. Upstreams differ in ways
that break naive code (FACTS.md): a first index of 1, the id and name repeated on
every fragment, a name that comes after the first fragment, `arguments: null`,
an empty first `partial_json`. The `ToolCallAssembler` absorbs all of these and
hands out the wire's own view (CONTRACT.md): calls numbered densely from 0 in
the order they start, tokenwire's own ids, a call final only at its end, and
arguments that parse to a JSON object or else an error, never a call.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenwire.core.tools import CALL_ID_PREFIX, ToolCallDelta, ToolCallEnd, ToolCallPart
from tokenwire.protocol.errors import ProviderError

MAX_CALLS = 128
"""Calls one answer may make; a model looping on calls is cut off, not followed."""
MAX_ARGUMENT_BYTES = 1 << 20
"""Bytes of one call's arguments (UTF-8): bounds the memory an upstream can make us hold."""


def new_call_id() -> str:
    """Tokenwire's own call id: the upstream's may be absent, repeated or reused."""
    return CALL_ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class CallStarted:
    """`tool_call_start`: the call `index` to tool `name` has begun."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class CallFragment:
    """`tool_call_delta`: the next piece of call `index`'s arguments (JSON text)."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """`tool_call_end`: call `index` is final; `arguments` is all of it."""

    index: int
    id: str
    name: str
    arguments: str

    def part(self) -> ToolCallPart:
        return ToolCallPart(id=self.id, name=self.name, arguments=self.arguments)


ToolCallEvent = CallStarted | CallFragment | CallEnded


@dataclass(slots=True)
class _Call:
    """One upstream call as far as it has come."""

    name: str | None = None
    index: int | None = None
    """Set once `tool_call_start` is out (which waits for the name)."""
    id: str = ""
    pieces: list[str] = field(default_factory=list)
    size: int = 0
    """UTF-8 bytes of `pieces`."""
    ended: bool = False


class ToolCallAssembler:
    """One answer's calls: feed it the provider's tool events, write what it returns.

    Feeding returns the wire events due now, in order; a malformed answer raises
    `ProviderError`. `finish()` at the answer's end checks that no call is left open
    and returns the finished calls in index order.
    """

    def __init__(
        self,
        max_calls: int = MAX_CALLS,
        max_argument_bytes: int = MAX_ARGUMENT_BYTES,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._max_calls = max_calls
        self._max_bytes = max_argument_bytes
        self._new_id = new_id
        self._calls: dict[str | int, _Call] = {}
        self._started = 0
        self._finished: list[CallEnded] = []

    @property
    def open(self) -> bool:
        """Has any call begun (upstream) and not yet ended?"""
        return any(not call.ended for call in self._calls.values())

    def feed(self, event: ToolCallDelta | ToolCallEnd) -> list[ToolCallEvent]:
        if isinstance(event, ToolCallEnd):
            return self._end(event.key)
        return self._delta(event)

    def finish(self) -> tuple[ToolCallPart, ...]:
        """The answer has ended: its finished calls by index, or why it is no answer."""
        if self.open:
            raise ProviderError("the answer ended with a tool call still open")
        return self.calls

    @property
    def calls(self) -> tuple[ToolCallPart, ...]:
        """The calls ended so far, by index."""
        return tuple(e.part() for e in sorted(self._finished, key=lambda e: e.index))

    # -- steps ------------------------------------------------------------------

    def _delta(self, delta: ToolCallDelta) -> list[ToolCallEvent]:
        call = self._calls.get(delta.key)
        if call is None:
            if len(self._calls) >= self._max_calls:
                raise ProviderError(f"the answer made more than {self._max_calls} tool calls")
            call = self._calls[delta.key] = _Call()
        elif call.ended:
            raise ProviderError(f"tool call {delta.key!r} went on after its end")
        out: list[ToolCallEvent] = []
        if delta.name:
            self._name(call, delta.name, out)
        # `arguments: null` arrives as "", and an empty fragment is no news.
        if delta.arguments:
            self._grow(call, delta.arguments)
            if call.index is not None:
                out.append(CallFragment(call.index, delta.arguments))
        return out

    def _name(self, call: _Call, name: str, out: list[ToolCallEvent]) -> None:
        if call.name is not None:
            if name != call.name:  # repeated on every fragment is fine; changed is not
                raise ProviderError(f"a tool call changed its name from {call.name!r} to {name!r}")
            return
        call.name = name
        call.index, call.id = self._started, self._new_id()
        self._started += 1
        out.append(CallStarted(call.index, call.id, name))
        held = "".join(call.pieces)
        if held:  # fragments that came before the name go out now, as one
            out.append(CallFragment(call.index, held))

    def _grow(self, call: _Call, fragment: str) -> None:
        call.size += len(fragment) if fragment.isascii() else len(fragment.encode())
        if call.size > self._max_bytes:
            raise ProviderError(f"a tool call's arguments passed {self._max_bytes} bytes")
        call.pieces.append(fragment)

    def _end(self, key: str | int) -> list[ToolCallEvent]:
        call = self._calls.get(key)
        if call is None or call.ended:
            raise ProviderError(f"the provider ended tool call {key!r}, which was not open")
        if call.name is None or call.index is None:
            raise ProviderError("the provider ended a tool call that has no name")
        out: list[ToolCallEvent] = []
        arguments = "".join(call.pieces)
        if not arguments:
            # A call without parameters may stream nothing at all (Anthropic's empty
            # input): it is the empty object, sent as a fragment so that the deltas
            # still add up to the end's arguments.
            arguments = "{}"
            out.append(CallFragment(call.index, arguments))
        _check_object(call.name, arguments)
        call.ended, call.pieces = True, []
        ended = CallEnded(call.index, call.id, call.name, arguments)
        self._finished.append(ended)
        out.append(ended)
        return out


def _check_object(name: str, arguments: str) -> None:
    try:
        value = json.loads(arguments, parse_constant=_no_constant)
    except ValueError:
        raise ProviderError(
            f"the model called {name!r} with arguments that are not valid JSON"
        ) from None
    if not isinstance(value, dict):
        raise ProviderError(f"the model called {name!r} with arguments that are not a JSON object")


def _no_constant(token: str) -> Any:
    """`NaN` and `Infinity` are Python's extension, not JSON."""
    raise ValueError(token)
