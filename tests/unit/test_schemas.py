"""The JSON Schemas in docs/schemas are generated from the code's models and current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tokenwire.protocol.events import EventType, encode_event, pong_frame
from tokenwire.protocol.schemas import DIRECTORY, rendered

ROOT = Path(__file__).parents[2]


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((ROOT / DIRECTORY / name).read_text()))


@pytest.mark.parametrize("name", sorted(rendered()))
def test_the_schema_file_is_what_the_models_give(name: str) -> None:
    path = ROOT / DIRECTORY / name
    assert path.exists(), f"{path} is missing: run python tools/schemas.py"
    assert path.read_text() == rendered()[name], f"{path} is stale: run python tools/schemas.py"


@pytest.mark.parametrize("name", sorted(rendered()))
def test_the_schema_is_a_valid_json_schema(name: str) -> None:
    Draft202012Validator.check_schema(json.loads(rendered()[name]))


def test_the_server_schema_takes_an_encoded_event_and_a_pong_and_refuses_a_bad_one() -> None:
    chunk = {"chunk": "Hi", "chunk_number": 1, "accumulated_length": 2}
    frame = encode_event(EventType.CHUNK, chunk, 1.5, "s-1", "r-1", 4)
    validator = schema("server-events.json")
    validator.validate(json.loads(frame))
    validator.validate(json.loads(pong_frame("t", 2.0)))
    bad: dict[str, Any] = {**json.loads(frame), "data": {**chunk, "chunk_number": "one"}}
    assert not validator.is_valid(bad)


def test_the_client_schema_takes_a_request_and_refuses_an_unknown_type() -> None:
    validator = schema("client-messages.json")
    validator.validate({"type": "ai_request", "prompt": "Hi", "config": {"max_tokens": 5}})
    validator.validate({"type": "resume", "request_id": "r-1", "last_seq": 3, "compact": True})
    assert not validator.is_valid({"type": "dance"})
