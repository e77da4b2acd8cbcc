"""Client messages: parsing a text frame into a typed message or a typed error (no I/O).

Hostile input is expected here. JSON is decoded by orjson, which refuses `NaN`
and `Infinity`, numbers beyond a double and nesting past 1,024 levels without
recursing in Python; what it returns is then checked for depth without
recursion (`MAX_DEPTH`) before any model sees it. Every number a message may
carry has a finite range, and errors quote client input only as a short,
escaped excerpt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from tokenwire.protocol.errors import (
    InvalidJSON,
    InvalidMessage,
    InvalidRequest,
    TokenwireError,
    UnknownMessageType,
    excerpt,
)
from tokenwire.protocol.preferences import Preferences
from tokenwire.protocol.validation_words import problem, settled

# Deeper than any message of this protocol needs (an ai_request is four levels deep).
MAX_DEPTH = 32

MAX_TOKENS_LIMIT = 1_000_000
# The wire's own bound on any deadline a request asks for; the server's configured
# maximum (3,600 s by default) is checked where the request starts.
MAX_TIMEOUT_SECONDS = 86_400.0
MAX_PROGRESS_EVERY = 1_000_000
MAX_COST_LIMIT_USD = 1_000_000.0
# A credential in an `authenticate` message (longer ones are refused by the auth module too).
MAX_TOKEN_CHARS = 8 * 1024
# Tools a request may offer, and the size of each (OpenAI allows 128 tools too).
MAX_TOOLS = 128
MAX_TOOL_DESCRIPTION_CHARS = 8 * 1024
MAX_TOOL_PARAMETERS_BYTES = 64 * 1024
MAX_TOOL_RESULTS = 128
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# Call ids are tokenwire's own (`call_<hex>`); the bound only keeps hostile input short.
TOOL_CALL_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


class RoutingStrategy(StrEnum):
    INTELLIGENT = "intelligent"
    PERFORMANCE_BASED = "performance_based"
    COST_OPTIMIZED = "cost_optimized"
    RELIABILITY_BASED = "reliability_based"
    ROUND_ROBIN = "round_robin"


class Granularity(StrEnum):
    CHUNK = "chunk"
    TOKEN = "token"


class _Strict(BaseModel):
    # Strict: "5" is not a number and true is not 1; unknown keys are typos, not
    # extensions. Enum fields opt out of strictness so that JSON strings name them.
    # No infinities or NaN, whatever the decoder let through.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain more than whitespace")
    return text


NonBlank = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
RequestId = Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]
# Stop sequences as OpenAI bounds them (at most 4), shared by every dialect.
StopSequence = Annotated[str, Field(min_length=1, max_length=256)]
StopSequences = Annotated[list[StopSequence], Field(max_length=4)]
Seconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS)]


class ImageRef(_Strict):
    """An image: a data URL (`data:image/png;base64,...`) or an https URL."""

    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageContent(ImageRef):
    type: Literal["image"]


# Structural bound only; the configured limits (`max_images_per_request`) are lower.
MAX_PARTS = 1000
ContentPart = Annotated[TextContent | ImageContent, Field(discriminator="type")]


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[ContentPart], Field(min_length=1, max_length=MAX_PARTS)]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextContent))


def _tool_name(name: str) -> str:
    if not re.fullmatch(TOOL_NAME_PATTERN, name):
        raise ValueError("must be 1 to 64 letters, digits, '_' or '-'")
    return name


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema for a call's arguments: an object schema, of bounded size."""
    if schema.get("type") != "object":
        raise ValueError('must be a JSON Schema of "type": "object"')
    if "properties" in schema and not isinstance(schema["properties"], dict):
        raise ValueError("properties: expected an object")
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(r, str) for r in schema["required"])
    ):
        raise ValueError("required: expected a list of strings")
    if len(orjson.dumps(schema)) > MAX_TOOL_PARAMETERS_BYTES:
        raise ValueError(f"is larger than {MAX_TOOL_PARAMETERS_BYTES} bytes as JSON")
    return schema


ToolName = Annotated[str, AfterValidator(_tool_name)]


