"""What the dialects do with the official APIs' request fields beyond the plain call.

Each field a dialect's body model declares is one of four things (docs/http-apis.md
lists every one): the core's own (messages, limits, sampling every provider
takes); a provider option, which the chosen provider honours or refuses by name
(providers/options.py); a hint that changes no answer (an end-user id, a service
tier), passed on where the provider takes it and dropped elsewhere; or a field
that means nothing here, accepted and named in the `tokenwire-ignored-fields`
header. A field asking for what tokenwire does not offer is refused with why.
A key that no official API defines is refused by the body model itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenwire.protocol.errors import InvalidRequest

IGNORED_FIELDS = "tokenwire-ignored-fields"

TOOLS_LATER = "tool calls are not supported yet"
STRUCTURED_LATER = "structured output is not supported yet"


@dataclass
class Fields:
    """A body's fields sorted for the core: options, hints, and what was ignored."""

    options: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def option(self, key: str, value: Any, name: str | None = None) -> None:
        """An option the chosen provider must honour (`key` in the provider kinds' terms)."""
        if value is not None:
            self.options[key] = value
            self.names[key] = name or key

    def hint(self, key: str, value: Any) -> None:
        if value is not None:
            self.hints[key] = value

    def ignore(self, name: str, value: Any) -> None:
        if value is not None:
            self.ignored.append(name)

    @property
    def headers(self) -> dict[str, str]:
        return {IGNORED_FIELDS: ", ".join(self.ignored)} if self.ignored else {}


def refuse(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {why}")


def refuse_tools(tools: Any, tool_choice: Any, *, tools_name: str = "tools") -> None:
    """Tools are the next issue's; until then a request that offers any is refused.

    An empty list, and a choice of "none" or "auto" with no tools, ask for nothing.
    """
    if tools:
        raise refuse(tools_name, TOOLS_LATER)
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        raise refuse("tool_choice", TOOLS_LATER)


def refuse_present(body: Mapping[str, Any], reasons: Mapping[str, str]) -> None:
    """Refuse the first field of `reasons` that the body sets (to anything but null)."""
    for name, why in reasons.items():
        if body.get(name) is not None:
            raise refuse(name, why)
