"""Images as clients give them, checked and bounded with plain function calls (no I/O)."""

from __future__ import annotations

import base64
import json

import pytest

from tokenwire.backends.memory import MemoryConversationStore
from tokenwire.core.conversations import Conversation
from tokenwire.core.images import (
    ImageBounds,
    image_from_base64,
    image_from_url,
    turn_of_parts,
)
from tokenwire.core.provider import ImagePart, Message, TextPart
from tokenwire.protocol.errors import ImageLimitExceeded, InvalidRequest
from tokenwire.protocol.messages import AiRequest, parse_client_message
from tokenwire.transports.requests import spec_from_ai_request

PNG = b"\x89PNG\r\n\x1a\n" + bytes(20)
GIF = b"GIF89a" + bytes(10)
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(10)


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("media_type", "data"),
    [("image/png", PNG), ("image/gif", GIF), ("image/webp", WEBP), ("image/jpeg", b"\xff\xd8\xff")],
)
def test_a_data_url_becomes_the_bytes_of_its_media_type(media_type: str, data: bytes) -> None:
    image = image_from_url(data_url(media_type, data), "x", "low")

    assert (image.media_type, image.data, image.url, image.detail) == (
        media_type,
        data,
        None,
        "low",
    )


def test_an_https_url_is_kept_as_a_url() -> None:
    image = image_from_url("https://example.com/a.png", "x")

    assert (image.url, image.data, image.media_type) == ("https://example.com/a.png", None, None)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/a.png", "an image is a data: URL (base64) or an https URL"),
        ("file:///etc/passwd", "an image is a data: URL (base64) or an https URL"),
        ("https:///nohost", "an image is a data: URL (base64) or an https URL"),
        ("data:image/png;base64", "a data URL needs a comma"),
        ("data:image/png," + "abc", "must be base64"),
        (data_url("image/svg+xml", b"<svg/>"), 'media type "image/svg+xml" is not an image type'),
        ("data:image/png;base64,@@@@", "not valid base64"),
        ("data:image/png;base64,", "the image data is empty"),
        (data_url("image/png", GIF), "the image data is not image/png as declared"),
        (data_url("image/webp", b"RIFF\x00\x00\x00\x00WAVE"), "not image/webp as declared"),
    ],
)
def test_what_is_not_an_image_is_invalid_request_naming_where(url: str, problem: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        image_from_url(url, "messages[0].content[2]")

    assert caught.value.message.startswith("messages[0].content[2]")
    assert problem in caught.value.message


def test_base64_with_a_media_type_is_checked_the_same_way() -> None:
    assert image_from_base64("image/png", base64.b64encode(PNG).decode(), "s").data == PNG
    with pytest.raises(InvalidRequest, match="s: media type"):
        image_from_base64("text/plain", "aGk=", "s")


def test_a_bad_detail_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"x\.detail"):
        image_from_url("https://example.com/a.png", "x", "ultra")


def test_images_go_in_user_turns_only() -> None:
    image = ImagePart(url="https://example.com/a.png")

    with pytest.raises(InvalidRequest, match="images go in user messages only"):
        turn_of_parts("assistant", (TextPart("see"), image), "messages[1].content")


def test_a_turn_of_text_parts_only_is_plain_text() -> None:
    turn = Message.of_parts("user", (TextPart("a"), TextPart("b")))

    assert turn == Message(role="user", content="ab")


def test_a_turn_with_images_keeps_its_text_as_content_and_its_order_as_parts() -> None:
    image = ImagePart(url="https://example.com/a.png")
    turn = Message.of_parts("user", (TextPart("compare "), image, TextPart(" with this")))

    assert turn.content == "compare  with this"
    assert turn.parts[1] is image
    assert turn.images == (image,)


def test_image_bytes_never_show_in_a_repr() -> None:
    image = ImagePart(media_type="image/png", data=b"\x89PNG-SECRET-BYTES")

    assert "SECRET" not in repr(Message.of_parts("user", (image,)))


def turn_with(*sizes: int) -> Message:
    images = tuple(ImagePart(media_type="image/png", data=bytes(size)) for size in sizes)
    return Message.of_parts("user", (TextPart("look"), *images))


@pytest.mark.parametrize(
    ("sizes", "bound"),
    [
        ((1, 1, 1), "3 images; at most 2 per request (limits.max_images_per_request)"),
        ((11,), "an image of 11 bytes; at most 10 (limits.max_image_bytes)"),
        ((10, 9), "images of 19 bytes in all; at most 18 (limits.max_image_request_bytes)"),
    ],
)
def test_each_bound_is_image_limit_exceeded_naming_it(sizes: tuple[int, ...], bound: str) -> None:
    bounds = ImageBounds(max_images=2, max_image_bytes=10, max_request_bytes=18)

    with pytest.raises(ImageLimitExceeded) as caught:
        bounds.check((turn_with(*sizes),))
    assert caught.value.message == bound


def test_a_request_at_every_bound_passes() -> None:
    ImageBounds(max_images=2, max_image_bytes=10, max_request_bytes=18).check((turn_with(9, 9),))


def test_history_gives_way_oldest_first_and_begins_with_a_user_turn() -> None:
    bounds = ImageBounds(max_images=2)
    answer = Message(role="assistant", content="ok")
    history = (turn_with(1), answer, turn_with(1), answer)

    assert bounds.fitted_history(history, (turn_with(1),)) == history[2:]
    assert bounds.fitted_history(history, (turn_with(),)) == history


def test_a_conversation_keeps_no_more_images_than_a_request_may_carry() -> None:
    conversation = Conversation(max_tokens=10_000, images=ImageBounds(max_images=2))
    answer = Message(role="assistant", content="ok")

    conversation.extend([turn_with(1), answer, turn_with(1), answer, turn_with(1), answer])

    assert sum(len(turn.images) for turn in conversation.turns) == 2


def test_ws_images_join_the_prompt_turn_after_its_text() -> None:
    message = parse_client_message(
        json.dumps(
            {
                "type": "ai_request",
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                ],
                "prompt": "second",
                "images": [{"url": "https://example.com/a.png", "detail": "high"}],
            }
        )
    )
    assert isinstance(message, AiRequest)

    turns = spec_from_ai_request(message, "u", None).messages

    assert [turn.images for turn in turns[:2]] == [(), ()]
    assert turns[2].content == "second"
    assert turns[2].parts == (
        TextPart("second"),
        ImagePart(url="https://example.com/a.png", detail="high"),
    )


def test_ws_images_without_a_prompt_join_the_last_user_message() -> None:
    message = parse_client_message(
        json.dumps(
            {
                "type": "ai_request",
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "user", "content": "second"},
                    {"role": "assistant", "content": "ok"},
                ],
                "images": [{"url": "https://example.com/a.png"}],
            }
        )
    )
    assert isinstance(message, AiRequest)

    turns = spec_from_ai_request(message, "u", None).messages

    assert [len(turn.images) for turn in turns] == [0, 1, 0]


async def test_the_store_forgets_the_least_recently_used_conversations_past_its_image_bytes() -> (
    None
):
    store = MemoryConversationStore(max_tokens=10_000, max_image_bytes=25)
    answer = Message(role="assistant", content="ok")

    await store.extend("u", "old", [turn_with(10), answer])
    await store.extend("u", "mid", [turn_with(10), answer])
    await store.extend("u", "new", [turn_with(10), answer])

    assert await store.history("u", "old") == ()
    assert len(await store.history("u", "mid")) == 2
    assert store.image_bytes == 20
