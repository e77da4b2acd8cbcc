"""Tool calls through LiteLLM's proxy, a real third-party gateway, as an upstream: the
OpenAI provider talks to the proxy, which forwards to a fake OpenAI upstream. LiteLLM
reshapes what it relays (it adds `type` to every fragment), so the calls are checked
as the assembled result the SDK's stream helper sees, not fragment by fragment."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

from tests.fakes.openai_upstream import (
    Exchange,
    Reply,
    ScriptedUpstream,
    call_fragment,
    calls,
    delta_frames,
)
from tests.support.litellm_proxy import MASTER_KEY, MODEL, LiteLLMProxy, running_litellm_proxy
from tests.support.server import RunningServer, running_server
from tokenwire.core.provider import Message, ProviderEvent, ProviderRequest, Usage
from tokenwire.core.tools import ToolCallDelta, ToolCallEnd, ToolCallPart, ToolResultPart, ToolSpec
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.settings import ProviderSettings, load_settings

# One proxy for the module (it takes about 10 s of CPU to start), so one xdist worker for
# the module (`--dist loadgroup`): spread test by test, each worker started its own.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.xdist_group("litellm_proxy"),
]

KEY_ENV = "TOKENWIRE_TEST_LITELLM_KEY"
WEATHER = ToolSpec(name="get_weather", parameters={"type": "object"})
ASK = (Message(role="user", content="weather in Paris and Rome?"),)
PARALLEL = delta_frames(
    [
        {"content": "Checking."},
        calls(call_fragment(0, id="up_a", name="get_weather")),
        calls(call_fragment(0, arguments='{"city":')),
        calls(call_fragment(1, id="up_b", name="get_weather", arguments='{"city":"Rome"}')),
        calls(call_fragment(0, arguments='"Paris"}')),
    ]
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(upstream: ScriptedUpstream) -> AsyncIterator[LiteLLMProxy]:
    async with running_litellm_proxy(upstream.url) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def provider(
    proxy: LiteLLMProxy, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OpenAIProvider]:
    monkeypatch.setenv(KEY_ENV, MASTER_KEY)
    made = OpenAIProvider(
        ProviderSettings(
            name="ll", kind="openai", model=MODEL, base_url=proxy.url, api_key_env=KEY_ENV
        )
    )
    yield made
    await made.aclose()


def last_chat(upstream: ScriptedUpstream) -> Exchange:
    return [e for e in upstream.exchanges if e.path == "/v1/chat/completions"][-1]


async def test_parallel_calls_relayed_by_litellm_assemble_to_the_upstreams_calls(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(frames=PARALLEL)

    events = [e async for e in provider.stream(ProviderRequest(ASK, tools=(WEATHER,)))]

    text = "".join(e for e in events if isinstance(e, str))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    arguments = {k: "".join(d.arguments for d in deltas if d.key == k) for k in (0, 1)}
    names = {d.key: d.name for d in deltas if d.name}
    assert text == "Checking."
    assert {k: json.loads(v) for k, v in arguments.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Rome"},
    }
    assert names == {0: "get_weather", 1: "get_weather"}
    assert [e for e in events if isinstance(e, ToolCallEnd)] == [ToolCallEnd(0), ToolCallEnd(1)]
    assert isinstance(events[-1], Usage)
    assert events[-1].finish_reason == "tool_calls"
    assert last_chat(upstream).json()["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]


async def test_a_tool_history_reaches_the_upstream_through_litellm(
    provider: OpenAIProvider, upstream: ScriptedUpstream
) -> None:
    upstream.reply = Reply(frames=delta_frames([{"content": "Sunny."}], finish_reason="stop"))
    history = (
        *ASK,
        Message.of_parts("assistant", (ToolCallPart("call_1", "get_weather", '{"city":"Paris"}'),)),
        Message.of_parts("tool", (ToolResultPart("call_1", "sunny"),)),
    )

    events: list[ProviderEvent] = [
        e async for e in provider.stream(ProviderRequest(history, tools=(WEATHER,)))
    ]

    assert events[0] == "Sunny."
    sent = last_chat(upstream).json()["messages"]
    assert sent[1]["tool_calls"][0]["id"] == "call_1"
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert {k: sent[2][k] for k in ("role", "tool_call_id", "content")} == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "sunny",
    }


async def test_the_sdk_stream_helper_reads_litellms_calls_through_tokenwire(
    proxy: LiteLLMProxy, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, MASTER_KEY)
    upstream.reply = Reply(frames=PARALLEL)
    provider = {
        "name": "ll",
        "kind": "openai",
        "model": MODEL,
        "base_url": proxy.url,
        "api_key_env": KEY_ENV,
    }
    settings = load_settings(None, {"providers": [provider]})
    async with running_server(settings, environ={KEY_ENV: MASTER_KEY}) as server:
        await _check_stream(server)


async def _check_stream(server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    try:
        async with client.chat.completions.stream(
            model="ll",
            messages=[{"role": "user", "content": "weather?"}],
            tools=[tool],  # type: ignore[list-item]
        ) as stream:
            async for _ in stream:
                pass
            completion = await stream.get_final_completion()
    finally:
        await client.close()
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls or []] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
