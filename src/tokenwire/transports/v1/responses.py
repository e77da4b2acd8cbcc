"""OpenAI Responses: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`,
`.../cancel` and `.../input_items`.

Text in and out. A foreground response ends with its client, as OpenAI's does;
a `background` one runs on after its client leaves, is kept for the log
retention time, and can be re-attached with `GET /v1/responses/{id}?stream=true
&starting_after=N` (every event after sequence number N, then live), for every
provider, the local model included. `previous_response_id` continues from a
stored response of the same user, as a conversation does. Only a background
response can be cancelled (a foreground one ends with its client); any stored one
can be deleted, which cancels it first if it still runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.images import image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part, Role, TextPart
from tokenwire.core.spec import Delivery, Generation, RequestKey, RequestSpec
from tokenwire.core.structured import from_responses
from tokenwire.protocol.errors import InvalidRequest, UnknownRequest
from tokenwire.protocol.events import encode_json
from tokenwire.protocol.formats import ResponsesFormat
from tokenwire.protocol.messages import Granularity, valid_request_id
from tokenwire.transports.identity import user_of, with_client
from tokenwire.transports.streaming import EventStreamResponse, close_timeout_of
from tokenwire.transports.v1.errors import (
    OpenAIErrorBody,
    documented,
    openai_error,
    openai_error_body,
)
from tokenwire.transports.v1.fields import TOOLS_LATER, Fields, Label, refusing
from tokenwire.transports.v1.response_events import ResponseStream, replayed
from tokenwire.transports.v1.route import OpenAIRoute
from tokenwire.transports.v1.running import (
    SSE_HEADERS,
    STREAM_RESPONSE,
    Feed,
    ImageUrl,
    Text,
    cancel_quietly,
    cancelled_on_hangup,
    deadlines_of,
    failure_of,
    gateway_of,
    routing_for,
    usage_headers,
)

router = APIRouter(
    route_class=OpenAIRoute,
    tags=["OpenAI Responses"],
    responses=documented(OpenAIErrorBody),
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class InputText(_Body):
    type: Literal["input_text", "output_text"]
    text: Text
    annotations: list[Any] | None = None


class InputImage(_Body):
    type: Literal["input_image"]
    image_url: ImageUrl | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    @model_validator(mode="after")
    def _by_url(self) -> InputImage:
        if self.file_id is not None:
            raise ValueError(
                "file_id is not supported here (tokenwire keeps no files): "
                "send the image as image_url, a data URL or an https URL"
            )
        if self.image_url is None:
            raise ValueError("image_url is required (a data URL or an https URL)")
        return self


InputPart = Annotated[InputText | InputImage, Field(discriminator="type")]


class InputMessage(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | Annotated[list[InputPart], Field(max_length=1000)]


class TextConfig(_Body):
    format: ResponsesFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Body):
    effort: Label | None = None
    summary: Label | None = None
    generate_summary: Label | None = None
    context: Label | None = None
    mode: Label | None = None


class ResponseCreateRequest(_Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Text | Annotated[list[InputMessage], Field(min_length=1, max_length=10_000)]
    instructions: Text | None = None
    max_output_tokens: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool = False
    background: bool = False
    store: bool = True
    previous_response_id: Annotated[str, Field(min_length=1, max_length=160)] | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    # `text.format` text is the answer as it is; `text.verbosity` and `reasoning.effort`
    # are provider options, honoured by the chosen provider or refused naming it.
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    # Hints: passed on where the provider takes them (openai), else dropped.
    user: Label | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    safety_identifier: Label | None = None
    prompt_cache_key: Label | None = None
    # Meaning nothing here: accepted, and named in the tokenwire-ignored-fields header.
    include: list[Label] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: Annotated[int, Field(ge=0)] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_retention: Label | None = None
    prompt_cache_options: dict[str, Any] | None = None
    background_options: dict[str, Any] | None = None
    # What tokenwire does not offer (yet): refused, saying why.
    tools: Annotated[None, refusing(TOOLS_LATER, [])] = None
    tool_choice: Annotated[None, refusing(TOOLS_LATER, "none", "auto")] = None
    conversation: Annotated[
        None, refusing("conversations are not offered: continue with previous_response_id")
    ] = None
    prompt: Annotated[None, refusing("prompt templates are not offered: send the input")] = None
    context_management: Annotated[None, refusing("context management is not offered")] = None
    moderation: Annotated[None, refusing("moderation is not offered")] = None
    access_programs: Annotated[None, refusing("access programs are not offered")] = None
    image: Annotated[None, refusing("image generation is not offered")] = None


class ResponseObject(BaseModel):
    """The Response object (the fields tokenwire fills; tools and reasoning are not offered)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    background: bool
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, Any]
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    tool_choice: str
    tools: list[Any]
    truncation: str
    usage: dict[str, Any] | None
    user: str | None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


