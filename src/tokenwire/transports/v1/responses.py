"""OpenAI Responses: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`,
`.../cancel` and `.../input_items`.

Text and images in; text and function calls out (`function_call` items, answered
by `function_call_output` input items: response_input.py says how items become
turns). A foreground response ends with its client, as OpenAI's does;
a `background` one runs on after its client leaves, is kept for the log
retention time, and can be re-attached with `GET /v1/responses/{id}?stream=true
&starting_after=N` (every event after sequence number N, then live), for every
provider, the local model included. `previous_response_id` continues from a
stored response of the same user, as a conversation does. Only a background
response can be cancelled (a foreground one ends with its client); any stored one
can be deleted, which cancels it first if it still runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, model_validator
from starlette.responses import JSONResponse, Response

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.eventlog import EventLog
from tokenwire.core.gateway import Gateway
from tokenwire.core.provider import Message
from tokenwire.core.spec import Delivery, Generation, RequestKey, RequestSpec
from tokenwire.core.structured import from_responses
from tokenwire.core.tools import NamedTool, ToolChoice, ToolSpec
from tokenwire.protocol.errors import BackendUnavailable, InvalidRequest, UnknownRequest
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
from tokenwire.transports.v1.fields import (
    OPENAI_HINTS,
    Fields,
    FunctionParameters,
    Label,
    refusing,
)
from tokenwire.transports.v1.response_events import (
    ResponseStream,
    replayed,
    response_of_message,
)
from tokenwire.transports.v1.response_input import (
    Body,
    Input,
    InputItem,
    InputMessage,
    Item,
    ItemReference,
    ToolName,
    check_input,
    listed_items,
    turns_of,
    typed_items,
)
from tokenwire.transports.v1.route import OpenAIRoute
from tokenwire.transports.v1.running import (
    SSE_HEADERS,
    STREAM_RESPONSE,
    Feed,
    Text,
    cancel_quietly,
    cancelled_on_hangup,
    deadlines_of,
    failure_of,
    gateway_of,
    routing_for,
    usage_headers,
)

MAX_TOOLS = 128
# A copy of another node's log trails its owner by the owner's mirror (a batch, a few
# milliseconds): a client continuing a response at once on another node waits this long
# at most for the end its copy has not got yet, rather than be told it still runs.
REPLICA_LAG_SECONDS = 2.0
ONLY_FUNCTIONS = "only function tools are offered here (OpenAI's hosted tools are not)"

router = APIRouter(
    route_class=OpenAIRoute,
    tags=["OpenAI Responses"],
    responses=documented(OpenAIErrorBody),
)


class FunctionTool(Body):
    type: Literal["function"]
    name: ToolName
    description: Annotated[str, Field(max_length=100_000)] | None = None
    parameters: FunctionParameters | None = None
    strict: bool | None = None

    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description=self.description or "",
            parameters=self.parameters or {"type": "object"},
            strict=self.strict,
        )


class FunctionChoice(Body):
    type: Literal["function"]
    name: ToolName


class TextConfig(Body):
    format: ResponsesFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(Body):
    effort: Label | None = None
    summary: Label | None = None
    generate_summary: Label | None = None
    context: Label | None = None
    mode: Label | None = None


class ResponseCreateRequest(Body):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: Input
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
    max_tool_calls: Annotated[int, Field(ge=0)] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_retention: Label | None = None
    prompt_cache_options: dict[str, Any] | None = None
    background_options: dict[str, Any] | None = None
    # Function tools; OpenAI's own tools (web search, files, MCP...) are refused.
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["auto", "none", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    # What tokenwire does not offer: refused, saying why.
    conversation: Annotated[
        None, refusing("conversations are not offered: continue with previous_response_id")
    ] = None
    prompt: Annotated[None, refusing("prompt templates are not offered: send the input")] = None
    context_management: Annotated[None, refusing("context management is not offered")] = None
    moderation: Annotated[None, refusing("moderation is not offered")] = None
    access_programs: Annotated[None, refusing("access programs are not offered")] = None
    image: Annotated[None, refusing("image generation is not offered")] = None

    @model_validator(mode="before")
    @classmethod
    def _as_typed(cls, body: Any) -> Any:
        """Message items typed; OpenAI's hosted tools refused by name, not as an unknown
        shape."""
        if not isinstance(body, dict):
            return body
        body = {**body, "input": typed_items(body.get("input"))} if "input" in body else body
        tools = body.get("tools")
        # Anything but a list is the field validator's to refuse, in words.
        for i, tool in enumerate(tools if isinstance(tools, list) else ()):
            if isinstance(tool, dict) and tool.get("type", "function") != "function":
                raise ValueError(f"tools[{i}].type: {ONLY_FUNCTIONS}")
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type", "function") != "function":
            raise ValueError(f"tool_choice.type: {ONLY_FUNCTIONS}")
        return body

    @model_validator(mode="after")
    def _choice_among_tools(self) -> ResponseCreateRequest:
        names = [tool.name for tool in self.tools or ()]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tools[{i}].name: another tool has this name")
        choice = self.tool_choice
        if isinstance(choice, FunctionChoice) and choice.name not in names:
            raise ValueError("tool_choice.name: no tool of this name in tools")
        if choice == "required" and not names:
            raise ValueError('tool_choice: "required" needs tools')
        return self

    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec() for tool in self.tools or ())

    def choice(self) -> ToolChoice | None:
        choice = self.tool_choice
        return NamedTool(choice.name) if isinstance(choice, FunctionChoice) else choice


class ResponseObject(BaseModel):
    """The Response object (the fields tokenwire fills; reasoning is not offered)."""

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
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
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
    items = await _resolved(gateway, user, body.input)
    check_input(items)
    fields = _fields(body)
    calls_before: dict[str, str] = {}
    if body.previous_response_id is not None:
        calls_before = await _check_previous(gateway, user, body.previous_response_id)
    messages = turns_of(items, body.instructions, calls_before)
    spec = _spec(gateway, body, messages, fields, user, deadlines_of(request))
    log = await gateway.start(with_client(spec, request))
    log.annotate("responses", _params(body))
    log.annotate("responses_input", listed_items(items))
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
    log.annotate("responses", {**log.annotations["responses"], "deleted": True})
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


def _fields(body: ResponseCreateRequest) -> Fields:
    """The body's fields beyond the plain call: options, hints, and what is ignored."""
    text = body.text or TextConfig()
    fields = Fields()
    fields.option("verbosity", text.verbosity, "text.verbosity")
    reasoning = body.reasoning or Reasoning()
    fields.option("reasoning_effort", reasoning.effort, "reasoning.effort")
    for key in ("summary", "generate_summary", "context", "mode"):
        fields.ignore(f"reasoning.{key}", getattr(reasoning, key))
    for key in OPENAI_HINTS:
        fields.hint(key, getattr(body, key))
    for key in _IGNORED:
        fields.ignore(key, getattr(body, key))
    return fields


