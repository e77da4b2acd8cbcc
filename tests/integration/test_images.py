"""Images in, on every way in: the three dialects through their official SDKs, the
WebSocket's `images` and content parts, routing by `vision`, the bounds, conversations.

The simulated provider sees images and begins its answer by saying what it got
(`[images: image/png 62 bytes, https://...] `), so what arrived is visible end to end.
"""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.image_server import PNG
from tests.support.server import of_type, running_server, simulated_settings, ws_client
from tokenwire.settings import Settings

PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
PNG_SEEN = f"image/png {len(PNG)} bytes"
CAT_URL = "https://images.example/cat.jpg"
FAST = {"delay_ms": 0, "tokens": 3}


def settings(**limits: Any) -> Settings:
    """A sighted simulated provider, and a blind one that routing prefers for text."""
    return simulated_settings(
        providers=[
            {"name": "blind", "kind": "simulated", "vision": False, "options": FAST},
            {"name": "eyes", "kind": "simulated", "options": FAST},
        ],
        routing={"default_provider": "blind", "strategy": "cost_optimized"},
        limits=limits,
    )


def openai_client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


# -- the dialects, through their SDKs --------------------------------------------------


async def test_chat_completions_carries_image_url_parts_in_order() -> None:
    async with running_server(settings()) as server, openai_client(server.url) as client:
        completion = await client.chat.completions.create(
            model="auto",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "compare"},
                        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
                        {"type": "text", "text": "with"},
                        {"type": "image_url", "image_url": {"url": CAT_URL}},
                    ],
                }
            ],
        )

    assert completion.model == "eyes"  # routing skipped the blind one
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith(f"[images: {PNG_SEEN}, {CAT_URL}]")


async def test_chat_completions_refuses_a_forced_blind_provider_before_streaming() -> None:
    async with running_server(settings()) as server, openai_client(server.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="blind",
                stream=True,
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": PNG_URL}}],
                    }
                ],
            )

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_feature"
    assert "does not see images" in error["message"]


async def test_chat_completions_names_a_bad_data_url() -> None:
    async with running_server(settings()) as server, openai_client(server.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="auto",
                messages=[
                    {"role": "user", "content": "look"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "this"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}},
                        ],
                    },
                ],
            )

    assert "messages[1].content[1].image_url.url: the image data is not valid base64" in str(
        caught.value
    )


async def test_responses_carries_input_image() -> None:
    async with running_server(settings()) as server, openai_client(server.url) as client:
        response = await client.responses.create(
            model="auto",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is this?"},
                        {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                    ],
                }
            ],
        )

    assert response.output_text.startswith(f"[images: {PNG_SEEN}]")


async def test_responses_refuses_a_file_id_saying_what_to_send_instead() -> None:
    async with running_server(settings()) as server, openai_client(server.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="auto",
                input=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "what is this?"},
                            {"type": "input_image", "file_id": "file-123", "detail": "auto"},
                        ],
                    }
                ],
            )

    assert "file_id is not supported here" in str(caught.value)
    assert "image_url" in str(caught.value)


async def test_messages_carries_base64_and_url_image_blocks() -> None:
    async with (
        running_server(settings()) as server,
        anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0) as client,
    ):
        message = await client.messages.create(
            model="auto",
            max_tokens=100,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": base64.b64encode(PNG).decode(),
                            },
                        },
                        {"type": "image", "source": {"type": "url", "url": CAT_URL}},
                        {"type": "text", "text": "compare them"},
                    ],
                }
            ],
        )

    assert message.model == "eyes"
    text = message.content[0]
    assert text.type == "text"
    assert text.text.startswith(f"[images: {PNG_SEEN}, {CAT_URL}]")


async def test_messages_refuses_a_declared_type_that_the_bytes_are_not() -> None:
    async with (
        running_server(settings()) as server,
        anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0) as client,
    ):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="auto",
                max_tokens=100,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/jpeg",
                                    "data": base64.b64encode(PNG).decode(),
                                },
                            }
                        ],
                    }
                ],
            )

    assert "messages[0].content[0].source: the image data is not image/jpeg" in str(caught.value)


# -- the WebSocket -------------------------------------------------------------------


async def test_ws_images_follow_the_prompt() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        text_only = await client.ask("what are these?")
        frames = await client.ask("what are these?", images=[{"url": PNG_URL}, {"url": CAT_URL}])

    assert of_type(text_only, "stream_end")[0]["data"]["provider_used"] == "blind"

    end = of_type(frames, "stream_end")[0]["data"]
    assert end["status"] == "completed"
    assert end["provider_used"] == "eyes"
    text = "".join(f["data"].get("chunk", "") for f in of_type(frames, "chunk"))
    assert text.startswith(f"[images: {PNG_SEEN}, {CAT_URL}]")


async def test_ws_content_parts_keep_their_order() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "compare"},
                            {"type": "image", "url": CAT_URL},
                            {"type": "text", "text": "with"},
                            {"type": "image", "url": PNG_URL, "detail": "high"},
                        ],
                    }
                ],
            }
        )
        frames = await client.until_end()

    text = "".join(f["data"].get("chunk", "") for f in of_type(frames, "chunk"))
    assert text.startswith(f"[images: {CAT_URL}, {PNG_SEEN}]")