class InputItemList(BaseModel):
    """A page of a response's input items, as OpenAI lists them."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


@router.post(
    "/v1/responses",
    response_model=ResponseObject,
    responses=STREAM_RESPONSE,
)
async def create_response(request: Request, body: ResponseCreateRequest) -> Response:
    gateway = gateway_of(request)
    user = user_of(request)
    _check_input(body)
    fields = _fields(body)
    if body.previous_response_id is not None:
        await _check_previous(gateway, user, body.previous_response_id)
    spec = with_client(_spec(gateway, body, fields, user, deadlines_of(request)), request)
    log = await gateway.start(spec)
    log.annotations["responses"] = _params(body)
    log.annotations["responses_input"] = _input_items(body)
    stream = ResponseStream(log)
    if body.background and not body.stream:
        # It runs on; GET it, or stream it, later.
        return JSONResponse(stream.response(), headers=fields.headers)
    feed = Feed()
    log.subscribe(feed)
    if body.stream:
        events = _events(gateway, log, feed, stream, after=-1, cancel_on_leave=not body.background)
        return EventStreamResponse(
            events,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **fields.headers},
            close_timeout=close_timeout_of(request),
        )
    async with cancelled_on_hangup(request, gateway, log.key):
        error: dict[str, Any] | None = None
        end: dict[str, Any] = {}
        async for record in feed:
            stream.feed(record)
            if record.event_type.value == "error":
                error = record.data
            elif record.event_type.value == "stream_end":
                end = record.data
    if stream.status in ("failed", "cancelled"):
        return openai_error(failure_of(end, error))
    return _whole(stream.response(), fields.headers)


@router.get(
    "/v1/responses/{response_id}",
    response_model=ResponseObject,
    responses=STREAM_RESPONSE,
)
async def retrieve_response(
    request: Request,
    response_id: str,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1, le=2**53)] = None,
) -> Response:
    gateway = gateway_of(request)
    log = await _stored(gateway, _key(request, response_id))
    if not stream:
        return _whole(replayed(log).response())
    feed = Feed()
    log.check_held(0)  # sequence numbers are counted from the log's first event
    log.attach(feed, log.records(0))
    after = -1 if starting_after is None else starting_after
    events = _events(gateway, log, feed, ResponseStream(log), after=after, cancel_on_leave=False)
    return EventStreamResponse(
        events,
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        close_timeout=close_timeout_of(request),
    )


@router.post("/v1/responses/{response_id}/cancel", response_model=ResponseObject)
async def cancel_response(request: Request, response_id: str) -> Response:
    gateway = gateway_of(request)
    log = await _stored(gateway, _key(request, response_id))
    if not log.annotations["responses"].get("background"):
        # As OpenAI answers: a foreground response is cancelled by closing its connection.
        raise InvalidRequest("Only responses created with background=true can be cancelled.")
    await _stopped(gateway, log)
    return _whole(replayed(log).response())


@router.delete("/v1/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(request: Request, response_id: str) -> DeletedResponse:
    """Forget a stored response (cancelled first if it still runs): afterwards it is a 404
    to retrieve, cancel, list or continue from."""
    gateway = gateway_of(request)
    log = await _stored(gateway, _key(request, response_id))
    await _stopped(gateway, log, "deleted by client")
    # Marked as well as dropped: the run's own end may still be storing it.
    log.annotations["responses"]["deleted"] = True
    await gateway.logs.discard(log.key)
    return DeletedResponse(id=log.key.request_id)


@router.get("/v1/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(
    request: Request,
    response_id: str,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=160)] = None,
) -> InputItemList:
    """The input items of a response (its own input, not instructions or earlier turns),
    newest first unless `order=asc`; `after` an item id, paged by `limit`."""
    log = await _stored(gateway_of(request), _key(request, response_id))
    items: list[dict[str, Any]] = log.annotations.get("responses_input", [])
    ordered = items if order == "asc" else items[::-1]
    ids = [item["id"] for item in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    page = ordered[start : start + limit]
    return InputItemList(
        data=page,
        first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None,
        has_more=start + limit < len(ordered),
    )


# -- internals ----------------------------------------------------------------


def _whole(response: dict[str, Any], headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A Response object as one JSON body, saying whether its usage was estimated."""
    return JSONResponse(response, headers={**usage_headers(response["usage"]), **(headers or {})})


