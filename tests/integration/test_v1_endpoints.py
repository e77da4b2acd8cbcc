"""The dialects' other endpoints with the official SDKs against a real server: models in
either dialect's shape, a response's input items, deleting and cancelling responses,
counting tokens, and unknown paths, methods and bodies answered in the dialect's shape."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.anthropic_upstream import (
    COUNT_TOKENS_PATH,
    anthropic_answer,
    fake_token_count,
    messages_api,
)
from tests.fakes.image_server import PNG
from tests.fakes.openai_upstream import ScriptedUpstream
from tests.support.providers import WatchedProvider
from tests.support.server import RunningServer, gateway_with, running_server, simulated_settings
from tests.support.waiting import AT_ONCE, eventually

HI = [{"role": "user", "content": "hi"}]
KEY_ENV = "TOKENWIRE_TEST_ANTHROPIC_KEY"


@contextlib.asynccontextmanager
async def served(*providers: Any) -> AsyncIterator[RunningServer]:
    gateway = gateway_with(*providers) if providers else None
    async with running_server(gateway=gateway) as server:
        yield server


@contextlib.asynccontextmanager
async def openai_sdk(server: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    async with client:
        yield client


@contextlib.asynccontextmanager
async def anthropic_sdk(server: RunningServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        base_url=server.url, api_key="unused", max_retries=0, timeout=30
    )
    async with client:
        yield client


# -- models -------------------------------------------------------------------------


async def test_openai_retrieves_each_listed_model_and_auto() -> None:
    async with served() as server, openai_sdk(server) as client:
        listed = [m.id async for m in client.models.list()]
        retrieved = [await client.models.retrieve(name) for name in listed]
    assert listed == ["simulated", "auto"]
    assert [m.id for m in retrieved] == listed
    assert {m.object for m in retrieved} == {"model"}
    assert retrieved[0].owned_by == "tokenwire"


async def test_openai_is_told_an_unknown_model_does_not_exist() -> None:
    async with served() as server, openai_sdk(server) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("gpt-nope")
    assert caught.value.code == "model_not_found"
    assert "gpt-nope" in caught.value.message


async def test_anthropic_lists_and_retrieves_models_in_its_own_shape() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        page = await client.models.list()
        one = await client.models.retrieve("simulated")
    assert [m.id for m in page.data] == ["simulated", "auto"]
    assert {m.type for m in page.data} == {"model"}
    assert page.has_more is False
    assert (page.first_id, page.last_id) == ("simulated", "auto")
    assert one.id == "simulated"
    assert one.display_name == "simulated"
    assert one.created_at.year == 1970


async def test_anthropic_pages_models_by_limit_and_after_id() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        first = await client.models.list(limit=1)
        every = [m.id async for m in client.models.list(limit=1)]
    assert [m.id for m in first.data] == ["simulated"]
    assert first.has_more is True
    assert every == ["simulated", "auto"]


async def test_anthropic_is_told_an_unknown_model_is_not_found() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await client.models.retrieve("claude-nope")
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"


# -- a response's input items, delete and cancel ---------------------------------------


CONVERSATION: list[Any] = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]},
    {"role": "assistant", "content": "Hello Ada."},
    {"role": "user", "content": "Who am I?"},
]


async def test_input_items_list_the_input_newest_first_with_ids() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input=CONVERSATION)
        page = await client.responses.input_items.list(response.id)
        again = await client.responses.input_items.list(response.id)
    items = page.data
    assert [item.role for item in items] == ["user", "assistant", "user", "developer"]  # type: ignore[union-attr]
    assert items[0].content[0].text == "Who am I?"  # type: ignore[union-attr]
    assert items[1].content[0].type == "output_text"  # type: ignore[union-attr]
    assert all(item.type == "message" for item in items)
    ids = [item.id for item in items]
    assert len(set(ids)) == 4
    assert all(i.startswith("msg_") for i in ids)
    assert [item.id for item in again.data] == ids
    assert (page.first_id, page.last_id, page.has_more) == (ids[0], ids[-1], False)


async def test_input_items_page_in_order_after_an_item() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input=CONVERSATION)
        first = await client.responses.input_items.list(response.id, order="asc", limit=2)
        rest = await client.responses.input_items.list(
            response.id, order="asc", limit=2, after=first.last_id
        )
        every = [i.id async for i in client.responses.input_items.list(response.id, limit=1)]
    assert [i.role for i in first.data + rest.data] == [  # type: ignore[union-attr]
        "developer",
        "user",
        "assistant",
        "user",
    ]
    assert first.has_more is True
    assert rest.has_more is False
    assert every == [i.id for i in reversed(first.data + rest.data)]


async def test_a_string_input_is_one_user_item() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input="Hello there")
        [item] = (await client.responses.input_items.list(response.id)).data
    assert item.role == "user"  # type: ignore[union-attr]
    assert item.content[0].type == "input_text"  # type: ignore[union-attr]
    assert item.content[0].text == "Hello there"  # type: ignore[union-attr]


async def test_an_image_item_is_listed_by_url_and_a_data_url_without_its_bytes() -> None:
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    https = "https://images.example/cat.png"
    content = [
        {"type": "input_text", "text": "compare"},
        {"type": "input_image", "image_url": data_url, "detail": "low"},
        {"type": "input_image", "image_url": https},
    ]
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(
            model="simulated", input=[{"role": "user", "content": content}]
        )
        [item] = (await client.responses.input_items.list(response.id)).data
    text, inline, linked = item.content  # type: ignore[union-attr]
    assert text.text == "compare"
    assert (inline.type, inline.image_url, inline.detail) == ("input_image", None, "low")
    assert (linked.type, linked.image_url) == ("input_image", https)


async def test_delete_forgets_a_response() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input="x")
        raw = await client.responses.with_raw_response.delete(response.id)
        for gone in (
            client.responses.retrieve(response.id),
            client.responses.input_items.list(response.id),
            client.responses.delete(response.id),
            client.responses.create(model="simulated", input="y", previous_response_id=response.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await gone
    assert raw.http_response.json() == {"id": response.id, "object": "response", "deleted": True}


async def test_delete_cancels_a_running_response_first() -> None:
    provider = WatchedProvider(stall_after=1)
    async with served(provider) as server, openai_sdk(server) as client:
        running = await client.responses.create(model="watched", input="x", background=True)
        await client.responses.delete(running.id)
        await eventually(lambda: server.gateway.running == 0, AT_ONCE)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(running.id)
    assert provider.closed.is_set()


async def test_another_user_cannot_delete_a_response() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input="x")
        stranger = openai.AsyncOpenAI(
            base_url=server.url + "/v1?user_id=mallory", api_key="x", max_retries=0
        )
        async with stranger:
            with pytest.raises(openai.NotFoundError):
                await stranger.responses.delete(response.id)
        kept = await client.responses.retrieve(response.id)
    assert kept.status == "completed"


async def test_a_foreground_response_cannot_be_cancelled_as_openai_says() -> None:
    async with served() as server, openai_sdk(server) as client:
        response = await client.responses.create(model="simulated", input="x")
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.cancel(response.id)
    assert caught.value.type == "invalid_request_error"
    assert "background=true" in caught.value.message


# -- count_tokens -----------------------------------------------------------------------


COUNTED = [
    {"role": "user", "content": "How many tokens is this?"},
    {"role": "assistant", "content": [{"type": "text", "text": "Let me see."}]},
    {"role": "user", "content": "Please count them."},
]


@contextlib.asynccontextmanager
async def anthropic_served(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[RunningServer, ScriptedUpstream]]:
    monkeypatch.setenv(KEY_ENV, "sk-ant-test")
    async with ScriptedUpstream(messages_api(anthropic_answer(["Hi"], 9, 1))) as upstream:
        providers = [
            {
                "name": "claude",
                "kind": "anthropic",
                "model": "claude-test",
                "base_url": upstream.url,
                "api_key_env": KEY_ENV,
            },
            {"name": "simulated", "kind": "simulated", "auto": False},
        ]
        async with running_server(simulated_settings(providers=providers)) as server:
            yield server, upstream


async def test_count_tokens_asks_the_anthropic_api(monkeypatch: pytest.MonkeyPatch) -> None:
    async with anthropic_served(monkeypatch) as (server, upstream):
        async with anthropic_sdk(server) as client:
            counted = await client.messages.count_tokens(
                model="claude",
                system="Be brief.",
                messages=COUNTED,  # type: ignore[arg-type]
            )
            by_auto = await client.messages.count_tokens(model="auto", messages=COUNTED)  # type: ignore[arg-type]
        asked = upstream.exchanges[0]
    assert asked.path == COUNT_TOKENS_PATH
    sent = asked.json()
    assert sent["model"] == "claude-test"
    assert sent["system"] == "Be brief."
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert counted.input_tokens == fake_token_count(sent)
    assert by_auto.input_tokens == counted.input_tokens - 2  # less "Be brief."
    assert len(upstream.exchanges) == 2  # two counts, and nothing generated


async def test_count_tokens_elsewhere_says_the_provider_cannot_count() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.count_tokens(model="simulated", messages=HI)  # type: ignore[arg-type]
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "provider 'simulated' (kind simulated) cannot count tokens exactly"


async def test_count_tokens_of_an_unknown_model_is_not_found() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.count_tokens(model="claude-nope", messages=HI)  # type: ignore[arg-type]


# -- unknown paths, methods and bodies ------------------------------------------------------


async def call(server: RunningServer, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.request(method, server.url + path, **kw)


@pytest.mark.parametrize("path", ["/v1/nope", "/v1", "/v1/chat/completions/x", "/v1/models/a/b"])
async def test_an_unknown_path_under_v1_is_openai_s_404(path: str) -> None:
    async with served() as server:
        response = await call(server, "GET", path)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "not_found"
    assert path in error["message"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1/messages/nope", {}), ("/v1/nope", {"anthropic-version": "2023-06-01"})],
)
async def test_an_unknown_anthropic_path_is_anthropic_s_404(
    path: str, headers: dict[str, str]
) -> None:
    async with served() as server:
        response = await call(server, "POST", path, headers=headers)
    assert response.status_code == 404
    assert response.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": f'no such endpoint: POST "{path}"'},
    }


async def test_the_openai_sdk_reads_the_404_of_an_unknown_path() -> None:
    async with served() as server, openai_sdk(server) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.get("/vector_stores", cast_to=object)
    assert "/v1/vector_stores" in caught.value.message


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/v1/models/simulated", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/responses/resp_1", "DELETE, GET"),
        ("GET", "/v1/messages/count_tokens", "POST"),
    ],
)
async def test_a_method_a_path_does_not_take_is_a_405_with_allow(
    method: str, path: str, allow: str
) -> None:
    async with served() as server:
        response = await call(server, method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    body = response.json()
    message = body["error"]["message"]
    assert method in message
    assert ("type" in body) == path.startswith("/v1/messages")


async def test_outside_v1_fastapi_s_own_404_is_kept() -> None:
    async with served() as server:
        response = await call(server, "GET", "/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


BAD_UTF8 = (
    b'{"model": "simulated", "max_tokens": 5, "messages": [{"role": "user", "content": "a\xffb"}]}'
)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
async def test_a_body_that_is_not_utf8_is_a_400_naming_the_byte(path: str) -> None:
    async with served() as server:
        response = await call(
            server, "POST", path, content=BAD_UTF8, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    body = response.json()
    message = body["error"]["message"]
    assert message == f"the body is not valid UTF-8 (at byte {BAD_UTF8.index(0xFF)})"
    assert ("type" in body) == (path == "/v1/messages")


# -- validation messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (5, "messages[0].content: must be a string or a list"),
        (
            [{"type": "txt", "text": "x"}],
            "messages[0].content[0].type: expected 'text' or 'image_url'",
        ),
        ([{"type": "text"}], "messages[0].content[0].text: required"),
    ],
)
async def test_a_chat_validation_error_names_the_field_in_words(
    content: Any, expected: str
) -> None:
    async with served() as server, openai_sdk(server) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="simulated", messages=[{"role": "user", "content": content}]
            )
    assert caught.value.body == {
        "message": expected,
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_request",
    }


async def test_a_messages_validation_error_names_the_field_in_words() -> None:
    async with served() as server, anthropic_sdk(server) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="simulated",
                max_tokens=5,
                messages=[{"role": "user", "content": None}],  # type: ignore[typeddict-item]
            )
    assert caught.value.body["error"]["message"] == (
        "messages[0].content: must be a string or a list"
    )


async def test_a_bad_query_parameter_is_named() -> None:
    async with served() as server:
        response = await call(server, "GET", "/v1/models?limit=0", headers={"x-api-key": "k"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("limit: ")
