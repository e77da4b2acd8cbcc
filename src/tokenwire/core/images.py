"""Images as clients give them: data URLs, base64 with a media type, https URLs (no I/O).

Every dialect reads its own image shape and calls these, so that one rule holds on
every transport: an image is PNG, JPEG, GIF or WebP, given inline (a data URL or
base64, decoded here, its bytes checked to be of the type it claims) or as an https
URL (plain http is refused: tokenwire and the providers fetch only over TLS).
Errors are `InvalidRequest` naming where the image was (`messages[0].content[1]`).
`ImageBounds` holds the bounds on count and size: the admission checks a request's
new turns against them, and a conversation's kept turns are fitted to them.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import get_args
from urllib.parse import urlsplit

from tokenwire.core.provider import (
    MEDIA_TYPES,
    Detail,
    ImagePart,
    MediaType,
    Message,
    Part,
    Role,
    images_of,
)
from tokenwire.protocol.errors import ImageLimitExceeded, InvalidRequest, excerpt

MAX_URL_CHARS = 8192

# How each media type's bytes begin: a claimed type must match what was sent, as the
# hosted APIs check it too (and would otherwise fail the request mid-stream).
_SIGNATURES: dict[MediaType, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def turn_of_parts(role: Role, parts: tuple[Part, ...], where: str) -> Message:
    """A turn from its parts in order; images are a user's only (as every API has it)."""
    if role != "user" and any(isinstance(p, ImagePart) for p in parts):
        raise InvalidRequest(f"{where}: images go in user messages only")
    return Message.of_parts(role, parts)


def image_from_url(url: str, where: str, detail: str | None = None) -> ImagePart:
    """A data URL or an https URL as an image, or `InvalidRequest` naming `where`."""
    checked_detail = _detail(detail, where)
    if url[:5].lower() == "data:":
        media_type, data = _data_url(url, where)
        return ImagePart(media_type=media_type, data=data, detail=checked_detail)
    return ImagePart(url=https_url(url, where), detail=checked_detail)


def image_from_base64(
    media_type: str, data: str, where: str, detail: str | None = None
) -> ImagePart:
    """Base64 bytes of a declared media type (Anthropic's `source`), or `InvalidRequest`."""
    checked = _media_type(media_type, where)
    return ImagePart(
        media_type=checked, data=_decoded(data, checked, where), detail=_detail(detail, where)
    )


def https_url(url: str, where: str) -> str:
    """`url` if it is an absolute https URL with a host."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"{where}: an image URL is at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme.lower() != "https" or not host:
        raise InvalidRequest(
            f"{where}: an image is a data: URL (base64) or an https URL, not {excerpt(url)}"
        )
    return url


def _data_url(url: str, where: str) -> tuple[MediaType, bytes]:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise InvalidRequest(f"{where}: a data URL needs a comma before its data")
    media_type, *params = header.split(";")
    if "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequest(f"{where}: a data URL for an image must be base64 (';base64,')")
    checked = _media_type(media_type.strip().lower(), where)
    return checked, _decoded(payload, checked, where)


def _media_type(media_type: str, where: str) -> MediaType:
    if media_type not in MEDIA_TYPES:
        raise InvalidRequest(
            f"{where}: media type {excerpt(media_type)} is not an image type taken here; "
            f"expected one of {', '.join(MEDIA_TYPES)}"
        )
    return media_type


def _decoded(payload: str, media_type: MediaType, where: str) -> bytes:
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where}: the image data is not valid base64") from None
    if not data:
        raise InvalidRequest(f"{where}: the image data is empty")
    if not data.startswith(_SIGNATURES[media_type]) or (
        media_type == "image/webp" and data[8:12] != b"WEBP"
    ):
        raise InvalidRequest(f"{where}: the image data is not {media_type} as declared")
    return data


def _detail(detail: str | None, where: str) -> Detail | None:
    if detail is None:
        return None
    if detail not in get_args(Detail):
        raise InvalidRequest(f"{where}.detail: expected one of auto, low, high")
    return detail  # type: ignore[return-value]


def sniffed_media_type(data: bytes) -> MediaType | None:
    """The image type that `data` begins as, where it is one taken here."""
    for media_type, signatures in _SIGNATURES.items():
        if data.startswith(signatures) and (media_type != "image/webp" or data[8:12] == b"WEBP"):
            return media_type
    return None


@dataclass(frozen=True, slots=True)
class ImageBounds:
    """What one request may carry (`[limits]`): images, bytes per image, bytes in all."""

    max_images: int = 20
    max_image_bytes: int = 5 * 1024 * 1024
    max_request_bytes: int = 20 * 1024 * 1024

    def check(self, messages: tuple[Message, ...]) -> None:
        """Raise `ImageLimitExceeded` naming the bound that `messages` pass."""
        images = images_of(messages)
        if len(images) > self.max_images:
            raise ImageLimitExceeded(
                f"{len(images)} images; at most {self.max_images} per request"
                " (limits.max_images_per_request)"
            )
        for image in images:
            if image.size > self.max_image_bytes:
                raise ImageLimitExceeded(
                    f"an image of {image.size} bytes; at most {self.max_image_bytes}"
                    " (limits.max_image_bytes)"
                )
        total = sum(image.size for image in images)
        if total > self.max_request_bytes:
            raise ImageLimitExceeded(
                f"images of {total} bytes in all; at most {self.max_request_bytes}"
                " (limits.max_image_request_bytes)"
            )

    def fits(self, messages: tuple[Message, ...]) -> bool:
        images = images_of(messages)
        return len(images) <= self.max_images and (
            sum(image.size for image in images) <= self.max_request_bytes
        )

    def fitted_history(
        self, history: tuple[Message, ...], new: tuple[Message, ...]
    ) -> tuple[Message, ...]:
        """`history` less its oldest turns until it and the new turns fit these bounds
        together: a conversation's images never make its next request too large."""
        start = 0
        while start < len(history) and not self.fits(history[start:] + new):
            start += 1
        if start:
            # A history begins with a user turn (Anthropic and Converse insist on it).
            while start < len(history) and history[start].role != "user":
                start += 1
        return history[start:]