_IGNORED = (
    "include",
    "truncation",
    "top_logprobs",
    "max_tool_calls",
    "stream_options",
    "prompt_cache_retention",
    "prompt_cache_options",
    "background_options",
)


def _spec(
    gateway: Gateway,
    body: ResponseCreateRequest,
    messages: tuple[Message, ...],
    fields: Fields,
    user: str,
    deadlines: Deadlines,
) -> RequestSpec:
    request_id = f"resp_{uuid.uuid4().hex}"
    return RequestSpec(
        user_id=user,
        messages=messages,
        request_id=request_id,
        # Kept as a conversation so that a later previous_response_id continues it.
        conversation_id=request_id if body.store else None,
        history_from=body.previous_response_id,
        generation=Generation(
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            response_format=from_responses(body.text.format if body.text else None, "text.format"),
            tools=body.tool_specs(),
            tool_choice=body.choice(),
            parallel_tool_calls=body.parallel_tool_calls,
            options=fields.options,
            hints=fields.hints,
            option_names=fields.names,
        ),
        routing=routing_for(gateway, body.model),
        delivery=Delivery(granularity=Granularity.TOKEN, progress_every=0),
        deadlines=deadlines,
    )


def _params(body: ResponseCreateRequest) -> dict[str, Any]:
    """What the Response object repeats of its request (kept with the log)."""
    choice = body.tool_choice
    return {
        "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or ()],
        "tool_choice": choice.model_dump() if isinstance(choice, FunctionChoice) else choice,
        **body.model_dump(
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
                "parallel_tool_calls",
                "text",
            },
            by_alias=True,  # a format's `schema`, as the client wrote it
        ),
    }


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


