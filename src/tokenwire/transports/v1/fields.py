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

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

IGNORED_FIELDS = "tokenwire-ignored-fields"

# The hints both OpenAI dialects take: they change no answer, and the `openai` kind
# passes them on.
OPENAI_HINTS = ("user", "service_tier", "safety_identifier", "prompt_cache_key")
LEGACY_FUNCTIONS = "the deprecated functions and function_call fields are not taken: use tools"


def _arguments_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    # OpenAI takes a schema without "type" (`{}` is common for a tool of no
    # arguments) and the model still answers an object: so does every provider here,
    # and Anthropic's input_schema must say so.
    if "type" not in parameters:
        return {"type": "object", **parameters}
    if parameters["type"] != "object":
        raise ValueError('must be a JSON Schema of type "object"')
    return parameters


FunctionParameters = Annotated[dict[str, Any], AfterValidator(_arguments_schema)]
"""A function tool's `parameters` in both OpenAI dialects: an object schema."""

Label = Annotated[str, Field(min_length=1, max_length=512)]
"""A short word or id a field takes (an effort, a tier, an end-user id)."""


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


def refusing(why: str, *asks_nothing: Any) -> BeforeValidator:
    """For a field that asks for what tokenwire does not offer, typed `None`: null, or
    a value that asks for nothing (an empty tool list), is taken; anything else is
    refused saying why. The OpenAPI document shows such a field as null only."""

    def check(value: Any) -> None:
        if value is None or value in asks_nothing:
            return None
        raise ValueError(why)

    return BeforeValidator(check)
