"""An image sent by each Python client (the `openai` and `anthropic` SDKs, LangChain's
chat models) reaches a provider that sees, in that provider's own format."""

from __future__ import annotations

import anthropic
import openai
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from tests.clients.seeing import (
    DESCRIPTION,
    PNG_BASE64,
    PNG_DATA_URL,
    PNG_SOURCE,
    Seeing,
    anthropic_image_sources,
    openai_image_urls,
)

QUESTION = "What is in this picture?"


def openai_sdk(seeing: Seeing) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=seeing.server.url + "/v1", api_key="unused", max_retries=0)


async def test_the_openai_sdk_sends_an_image_in_a_chat_completion(seeing: Seeing) -> None:
    content = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
    ]
    async with openai_sdk(seeing) as client:
        answer = await client.chat.completions.create(
            model="oa", messages=[{"role": "user", "content": content}]
        )
    exchange = await seeing.upstreams["oa"].exchange(0)
    assert answer.choices[0].message.content == DESCRIPTION
    assert openai_image_urls(exchange.json()) == [PNG_DATA_URL]


async def test_the_openai_sdk_sends_an_image_in_a_response(seeing: Seeing) -> None:
    content = [
        {"type": "input_text", "text": QUESTION},
        {"type": "input_image", "image_url": PNG_DATA_URL, "detail": "auto"},
    ]
    async with openai_sdk(seeing) as client:
        response = await client.responses.create(
            model="oa", input=[{"role": "user", "content": content}]
        )
    exchange = await seeing.upstreams["oa"].exchange(0)
    assert response.output_text == DESCRIPTION
    assert openai_image_urls(exchange.json()) == [PNG_DATA_URL]


async def test_the_anthropic_sdk_sends_an_image_block(seeing: Seeing) -> None:
    content = [{"type": "image", "source": PNG_SOURCE}, {"type": "text", "text": QUESTION}]
    async with anthropic.AsyncAnthropic(
        base_url=seeing.server.url, api_key="unused", max_retries=0
    ) as client:
        message = await client.messages.create(
            model="an", max_tokens=256, messages=[{"role": "user", "content": content}]
        )
    exchange = await seeing.upstreams["an"].exchange(0)
    assert message.content[0].text == DESCRIPTION
    assert anthropic_image_sources(exchange.json()) == [PNG_SOURCE]


LANGCHAIN_IMAGE = HumanMessage(
    content=[
        {"type": "text", "text": QUESTION},
        {"type": "image", "base64": PNG_BASE64, "mime_type": "image/png"},
    ]
)
"""An image in LangChain's own standard content blocks, which each chat model turns
into its API's format."""


async def test_langchain_chat_openai_sends_an_image(seeing: Seeing) -> None:
    model = ChatOpenAI(
        base_url=seeing.server.url + "/v1", api_key="unused", model="oa", max_retries=0
    )
    answer = await model.ainvoke([LANGCHAIN_IMAGE])
    exchange = await seeing.upstreams["oa"].exchange(0)
    assert answer.text == DESCRIPTION
    assert openai_image_urls(exchange.json()) == [PNG_DATA_URL]


async def test_langchain_chat_anthropic_sends_an_image(seeing: Seeing) -> None:
    model = ChatAnthropic(
        base_url=seeing.server.url, api_key="unused", model="an", max_tokens=256, max_retries=0
    )
    answer = await model.ainvoke([LANGCHAIN_IMAGE])
    exchange = await seeing.upstreams["an"].exchange(0)
    assert answer.text == DESCRIPTION
    assert anthropic_image_sources(exchange.json()) == [PNG_SOURCE]