class ToolDefinition(_Strict):
    """A tool the model may call; `parameters` describes its arguments."""

    name: ToolName
    description: Annotated[str, Field(max_length=MAX_TOOL_DESCRIPTION_CHARS)] = ""
    parameters: Annotated[dict[str, Any], AfterValidator(_object_schema)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class NamedToolChoice(_Strict):
    name: ToolName


ToolChoiceField = Literal["auto", "none", "required"] | NamedToolChoice


class ToolResult(_Strict):
    """What a tool returned for one call of the conversation's last answer."""

    tool_call_id: Annotated[str, Field(pattern=TOOL_CALL_ID_PATTERN)]
    content: str
    is_error: bool = False


class RequestConfig(_Strict):
    # None: the server's `[routing] strategy`.
    routing_strategy: Annotated[RoutingStrategy, Field(strict=False)] | None = None
    speed_priority: bool = True
    reliability_priority: bool = False
    cost_limit: Annotated[float, Field(ge=0, le=MAX_COST_LIMIT_USD)] | None = None
    # Deadlines in seconds (None: the server's defaults): the whole request, each
    # provider's first token, the longest silence between tokens.
    timeout: Seconds | None = None
    first_token_timeout: Seconds | None = None
    silence_timeout: Seconds | None = None
    provider: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS_LIMIT)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: StopSequence | StopSequences | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class StreamConfig(_Strict):
    granularity: Annotated[Granularity, Field(strict=False)] = Granularity.CHUNK
    # 0 turns progress events off.
    progress_every: Annotated[int, Field(ge=0, le=MAX_PROGRESS_EVERY)] | None = None


class AiRequest(_Strict):
    type: Literal["ai_request"]
    prompt: NonBlank | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    images: Annotated[list[ImageRef], Field(min_length=1, max_length=MAX_PARTS)] | None = None
    """Images for the prompt (after its text), or for the last user message without one."""
    conversation_id: RequestId | None = None
    request_id: RequestId | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceField | None = None
    parallel_tool_calls: bool | None = None
    tool_results: (
        Annotated[list[ToolResult], Field(min_length=1, max_length=MAX_TOOL_RESULTS)] | None
    ) = None
    """The results of the calls of `conversation_id`'s last answer; `prompt` may then be
    absent."""
    config: RequestConfig = Field(default_factory=RequestConfig)
    stream_config: StreamConfig = Field(default_factory=StreamConfig)

    @model_validator(mode="after")
    def _needs_something_to_answer(self) -> AiRequest:
        if self.tool_results is None:
            if self.prompt is None and self.messages is None:
                raise ValueError(
                    "a non-empty 'prompt' (or 'messages', or 'tool_results') is required"
                )
            if self.prompt is None and not any(m.text.strip() for m in self.messages or ()):
                raise ValueError("messages: at least one must contain more than whitespace")
        if (
            self.images
            and self.prompt is None
            and not any(m.role == "user" for m in self.messages or ())
        ):
            raise ValueError("images: need a 'prompt' or a user message to go with")
        return self

    @model_validator(mode="after")
    def _tools_are_coherent(self) -> AiRequest:
        names = [tool.name for tool in self.tools or ()]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"tools[{i}].name: {name!r} is offered twice")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.name not in names:
            raise ValueError(f"tool_choice.name: {choice.name!r} is not one of 'tools'")
        if choice == "required" and not names:
            raise ValueError("tool_choice: 'required' needs 'tools'")
        return self

    @model_validator(mode="after")
    def _results_answer_a_conversation(self) -> AiRequest:
        if self.tool_results is None:
            return self
        if self.conversation_id is None:
            raise ValueError("tool_results: need the 'conversation_id' whose calls they answer")
        ids = [result.tool_call_id for result in self.tool_results]
        for i, call_id in enumerate(ids):
            if call_id in ids[:i]:
                raise ValueError(f"tool_results[{i}].tool_call_id: {call_id!r} is answered twice")
        return self


class CancelRequest(_Strict):
    type: Literal["cancel_request"]
    request_id: RequestId


class Resume(_Strict):
    """Re-attach to a request: its events after `last_seq`, then live ones."""

    type: Literal["resume"]
    request_id: RequestId
    last_seq: Annotated[int, Field(ge=0, le=2**53)] = 0
    compact: bool = False


class ListRequests(_Strict):
    type: Literal["list_requests"]


class UpdatePreferences(_Strict):
    type: Literal["update_preferences"]
    preferences: Preferences


