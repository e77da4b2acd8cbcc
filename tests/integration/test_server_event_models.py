"""The typed server events (protocol/server_events.py) are what the server really sends.

Streams of every kind run through a real server, and every frame that comes back
is validated against the models with undeclared fields refused: a field the server
starts sending without its model, or a model field of the wrong type, fails here.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.server import WsClient, running_server, ws_client
from tokenwire.protocol.server_events import (
    Chunk,
    ConnectionStatus,
    Metadata,
    Pong,
    ServerEvent,
    StreamEnd,
    parse_server_frame,
)
from tokenwire.settings import load_settings

PROVIDERS = [
    {"name": "primary", "kind": "simulated", "options": {"fail_after": 0}},
    {"name": "simulated", "kind": "simulated"},
]
SETTINGS = {"providers": PROVIDERS, "routing": {"default_provider": "primary", "max_retries": 0}}
QUICK = {"tokens": 6, "delay_ms": 0}


class StrictReader:
    """Reads a connection's frames, each validated with undeclared fields refused."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.seen: list[ServerEvent | Pong] = []

    async def send(self, message: Any) -> None:
        await self.client.send(message)

    async def next(self) -> ServerEvent | Pong:
        frame = await self.client.ws.recv()
        event = parse_server_frame(frame, strict_fields=True)
        assert json.loads(frame) == event.model_dump(mode="json", exclude_unset=True)
        self.seen.append(event)
        return event

    async def until_end(self) -> list[ServerEvent | Pong]:
        frames = [await self.next()]
        while not isinstance(frames[-1], StreamEnd):
            frames.append(await self.next())
        return frames

    async def ask(self, request_id: str, **fields: Any) -> StreamEnd:
        options = fields.pop("options", QUICK)
        config = {"provider": "simulated", "options": options, **fields.pop("config", {})}
        message = {"type": "ai_request", "request_id": request_id, "prompt": "tell me"}
        await self.send({**message, "config": config, **fields})
        end = (await self.until_end())[-1]
        assert isinstance(end, StreamEnd)
        return end

    async def refusal(self, message: Any) -> ServerEvent | Pong:
        await self.send(message)
        event = await self.next()
        assert isinstance(event, Pong) or event.seq is None
        return event


def kinds(seen: list[ServerEvent | Pong]) -> set[str]:
    out = {type(event).__name__ for event in seen}
    out |= {type(e.data).__name__ for e in seen if isinstance(e, ConnectionStatus | Metadata)}
    return out


async def test_every_frame_of_every_kind_of_stream_matches_the_models_exactly() -> None:
    async with (
        running_server(load_settings(None, SETTINGS)) as server,
        ws_client(server, "?user_id=tour") as first,
        ws_client(server, "?user_id=tour") as second,
    ):
        reader, other = StrictReader(first), StrictReader(second)
        reader.seen.append(parse_server_frame(json.dumps(first.hello), strict_fields=True))

        # First, while `primary` (which fails before any text) still ranks first.
        fallback = {"type": "ai_request", "request_id": "fallback", "prompt": "hi"}
        await reader.send({**fallback, "config": {"options": QUICK}})
        await reader.until_end()
        plain = await reader.ask("chunks", stream_config={"progress_every": 2})
        assert plain.data.finish_reason == "stop"
        await reader.ask("tokens", stream_config={"granularity": "token", "progress_every": 1})
        calls = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
        tools = await reader.ask("tools", options={**calls, "text_before": "Let me see", **QUICK})
        assert tools.data.tool_calls is not None
        failed = await reader.ask("fails", options={"fail_after": 2, **QUICK})
        assert failed.data.status == "error"
        silent = await reader.ask(
            "silent", options={"stall_after": 1, **QUICK}, config={"silence_timeout": 0.2}
        )
        assert silent.data.error_type == "timeout"
        structured = await reader.ask("json", config={"response_format": {"type": "json_object"}})
        assert structured.data.structured is not None
        cut = await reader.ask("cut", config={"max_tokens": 2})
        assert cut.data.finish_reason == "length"
        # The same prompt and options give the same words: stop at the first one.
        chunks = [e for e in reader.seen if isinstance(e, Chunk) and e.request_id == "chunks"]
        first_word = chunks[0].text.split()[0]
        stopped = await reader.ask(
            "stops", stream_config={"progress_every": 2}, config={"stop": [first_word]}
        )
        assert stopped.data.stop_sequence == first_word
        await reader.ask("turn-1", conversation_id="conv")

        await reader.send(
            {
                "type": "ai_request",
                "request_id": "long",
                "prompt": "tell me",
                "config": {"provider": "simulated", "options": {"tokens": 500, "delay_ms": 5}},
            }
        )
        while not isinstance(await reader.next(), Chunk):
            pass
        await reader.send({"type": "cancel_request", "request_id": "long"})
        ended = (await reader.until_end())[-1]
        assert isinstance(ended, StreamEnd)
        assert ended.data.status == "cancelled"

        await other.send({"type": "resume", "request_id": "chunks", "last_seq": 2})
        await other.until_end()
        await other.send({"type": "resume", "request_id": "tokens", "compact": True})
        await other.until_end()
        await other.send({"type": "resume", "request_id": "tools", "compact": True})
        await other.until_end()
        await other.refusal({"type": "list_requests"})
        await other.refusal({"type": "update_preferences", "preferences": {"theme": "dark"}})
        await other.refusal({"type": "ping", "timestamp": 12.5})
        await other.refusal({"type": "ping", "timestamp": "t-1"})
        await other.refusal(
            {
                "type": "ai_request",
                "request_id": "bad",
                "prompt": "hi",
                "config": {"provider": "nobody"},
            }
        )
        await other.refusal("{")
        await other.refusal({"type": "nothing"})
        await other.refusal({"type": "cancel_request", "request_id": "never"})

    seen = kinds(reader.seen + other.seen)
    every = {
        "ConnectionStatus", "StreamStart", "TypingIndicator", "Metadata", "Chunk", "Token",
        "Progress", "ToolCallStart", "ToolCallDelta", "ToolCallEnd", "Error", "StreamEnd",
        "Pong", "Connected", "RequestList", "PreferencesUpdated", "RoutingDecision", "Fallback",
    }  # fmt: skip
    assert seen == every, every ^ seen
    compacted = [e for e in other.seen if isinstance(e, Chunk) and e.data.compacted]
    assert compacted
    assert compacted[0].data.accumulated_length is None