async def caught_up(log: EventLog, within: float) -> None:
    """Until a copy of another node's log has its end, for `within` seconds at most; a log
    of this node, or one that ended, at once (its state is the owner's own)."""
    if log.finished or not log.replica:
        return
    feed = Feed()
    log.attach(feed, ())
    try:
        async with asyncio.timeout(within):
            async for _ in feed:  # until its stream_end
                pass
    except TimeoutError:
        pass
    finally:
        log.unsubscribe(feed)


async def _stopped(gateway: Gateway, log: EventLog, reason: str = "cancelled by client") -> None:
    """Cancel a running response, wherever it runs, and wait for its end (milliseconds); a
    finished one as is. `BackendUnavailable` if the node running it cannot be reached."""
    if log.finished:
        return
    feed = Feed()
    log.attach(feed, ())
    try:
        await gateway.cancel_anywhere(log.key, reason)
    except UnknownRequest:
        pass  # it ended meanwhile: its stream_end is on its way to the feed
    except BackendUnavailable:
        log.unsubscribe(feed)
        raise
    async for _ in feed:  # until its stream_end
        pass


async def _resolved(gateway: Gateway, user: str, items: str | list[InputItem]) -> str | list[Item]:
    """The input with each `item_reference` replaced by the item it names."""
    if isinstance(items, str):
        return items
    return [
        await _referenced(gateway, user, item, f"input[{i}].id")
        if isinstance(item, ItemReference)
        else item
        for i, item in enumerate(items)
    ]


async def _referenced(
    gateway: Gateway, user: str, reference: ItemReference, where: str
) -> InputMessage:
    """A message item of one of the user's stored responses (the only items whose id
    tells their response), as input."""
    missing = InvalidRequest(f"{where}: no message of a stored response has this id")
    response_id = response_of_message(reference.id)
    if response_id is None or valid_request_id(response_id) is None:
        raise missing
    try:
        log = await _stored(gateway, RequestKey(user, response_id))
    except UnknownRequest:
        raise missing from None
    for item in replayed(log).response()["output"]:
        if item["id"] == reference.id:
            return InputMessage.model_validate(item)
    raise missing


async def _check_previous(gateway: Gateway, user: str, response_id: str) -> dict[str, str]:
    """The calls (id to name) the previous response ended with: this one answers them."""
    if valid_request_id(response_id) is None:
        raise UnknownRequest("previous_response_id: no response with that id")
    try:
        log = await _stored(gateway, RequestKey(user, response_id))
    except UnknownRequest:
        raise UnknownRequest("previous_response_id: no response with that id") from None
    await caught_up(log, REPLICA_LAG_SECONDS)
    if not log.finished:
        raise InvalidRequest("previous_response_id: that response is still in progress")
    end = next(log.records(log.last_seq - 1)).data  # its stream_end: always held
    if end.get("status") != "completed" or end.get("finish_reason") != "tool_calls":
        return {}
    return {str(call["id"]): str(call["name"]) for call in end.get("tool_calls", ())}


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
            await cancel_quietly(gateway, log.key)
