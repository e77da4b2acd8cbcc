"""Reading a provider's `options`: at start-up from its table, per request from `config`.

Every kind declares its options as a strict pydantic model; these two functions
are the one way they are read, so that every provider reports a wrong option
the same way: a `ValueError` naming the key stops start-up, an `InvalidRequest`
naming the key rejects a request before it starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import describe_validation_error

OptionsModel = TypeVar("OptionsModel", bound=BaseModel)
Defaults = TypeVar("Defaults", bound=BaseModel)


def configured_options(model: type[OptionsModel], options: Mapping[str, Any]) -> OptionsModel:
    """The provider table's `options`, or `ValueError` naming the key."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, "options")) from None


def request_options(model: type[OptionsModel], options: Mapping[str, Any]) -> OptionsModel:
    """A request's `config.options`, or `InvalidRequest` naming the key."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc, "config.options")) from None


def merged_options(
    defaults: Defaults, model: type[OptionsModel], options: Mapping[str, Any]
) -> Defaults:
    """A request's `config.options` (read as `model`) laid over the provider's defaults."""
    if not options:
        return defaults
    given = request_options(model, options)
    return defaults.model_copy(update=given.model_dump(exclude_unset=True))
