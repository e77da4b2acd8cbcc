"""The fake's hand-written event-stream encoder agrees with botocore's decoder.

botocore is used here only as a judge: if these pass, the fake puts real
ConverseStream frames on the wire.
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from tests.fakes import bedrock_eventstream as es


def _decode(data: bytes) -> list[tuple[dict[str, str], dict[str, object]]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(dict(message.headers), json.loads(message.payload)) for message in buffer]


def test_an_encoded_event_decodes_to_the_same_headers_and_payload() -> None:
    [(headers, payload)] = _decode(es.text_delta("héllo"))

    assert headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert payload["delta"] == {"text": "héllo"}
    assert payload["contentBlockIndex"] == 0


def test_the_prelude_carries_total_length_headers_length_and_its_crc() -> None:
    message = es.message_stop()

    total, headers_length, prelude_crc = struct.unpack(">III", message[:12])

    assert total == len(message)
    assert prelude_crc == zlib.crc32(message[:8])
    assert struct.unpack(">I", message[-4:])[0] == zlib.crc32(message[:-4])
    assert 0 < headers_length < total - 16


def test_a_whole_answer_decodes_in_bedrock_event_order() -> None:
    data = b"".join(es.full_answer(["a", "b"], input_tokens=3, output_tokens=2))

    kinds = [headers[":event-type"] for headers, _ in _decode(data)]

    assert kinds == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]


def test_an_exception_event_names_its_type_and_message() -> None:
    [(headers, payload)] = _decode(es.exception_event("throttlingException", "slow down"))

    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "throttlingException"
    assert payload == {"message": "slow down"}


def test_a_corrupted_byte_fails_the_message_checksum() -> None:
    message = bytearray(es.text_delta("abc"))
    message[-6] ^= 0xFF

    with pytest.raises(ChecksumMismatch):
        _decode(bytes(message))
