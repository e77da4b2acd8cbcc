"""A bedrock-backed answer through the real WebSocket server to a real client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.fakes import bedrock_eventstream as es
from tests.fakes.bedrock_server import (
    FakeBedrock,
    Reply,
)
from tests.support.server import RunningServer, of_type, running_server, ws_client
from tests.support.waiting import AT_ONCE
from tokenwire.settings import load_settings

# Every test here runs with fake AWS keys in the environment (see conftest.py).
pytestmark = pytest.mark.usefixtures("aws_credentials")


@pytest.fixture
async def server(fake: FakeBedrock) -> AsyncIterator[RunningServer]:
    settings = load_settings(
        None,
        {
            "providers": [
                {
                    "name": "br",
                    "kind": "bedrock",
                    "model": "anthropic.claude-test",
                    "base_url": fake.url,
                    "options": {"region": "us-east-1"},
                }
            ]
        },
    )
    async with running_server(settings) as running:
        yield running


async def test_a_bedrock_answer_streams_to_completion_with_upstream_usage(
    fake: FakeBedrock, server: RunningServer
) -> None:
    fake.script(Reply.answer(["Hello", ", ", "world"], input_tokens=9, output_tokens=3))

    async with ws_client(server) as client:
        frames = await client.ask("hello", stream_config={"granularity": "token"})

    tokens = [f["data"]["token"] for f in of_type(frames, "token")]
    end = frames[-1]["data"]
    assert tokens == ["Hello", ", ", "world"]
    assert end["status"] == "completed"
    assert end["provider_used"] == "br"
    assert end["model"] == "anthropic.claude-test"
    assert end["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "estimated": False,
    }


async def test_a_truncated_bedrock_stream_ends_as_a_provider_error(
    fake: FakeBedrock, server: RunningServer
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("half")], then="drop"))

    async with ws_client(server) as client:
        frames = await client.ask("hello")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "provider_error"
    assert frames[-1]["data"]["status"] == "error"


async def test_bedrock_throttling_reaches_the_client_as_rate_limited(
    fake: FakeBedrock, server: RunningServer
) -> None:
    fake.script(Reply.error(429, "ThrottlingException", "Too many requests", {"Retry-After": "2"}))

    async with ws_client(server) as client:
        frames = await client.ask("hello")

    [error] = of_type(frames, "error")
    assert error["data"]["error_type"] == "rate_limited"
    assert error["data"]["retry_after"] == 2.0


async def test_cancel_request_closes_the_upstream_connection_at_once(
    fake: FakeBedrock, server: RunningServer
) -> None:
    fake.script(Reply(events=[es.message_start(), es.text_delta("first")], then="stall"))

    async with ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "hello",
                "request_id": "r1",
                "stream_config": {"granularity": "token"},
            }
        )
        while (await client.recv())["event_type"] != "token":
            pass
        # The upstream stalls for ever: only the cancel can close the connection
        await client.send({"type": "cancel_request", "request_id": "r1"})
        frames = await client.until_end("r1")

        connection = fake.requests[-1].connection
        await asyncio.wait_for(connection.closed.wait(), AT_ONCE)

    assert frames[-1]["data"]["status"] == "cancelled"
    assert connection.closed_by_client