async def test_ws_refuses_plain_http_images_naming_where() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "request_id": "r1",
                "prompt": "look",
                "images": [{"url": PNG_URL}, {"url": "http://images.example/a.png"}],
            }
        )
        error = await client.recv()

    assert error["event_type"] == "error"
    assert error["data"]["error_type"] == "invalid_request"
    assert error["data"]["request_id"] == "r1"
    assert error["data"]["error"].startswith("images[1]: an image is a data: URL")


async def test_ws_refuses_a_forced_blind_provider_with_unsupported_feature() -> None:
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.send(
            {
                "type": "ai_request",
                "prompt": "look",
                "images": [{"url": PNG_URL}],
                "config": {"provider": "blind"},
            }
        )
        error = await client.recv()

    assert error["event_type"] == "error"
    assert error["data"]["error_type"] == "unsupported_feature"


async def test_auto_with_no_sighted_provider_is_unsupported_feature() -> None:
    blind_only = simulated_settings(
        providers=[{"name": "blind", "kind": "simulated", "vision": False}]
    )
    async with running_server(blind_only) as server, httpx.AsyncClient() as http:
        answer = await http.post(
            server.url + "/api/streams",
            json={"prompt": "look", "images": [{"url": PNG_URL}]},
        )

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "unsupported_feature"


# -- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "bound"),
    [
        ({"max_images_per_request": 1}, "limits.max_images_per_request"),
        ({"max_image_bytes": len(PNG) - 1}, "limits.max_image_bytes"),
        ({"max_image_request_bytes": 2 * len(PNG) - 1}, "limits.max_image_request_bytes"),
    ],
)
async def test_each_image_bound_is_an_image_limit_exceeded_413(
    limits: dict[str, int], bound: str
) -> None:
    async with running_server(settings(**limits)) as server, openai_client(server.url) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="auto",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": PNG_URL}},
                            {"type": "image_url", "image_url": {"url": PNG_URL}},
                        ],
                    }
                ],
            )

    assert caught.value.status_code == 413
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "image_limit_exceeded"
    assert bound in error["message"]


# -- conversations --------------------------------------------------------------------


async def test_a_conversation_keeps_its_images_within_the_bounds() -> None:
    async with (
        running_server(settings(max_images_per_request=2)) as server,
        ws_client(server) as client,
    ):
        first = await client.ask("look", images=[{"url": PNG_URL}], conversation_id="c1")
        second = await client.ask("and this", images=[{"url": CAT_URL}], conversation_id="c1")
        third = await client.ask("and now", images=[{"url": CAT_URL}], conversation_id="c1")
        fourth = await client.ask("what did you see?", conversation_id="c1")

    def seen(frames: list[dict[str, Any]]) -> str:
        text = "".join(f["data"].get("chunk", "") for f in of_type(frames, "chunk"))
        return text.split("]")[0] + "]"

    assert seen(first) == f"[images: {PNG_SEEN}]"
    assert seen(second) == f"[images: {PNG_SEEN}, {CAT_URL}]"
    # Two images at most: the oldest turn gave way to the new one.
    assert seen(third) == f"[images: {CAT_URL}, {CAT_URL}]"
    # Text after images keeps going to a provider that sees them (the history has some).
    assert of_type(fourth, "stream_end")[0]["data"]["provider_used"] == "eyes"


# -- logs ------------------------------------------------------------------------------


async def test_image_bytes_reach_no_log(capsys: pytest.CaptureFixture[str]) -> None:
    secret = base64.b64encode(PNG + b"SECRET-PIXELS" * 8).decode()
    async with running_server(settings()) as server, ws_client(server) as client:
        await client.ask("look", images=[{"url": "data:image/png;base64," + secret}])
        # And a refused one: the error quotes where, never the data.
        await client.send(
            {"type": "ai_request", "prompt": "look", "images": [{"url": f"data:x;base64,{secret}"}]}
        )
        error = await client.recv()

    assert error["data"]["error_type"] == "invalid_request"
    assert secret[16:48] not in error["data"]["error"]
    logged = capsys.readouterr()
    assert "stream ended" in logged.out  # the server's log lines are here
    # Neither as base64 nor as the bytes themselves.
    assert secret[16:48] not in logged.out + logged.err
    assert "SECRET-PIXELS" not in logged.out + logged.err


async def test_messages_refuses_a_forced_blind_provider_in_anthropic_shape() -> None:
    async with (
        running_server(settings()) as server,
        anthropic.AsyncAnthropic(base_url=server.url, api_key="unused", max_retries=0) as client,
    ):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="blind",
                max_tokens=100,
                stream=True,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image", "source": {"type": "url", "url": CAT_URL}},
                        ],
                    }
                ],
            )

    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "provider blind does not see images; name one that does or use auto",
        },
    }


async def test_the_providers_view_shows_who_sees_images() -> None:
    async with running_server(settings()) as server, httpx.AsyncClient() as http:
        listed = (await http.get(server.url + "/api/providers")).json()["providers"]

    assert {p["name"]: p["vision"] for p in listed} == {"blind": False, "eyes": True}
