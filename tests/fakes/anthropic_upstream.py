"""The Anthropic Messages streaming wire format, for the scripted upstream.

Events as the API sends them: `message_start`, `content_block_start`, `ping`,
`content_block_delta` (text_delta) ..., `content_block_stop`, `message_delta`
(stop_reason, cumulative usage.output_tokens), `message_stop`; each one an SSE
frame with both an `event:` and a `data:` line.

An answer of several blocks (`blocks_answer`) mixes `text_block`s and `tool_block`s
as Anthropic streams them: each `tool_use` block opens with `input: {}`, its input
arrives as `input_json_delta` fragments (the first one empty, as the API sends it),
and `stop_reason` is `tool_use`. Like the API, the fake refuses `tool_use` or
`tool_result` blocks in a request that defines no tools.

`messages_api` answers both of the API's message endpoints by path: `POST
/v1/messages/count_tokens` with `{"input_tokens": N}` (the fake's own count, see
`fake_token_count`) and `POST /v1/messages` with the answer it is given.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.fakes.openai_upstream import Exchange, Reply, ReplyScript

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(frozen=True)
class Block:
    """One content block of a scripted answer: text deltas, or a tool call's fragments."""

    deltas: tuple[str, ...]
    tool: tuple[str, str] | None = None  # (id, name) of a tool_use block


def text_block(*deltas: str) -> Block:
    return Block(deltas)


def tool_block(call_id: str, name: str, *fragments: str) -> Block:
    """A tool_use block; its fragments follow the empty one the API sends first."""
    return Block(("", *fragments), (call_id, name))


def block_frames(index: int, block: Block) -> list[bytes]:
    """One block: its start, its deltas, its stop."""
    if block.tool is None:
        opened: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": t} for t in block.deltas]
    else:
        call_id, name = block.tool
        opened = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in block.deltas]
    frames = [
        sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opened},
        )
    ]
    frames += [
        sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
        )
        for d in deltas
    ]
    frames.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return frames


def blocks_frames(
    blocks: Sequence[Block], output_tokens: int = 9, *, stop_reason: str | None = None
) -> list[bytes]:
    """A whole streamed answer of these blocks, ending with `message_stop`; its stop
    reason is `tool_use` where it calls a tool, else `end_turn`, unless given."""
    calls = any(block.tool is not None for block in blocks)
    reason = stop_reason or ("tool_use" if calls else "end_turn")
    whole = message_frames([], 5, output_tokens, stop_reason=reason)
    frames = whole[:1]
    for index, block in enumerate(blocks):
        frames += block_frames(index, block)
    return frames + whole[-2:]


def blocks_answer(blocks: Sequence[Block], **reply: Any) -> Reply:
    return Reply(frames=blocks_frames(blocks), **reply)


def message_frames(
    deltas: Sequence[str],
    input_tokens: int,
    output_tokens: int,
    *,
    model: str = "m",
    stop_reason: str = "end_turn",
    stop_sequence: str | None = None,
) -> list[bytes]:
    """A whole streamed answer, ending with `message_stop`."""
    message: dict[str, Any] = {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
            "service_tier": "standard",
        },
    }
    frames = [
        sse_event("message_start", {"type": "message_start", "message": message}),
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse_event("ping", {"type": "ping"}),
    ]
    frames += [
        sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in deltas
    ]
    frames += [
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    ]
    return frames


def anthropic_answer(
    deltas: Sequence[str], input_tokens: int, output_tokens: int, **reply: Any
) -> Reply:
    return Reply(frames=message_frames(deltas, input_tokens, output_tokens), **reply)


def anthropic_error(
    status: int, message: str, error_type: str, headers: dict[str, str] | None = None
) -> Reply:
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return Reply(
        status=status,
        headers={"content-type": "application/json", "request-id": "req_fake", **(headers or {})},
        body=json.dumps(body).encode(),
    )


def overloaded_mid_stream(deltas: Sequence[str]) -> Reply:
    """Some text, then the `error` event Anthropic sends when it is overloaded mid-answer."""
    frames = message_frames(deltas, 5, 1)[: 3 + len(deltas)]
    frames.append(
        sse_event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    return Reply(frames=frames)


def fake_token_count(body: dict[str, Any]) -> int:
    """A count that depends on every part of a count_tokens body (not Anthropic's
    tokenizer): a token per word of the system prompt and of each message, and 4 per
    message for its role."""
    system = body.get("system") or ""
    texts = [system] if isinstance(system, str) else [block["text"] for block in system]
    for message in body["messages"]:
        content = message["content"]
        texts += [content] if isinstance(content, str) else [b.get("text", "") for b in content]
    return sum(len(text.split()) for text in texts) + 4 * len(body["messages"])


def _tool_blocks_without_tools(body: dict[str, Any]) -> bool:
    blocks = [
        block
        for message in body.get("messages", [])
        if isinstance(message["content"], list)
        for block in message["content"]
    ]
    in_use = any(block.get("type") in ("tool_use", "tool_result") for block in blocks)
    return in_use and not body.get("tools")


def messages_api(answer: ReplyScript) -> ReplyScript:
    """Count tokens at the count_tokens path; answer with `answer` elsewhere."""

    def reply(exchange: Exchange) -> Reply:
        if _tool_blocks_without_tools(exchange.json()):
            return anthropic_error(
                400,
                "Requests which include `tool_use` or `tool_result` blocks must define tools.",
                "invalid_request_error",
            )
        if exchange.path == COUNT_TOKENS_PATH:
            count = {"input_tokens": fake_token_count(exchange.json())}
            return Reply(
                headers={"content-type": "application/json", "request-id": "req_fake"},
                body=json.dumps(count).encode(),
            )
        return answer(exchange) if callable(answer) else answer

    return reply
