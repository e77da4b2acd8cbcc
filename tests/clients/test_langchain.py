"""LangChain's chat models against a real tokenwire server: `ChatOpenAI` on
/v1/chat/completions and `ChatAnthropic` on /v1/messages, streaming."""

from __future__ import annotations

from typing import Any

from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI

from tests.support.providers import WatchedProvider
from tests.support.server import gateway_with, running_server

TOKENS = 12


async def streamed(model: Any) -> tuple[list[AIMessageChunk], AIMessageChunk]:
    """The chunks of a stream of "hi", and the message they add up to."""
    chunks = [chunk async for chunk in model.astream("hi")]
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    return chunks, message


async def test_chat_openai_streams_the_text_and_the_usage() -> None:
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with running_server(gateway=gateway_with(provider)) as server:
        # LangChain asks for the usage chunk only from OpenAI's own URL unless told to.
        model = ChatOpenAI(
            base_url=server.url + "/v1",
            api_key="unused",
            model="simulated",
            stream_usage=True,
            max_retries=0,
        )
        whole = await model.ainvoke("hi")
        chunks, message = await streamed(model)
    texts = [c.content for c in chunks if c.content]
    assert len(texts) == TOKENS  # one chunk per delta: it streamed
    assert message.content == whole.content != ""
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == TOKENS
    assert message.usage_metadata["input_tokens"] >= 1
    assert message.response_metadata["finish_reason"] == "stop"


async def test_chat_anthropic_streams_the_text_and_the_usage() -> None:
    provider = WatchedProvider("simulated", tokens=TOKENS, delay_ms=1)
    async with running_server(gateway=gateway_with(provider)) as server:
        model = ChatAnthropic(
            base_url=server.url,
            api_key="unused",
            model="simulated",
            max_tokens=256,
            max_retries=0,
        )
        whole = await model.ainvoke("hi")
        chunks, message = await streamed(model)
    texts = [c.content for c in chunks if c.content]
    assert len(texts) == TOKENS
    assert message.text == whole.text != ""
    assert message.usage_metadata is not None
    assert message.usage_metadata["output_tokens"] == TOKENS
    assert message.usage_metadata["input_tokens"] >= 1
    assert message.response_metadata["stop_reason"] == "end_turn"
