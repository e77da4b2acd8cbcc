"""Images reach each provider in its own format, and tokenwire's own fetch is bounded.

Real sockets throughout: fake upstreams (OpenAI, Anthropic, Bedrock) record what
arrived, and images given by URL for bedrock are fetched over TLS from a loopback
server whose certificate comes from a test CA.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.anthropic_upstream import anthropic_answer
from tests.fakes.bedrock_server import FakeBedrock
from tests.fakes.image_server import JPEG, PNG, ImageServer, Route, running_image_server
from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer
from tokenwire.core.provider import ImagePart, Message, ProviderRequest, TextPart
from tokenwire.protocol.errors import ImageLimitExceeded, InvalidRequest
from tokenwire.providers.anthropic_messages import AnthropicProvider
from tokenwire.providers.bedrock import BedrockProvider
from tokenwire.providers.images import FetchPolicy, ImageFetcher
from tokenwire.providers.openai_chat import OpenAIProvider
from tokenwire.settings import ProviderSettings

PNG_B64 = base64.b64encode(PNG).decode()
CAT_URL = "https://images.example/cat.jpg"


def compare(first: ImagePart, second: ImagePart) -> tuple[Message, ...]:
    """ "compare <first> with <second>": text and images in that order."""
    parts = (TextPart("compare "), first, TextPart(" with "), second)
    return (Message(role="system", content="be brief"), Message.of_parts("user", parts))


INLINE = ImagePart(media_type="image/png", data=PNG, detail="low")
BY_URL = ImagePart(url=CAT_URL)


async def drain(provider: Any, request: ProviderRequest) -> None:
    async for _ in provider.stream(request):
        pass


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as fake:
        yield fake


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    async with running_image_server() as server:
        yield server


# -- each provider's format -------------------------------------------------------


async def test_openai_gets_image_url_parts_in_order(upstream: ScriptedUpstream) -> None:
    upstream.reply = openai_answer(["ok"], 1, 1)
    provider = OpenAIProvider(
        ProviderSettings(name="oa", kind="openai", model="m", base_url=upstream.url + "/v1")
    )
    try:
        await drain(provider, ProviderRequest(compare(INLINE, BY_URL)))
    finally:
        await provider.aclose()

    user = (await upstream.exchange()).json()["messages"][1]
    assert user == {
        "role": "user",
        "content": [
            {"type": "text", "text": "compare "},
            {
                "type": "image_url",
                "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"},
            },
            {"type": "text", "text": " with "},
            {"type": "image_url", "image_url": {"url": CAT_URL}},
        ],
    }


async def test_anthropic_gets_base64_and_url_image_blocks_in_order(
    upstream: ScriptedUpstream,
) -> None:
    upstream.reply = anthropic_answer(["ok"], 1, 1)
    provider = AnthropicProvider(
        ProviderSettings(name="an", kind="anthropic", model="m", base_url=upstream.url)
    )
    try:
        await drain(provider, ProviderRequest(compare(INLINE, BY_URL)))
    finally:
        await provider.aclose()

    body = (await upstream.exchange()).json()
    assert body["system"] == "be brief"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare "},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                },
                {"type": "text", "text": " with "},
                {"type": "image", "source": {"type": "url", "url": CAT_URL}},
            ],
        }
    ]


def bedrock(fake: FakeBedrock, fetcher: ImageFetcher | None = None) -> BedrockProvider:
    settings = ProviderSettings(
        name="br", kind="bedrock", model="anthropic.claude-test", base_url=fake.url
    )
    return BedrockProvider(settings, fetcher=fetcher)


@pytest.mark.usefixtures("aws_credentials")
async def test_bedrock_gets_the_bytes_of_inline_and_fetched_images_in_order(
    fake: FakeBedrock, image_server: ImageServer
) -> None:
    image_server.routes["/cat.jpg"] = Route(body=JPEG)
    fetcher = ImageFetcher(
        FetchPolicy(allow_private=True), ssl_context=image_server.client_context()
    )
    provider = bedrock(fake, fetcher)
    fetched = ImagePart(url=image_server.url + "/cat.jpg")
    try:
        await drain(provider, ProviderRequest(compare(INLINE, fetched)))
    finally:
        await provider.aclose()

    content = fake.requests[0].body["messages"][0]["content"]
    assert content == [
        {"text": "compare "},
        {"image": {"format": "png", "source": {"bytes": PNG_B64}}},
        {"text": " with "},
        {"image": {"format": "jpeg", "source": {"bytes": base64.b64encode(JPEG).decode()}}},
    ]


# -- the fetch's bounds -------------------------------------------------------------


def fetcher_for(server: ImageServer, **policy: Any) -> ImageFetcher:
    return ImageFetcher(
        FetchPolicy(**{"allow_private": True, **policy}), ssl_context=server.client_context()
    )


async def test_a_fetched_image_keeps_its_detail_and_gets_its_sniffed_type(
    image_server: ImageServer,
) -> None:
    image_server.routes["/a.png"] = Route(body=PNG)

    image = await fetcher_for(image_server).fetch(
        ImagePart(url=image_server.url + "/a.png", detail="high")
    )

    assert (image.media_type, image.data, image.detail, image.url) == (
        "image/png",
        PNG,
        "high",
        None,
    )


async def test_a_plain_http_url_is_never_fetched(image_server: ImageServer) -> None:
    http_url = image_server.url.replace("https://", "http://") + "/a.png"

    with pytest.raises(InvalidRequest, match="https only"):
        await fetcher_for(image_server).fetch(ImagePart(url=http_url))
    assert image_server.requests == []


async def test_a_redirect_to_plain_http_is_refused(image_server: ImageServer) -> None:
    image_server.routes["/moved"] = Route(status=302, body=b"", location="http://example.test/a")

    with pytest.raises(InvalidRequest, match="https only"):
        await fetcher_for(image_server).fetch(ImagePart(url=image_server.url + "/moved"))


async def test_an_https_redirect_is_followed(image_server: ImageServer) -> None:
    image_server.routes["/moved"] = Route(status=301, body=b"", location="/a.png")
    image_server.routes["/a.png"] = Route(body=PNG)

    image = await fetcher_for(image_server).fetch(ImagePart(url=image_server.url + "/moved"))

    assert image.data == PNG
    assert image_server.requests == ["/moved", "/a.png"]


async def test_an_image_over_max_image_bytes_is_refused(image_server: ImageServer) -> None:
    image_server.routes["/big.png"] = Route(body=PNG + bytes(1000))

    with pytest.raises(ImageLimitExceeded, match="max_image_bytes"):
        await fetcher_for(image_server, max_bytes=len(PNG)).fetch(
            ImagePart(url=image_server.url + "/big.png")
        )


async def test_an_image_of_unannounced_length_is_cut_off_at_max_image_bytes(
    image_server: ImageServer,
) -> None:
    image_server.routes["/big.png"] = Route(body=PNG + bytes(200_000), length=False)

    with pytest.raises(ImageLimitExceeded, match="max_image_bytes"):
        await fetcher_for(image_server, max_bytes=100_000).fetch(
            ImagePart(url=image_server.url + "/big.png")
        )


async def test_a_server_too_slow_to_send_the_image_is_given_up_on(
    image_server: ImageServer,
) -> None:
    never = asyncio.Event()
    image_server.routes["/slow.png"] = Route(body=PNG, hold=never)

    with pytest.raises(InvalidRequest, match=r"not fetched within 0\.2 s"):
        await fetcher_for(image_server, timeout=0.2).fetch(
            ImagePart(url=image_server.url + "/slow.png")
        )


async def test_a_private_address_is_refused_unless_configured(
    image_server: ImageServer,
) -> None:
    image_server.routes["/a.png"] = Route(body=PNG)

    with pytest.raises(InvalidRequest, match="private address"):
        await fetcher_for(image_server, allow_private=False).fetch(
            ImagePart(url=image_server.url + "/a.png")
        )
    assert image_server.requests == []


async def test_a_private_name_is_refused_at_resolution(image_server: ImageServer) -> None:
    # "localhost" goes through the resolver (a literal address does not).
    url = image_server.url.replace("127.0.0.1", "localhost") + "/a.png"
    image_server.routes["/a.png"] = Route(body=PNG)

    with pytest.raises(InvalidRequest, match="private address"):
        await fetcher_for(image_server, allow_private=False).fetch(ImagePart(url=url))
    assert image_server.requests == []


async def test_a_body_that_is_no_image_is_refused(image_server: ImageServer) -> None:
    image_server.routes["/page"] = Route(body=b"<html>hello</html>")

    with pytest.raises(InvalidRequest, match="not a PNG, JPEG, GIF or WebP"):
        await fetcher_for(image_server).fetch(ImagePart(url=image_server.url + "/page"))


async def test_a_server_that_answers_an_error_status_is_refused(
    image_server: ImageServer,
) -> None:
    with pytest.raises(InvalidRequest, match="answered 404"):
        await fetcher_for(image_server).fetch(ImagePart(url=image_server.url + "/missing"))