def _check_input(body: ResponseCreateRequest) -> None:
    """An input with nothing to answer is refused, as an empty prompt is on the WebSocket."""
    if isinstance(body.input, str):
        if not body.input.strip():
            raise InvalidRequest("input: must contain more than whitespace")
        return
    if not any(_has_content(item.content) for item in body.input):
        raise InvalidRequest("input: at least one message must contain more than whitespace")


def _fields(body: ResponseCreateRequest) -> Fields:
    """The body's fields beyond the plain call: options, hints, and what is ignored."""
    text = body.text or TextConfig()
    fields = Fields()
    fields.option("verbosity", text.verbosity, "text.verbosity")
    reasoning = body.reasoning or Reasoning()
    fields.option("reasoning_effort", reasoning.effort, "reasoning.effort")
    for key in ("summary", "generate_summary", "context", "mode"):
        fields.ignore(f"reasoning.{key}", getattr(reasoning, key))
    for key in ("user", "service_tier", "safety_identifier", "prompt_cache_key"):
        fields.hint(key, getattr(body, key))
    for key in _IGNORED:
        fields.ignore(key, getattr(body, key))
    return fields


_IGNORED = (
    "include",
    "truncation",
    "top_logprobs",
    "parallel_tool_calls",
    "max_tool_calls",
    "stream_options",
    "prompt_cache_retention",
    "prompt_cache_options",
    "background_options",
)


