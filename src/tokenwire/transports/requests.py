"""The WebSocket protocol's `ai_request` as the core's dialect-free `RequestSpec`."""

from __future__ import annotations

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.images import image_from_url, turn_of_parts
from tokenwire.core.provider import Message, Part, TextPart
from tokenwire.core.spec import Delivery, Generation, RequestSpec, Routing
from tokenwire.core.tools import NamedTool, ToolChoice, ToolResultPart, ToolSpec
from tokenwire.protocol.errors import InvalidRequest
from tokenwire.protocol.messages import (
    AiRequest,
    ChatMessage,
    ImageRef,
    NamedToolChoice,
    TextContent,
    ToolChoiceField,
    ToolResult,
)


def spec_from_ai_request(message: AiRequest, user_id: str, origin: str | None) -> RequestSpec:
    """The request's turns in order; `InvalidRequest` for an image that is not one."""
    try:
        # Results answer the conversation's last answer, so they come before new turns.
        turns = [_results_turn(message.tool_results)] if message.tool_results else []
        turns += [_turn(m, f"messages[{i}].content") for i, m in enumerate(message.messages or ())]
        if message.prompt is not None:
            turns.append(Message(role="user", content=message.prompt))
        if message.images:
            turns = _with_images(turns, message.images)
    except InvalidRequest as exc:
        exc.request_id = message.request_id
        raise
    config = message.config
    return RequestSpec(
        user_id=user_id,
        messages=tuple(turns),
        request_id=message.request_id,
        conversation_id=message.conversation_id,
        generation=Generation(
            model=config.model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            stop=(config.stop,) if isinstance(config.stop, str) else tuple(config.stop or ()),
            tools=tuple(
                ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
                for t in message.tools or ()
            ),
            tool_choice=_tool_choice(message.tool_choice),
            parallel_tool_calls=message.parallel_tool_calls,
            options=config.options,
        ),
        routing=Routing(
            provider=config.provider,
            strategy=config.routing_strategy,
            speed_priority=config.speed_priority,
            reliability_priority=config.reliability_priority,
            cost_limit=config.cost_limit,
        ),
        delivery=Delivery(
            granularity=message.stream_config.granularity,
            progress_every=message.stream_config.progress_every,
        ),
        deadlines=Deadlines(
            request=config.timeout,
            first_token=config.first_token_timeout,
            silence=config.silence_timeout,
        ),
        origin=origin,
        prompt_length=len(message.prompt) if message.prompt is not None else None,
    )


def _turn(message: ChatMessage, where: str) -> Message:
    if isinstance(message.content, str):
        return Message(role=message.role, content=message.content)
    parts: list[Part] = []
    for i, part in enumerate(message.content):
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        else:
            parts.append(image_from_url(part.url, f"{where}[{i}]", part.detail))
    return turn_of_parts(message.role, tuple(parts), where)


def _results_turn(results: list[ToolResult]) -> Message:
    parts = tuple(ToolResultPart(r.tool_call_id, r.content, r.is_error) for r in results)
    return Message(role="tool", content="", parts=parts)


def _tool_choice(choice: ToolChoiceField | None) -> ToolChoice | None:
    if isinstance(choice, NamedToolChoice):
        return NamedTool(choice.name)
    return choice


def _with_images(turns: list[Message], images: list[ImageRef]) -> list[Message]:
    """`images` after the text of the last user turn (the prompt, where there is one)."""
    at = max(i for i, turn in enumerate(turns) if turn.role == "user")
    turn = turns[at]
    added = tuple(
        image_from_url(image.url, f"images[{i}]", image.detail) for i, image in enumerate(images)
    )
    turns[at] = Message.of_parts(turn.role, (*turn.content_parts(), *added))
    return turns
