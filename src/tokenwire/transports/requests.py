"""The WebSocket protocol's `ai_request` as the core's dialect-free `RequestSpec`."""

from __future__ import annotations

from tokenwire.core.deadlines import Deadlines
from tokenwire.core.provider import Message
from tokenwire.core.spec import Delivery, Generation, RequestSpec, Routing
from tokenwire.protocol.messages import AiRequest


def spec_from_ai_request(message: AiRequest, user_id: str, origin: str | None) -> RequestSpec:
    turns = [Message(role=m.role, content=m.content) for m in message.messages or ()]
    if message.prompt is not None:
        turns.append(Message(role="user", content=message.prompt))
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
