"""Properties of the message parser over generated input (hypothesis).

Whatever a client sends, parsing returns a message or raises the typed error
the client should see: never another exception, never an error that repeats
more than a short excerpt of the input, never an invalid request id echoed.
"""

from __future__ import annotations

import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenwire.protocol.errors import InvalidJSON, InvalidMessage, TokenwireError
from tokenwire.protocol.messages import (
    MAX_DEPTH,
    MAX_TOKEN_CHARS,
    MAX_TOKENS_LIMIT,
    AiRequest,
    Authenticate,
    parse_client_message,
    valid_request_id,
)

ERROR_LIMIT = 2000

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=80)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
message_types = st.sampled_from(
    [
        "ai_request",
        "cancel_request",
        "resume",
        "list_requests",
        "update_preferences",
        "ping",
        "authenticate",
        "dance",
        "",
    ]
)
known_keys = st.sampled_from(
    [
        "prompt",
        "messages",
        "request_id",
        "conversation_id",
        "config",
        "stream_config",
        "preferences",
        "timestamp",
        "token",
        "last_seq",
        "compact",
    ]
)
message_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    message_types,
    st.dictionaries(known_keys | st.text(max_size=10), json_values, max_size=5),
)


def outcome(frame: str | bytes) -> TokenwireError | object:
    try:
        return parse_client_message(frame)
    except TokenwireError as exc:
        return exc


def assert_well_behaved(frame: str | bytes) -> None:
    result = outcome(frame)
    if isinstance(result, TokenwireError):
        assert result.error_type
        assert 0 < len(result.message) <= ERROR_LIMIT
        assert result.request_id is None or valid_request_id(result.request_id)


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_a_typed_error(text: str) -> None:
    assert_well_behaved(text)


@given(st.binary(max_size=100))
def test_any_binary_frame_is_a_typed_error(data: bytes) -> None:
    assert isinstance(outcome(data), TokenwireError)


@given(json_values)
def test_any_json_value_parses_or_raises_a_typed_error(value: Any) -> None:
    assert_well_behaved(json.dumps(value))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(message_like)
def test_message_shaped_objects_parse_or_raise_a_typed_error(value: dict[str, Any]) -> None:
    assert_well_behaved(json.dumps(value))


@given(st.text(alphabet=string.printable, min_size=65, max_size=400), message_like)
def test_an_error_never_repeats_a_long_piece_of_the_input(
    secret: str, value: dict[str, Any]
) -> None:
    value = {**value, "prompt": secret, "type": secret if len(value) % 2 else value["type"]}
    result = outcome(json.dumps(value))
    if isinstance(result, TokenwireError):
        assert secret[:40] not in result.message


@given(st.integers(min_value=1, max_value=3 * MAX_DEPTH), st.sampled_from(["[]", "{}"]))
def test_nesting_is_refused_exactly_past_the_depth_bound(depth: int, brackets: str) -> None:
    open_, close = brackets
    inner = '"x"' if open_ == "[" else '{"k": 1}'
    nested = (open_ if open_ == "[" else '{"k":') * depth + inner + close * depth
    value = '{"type": "ping", "timestamp": ' + nested + "}"
    result = outcome(value)
    total_depth = depth + 1 + (0 if open_ == "[" else 1)
    if total_depth > MAX_DEPTH:
        assert isinstance(result, InvalidJSON)
    else:
        assert not isinstance(result, InvalidJSON)


@given(
    prompt=st.text(min_size=1, max_size=200).filter(str.strip),
    max_tokens=st.integers(min_value=1, max_value=MAX_TOKENS_LIMIT),
    temperature=st.floats(min_value=0, max_value=2),
    request_id=st.from_regex(r"[A-Za-z0-9._:\-]{1,128}", fullmatch=True),
)
def test_a_valid_request_parses_into_the_values_sent(
    prompt: str, max_tokens: int, temperature: float, request_id: str
) -> None:
    frame = json.dumps(
        {
            "type": "ai_request",
            "prompt": prompt,
            "request_id": request_id,
            "config": {"max_tokens": max_tokens, "temperature": temperature},
        }
    )
    message = parse_client_message(frame)
    assert isinstance(message, AiRequest)
    assert (message.prompt, message.request_id) == (prompt, request_id)
    assert (message.config.max_tokens, message.config.temperature) == (max_tokens, temperature)


@given(st.integers().filter(lambda n: not 0 < n <= MAX_TOKENS_LIMIT))
def test_max_tokens_outside_its_range_is_refused(max_tokens: int) -> None:
    frame = json.dumps({"type": "ai_request", "prompt": "x", "config": {"max_tokens": max_tokens}})
    assert isinstance(outcome(frame), TokenwireError)


# A credential's characters as they travel: a JWT or an API key.
tokens = st.text(alphabet=string.ascii_letters + string.digits + "-_.~+/=", min_size=1)


@given(tokens.filter(lambda t: len(t) <= MAX_TOKEN_CHARS) | st.text(min_size=1, max_size=50))
def test_an_authenticate_message_carries_its_token_exactly_as_sent(token: str) -> None:
    message = parse_client_message(json.dumps({"type": "authenticate", "token": token}))
    assert isinstance(message, Authenticate)
    assert message.token == token


@given(st.integers(min_value=MAX_TOKEN_CHARS - 2, max_value=MAX_TOKEN_CHARS + 2))
def test_a_token_is_refused_exactly_past_its_length_bound(length: int) -> None:
    result = outcome(json.dumps({"type": "authenticate", "token": "t" * length}))
    if length > MAX_TOKEN_CHARS:
        assert isinstance(result, InvalidMessage)
    else:
        assert isinstance(result, Authenticate)


@given(json_values.filter(lambda v: not isinstance(v, str)) | st.just(""))
def test_an_authenticate_message_without_a_token_string_is_an_invalid_message(
    token: Any,
) -> None:
    result = outcome(json.dumps({"type": "authenticate", "token": token}))
    assert isinstance(result, InvalidMessage)
    assert result.request_id is None


@given(
    secret=tokens.filter(lambda t: 16 <= len(t) <= MAX_TOKEN_CHARS),
    extra=st.dictionaries(
        (known_keys | st.text(max_size=10)).filter(lambda k: k not in ("type", "token")),
        json_values,
        min_size=1,
        max_size=3,
    ),
)
def test_an_error_about_an_authenticate_message_never_quotes_its_token(
    secret: str, extra: dict[str, Any]
) -> None:
    result = outcome(json.dumps({**extra, "type": "authenticate", "token": secret}))
    assert isinstance(result, InvalidMessage)
    assert secret[:16] not in result.message
