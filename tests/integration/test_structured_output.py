"""Structured output on every way in: the WebSocket's `config.response_format`, Chat
Completions and Responses through the official openai SDK's `parse` helpers with a
pydantic model, Messages' `output_config.format`; and the answer's verdict at its end.

The simulated provider answers example JSON for the schema (providers/example_json.py);
`ignore_format` makes it answer words instead, which is an answer that misses its schema.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.support.server import (
    RunningServer,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)

FAST = {"delay_ms": 0}


class City(BaseModel):
    name: str
    population: int = Field(ge=0)
    districts: list[str]


CITY = City.model_json_schema()
CITY_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": CITY},
}


def settings() -> Any:
    return simulated_settings(
        providers=[{"name": "simulated", "kind": "simulated", "options": FAST}]
    )


def openai_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))


# -- the WebSocket -------------------------------------------------------------------


async def test_websocket_answer_is_json_of_the_schema_and_its_end_says_valid() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        frames = await client.ask("a city", config={"response_format": CITY_FORMAT})

    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["finish_reason"] == "stop"
    assert end["structured"] == {"valid": True}
    jsonschema.validate(json.loads(text_of(frames)), CITY)


async def test_websocket_answer_cut_by_max_tokens_is_reported_invalid_not_as_valid() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        frames = await client.ask(
            "a city", config={"response_format": CITY_FORMAT, "max_tokens": 2}
        )

    end = frames[-1]["data"]
    assert end["status"] == "completed"
    assert end["finish_reason"] == "length"
    assert end["structured"] == {
        "valid": False,
        "error": "the answer was cut at max_tokens before its JSON was complete",
    }


async def test_websocket_answer_that_misses_its_schema_ends_as_invalid_output() -> None:
    config = {"response_format": CITY_FORMAT, "options": {"ignore_format": True, "tokens": 3}}
    async with running_server(settings()) as server, ws_client(server) as client:
        frames = await client.ask("a city", config=config)

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "invalid_output"
    assert error["data"]["error"].startswith("the answer is not JSON")
    assert frames[-1]["data"]["status"] == "error"
    assert "structured" not in frames[-1]["data"]


async def test_websocket_refuses_a_schema_that_is_not_one_naming_the_field() -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "town"}}}
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(
            {"type": "ai_request", "prompt": "a city", "config": {"response_format": bad}}
        )
        error = await client.recv()

    assert error["event_type"] == "error"
    assert error["data"]["error_type"] == "invalid_request"
    assert error["data"]["error"].startswith(
        "config.response_format.json_schema.schema.type: not a valid JSON Schema"
    )


async def test_websocket_json_object_answers_an_object() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        frames = await client.ask("anything", config={"response_format": {"type": "json_object"}})

    assert frames[-1]["data"]["structured"] == {"valid": True}
    assert isinstance(json.loads(text_of(frames)), dict)


# -- the dialects, with the official SDKs ---------------------------------------------


async def test_chat_completions_parse_gives_the_pydantic_model() -> None:
    async with running_server(settings()) as server:
        completion = await openai_client(server).chat.completions.parse(
            model="simulated",
            messages=[{"role": "user", "content": "a city"}],
            response_format=City,
        )

    city = completion.choices[0].message.parsed
    assert isinstance(city, City)
    assert completion.choices[0].finish_reason == "stop"


async def test_chat_completions_stream_cut_by_length_keeps_finish_reason_length() -> None:
    async with running_server(settings()) as server:
        stream = await openai_client(server).chat.completions.create(
            model="simulated",
            messages=[{"role": "user", "content": "a city"}],
            response_format=CITY_FORMAT,  # type: ignore[arg-type]
            max_tokens=2,
            stream=True,
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]

    assert finishes[-1] == "length"


async def test_chat_completions_answer_that_misses_its_schema_is_an_error_not_a_completion() -> (
    None
):
    # The example JSON cannot meet a pattern (it does not know them): the answer misses.
    digits = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[0-9]+$"}},
        "required": ["code"],
    }
    async with running_server(settings()) as server, httpx.AsyncClient(timeout=30) as http:
        missed = await http.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "simulated",
                "messages": [{"role": "user", "content": "a code"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "c", "schema": digits},
                },
            },
        )

    assert missed.status_code == 502
    assert missed.json()["error"]["message"].startswith(
        "the answer does not match the schema at $.code: 'example' does not match"
    )


async def test_responses_parse_gives_the_pydantic_model() -> None:
    async with running_server(settings()) as server:
        response = await openai_client(server).responses.parse(
            model="simulated", input="a city", text_format=City
        )

    assert isinstance(response.output_parsed, City)
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"


async def test_responses_refuses_a_bad_schema_naming_text_format() -> None:
    async with running_server(settings()) as server, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            server.url + "/v1/responses",
            json={
                "model": "simulated",
                "input": "a city",
                "text": {"format": {"type": "json_schema", "name": "c", "schema": {"type": 7}}},
            },
        )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("text.format.schema.type: not a valid")


@pytest.mark.parametrize(
    ("path", "body", "field", "cut"),
    [
        (
            "/v1/chat/completions",
            {"max_tokens": 2, "response_format": CITY_FORMAT},
            "choices",
            "length",
        ),
        (
            "/v1/responses",
            {
                "max_output_tokens": 2,
                "text": {"format": {**CITY_FORMAT["json_schema"], "type": "json_schema"}},
            },
            "status",
            "incomplete",
        ),
        (
            "/v1/messages",
            {"max_tokens": 2, "output_config": {"format": {"type": "json_schema", "schema": CITY}}},
            "stop_reason",
            "max_tokens",
        ),
    ],
)
async def test_dialects_keep_the_length_signal_of_a_cut_structured_answer(
    path: str, body: dict[str, Any], field: str, cut: str
) -> None:
    prompt = (
        {"input": "a city"}
        if path == "/v1/responses"
        else {"messages": [{"role": "user", "content": "a city"}]}
    )
    async with running_server(settings()) as server, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(server.url + path, json={"model": "simulated", **prompt, **body})

    answer = response.json()
    assert response.status_code == 200
    got = answer["choices"][0]["finish_reason"] if field == "choices" else answer[field]
    assert got == cut


async def test_messages_output_config_format_answers_json_ending_end_turn() -> None:
    async with running_server(settings()) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)
        message = await client.messages.create(
            model="simulated",
            max_tokens=200,
            messages=[{"role": "user", "content": "a city"}],
            output_config={"format": {"type": "json_schema", "schema": CITY}},
        )

    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text"
    jsonschema.validate(json.loads(block.text), CITY)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": []},
                },
            },
        ),
        (
            "/v1/messages",
            {
                "max_tokens": 9,
                "messages": [{"role": "user", "content": "x"}],
                "output_config": {"format": {"type": "json_schema", "schema": {"minLength": -1}}},
            },
        ),
    ],
)
async def test_dialects_refuse_a_schema_that_is_not_one(path: str, body: dict[str, Any]) -> None:
    async with running_server(settings()) as server, httpx.AsyncClient(timeout=30) as http:
        response = await http.post(server.url + path, json={"model": "simulated", **body})

    assert response.status_code == 400
    assert "schema" in response.json()["error"]["message"]
