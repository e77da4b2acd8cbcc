"""The benchmarks' fake upstream (bench/fast_upstream.py) speaks what the official SDKs parse.

`make bench` measures tokenwire's providers against it: if the SDKs stopped reading its
streams, the benchmark would measure errors. No timing is checked here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from fast_upstream import Upstream, token_text

TOKENS = 4
ANSWER = "".join(token_text(i) for i in range(TOKENS))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(tokens=TOKENS, gap_ms=1.0)
    yield server
    server.stop()


async def test_openai_sdk_reads_the_stream_its_usage_and_the_next_on_the_same_connection(
    upstream: Upstream,
) -> None:
    client = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        for _ in range(2):  # keep-alive: the second request follows on the same connection
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text, usage, finish = "", None, None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            assert text == ANSWER
            assert finish == "stop"
            assert usage is not None
            assert usage.completion_tokens == TOKENS


async def test_openai_stream_helper_builds_the_final_completion(upstream: Upstream) -> None:
    client = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="unused", max_retries=0)
    async with (
        client,
        client.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER


async def test_anthropic_sdk_builds_the_final_message(upstream: Upstream) -> None:
    client = anthropic.AsyncAnthropic(base_url=upstream.url, api_key="unused", max_retries=0)
    async with (
        client,
        client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == TOKENS


async def test_a_lower_token_limit_cuts_the_answer_as_a_model_stops(upstream: Upstream) -> None:
    client = openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        for limit in (2, 100):
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                max_tokens=limit,
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "".join(token_text(i) for i in range(min(limit, TOKENS)))
