"""`GET /v1/models` and `GET /v1/models/{id}`, in the shape of whichever dialect asks.

Both OpenAI and Anthropic serve these paths, with different bodies: an Anthropic
client (one that sends `anthropic-version` or `x-api-key`, as its SDKs do) gets
Anthropic's `ModelInfo` objects and page (`has_more`, `first_id`, `last_id`,
paged by `limit`, `after_id`, `before_id`), any other caller OpenAI's `model`
objects. The models are the configured providers' names, then `auto`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse

from tokenwire.protocol.errors import UnknownModel
from tokenwire.transports.v1.errors import OpenAIErrorBody, documented, speaks_anthropic
from tokenwire.transports.v1.route import EitherRoute
from tokenwire.transports.v1.running import AUTO, gateway_of

router = APIRouter(
    route_class=EitherRoute,
    tags=["Models (OpenAI and Anthropic)"],
    responses=documented(OpenAIErrorBody),
)

# Providers have no creation date; Anthropic's clients parse one, so it is the epoch.
CREATED_AT = "1970-01-01T00:00:00Z"


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tokenwire"
    auto: bool | None = None
    """Whether `auto` may choose this provider (absent on `auto` itself)."""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class AnthropicModel(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str = CREATED_AT


class AnthropicModelPage(BaseModel):
    data: list[AnthropicModel]
    has_more: bool
    first_id: str | None
    last_id: str | None


@router.get(
    "/v1/models",
    response_model=ModelList | AnthropicModelPage,
    response_model_exclude_none=True,
)
async def list_models(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: Annotated[str | None, Query(max_length=256)] = None,
    before_id: Annotated[str | None, Query(max_length=256)] = None,
) -> JSONResponse:
    models = _models(request)
    if not _anthropic(request):
        return JSONResponse(ModelList(data=models).model_dump(exclude_none=True))
    return JSONResponse(_page(models, limit, after_id, before_id).model_dump())


@router.get(
    "/v1/models/{model_id}",
    response_model=Model | AnthropicModel,
    response_model_exclude_none=True,
)
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    found = next((m for m in _models(request) if m.id == model_id), None)
    if found is None:
        raise UnknownModel(f"The model {model_id[:64]!r} does not exist; GET /v1/models lists them")
    if _anthropic(request):
        return JSONResponse(_anthropic_model(found).model_dump())
    return JSONResponse(found.model_dump(exclude_none=True))


def _models(request: Request) -> list[Model]:
    slots = gateway_of(request).slots
    return [
        *(Model(id=name, auto=slot.profile.auto) for name, slot in slots.items()),
        Model(id=AUTO),
    ]


def _anthropic(request: Request) -> bool:
    return speaks_anthropic(request.url.path, request.headers)


def _anthropic_model(model: Model) -> AnthropicModel:
    name = "auto (the router's choice)" if model.id == AUTO else model.id
    return AnthropicModel(id=model.id, display_name=name)


def _page(
    models: list[Model], limit: int, after_id: str | None, before_id: str | None
) -> AnthropicModelPage:
    """Anthropic's cursor paging: the `limit` models after `after_id`, or before `before_id`."""
    ids = [m.id for m in models]
    start, stop = 0, len(models)
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(ids)
    if before_id is not None:
        stop = ids.index(before_id) if before_id in ids else 0
        start = max(start, stop - limit)
    chosen = models[start:stop][:limit]
    page: list[Any] = [_anthropic_model(m) for m in chosen]
    more = start + len(chosen) < stop if before_id is None else start > 0
    return AnthropicModelPage(
        data=page,
        has_more=more,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
    )
