"""The AWS event-stream framing (application/vnd.amazon.eventstream), encoded by hand.

Written from the format itself, not with botocore, so that the fake upstream tests
the client's decoder rather than agreeing with it. One message is:

    total length (u32) | headers length (u32) | prelude CRC32 (u32)
    headers: name length (u8) | name | value type (u8, 7 = string) | value length (u16) | value
    payload
    message CRC32 (u32, over everything before it)

All integers are big-endian.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

_STRING = 7
# Bedrock pads every event with a "p" field so that payload lengths leak nothing.
_PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    encoded_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = 12 + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded_headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = head + encoded_headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _encode_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + struct.pack(">BH", _STRING, len(raw_value))
        + raw_value
    )


def event(event_type: str, body: dict[str, Any]) -> bytes:
    """A normal event, as ConverseStream sends it."""
    payload = json.dumps({**body, "p": _PADDING[: 1 + len(event_type) % 20]})
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        payload.encode(),
    )


def exception_event(exception_type: str, message: str) -> bytes:
    """An error sent inside a stream that has already started (HTTP 200 already sent)."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )


def message_start() -> bytes:
    return event("messageStart", {"role": "assistant"})


def text_delta(text: str, index: int = 0) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": text}})


def content_block_stop(index: int = 0) -> bytes:
    return event("contentBlockStop", {"contentBlockIndex": index})


def tool_use_start(index: int, tool_use_id: str, name: str) -> bytes:
    return event(
        "contentBlockStart",
        {
            "contentBlockIndex": index,
            "start": {"toolUse": {"toolUseId": tool_use_id, "name": name}},
        },
    )


def tool_use_delta(index: int, fragment: str) -> bytes:
    return event(
        "contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": fragment}}}
    )


def tool_use(index: int, tool_use_id: str, name: str, *fragments: str) -> list[bytes]:
    """A whole toolUse block: its start, its input fragments, its stop."""
    return [
        tool_use_start(index, tool_use_id, name),
        *(tool_use_delta(index, fragment) for fragment in fragments),
        content_block_stop(index),
    ]


def message_stop(reason: str = "end_turn") -> bytes:
    return event("messageStop", {"stopReason": reason})


def metadata(input_tokens: int, output_tokens: int) -> bytes:
    return event(
        "metadata",
        {
            "usage": {
                "inputTokens": input_tokens,
                "outputTokens": output_tokens,
                "totalTokens": input_tokens + output_tokens,
            },
            "metrics": {"latencyMs": 42},
        },
    )


def full_answer(deltas: list[str], input_tokens: int, output_tokens: int) -> list[bytes]:
    """Every event of a complete ConverseStream answer, in Bedrock's order."""
    return [
        message_start(),
        *(text_delta(text) for text in deltas),
        content_block_stop(),
        message_stop(),
        metadata(input_tokens, output_tokens),
    ]
