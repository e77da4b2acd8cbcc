"""The official APIs' request fields: passed on to the providers that honour them, in the
upstream's own format, ignored (and named in `tokenwire-ignored-fields`), or refused
naming the field and why. The official SDKs are the clients; fake upstreams record
what arrives."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import anthropic_answer, message_frames
from tests.fakes.openai_upstream import Reply, ScriptedUpstream, openai_answer
from tests.support.server import RunningServer, running_server, simulated_settings, ws_client
from tokenwire.settings import load_settings

HI = [{"role": "user", "content": "hi"}]
IGNORED = "tokenwire-ignored-fields"


@contextlib.asynccontextmanager
async def serving(kind: str) -> AsyncIterator[tuple[ScriptedUpstream, RunningServer]]:
    """tokenwire with one hosted provider (named after its kind) on a fake upstream,
    and the simulated one."""
    async with ScriptedUpstream() as upstream:
        suffix = "/v1" if kind == "openai" else ""
        providers = [
            {"name": kind, "kind": kind, "model": "m", "base_url": upstream.url + suffix},
            {"name": "simulated", "kind": "simulated", "options": {"delay_ms": 0}},
        ]
        async with running_server(load_settings(None, {"providers": providers})) as server:
            yield upstream, server


def openai_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def anthropic_client(server: RunningServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0)


async def post(server: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(server.url + path, json=body)


def openai_message(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


def anthropic_message(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


# -- passed on ------------------------------------------------------------------------

CHAT_SAMPLING: dict[str, Any] = {
    "seed": 7,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.25,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "top_logprobs": 3,
    "service_tier": "flex",
    "user": "end-user-1",
    "reasoning_effort": "low",
}


async def test_chat_sampling_fields_reach_an_openai_upstream_unchanged() -> None:
    async with serving("openai") as (upstream, server):
        upstream.reply = openai_answer(["Hello"], 3, 1)
        async with openai_client(server) as client:
            answer = await client.chat.completions.create(
                model="openai", messages=HI, **CHAT_SAMPLING
            )
        sent = (await upstream.exchange()).json()

    assert answer.choices[0].message.content == "Hello"
    assert {key: sent.get(key) for key in CHAT_SAMPLING} == CHAT_SAMPLING


async def test_responses_fields_reach_an_openai_upstream_in_chat_terms() -> None:
    async with serving("openai") as (upstream, server):
        upstream.reply = openai_answer(["Hello"], 3, 1)
        async with openai_client(server) as client:
            response = await client.responses.with_raw_response.create(
                model="openai",
                input="hi",
                user="end-user-2",
                reasoning={"effort": "high"},
                text={"format": {"type": "text"}, "verbosity": "low"},
                safety_identifier="hashed-id",
                prompt_cache_key="k1",
                truncation="auto",
                include=["message.output_text.logprobs"],
            )
        sent = (await upstream.exchange()).json()

    assert response.parse().output_text == "Hello"
    assert response.headers[IGNORED] == "include, truncation"
    assert sent["user"] == "end-user-2"
    assert sent["reasoning_effort"] == "high"
    assert sent["verbosity"] == "low"
    assert sent["safety_identifier"] == "hashed-id"
    assert sent["prompt_cache_key"] == "k1"
    assert "include" not in sent
    assert "truncation" not in sent


async def test_messages_fields_and_cache_control_blocks_reach_an_anthropic_upstream() -> None:
    cached = {"type": "ephemeral"}
    system = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "A long shared preamble.", "cache_control": cached},
    ]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "A long document.", "cache_control": cached},
                {"type": "text", "text": "Summarise it."},
            ],
        }
    ]
    async with serving("anthropic") as (upstream, server):
        upstream.reply = anthropic_answer(["Short."], 9, 2)
        async with anthropic_client(server) as client:
            answer = await client.messages.create(
                model="anthropic",
                max_tokens=2000,
                system=system,  # type: ignore[arg-type]
                messages=messages,  # type: ignore[arg-type]
                thinking={"type": "enabled", "budget_tokens": 1024},
                service_tier="standard_only",
                cache_control={"type": "ephemeral", "ttl": "1h"},
                metadata={"user_id": "u-1"},
                extra_body={"top_k": 5},
            )
        sent = (await upstream.exchange()).json()

    assert answer.content[0].text == "Short."  # type: ignore[union-attr]
    assert sent["system"] == system
    assert sent["messages"] == messages
    assert sent["top_k"] == 5
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["service_tier"] == "standard_only"
    assert sent["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert sent["metadata"] == {"user_id": "u-1"}


async def test_hints_are_dropped_where_the_provider_takes_none() -> None:
    async with serving("openai") as (_, server), openai_client(server) as client:
        answer = await client.chat.completions.create(
            model="simulated", messages=HI, max_tokens=3, user="u", service_tier="auto"
        )
    assert answer.choices[0].finish_reason == "length"


# -- refused, naming the field and the provider ---------------------------------------


async def test_an_option_the_chosen_provider_cannot_honour_is_refused_naming_both() -> None:
    async with serving("openai") as (_, server):
        seeded = await post(
            server, "/v1/chat/completions", {"model": "simulated", "messages": HI, "seed": 1}
        )
        thinking = await post(
            server,
            "/v1/messages",
            {
                "model": "openai",
                "max_tokens": 10,
                "messages": HI,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
        )
        effort = await post(
            server,
            "/v1/responses",
            {"model": "simulated", "input": "hi", "reasoning": {"effort": "low"}},
        )

    assert seeded.status_code == 400
    assert openai_message(seeded) == "seed: provider 'simulated' (kind simulated) cannot honour it"
    assert thinking.status_code == 400
    assert anthropic_message(thinking) == (
        "thinking: provider 'openai' (kind openai) cannot honour it"
    )
    assert effort.status_code == 400
    assert openai_message(effort) == (
        "reasoning.effort: provider 'simulated' (kind simulated) cannot honour it"
    )


@pytest.mark.parametrize(
    ("path", "fields", "expected"),
    [
        (
            "/v1/chat/completions",
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools: tool calls are not supported yet",
        ),
        (
            "/v1/chat/completions",
            {"response_format": {"type": "json_object"}},
            "response_format: structured output is not supported yet",
        ),
        (
            "/v1/chat/completions",
            {"web_search_options": {}},
            "web_search_options: web search is not offered",
        ),
        (
            "/v1/responses",
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}},
            "text.format: structured output is not supported yet",
        ),
        (
            "/v1/responses",
            {"conversation": "conv_1"},
            "conversation: conversations are not offered: continue with previous_response_id",
        ),
        (
            "/v1/messages",
            {"container": "container_1"},
            "container: code execution containers are not offered",
        ),
        (
            "/v1/messages",
            {"output_config": {"format": {"type": "json_schema", "schema": {}}}},
            "output_config.format: structured output is not supported yet",
        ),
    ],
)
async def test_what_tokenwire_does_not_offer_is_refused_saying_why(
    path: str, fields: dict[str, Any], expected: str
) -> None:
    base: dict[str, Any] = {
        "/v1/chat/completions": {"model": "simulated", "messages": HI},
        "/v1/responses": {"model": "simulated", "input": "hi"},
        "/v1/messages": {"model": "simulated", "max_tokens": 10, "messages": HI},
    }[path]
    async with running_server(simulated_settings()) as server:
        response = await post(server, path, {**base, **fields})
    assert response.status_code == 400
    # Refused by the body's model: the wording of where ("body.") is part C's.
    assert response.json()["error"]["message"].endswith(expected)


async def test_a_key_no_official_api_defines_stays_an_unknown_key() -> None:
    async with running_server(simulated_settings()) as server:
        response = await post(
            server,
            "/v1/chat/completions",
            {"model": "simulated", "messages": HI, "top_k": 3},
        )
    assert response.status_code == 400
    assert openai_message(response).endswith("top_k: unknown key")  # C may drop "body."


# -- ignored, and named ---------------------------------------------------------------


async def test_ignored_fields_are_named_in_a_header_streaming_or_not() -> None:
    fields = {"store": True, "metadata": {"a": "b"}, "parallel_tool_calls": False}
    async with running_server(simulated_settings()) as server, openai_client(server) as client:
        whole = await client.chat.completions.with_raw_response.create(
            model="simulated", messages=HI, max_tokens=2, **fields
        )
        async with client.chat.completions.with_streaming_response.create(
            model="simulated", messages=HI, max_tokens=2, stream=True, **fields
        ) as streamed:
            streamed_header = streamed.headers[IGNORED]
            await streamed.read()
        plain = await client.chat.completions.with_raw_response.create(
            model="simulated", messages=HI, max_tokens=2
        )
    assert whole.headers[IGNORED] == "metadata, store, parallel_tool_calls"
    assert streamed_header == "metadata, store, parallel_tool_calls"
    assert IGNORED not in plain.headers


async def test_a_default_text_format_and_a_disabled_thinking_ask_for_nothing() -> None:
    async with running_server(simulated_settings()) as server:
        async with openai_client(server) as client:
            response = await client.responses.with_raw_response.create(
                model="simulated",
                input="hi",
                max_output_tokens=2,
                text={"format": {"type": "text"}},
            )
        async with anthropic_client(server) as client_a:
            message = await client_a.messages.create(
                model="simulated", max_tokens=2, messages=HI, thinking={"type": "disabled"}
            )
    assert response.parse().status == "incomplete"
    assert IGNORED not in response.headers
    assert message.stop_reason == "max_tokens"


# -- the dialects' smaller points -----------------------------------------------------


@pytest.mark.parametrize("given", ["", "   \n", [{"role": "user", "content": " "}]])
async def test_a_responses_input_with_nothing_to_answer_is_refused(given: Any) -> None:
    async with running_server(simulated_settings()) as server:
        response = await post(server, "/v1/responses", {"model": "simulated", "input": given})
    assert response.status_code == 400
    assert openai_message(response).startswith("input: ")


@pytest.mark.parametrize("previous", ["resp_<script>alert(1)</script>", "resp_missing0123"])
async def test_an_unknown_previous_response_id_is_not_echoed(previous: str) -> None:
    async with running_server(simulated_settings()) as server:
        response = await post(
            server,
            "/v1/responses",
            {"model": "simulated", "input": "hi", "previous_response_id": previous},
        )
    assert response.status_code == 404
    assert previous not in response.text
    assert openai_message(response) == "previous_response_id: no response with that id"


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            "messages: text content blocks must be non-empty",
        ),
        (
            [{"role": "user", "content": ""}],
            "messages: all messages must have non-empty content except for the optional"
            " final assistant message",
        ),
        (
            [{"role": "user", "content": []}, {"role": "user", "content": "hi"}],
            "messages: all messages must have non-empty content except for the optional"
            " final assistant message",
        ),
    ],
)
async def test_messages_with_empty_text_are_refused_as_anthropic_refuses_them(
    messages: list[dict[str, Any]], expected: str
) -> None:
    async with running_server(simulated_settings()) as server:
        response = await post(
            server, "/v1/messages", {"model": "simulated", "max_tokens": 5, "messages": messages}
        )
    assert response.status_code == 400
    assert anthropic_message(response) == expected


async def test_a_final_empty_assistant_turn_is_taken() -> None:
    turns = [*HI, {"role": "assistant", "content": ""}]
    async with running_server(simulated_settings()) as server:
        response = await post(
            server, "/v1/messages", {"model": "simulated", "max_tokens": 2, "messages": turns}
        )
    assert response.status_code == 200


async def test_a_stop_sequence_that_ended_the_answer_is_the_stop_reason() -> None:
    # The simulated answer is 60 words drawn from a list of 32, the same ones for the
    # same prompt: four of them as stops end it (the check below says if not).
    words = ["stream", "token", "answer", "model"]
    async with running_server(simulated_settings()) as server, anthropic_client(server) as client:
        whole = await client.messages.create(
            model="simulated", max_tokens=1000, messages=HI, stop_sequences=words
        )
        plain = await client.messages.create(model="simulated", max_tokens=1000, messages=HI)
    if whole.stop_reason == "end_turn":
        pytest.fail("the simulated answer held none of the stop words: pick others")
    assert whole.stop_reason == "stop_sequence"
    assert whole.stop_sequence in words
    assert plain.stop_reason == "end_turn"
    assert plain.stop_sequence is None


async def test_an_anthropic_upstream_s_stop_sequence_reaches_the_client_streaming() -> None:
    frames = message_frames(
        ["Counting: 1, 2"], 5, 4, stop_reason="stop_sequence", stop_sequence="3"
    )
    async with serving("anthropic") as (upstream, server):
        upstream.reply = Reply(frames=frames)
        async with (
            anthropic_client(server) as client,
            client.messages.stream(
                model="anthropic", max_tokens=50, messages=HI, stop_sequences=["3"]
            ) as stream,
        ):
            final = await stream.get_final_message()
        sent = (await upstream.exchange()).json()

    assert sent["stop_sequences"] == ["3"]
    assert final.stop_reason == "stop_sequence"
    assert final.stop_sequence == "3"


async def test_a_hint_in_another_kind_s_vocabulary_is_dropped_not_sent() -> None:
    # Anthropic's service tiers are not OpenAI's: "standard_only" would be a 400 there.
    async with serving("openai") as (upstream, server):
        upstream.reply = openai_answer(["Hello"], 3, 1)
        async with anthropic_client(server) as client:
            answer = await client.messages.create(
                model="openai", max_tokens=10, messages=HI, service_tier="standard_only"
            )
        sent = (await upstream.exchange()).json()

    assert answer.content[0].text == "Hello"  # type: ignore[union-attr]
    assert "service_tier" not in sent


async def test_the_websocket_stream_end_names_the_stop_sequence_that_ended_the_answer() -> None:
    words = ["stream", "token", "answer", "model"]  # as in the Messages test above
    async with running_server(simulated_settings()) as server, ws_client(server) as client:
        stopped = (await client.ask("hi", config={"stop": words}))[-1]["data"]
        plain = (await client.ask("hi"))[-1]["data"]

    assert stopped["finish_reason"] == "stop"
    assert stopped["stop_sequence"] in words
    assert "stop_sequence" not in plain
