"""Structured output on the packaged local model: a grammar built from the schema makes
its answer JSON of the schema (the real model, so marked slow); a schema the grammar
cannot express is refused before the stream starts, never answered with plain JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.support.server import running_server, ws_client
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.core.tools import ResponseFormat
from tokenwire.providers.local import LocalProvider
from tokenwire.settings import ProviderSettings, load_settings

# One loaded model for the module, so one xdist worker for the module (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("local_model")

CITY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "country", "capital"],
    "additionalProperties": False,
}


class Capital(BaseModel):
    city: str
    country: str


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    local = LocalProvider(ProviderSettings(name="local", kind="local", options={"threads": 1}))
    yield local
    asyncio.run(local.aclose())


async def collect(provider: LocalProvider, request: ProviderRequest) -> list[ProviderEvent]:
    async with contextlib.aclosing(provider.stream(request)) as events:
        return [event async for event in events]


@pytest.mark.slow
async def test_the_answer_to_a_schema_parses_and_validates(provider: LocalProvider) -> None:
    request = ProviderRequest(
        messages=(Message("user", "Name the capital of France as JSON."),),
        max_tokens=96,
        response_format=ResponseFormat("json_schema", name="city", schema=CITY),
    )

    *deltas, usage = await collect(provider, request)

    assert isinstance(usage, Usage)
    assert usage.finish_reason == "stop"
    jsonschema.validate(json.loads("".join(str(d) for d in deltas)), CITY)


@pytest.mark.slow
async def test_json_object_answers_an_object(provider: LocalProvider) -> None:
    request = ProviderRequest(
        messages=(Message("user", "Describe a cat as JSON."),),
        max_tokens=96,
        response_format=ResponseFormat("json_object"),
    )

    *deltas, usage = await collect(provider, request)

    assert isinstance(usage, Usage)
    assert usage.finish_reason == "stop"
    assert isinstance(json.loads("".join(str(d) for d in deltas)), dict)


def local_server_settings() -> Any:
    return load_settings(
        None, {"providers": [{"name": "local", "kind": "local", "options": {"threads": 1}}]}
    )


@pytest.mark.slow
async def test_a_schema_the_grammar_cannot_express_is_refused_before_stream_start() -> None:
    bounded = {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900}}}
    config = {
        "provider": "local",
        "response_format": {"type": "json_schema", "json_schema": {"name": "y", "schema": bounded}},
    }
    async with running_server(local_server_settings()) as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": "a year", "config": config})
        first = await client.recv(timeout=60)

    assert first["event_type"] == "error"
    assert first["data"]["error_type"] == "unsupported_feature"
    assert first["data"]["error"] == (
        "schema.properties.year.minimum: the local model's grammar cannot express 'minimum'"
    )


@pytest.mark.slow
async def test_chat_completions_parse_against_the_local_model() -> None:
    async with running_server(local_server_settings()) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        completion = await client.chat.completions.parse(
            model="local",
            messages=[{"role": "user", "content": "The capital of France, as JSON."}],
            response_format=Capital,
            max_tokens=96,
        )

    assert isinstance(completion.choices[0].message.parsed, Capital)