class Ping(_Strict):
    type: Literal["ping"]
    # Echoed back as given: a short string or a finite number, nothing that grows.
    timestamp: float | Annotated[str, Field(max_length=64)] | None = None


class Authenticate(_Strict):
    """A fresh credential for an open connection, before the one it opened with expires."""

    type: Literal["authenticate"]
    token: Annotated[str, Field(min_length=1, max_length=MAX_TOKEN_CHARS)]


ClientMessage = (
    AiRequest | CancelRequest | Resume | ListRequests | UpdatePreferences | Ping | Authenticate
)

_MESSAGE_TYPES: dict[str, type[ClientMessage]] = {
    "ai_request": AiRequest,
    "cancel_request": CancelRequest,
    "resume": Resume,
    "list_requests": ListRequests,
    "update_preferences": UpdatePreferences,
    "ping": Ping,
    "authenticate": Authenticate,
}

# Content errors in these are the request's fault; in the others the message is malformed.
_REQUEST_MESSAGES = frozenset({"ai_request", "cancel_request", "resume"})


def parse_client_message(frame: str | bytes) -> ClientMessage:
    """Parse one frame, or raise the `TokenwireError` the client should see."""
    if isinstance(frame, bytes):
        raise InvalidMessage("binary frames are not accepted: send JSON text frames")
    return parse_message_object(decode_json(frame))


def parse_message_object(obj: Any) -> ClientMessage:
    """A decoded JSON value as a client message, or the typed error."""
    if not isinstance(obj, dict):
        raise InvalidMessage("a message must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("a message needs a string field 'type'")
    model = _MESSAGE_TYPES.get(kind)
    if model is None:
        known = ", ".join(sorted(_MESSAGE_TYPES))
        raise UnknownMessageType(f"unknown message type {excerpt(kind)}; expected one of: {known}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        error: TokenwireError
        if kind in _REQUEST_MESSAGES:
            error = InvalidRequest(describe_validation_error(exc, model=model))
        else:
            error = InvalidMessage(describe_validation_error(exc, model=model))
        error.request_id = valid_request_id(obj.get("request_id"))
        raise error from None


def decode_json(text: str, what: str = "frame") -> Any:
    """JSON text to Python values, or `InvalidJSON`; never recurses on the input's depth."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"{what} is not valid JSON: {_decode_problem(exc, text)}") from None
    check_depth(value, MAX_DEPTH)
    return value


def check_depth(value: Any, limit: int) -> None:
    """Raise `InvalidJSON` if containers nest deeper than `limit` (iteratively)."""
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    raise InvalidJSON(f"JSON nests deeper than {limit} levels")
                stack.append((child, depth + 1))


def valid_request_id(value: object) -> str | None:
    """`value` if it is a well-formed request id; an invalid one is never echoed."""
    if isinstance(value, str) and _REQUEST_ID.fullmatch(value):
        return value
    return None


_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.strip("^$"))


def _decode_problem(exc: orjson.JSONDecodeError, text: str) -> str:
    # orjson's message names the problem and its position, never the input's text.
    message = str(exc)
    if "depth limit" in message:
        return f"nests deeper than {MAX_DEPTH} levels"
    if text[exc.pos : exc.pos + 9].lstrip("-").startswith(("NaN", "Infinity")):
        return f"NaN and Infinity are not JSON numbers (at position {exc.pos})"
    return message[:200]


def describe_validation_error(exc: ValidationError, prefix: str = "", model: Any = None) -> str:
    """One part per problem, naming the field (under `prefix`); never echoes the input."""
    return describe_errors(
        exc.errors(include_input=False, include_url=False, include_context=False), prefix, model
    )


def describe_errors(errors: Sequence[Any], prefix: str = "", model: Any = None) -> str:
    """Pydantic's error list (a `ValidationError`'s, or FastAPI's) as one line, in words.

    Given the `model` validated, the labels pydantic adds to a location for the
    branches of a union (`constrained-str`, `list[TextPart]`, a discriminator's tag)
    are recognised and dropped; where every branch of a union refused the value's
    type, the problems become one ("must be a string or a list")."""
    problems = settled([problem(err, model) for err in errors])
    described = [p.describe(prefix) for p in problems]
    return "; ".join(dict.fromkeys(described[:8]))
