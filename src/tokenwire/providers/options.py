"""Reading a provider's `options`: at start-up from its table, per request from `config`.

Every kind declares its options as a strict pydantic model; these functions are
the one way they are read, so that every provider reports a wrong option the
same way: a `ValueError` naming the key stops start-up, an `InvalidRequest`
naming the key rejects a request before it starts.

A request's options come from the WebSocket's `config.options` or from a
dialect's fields (`seed`, `top_k`, `thinking`, ...), which the dialect puts
there under the provider kinds' own names. The model is the one list of what a
kind takes: an option it does not list refuses the request, in the client's
terms ("seed: provider 'local' (kind local) cannot honour it"); a hint it does
not list (an end-user id, a service tier) is dropped, since it changes no answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from tokenwire.core.provider import ProviderRequest
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import describe_validation_error

OptionsModel = TypeVar("OptionsModel", bound=BaseModel)
Defaults = TypeVar("Defaults", bound=BaseModel)


class Named(Protocol):
    """The provider a request's options are read for, as refusals name it."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


def configured_options(model: type[OptionsModel], options: Mapping[str, Any]) -> OptionsModel:
    """The provider table's `options`, or `ValueError` naming the key."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, "options")) from None


def given_options(
    model: type[BaseModel], request: ProviderRequest, provider: Named
) -> dict[str, Any]:
    """The request's options and the hints that `model` lists, or `InvalidRequest`
    for an option a dialect set that this provider cannot honour."""
    refused = [
        f"{request.option_names[key]}: provider {provider.name!r} (kind {provider.kind}) "
        "cannot honour it"
        for key in request.options
        if key not in model.model_fields and key in request.option_names
    ]
    if refused:
        raise InvalidRequest("; ".join(refused))
    hints = {k: v for k, v in request.hints.items() if _takes(model, k, v)}
    return {**hints, **request.options}


def _takes(model: type[BaseModel], key: str, value: Any) -> bool:
    """Whether `model` takes this hint as it is: one dialect's service tier is not
    another kind's (Anthropic's "standard_only"), and a hint that does not fit is
    dropped like one the kind does not know."""
    if key not in model.model_fields:
        return False
    try:
        model.model_validate({key: value})
    except ValidationError:
        return False
    return True


def request_options(
    model: type[OptionsModel], request: ProviderRequest, provider: Named
) -> OptionsModel:
    """A request's options (read as `model`), or `InvalidRequest` naming the field."""
    return _validated(model, given_options(model, request, provider), request.option_names)


def merged_options(
    defaults: Defaults, model: type[OptionsModel], request: ProviderRequest, provider: Named
) -> Defaults:
    """A request's options (read as `model`) laid over the provider's defaults."""
    given = given_options(model, request, provider)
    if not given:
        return defaults
    parsed = _validated(model, given, request.option_names)
    # The parsed values themselves, not a dump: a dump would turn nested models to dicts.
    return defaults.model_copy(
        update={key: getattr(parsed, key) for key in parsed.model_fields_set}
    )


def _validated(
    model: type[OptionsModel], given: Mapping[str, Any], names: Mapping[str, str]
) -> OptionsModel:
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        raise InvalidRequest(_described(exc, names)) from None


def _described(exc: ValidationError, names: Mapping[str, str]) -> str:
    """Each problem under the client's name for the field: a dialect's, else `config.options`."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    if not all(err["loc"] and err["loc"][0] in names for err in errors):
        return describe_validation_error(exc, "config.options")
    parts = []
    for err in errors[:8]:
        head, *rest = err["loc"]
        where = ".".join([names[str(head)], *(str(p) for p in rest)])
        parts.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)