def _spec(
    gateway: Gateway,
    body: ResponseCreateRequest,
    fields: Fields,
    user: str,
    deadlines: Deadlines,
) -> RequestSpec:
    request_id = f"resp_{uuid.uuid4().hex}"
    return RequestSpec(
        user_id=user,
        messages=_messages(body),
        request_id=request_id,
        # Kept as a conversation so that a later previous_response_id continues it.
        conversation_id=request_id if body.store else None,
        history_from=body.previous_response_id,
        generation=Generation(
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            response_format=from_responses(body.text.format if body.text else None, "text.format"),
            options=fields.options,
            hints=fields.hints,
            option_names=fields.names,
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _messages(body: ResponseCreateRequest) -> tuple[Message, ...]:
    turns: list[Message] = []
    if body.instructions:
        turns.append(Message(role="system", content=body.instructions))
    if isinstance(body.input, str):
        turns.append(Message(role="user", content=body.input))
        return tuple(turns)
    for i, item in enumerate(body.input):
        role = "system" if item.role == "developer" else item.role
        if isinstance(item.content, str):
            turns.append(Message(role=role, content=item.content))
        else:
            turns.append(_turn(role, item.content, f"input[{i}].content"))
    return tuple(turns)


def _input_items(body: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input as the message items `input_items` lists, each with its id."""
    if isinstance(body.input, str):
        return [_item("user", [{"type": "input_text", "text": body.input}])]
    items = []
    for message in body.input:
        content = message.content
        parts: list[dict[str, Any]]
        if isinstance(content, str):
            kind = "output_text" if message.role == "assistant" else "input_text"
            parts = [{"type": kind, "text": content}]
        else:
            parts = [_listed(part) for part in content]
        if message.role == "assistant":
            parts = [{"annotations": [], **part} for part in parts]
        items.append(_item(message.role, parts))
    return items


def _listed(part: InputText | InputImage) -> dict[str, Any]:
    listed = part.model_dump(exclude_none=True)
    # A data URL's bytes are not kept for the listing: each retained response would
    # hold up to `max_image_request_bytes` more, outside every bound on images.
    if isinstance(part, InputImage) and (part.image_url or "").startswith("data:"):
        listed["image_url"] = None
    return listed


def _item(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "type": "message",
        "role": role,
        "status": "completed",
        "content": content,
    }


def _turn(role: Role, content: list[InputText | InputImage], where: str) -> Message:
    parts: list[Part] = []
    for i, part in enumerate(content):
        if isinstance(part, InputText):
            parts.append(TextPart(part.text))
        else:
            assert part.image_url is not None  # the model's validator saw to it
            parts.append(image_from_url(part.image_url, f"{where}[{i}].image_url", part.detail))
    return turn_of_parts(role, tuple(parts), where)


def _text(content: str | list[InputText | InputImage]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, InputText))


def _has_content(content: str | list[InputText | InputImage]) -> bool:
    """More than whitespace, or an image to look at."""
    if not isinstance(content, str) and any(isinstance(p, InputImage) for p in content):
        return True
    return bool(_text(content).strip())


def _params(body: ResponseCreateRequest) -> dict[str, Any]:
    """What the Response object repeats of its request (kept with the log)."""
    return body.model_dump(
        include={
            "model",
            "instructions",
            "max_output_tokens",
            "temperature",
            "top_p",
            "background",
            "store",
            "previous_response_id",
            "metadata",
            "text",
        },
        by_alias=True,  # a format's `schema`, as the client wrote it
    )


def _key(request: Request, response_id: str) -> RequestKey:
    if valid_request_id(response_id) is None:
        raise UnknownRequest("no such response")
    return RequestKey(user_of(request), response_id)


async def _stored(gateway: Gateway, key: RequestKey) -> EventLog:
    """The user's response, if it exists, was stored and is not deleted; else
    `unknown_request` (404).

    The id is the client's input and is never echoed: the client knows what it sent.
    """
    log = await gateway.logs.get(key)
    params = log.annotations.get("responses") if log is not None else None
    if log is None or params is None or not params.get("store", True) or params.get("deleted"):
        raise UnknownRequest("no response with that id")
    return log


async def _stopped(gateway: Gateway, log: EventLog, reason: str = "cancelled by client") -> None:
    """Cancel a running response and wait for its end (milliseconds); a finished one as is."""
    if log.finished:
        return
    feed = Feed()
    log.attach(feed, ())
    cancel_quietly(gateway, log.key, reason)
    async for _ in feed:  # until its stream_end
        pass


async def _check_previous(gateway: Gateway, user: str, response_id: str) -> None:
    if valid_request_id(response_id) is None:
        raise UnknownRequest("previous_response_id: no response with that id")
    try:
        log = await _stored(gateway, RequestKey(user, response_id))
    except UnknownRequest:
        raise UnknownRequest("previous_response_id: no response with that id") from None
    if not log.finished:
        raise InvalidRequest("previous_response_id: that response is still in progress")


async def _events(
    gateway: Gateway,
    log: EventLog,
    feed: Feed,
    stream: ResponseStream,
    after: int,
    cancel_on_leave: bool,
) -> AsyncIterator[str]:
    try:
        async for record in feed:
            for event in stream.feed(record):
                if event["sequence_number"] > after:
                    yield f"event: {event['type']}\ndata: {encode_json(event)}\n\n"
        if feed.overflowed:
            failure = openai_error_body(InvalidRequest("the client did not read fast enough"))
            yield f"event: error\ndata: {encode_json(failure)}\n\n"
    finally:
        # A foreground response ends with its client; a background one runs on.
        if cancel_on_leave and not feed.ended:
            cancel_quietly(gateway, log.key)
