"""What the block-streaming providers (anthropic, bedrock) share about tool calls.

Both stream a call as a content block keyed by its index: a start with the call's
id and name, fragments of its input JSON, a stop. The input is checked at the stop:
a call whose input is not a JSON object never ends (the core would refuse it anyway,
and the stop reason that follows says why, when it is `max_tokens`). A call of no
input may send no fragment at all: its input is `{}`.
"""

from __future__ import annotations

import json

from tokenwire.core.provider import ProviderEvent
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd
from tokenwire.protocol.errors import ProviderError


class CallBlocks:
    """The input so far of each call block of one answer, by block index."""

    def __init__(self) -> None:
        self._inputs: dict[int, str] = {}
        self._broken = False

    def __contains__(self, index: int) -> bool:
        return index in self._inputs

    def start(self, index: int, upstream_id: str | None, name: str | None) -> list[ProviderEvent]:
        self._inputs[index] = ""
        return [ToolCallDelta(index, upstream_id=upstream_id, name=name)]

    def fragment(self, index: int, text: str) -> list[ProviderEvent]:
        if index not in self._inputs:
            return []
        self._inputs[index] += text
        return [ToolCallDelta(index, arguments=text)]

    def stop(self, index: int) -> list[ProviderEvent]:
        """The call's end; nothing where its input is not a JSON object."""
        if not self._inputs[index]:
            self._inputs[index] = "{}"
            return [ToolCallDelta(index, arguments="{}"), ToolCallEnd(index)]
        try:
            whole = json.loads(self._inputs[index])
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            return [ToolCallEnd(index)]
        self._broken = True
        return []

    def check_stop_reason(self, reason: str | None) -> None:
        if self._broken and reason == "max_tokens":
            raise ProviderError("the answer reached max_tokens in the middle of a tool call")

    def check_whole(self) -> None:
        if self._broken:
            raise ProviderError("upstream ended a tool call whose input is not a JSON object")
