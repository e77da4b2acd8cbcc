"""Images on their way to a provider: as data URLs, as base64, and fetched as bytes.

A provider that takes an image only as bytes (Bedrock's Converse) has tokenwire fetch
an https URL itself, and that fetch is bounded so that a client cannot make the
server its proxy: https only (a redirect to anything else is refused, and at most
`MAX_REDIRECTS` are followed), at most `max_bytes` read, the whole fetch within
`timeout` seconds, and only to public addresses unless `allow_private` (checked on
the addresses actually connected to, so a name that resolves to a private address
later is refused too). The bytes must be an image of a type taken here.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from tokenwire.core.images import sniffed_media_type
from tokenwire.core.provider import ImagePart, Message
from tokenwire.protocol.errors import ImageLimitExceeded, InvalidRequest, excerpt

MAX_REDIRECTS = 3
MiB = 1024 * 1024


def data_url(image: ImagePart) -> str:
    """The image as a URL a provider takes: its own https URL, or a data URL of its bytes."""
    if image.data is None:
        assert image.url is not None
        return image.url
    return f"data:{image.media_type};base64,{base64_text(image)}"


def base64_text(image: ImagePart) -> str:
    assert image.data is not None
    return base64.b64encode(image.data).decode("ascii")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Bounds of one fetch (`[limits]` image keys, passed in as plain values)."""

    max_bytes: int = 5 * MiB
    timeout: float = 10.0
    allow_private: bool = False


class ImageFetcher:
    """Fetches images given by URL, within `FetchPolicy`; errors are the client's to see."""

    def __init__(self, policy: FetchPolicy, ssl_context: ssl.SSLContext | None = None) -> None:
        self._policy = policy
        self._ssl = ssl_context or ssl.create_default_context()

    async def with_bytes(self, messages: tuple[Message, ...]) -> tuple[Message, ...]:
        """`messages` with every image given by URL replaced by its fetched bytes."""
        if not any(image.url is not None for m in messages for image in m.images):
            return messages
        fetched: list[Message] = []
        for message in messages:
            parts = tuple(
                [
                    await self.fetch(part) if isinstance(part, ImagePart) and part.url else part
                    for part in message.parts
                ]
            )
            fetched.append(replace(message, parts=parts))
        return tuple(fetched)

    async def fetch(self, image: ImagePart) -> ImagePart:
        assert image.url is not None
        try:
            async with asyncio.timeout(self._policy.timeout):
                data = await self._get(image.url)
        except TimeoutError:
            raise InvalidRequest(
                f"image {excerpt(image.url)} was not fetched within {self._policy.timeout:g} s"
            ) from None
        media_type = sniffed_media_type(data)
        if media_type is None:
            raise InvalidRequest(f"image {excerpt(image.url)} is not a PNG, JPEG, GIF or WebP")
        return ImagePart(media_type=media_type, data=data, detail=image.detail)

    async def _get(self, url: str) -> bytes:
        resolver = _Resolver(self._policy.allow_private)
        connector = aiohttp.TCPConnector(ssl=self._ssl, resolver=resolver, limit=1)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            for _ in range(MAX_REDIRECTS + 1):
                _check_url(url, self._policy.allow_private)
                try:
                    async with session.get(url, allow_redirects=False) as response:
                        if response.status in (301, 302, 303, 307, 308):
                            url = str(response.url.join(URL(_location(response))))
                            continue
                        if response.status != 200:
                            raise InvalidRequest(
                                f"image {excerpt(url)}: its server answered {response.status}"
                            )
                        return await self._body(response, url)
                except aiohttp.ClientError as exc:
                    raise InvalidRequest(
                        f"image {excerpt(url)} could not be fetched ({type(exc).__name__})"
                    ) from None
        raise InvalidRequest(f"image {excerpt(url)}: more than {MAX_REDIRECTS} redirects")

    async def _body(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self._policy.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise _too_large(url, limit)
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise _too_large(url, limit)
        return bytes(body)


def _too_large(url: str, limit: int) -> ImageLimitExceeded:
    return ImageLimitExceeded(f"image {excerpt(url)} is over max_image_bytes ({limit} bytes)")


def _check_url(url: str, allow_private: bool) -> None:
    if not url.lower().startswith("https://"):
        raise InvalidRequest(f"image {excerpt(url)}: images are fetched over https only")
    # An address given literally never reaches the resolver: check it here.
    host = URL(url).host or ""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not allow_private and not _is_public(host.strip("[]")):
        raise _private(host)


def _private(host: str) -> InvalidRequest:
    return InvalidRequest(
        f"image host {excerpt(host)} is a private address; images are fetched "
        "from public addresses only (limits.image_fetch_private_addresses)"
    )


def _location(response: aiohttp.ClientResponse) -> str:
    location = response.headers.get("location")
    if not location:
        raise InvalidRequest("an image's server redirected without a location")
    return location


class _Resolver(AbstractResolver):
    """The default resolver, keeping only addresses the policy lets tokenwire connect to."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self._allow_private or _is_public(r["host"])]
        if not allowed:
            raise _private(host)
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _is_public(address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address).split("%")[0]).is_global
    except ValueError:
        return False
