"""Random frames and bodies against one running server (hypothesis).

Whatever a client sends, over the WebSocket (text, binary, invalid UTF-8,
fragmented and control frames, messages with mutated fields, forged tokens in
`authenticate`) or as the body of `/api/streams` and the `/v1` endpoints
(raw, hostile JSON, which `test_openapi_fuzz.py` does not send: it generates
bodies from the OpenAPI document, and `/api/streams` is not in it), the server
keeps serving (a fresh connection works after each example), answers only
with JSON events of known types or pongs, never with an `internal_error` or a
5xx, and leaves no stream behind: every stream that started ends exactly once,
a refused request gets only its error, and nothing runs once the example is
over.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import struct
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.support.auth import ENVIRON, SECRET, bearer, hs256, jwt_settings
from tests.support.raw_ws import Frame, RawWebSocket
from tests.support.server import RunningServer, running_server, ws_client
from tests.support.waiting import eventually
from tokenwire.protocol.events import EventType

pytestmark = pytest.mark.asyncio(loop_scope="module")

EVENT_TYPES = frozenset(e.value for e in EventType)
MAX_MESSAGE_BYTES = 8 * 1024


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[RunningServer]:
    """JWT auth (so that `authenticate` messages are checked for real), answers of five
    tokens at once, streams cancelled as soon as their connection goes, and the
    per-address throttles out of the way of a few hundred handshakes and bad tokens."""
    settings = jwt_settings(
        providers=[
            {"name": "simulated", "kind": "simulated", "options": {"tokens": 5, "delay_ms": 0}}
        ],
        streams={"resume_grace_seconds": 0},
        limits={
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "auth_failures_per_minute_per_address": 1_000_000,
            "handshakes_per_minute_per_address": 1_000_000,
        },
    )
    async with running_server(settings, environ=ENVIRON) as s:
        yield s


def new_user() -> str:
    return f"fuzz-{uuid.uuid4().hex[:12]}"


# -- generated JSON ---------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text put in verbatim: what `json.dumps` would not write."""

    text: str


def to_json(value: Any) -> str:
    raws: list[str] = []

    def swap(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(v, dict):
            return {k: swap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    text = json.dumps(swap(value), ensure_ascii=False)
    for n, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{n}\x00"), raw, 1)
    return text


huge_numbers = st.sampled_from(
    [
        "1e400",
        "-1e400",
        "1" + "0" * 400,
        "123456789012345678901234567890",
        "9007199254740993",
        "1.5e-400",
        "-0",
        "NaN",
        "Infinity",
        "-Infinity",
    ]
).map(Raw)
nan_ish_strings = st.sampled_from(
    ["NaN", "nan", "Infinity", "-inf", "1e999", "0x10", " 12 ", "١٢", "1_000", "", "\x00"]
)
plain_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | nan_ish_strings
)
values = st.recursive(
    plain_scalars | huge_numbers,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> Raw:
    depth = draw(st.integers(min_value=20, max_value=1500))
    if draw(st.booleans()):
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"k":' * depth + "1" + "}" * depth)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: str, payload: str) -> str:
    """A JWT with a correct HS256 signature over whatever header and claims."""
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


jwt_headers = st.sampled_from(
    [
        '{"alg":"HS256","typ":"JWT"}',
        '{"alg":"none"}',
        '{"alg":"HS512"}',
        '{"alg":"RS256","kid":"x"}',
        "{}",
        "[]",
        "null",
    ]
) | values.map(to_json)
claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.just("someone") | values,
        "exp": st.just(int(time.time()) + 3600) | values,
        "nbf": values,
        "iat": values,
        "aud": values,
        "iss": values,
    },
)
forged_tokens = st.one_of(
    st.builds(signed, jwt_headers, claims.map(to_json)),
    st.lists(st.binary(max_size=60).map(b64), min_size=1, max_size=4).map(".".join),
    st.text(max_size=100),
)

