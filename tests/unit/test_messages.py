"""Parsing client frames: every malformed input maps to one typed error."""

import json

import pytest
from pydantic import ValidationError

from tokenwire.protocol.errors import (
    InvalidJSON,
    InvalidMessage,
    InvalidRequest,
    TokenwireError,
    UnknownMessageType,
)
from tokenwire.protocol.messages import (
    AiRequest,
    CancelRequest,
    Granularity,
    Ping,
    RoutingStrategy,
    UpdatePreferences,
    parse_client_message,
)


def parse(obj: object) -> object:
    return parse_client_message(json.dumps(obj))


def test_ai_request_with_full_config_parses_into_typed_fields() -> None:
    message = parse(
        {
            "type": "ai_request",
            "prompt": "hi",
            "request_id": "r-1",
            "config": {
                "routing_strategy": "cost_optimized",
                "timeout": 5,
                "max_tokens": 10,
                "temperature": 0.5,
                "options": {"tokens": 3},
            },
            "stream_config": {"granularity": "token", "progress_every": 2},
        }
    )
    assert isinstance(message, AiRequest)
    assert message.config.routing_strategy is RoutingStrategy.COST_OPTIMIZED
    assert message.config.timeout == 5.0
    assert message.stream_config.granularity is Granularity.TOKEN
    assert message.config.options == {"tokens": 3}


def test_other_messages_parse() -> None:
    assert isinstance(parse({"type": "ping", "timestamp": 1.5}), Ping)
    assert isinstance(parse({"type": "cancel_request", "request_id": "x"}), CancelRequest)
    prefs = parse({"type": "update_preferences", "preferences": {"language": "de"}})
    assert isinstance(prefs, UpdatePreferences)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("{nope", InvalidJSON),
        ("null", InvalidMessage),
        ("5", InvalidMessage),
        ("true", InvalidMessage),
        ('"text"', InvalidMessage),
        (b"\x00\x01", InvalidMessage),
        ("[1]", InvalidMessage),
        ('{"type": 5}', InvalidMessage),
        ('{"type": "dance"}', UnknownMessageType),
        ('{"type": "ai_request"}', InvalidRequest),
        ('{"type": "ai_request", "prompt": ""}', InvalidRequest),
        ('{"type": "ai_request", "prompt": ["a"]}', InvalidRequest),
        ('{"type": "ai_request", "prompt": "a", "config": {"timeout": 0}}', InvalidRequest),
        ('{"type": "ai_request", "prompt": "a", "config": {"timeout": "5"}}', InvalidRequest),
        ('{"type": "ai_request", "prompt": "a", "config": {"max_tokens": true}}', InvalidRequest),
        ('{"type": "ai_request", "prompt": "a", "config": {"options": []}}', InvalidRequest),
        ('{"type": "ai_request", "prompt": "a", "config": {"temprature": 1}}', InvalidRequest),
        (
            '{"type": "ai_request", "prompt": "a", "stream_config": {"granularity": "word"}}',
            InvalidRequest,
        ),
        ('{"type": "cancel_request"}', InvalidRequest),
        ('{"type": "update_preferences", "preferences": 3}', InvalidMessage),
    ],
)
def test_bad_frames_raise_their_wire_error(frame: str | bytes, error: type[TokenwireError]) -> None:
    with pytest.raises(error):
        parse_client_message(frame)


def test_validation_error_names_the_field_without_echoing_the_input() -> None:
    secret_prompt = "my private question"
    with pytest.raises(InvalidRequest) as caught:
        parse({"type": "ai_request", "prompt": secret_prompt, "config": {"timeout": -1}})
    assert "config.timeout" in caught.value.message
    assert secret_prompt not in caught.value.message


def test_an_unknown_key_is_named_and_a_huge_one_only_quoted() -> None:
    with pytest.raises(InvalidRequest, match=r"config\.temprature: unknown key"):
        parse({"type": "ai_request", "prompt": "a", "config": {"temprature": 1}})
    with pytest.raises(InvalidRequest) as caught:
        parse({"type": "ai_request", "prompt": "a", "config": {"k" * 10_000: 1}})
    assert len(caught.value.message) < 200


def test_rejected_request_keeps_the_client_request_id() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse({"type": "ai_request", "request_id": "mine", "prompt": ""})
    assert caught.value.request_id == "mine"


def test_messages_may_replace_the_prompt() -> None:
    message = parse({"type": "ai_request", "messages": [{"role": "user", "content": "hello"}]})
    assert isinstance(message, AiRequest)
    assert message.prompt is None
    assert message.messages is not None
    assert message.messages[0].content == "hello"


def test_unknown_role_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse({"type": "ai_request", "messages": [{"role": "wizard", "content": "x"}]})


def test_a_ping_timestamp_must_be_finite_even_past_the_decoder() -> None:
    # Given a ping whose timestamp is infinite (orjson would refuse it in JSON text)
    message = {"type": "ping", "timestamp": float("inf")}
    # When the model itself validates it, then it refuses it
    with pytest.raises(ValidationError):
        Ping.model_validate(message)


@pytest.mark.parametrize("language", ["en US", "x" * 100, 5, ""])
def test_update_preferences_refuses_a_language_that_is_not_a_tag(language: object) -> None:
    # Given preferences whose language is no language tag
    message = {"type": "update_preferences", "preferences": {"language": language}}
    # When the message is parsed, then it is refused
    with pytest.raises(InvalidMessage, match="language"):
        parse(message)


@pytest.mark.parametrize("model", ["m" * 257, 5, True])
def test_update_preferences_refuses_a_model_preference_that_is_not_a_short_name(
    model: object,
) -> None:
    # Given preferences whose model preference is not a name of at most 256 characters
    message = {"type": "update_preferences", "preferences": {"model_preference": model}}
    # When the message is parsed, then it is refused
    with pytest.raises(InvalidMessage, match="model_preference"):
        parse(message)


def test_update_preferences_accepts_a_model_preference_of_256_characters() -> None:
    # Given a model preference exactly at the limit
    message = {"type": "update_preferences", "preferences": {"model_preference": "m" * 256}}
    # When the message is parsed
    parsed = parse(message)
    # Then it is accepted as given
    assert isinstance(parsed, UpdatePreferences)
    assert parsed.preferences["model_preference"] == "m" * 256


@pytest.mark.parametrize(
    "stop", [["a", "b", "c", "d", "e"], [""], "", "x" * 257, ["x" * 257], 5, [None]]
)
def test_stop_sequences_outside_their_bounds_are_refused(stop: object) -> None:
    with pytest.raises(InvalidRequest, match="stop"):
        parse({"type": "ai_request", "prompt": "hi", "config": {"stop": stop}})


@pytest.mark.parametrize("stop", ["END", ["a", "b", "c", "d"], ["x" * 256]])
def test_stop_sequences_within_their_bounds_are_taken(stop: object) -> None:
    message = parse({"type": "ai_request", "prompt": "hi", "config": {"stop": stop}})
    assert isinstance(message, AiRequest)
    assert message.config.stop == stop