TOKEN = "<the connection's own fresh token>"
TEMPLATES: list[dict[str, Any]] = [
    {
        "type": "ai_request",
        "prompt": "hello",
        "request_id": "r1",
        "config": {
            "max_tokens": 16,
            "temperature": 0.5,
            "timeout": 5,
            "options": {"tokens": 5, "delay_ms": 0},
        },
        "stream_config": {"granularity": "token", "progress_every": 2},
    },
    {
        "type": "ai_request",
        "messages": [{"role": "user", "content": "hi"}],
        "conversation_id": "c1",
        "config": {"options": {"tokens": 50, "delay_ms": 20}},
    },
    {
        "type": "ai_request",
        "prompt": "a long answer, cancelled at the end of the example",
        "config": {"options": {"tokens": 100_000, "delay_ms": 1}},
    },
    {"type": "cancel_request", "request_id": "r1"},
    {"type": "resume", "request_id": "r1", "last_seq": 0, "compact": True},
    {"type": "list_requests"},
    {"type": "update_preferences", "preferences": {"language": "en", "theme": {"dark": True}}},
    {"type": "ping", "timestamp": 1.5},
    {"type": "authenticate", "token": TOKEN},
]
replacements = st.one_of(
    values,
    deeply_nested(),
    forged_tokens,
    st.sampled_from(["r1", "r2", "c1", "ai_request", TOKEN]),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _paths(item, (*prefix, n))


@st.composite
def mutated(draw: st.DrawFn, templates: list[dict[str, Any]]) -> Any:
    """A valid message, with a few of its fields deleted, replaced or added."""
    message = json.loads(json.dumps(draw(st.sampled_from(templates))))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = list(_paths(message))
        if not paths:
            break
        *parents, last = draw(st.sampled_from(paths))
        holder = message
        for part in parents:
            holder = holder[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(holder, dict):
            del holder[last]
        elif action == "add" and isinstance(holder, dict):
            holder[draw(st.text(max_size=12))] = draw(replacements)
        else:
            holder[last] = draw(replacements)
    return message


mutated_messages = mutated(TEMPLATES)
json_texts = st.one_of(
    values.map(to_json),
    mutated_messages.map(to_json),
    mutated_messages.map(to_json),
    deeply_nested().map(to_json),
    st.text(max_size=200),
)


# -- WebSocket frames -----------------------------------------------------------------

# What one frame sent leads to: None if the connection must go on after it, or the
# close codes that may end it.
Closes = frozenset[int] | None
Sent = tuple[bytes, Closes]
TOO_BIG = frozenset({1009})
PROTOCOL_ERROR = frozenset({1002})
# Codes a client may send in a close frame (RFC 6455, 7.4), which the server echoes.
SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """One client frame, with whatever flags the example asks for (raw_ws.py's
    `client_frame` only writes whole, masked frames)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked_bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([first, masked_bit | n])
    elif n < 1 << 16:
        head = bytes([first, masked_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, masked_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text_frame(text: str) -> bytes:
    return frame(0x1, text.encode())


def message(text: str) -> Sent:
    data = text.encode()
    return frame(0x1, data), TOO_BIG if len(data) > MAX_MESSAGE_BYTES else None


@st.composite
def fragmented(draw: st.DrawFn) -> Sent:
    """A text message in pieces (cut anywhere, even inside a character), with pings
    between them (which the protocol allows)."""
    data = draw(json_texts).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out = b""
    for n, piece in enumerate(pieces):
        out += frame(0x1 if n == 0 else 0x0, piece, fin=n == len(pieces) - 1)
        if n < len(pieces) - 1 and draw(st.booleans()):
            out += frame(0x9, draw(st.binary(max_size=20)))
    return out, TOO_BIG if len(data) > MAX_MESSAGE_BYTES else None


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Sent:
    data = draw(json_texts).encode()
    at = draw(st.integers(0, len(data)))
    bad = draw(st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8"]))
    return frame(0x1, data[:at] + bad + data[at:]), frozenset({1007, *TOO_BIG})


@st.composite
def close_frames(draw: st.DrawFn) -> Sent:
    code = draw(st.sampled_from([1000, 1001, 1003, 1005, 1006, 1011, 1015, 999, 4000, 5000]))
    reason = draw(st.text(max_size=30)).encode()
    echoed = frozenset({code}) if code in SENDABLE_CLOSE_CODES else PROTOCOL_ERROR
    return frame(0x8, struct.pack("!H", code) + reason), echoed


protocol_errors = st.one_of(
    st.binary(max_size=40).map(lambda d: frame(0x0, d)),  # a continuation with nothing to continue
    st.binary(max_size=40).map(lambda d: frame(0x1, d, fin=False) + frame(0x1, d)),
    st.binary(min_size=126, max_size=200).map(lambda d: frame(0x9, d)),  # a control frame too long
    st.binary(max_size=20).map(lambda d: frame(0x9, d, fin=False)),  # a fragmented control frame
    st.binary(max_size=20).map(lambda d: frame(0x1, d, rsv=4)),  # a reserved bit, no extension
    st.sampled_from([0x3, 0x7, 0xB, 0xF]).map(lambda op: frame(op, b"x")),  # reserved opcodes
    st.binary(max_size=20).map(lambda d: frame(0x1, d, mask=False)),  # unmasked
    st.binary(min_size=1, max_size=1).map(lambda d: frame(0x8, d)),  # a close of one byte
).map(lambda f: (f, PROTOCOL_ERROR))
too_big = st.integers(MAX_MESSAGE_BYTES - 40, 5 * MAX_MESSAGE_BYTES).map(
    lambda n: message('{"type": "ping", "timestamp": "' + "x" * n + '"}')
)
# Frames after which the connection goes on (unless a message is too big)...
ongoing_frames: st.SearchStrategy[Sent] = st.one_of(
    json_texts.map(message),
    mutated_messages.map(to_json).map(message),
    mutated_messages.map(to_json).map(message),
    st.binary(max_size=200).map(lambda d: (frame(0x2, d), None)),
    fragmented(),
    st.binary(max_size=125).map(lambda d: (frame(0x9, d), None)),
    st.binary(max_size=125).map(lambda d: (frame(0xA, d), None)),
)
# ...and frames that end it.
ending_frames = st.one_of(invalid_utf8(), close_frames(), protocol_errors, too_big)


@st.composite
def among(draw: st.DrawFn, items: st.SearchStrategy[Any], valid: list[Any]) -> list[Any]:
    """A few generated items with one valid request somewhere among them, so that
    every example has a stream to keep or lose track of."""
    sent: list[Any] = draw(st.lists(items, min_size=1, max_size=6))
    sent.insert(draw(st.integers(0, len(sent))), draw(st.sampled_from(valid)))
    return sent


@st.composite
def frame_sequences(draw: st.DrawFn) -> list[Sent]:
    """A few frames; in most examples, one that ends the connection among them."""
    sent = draw(among(ongoing_frames, [message(json.dumps(t)) for t in TEMPLATES[:3]]))
    if draw(st.integers(0, 2)):
        sent.insert(draw(st.integers(0, len(sent))), draw(ending_frames))
    return sent


# -- one example over the WebSocket -----------------------------------------------------


@dataclass
class Transcript:
    """What the server sent on one connection."""

    events: list[dict[str, Any]] = field(default_factory=list)
    pongs: list[Any] = field(default_factory=list)
    close: Frame | None = None
    # The last ping was answered: every frame before it was handled, and the
    # connection was still open.
    answered: bool = False
    # Then every stream seen starting was cancelled and seen ending.
    settled: bool = False

    def by_request(self) -> dict[str, list[dict[str, Any]]]:
        mine: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for sent in self.events:
            if sent.get("request_id") is not None:
                mine[sent["request_id"]].append(sent)
        return mine

    def unfinished(self) -> list[str]:
        return [
            rid
            for rid, events in self.by_request().items()
            if any(e["event_type"] == "stream_start" for e in events)
            and not any(e["event_type"] == "stream_end" for e in events)
        ]


async def take(ws: RawWebSocket, transcript: Transcript) -> None:
    """The next frame, recorded: a text frame must be a JSON event of a known type, or
    a pong."""
    got = await ws.recv(timeout=10)
    if got.opcode == 0x8:
        transcript.close = got
    elif got.opcode == 0x1:
        value = json.loads(got.payload.decode())
        assert isinstance(value, dict), value
        if value.get("type") == "pong":
            transcript.pongs.append(value.get("timestamp"))
        else:
            assert value.get("event_type") in EVENT_TYPES, value
            transcript.events.append(value)
    else:
        assert got.opcode in (0x9, 0xA), got  # the server's ping, or the pong to ours


async def read_until(ws: RawWebSocket, transcript: Transcript, done: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while transcript.close is None and not done():
            await take(ws, transcript)


# How a client leaves once its frames are handled: cancels what runs, waits for the
# ends and closes (1000); closes at once (1000: cancels at once); goes away (1001:
# its streams get the resume grace, 0 here); or drops the connection.
LEAVINGS = ["cancel", "close", "going_away", "drop"]


async def exchange(
    server: RunningServer, user: str, sent: list[bytes], leave: str = "cancel"
) -> Transcript:
    """Send the frames, then, while the connection is open, a last ping (answered once
    everything before it is handled), and leave as `leave` says."""
    port = int(server.url.rsplit(":", 1)[1])
    ws = await RawWebSocket.connect(port, path=f"/ws/ai-stream?access_token={hs256(user)}")
    transcript = Transcript()
    try:
        await take(ws, transcript)  # connection_status
        ws.writer.write(b"".join(sent).replace(TOKEN.encode(), hs256(user).encode()))
        ws.writer.write(text_frame('{"type": "ping", "timestamp": "last"}'))
        with contextlib.suppress(ConnectionError):
            await ws.writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_until(ws, transcript, lambda: "last" in transcript.pongs)
            transcript.answered = transcript.close is None
            if not transcript.answered or leave == "drop":
                return transcript
            if leave == "cancel":
                for rid in transcript.unfinished():
                    cancel = {"type": "cancel_request", "request_id": rid}
                    ws.writer.write(text_frame(json.dumps(cancel)))
                await read_until(ws, transcript, lambda: not transcript.unfinished())
                transcript.settled = transcript.close is None
            await ws.send_close(1001 if leave == "going_away" else 1000)
            await read_until(ws, transcript, lambda: False)
    finally:
        ws.abort()
    return transcript


# -- the properties -------------------------------------------------------------------


def internal_errors(value: Any) -> Iterator[Any]:
    """Where a server-side failure is reported: tokenwire's `internal_error`, or the
    dialects' `server_error` (OpenAI) and `api_error` (Anthropic)."""
    if isinstance(value, dict):
        if "internal_error" in (value.get("error_type"), value.get("code")) or value.get(
            "type"
        ) in ("server_error", "api_error"):
            yield value
        for item in value.values():
            yield from internal_errors(item)
    elif isinstance(value, list):
        for item in value:
            yield from internal_errors(item)


def describe(transcript: Transcript) -> None:
    """What the example led to, in hypothesis's statistics (`--hypothesis-show-statistics`)."""
    close = transcript.close.close_code if transcript.close is not None else None
    event(f"closed with {close}" if not transcript.answered else "answered")
    starts = sum(e["event_type"] == "stream_start" for e in transcript.events)
    event(f"{min(starts, 3)}{'+' if starts >= 3 else ''} streams started")
    for kind in {
        e["data"].get("error_type") for e in transcript.events if e["event_type"] == "error"
    }:
        event(f"error {kind}")


def assert_every_stream_ends_once_on_the_wire(transcript: Transcript, replays: bool) -> None:
    """Per request id: a request refused before it started gets error events only; one
    that started runs from a stream_start at seq 1 to exactly one stream_end, the last
    of its events. With `replays` (a resume was sent, or an id used again), a request's
    events may come again; then only the last of them must be a stream_end."""
    describe(transcript)
    for rid, events in transcript.by_request().items():
        sequenced = [e for e in events if e.get("seq") is not None]
        loose = [e for e in events if e.get("seq") is None]
        assert all(e["event_type"] == "error" for e in loose), (rid, loose)
        if not sequenced:
            continue
        kinds = [e["event_type"] for e in sequenced]
        if transcript.settled:
            assert kinds[-1] == "stream_end", (rid, kinds)
        if replays:
            continue
        assert [e["seq"] for e in sequenced] == list(range(1, len(sequenced) + 1)), (rid, kinds)
        assert kinds[0] == "stream_start", (rid, kinds)
        assert kinds.count("stream_end") <= 1, (rid, kinds)


async def assert_every_stream_ended_once(server: RunningServer, user: str) -> None:
    """Nothing runs any more, and each of the user's requests' logs (which a replay does
    not repeat) holds a stream_start, then exactly one stream_end, last."""
    await eventually(lambda: server.gateway.running == 0, 5)
    for log in await server.gateway.logs.of_user(user):
        kinds = [record.event_type.value for record in log.records()]
        assert log.finished, kinds
        assert kinds[0] == "stream_start", kinds
        assert kinds.count("stream_end") == 1, kinds
        assert kinds[-1] == "stream_end", kinds


async def assert_still_serving(server: RunningServer) -> None:
    async with ws_client(server, additional_headers=bearer(hs256("prober"))) as c:
        await c.send({"type": "ping", "timestamp": "alive"})
        assert (await c.recv())["type"] == "pong"


def expected_closes(sent: list[Sent]) -> Closes:
    """The close codes that may end a connection sent these frames, or None if it goes on.

    The first frame that ends the connection says how, with one exception. The message
    limit (1009) is the application's: it sees a message only after uvicorn's WebSocket
    layer has parsed and checked everything read with it, and that layer must fail the
    connection at once on a protocol error or invalid UTF-8 (RFC 6455, 5.2, 5.4, 8.1:
    "MUST _Fail the WebSocket Connection_") and answers a close frame at once (5.5.1),
    while the application has not yet started its closing handshake. So after a
    message too big, the next frame that the WebSocket layer itself ends on may close
    the connection first, depending on whether it came in the same read.
    """
    closes: Closes = None
    for _, ends in sent:
        if ends is None:
            continue
        closes = ends if closes is None else closes | ends
        if ends != TOO_BIG:
            break
    return closes


def too_big_message() -> Sent:
    return message('{"type": "ping", "timestamp": "' + "x" * MAX_MESSAGE_BYTES + '"}')


@fuzz(100)
@given(sent=frame_sequences(), leave=st.sampled_from(LEAVINGS))
# Found by hypothesis: a message too big, then, in the same write, a continuation frame with
# nothing to continue (closed 1002), or invalid UTF-8 (closed 1007).
@example(sent=[too_big_message(), (frame(0x0, b"x"), PROTOCOL_ERROR)], leave="cancel")
@example(sent=[too_big_message(), (frame(0x1, b"\xff"), frozenset({1007}))], leave="cancel")
async def test_random_frames_never_break_the_server_or_leave_a_stream_behind(
    server: RunningServer, sent: list[Sent], leave: str
) -> None:
    user = new_user()
    transcript = await exchange(server, user, [data for data, _ in sent], leave)
    assert not list(internal_errors(transcript.events))
    # The connection goes on, or ends as its frames say.
    closes = expected_closes(sent)
    if closes is None:
        assert transcript.answered, transcript.close
    else:
        assert transcript.close is not None
        assert transcript.close.close_code in closes, (transcript.close, closes)
    assert_every_stream_ends_once_on_the_wire(transcript, replays=True)
    await assert_every_stream_ended_once(server, user)
    await assert_still_serving(server)


@fuzz(80)
@given(messages=among(mutated_messages, TEMPLATES[:3]), leave=st.sampled_from(LEAVINGS))
async def test_mutated_messages_get_answers_or_typed_errors_and_every_stream_ends_once(
    server: RunningServer, messages: list[Any], leave: str
) -> None:
    user = new_user()
    sent = [message(to_json(m)) for m in messages]
    transcript = await exchange(server, user, [data for data, _ in sent], leave)
    assert not list(internal_errors(transcript.events))
    # Only a message past max_message_bytes closes the connection (1009).
    if any(closes for _, closes in sent):
        assert transcript.close is not None
        assert transcript.close.close_code == 1009, transcript.close
    else:
        assert transcript.answered, transcript.close
    started = [str(m.get("request_id")) for m in messages if m.get("type") == "ai_request"]
    replays = len(started) != len(set(started)) or any(m.get("type") == "resume" for m in messages)
    assert_every_stream_ends_once_on_the_wire(transcript, replays)
    await assert_every_stream_ended_once(server, user)


# -- HTTP bodies ----------------------------------------------------------------------

HTTP_TEMPLATES: dict[str, list[dict[str, Any]]] = {
    "/api/streams": [
        {
            "prompt": "hello",
            "request_id": "h1",
            "config": {"options": {"tokens": 5, "delay_ms": 0}},
            "stream_config": {"granularity": "token"},
        }
    ],
    "/v1/chat/completions": [
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 16,
        }
    ],
    "/v1/responses": [{"model": "auto", "input": "hi", "stream": True}],
    "/v1/messages": [
        {
            "model": "auto",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
    ],
}


@st.composite
def http_bodies(draw: st.DrawFn, path: str) -> bytes:
    kinds = ["valid", "valid", "mutated", "mutated", "mutated", "json", "binary", "invalid_utf8"]
    kind = draw(st.sampled_from(kinds))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "valid":
        return json.dumps(HTTP_TEMPLATES[path][0]).encode()
    text = draw(mutated(HTTP_TEMPLATES[path]).map(to_json) if kind != "json" else json_texts)
    if kind == "invalid_utf8":
        at = draw(st.integers(0, len(text)))
        return text[:at].encode() + b"\xff\xfe" + text[at:].encode()
    return text.encode()


@st.composite
def http_calls(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    path = draw(st.sampled_from(sorted(HTTP_TEMPLATES)))
    content_type = draw(
        st.sampled_from(["application/json", "application/json", "text/plain", None])
    )
    return path, draw(http_bodies(path)), content_type


def sse_data(body: str) -> list[Any]:
    found = []
    for line in body.splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            found.append(json.loads(line[5:]))
    return found


async def read_stream(http: httpx.AsyncClient, response: httpx.Response, path: str) -> str:
    """The whole event stream; one of `/api/streams` still going after a second is
    cancelled (its options may ask for a long answer), and must then end."""
    body = ""
    chunks = response.aiter_text()
    cancelled = False
    async with asyncio.timeout(15):
        while True:
            try:
                body += await asyncio.wait_for(anext(chunks), 1 if not cancelled else 10)
            except StopAsyncIteration:
                return body
            except TimeoutError:
                assert path == "/api/streams", body[-500:]
                assert not cancelled, body[-500:]
                rid = response.headers["tokenwire-request-id"]
                answer = await http.delete(f"/api/streams/{quote(rid, safe='')}")
                assert answer.status_code == 200, answer.text
                cancelled = True


@fuzz(80)
@given(call=http_calls())
async def test_hostile_bodies_never_get_a_5xx_and_every_stream_ends_once(
    server: RunningServer, call: tuple[str, bytes, str | None]
) -> None:
    path, body, content_type = call
    user = new_user()
    headers = bearer(hs256(user)) | ({"content-type": content_type} if content_type else {})
    async with (
        httpx.AsyncClient(base_url=server.url, headers=bearer(hs256(user))) as http,
        http.stream("POST", path, content=body, headers=headers, timeout=10) as response,
    ):
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = await read_stream(http, response, path)
            assert not list(internal_errors(sse_data(text))), text[-2000:]
            if path == "/api/streams":
                assert text.count("event: stream_end") == 1, text[-2000:]
        else:
            text = (await response.aread()).decode()
            assert not list(internal_errors(json.loads(text) if text else None)), text
        event(f"{path} {response.status_code}")
        assert response.status_code < 500, (response.status_code, text[:2000])
    await assert_every_stream_ended_once(server, user)


# What a header may hold: printable ASCII, no whitespace at either end.
credentials = (
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
    | forged_tokens.filter(lambda t: t.isascii() and t.isprintable())
).map(str.strip)


@fuzz(60)
@given(
    method_path=st.sampled_from(
        [
            ("GET", "/api/streams"),
            ("POST", "/api/streams"),
            ("GET", "/api/streams/{id}/events"),
            ("DELETE", "/api/streams/{id}"),
            ("GET", "/api/streaming/stats"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/messages"),
            ("GET", "/v1/responses/{id}"),
            ("GET", "/v1/models"),
        ]
    ),
    where=st.sampled_from(
        ["authorization", "bearer", "x-api-key", "query", "none", "valid", "valid", "valid"]
    ),
    credential=credentials,
    request_id=st.text(max_size=140),
    last_event_id=st.none() | st.text(alphabet="0123456789-+ x", max_size=30).map(str.strip),
)
async def test_random_credentials_ids_and_last_event_ids_never_get_a_5xx(
    server: RunningServer,
    method_path: tuple[str, str],
    where: str,
    credential: str,
    request_id: str,
    last_event_id: str | None,
) -> None:
    method, path = method_path
    url = path.replace("{id}", quote(request_id, safe="") or "x")
    headers: dict[str, str] = {}
    params: dict[str, str] = {}
    if where == "authorization":
        headers["authorization"] = credential
    elif where == "bearer":
        headers["authorization"] = f"Bearer {credential}".strip()
    elif where == "x-api-key":
        headers["x-api-key"] = credential
    elif where == "query":
        params["access_token"] = credential
    elif where == "valid":
        headers |= bearer(hs256(new_user()))
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.request(
            method, url, headers=headers, params=params, json={"prompt": "x"}, timeout=10
        )
    event(f"{where} {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    await eventually(lambda: server.gateway.running == 0, 5)
