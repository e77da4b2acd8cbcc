"""Authentication on every transport: each mode lets its users in as themselves, each bad
credential is refused before anything runs, a credential counts wherever a client may put
it, only the probes and the page are open, the log keeps no secret but audits each
refusal, and start-up refuses what cannot work. One server per mode serves the module;
expiry on an open connection is in test_auth_expiry.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jwt
import openai
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.support.auth import (
    ADA_KEY,
    API_KEYS,
    BOB_KEY,
    ENVIRON,
    KEYS_ENV,
    SECRET,
    SECRET_ENV,
    api_key_settings,
    bearer,
    hs256,
    jwt_settings,
)
from tests.support.process import run_cli, serving
from tests.support.server import RunningServer, of_type, running_server, simulated_settings
from tokenwire.app import build_app
from tokenwire.settings import ConfigError

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Distinctive, so that the log test can look for it.
PROMPT = "a-private-prompt: what does the unladen swallow carry?"
AUDIENCE = "tokenwire-tests"
ISSUER = "https://issuer.example"
PROVIDERS = [{"name": "simulated", "kind": "simulated", "options": {"tokens": 8, "delay_ms": 0}}]
# Every refusal below comes from 127.0.0.1: the per-address throttle must not step in.
LIMITS = {
    "auth_failures_per_minute_per_address": 100_000,
    "handshakes_per_minute_per_address": 100_000,
}
KEY_OF_USER = {user: key for key, user in API_KEYS.items()}
# With authentication on, who the caller claims to be counts for nothing.
MALLORY = {"user_id": "mallory"}


# -- keys, tokens and the servers that check them ------------------------------------------


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    other_rsa: rsa.RSAPrivateKey
    ec: ec.EllipticCurvePrivateKey
    other_ec: ec.EllipticCurvePrivateKey
    pem_file: Path
    jwks_file: Path

    @property
    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    made = Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        other_rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        other_ec=ec.generate_private_key(ec.SECP256R1()),
        pem_file=folder / "rsa.pem",
        jwks_file=folder / "jwks.json",
    )
    made.pem_file.write_bytes(made.public_pem)
    jwk = ECAlgorithm.to_jwk(made.ec.public_key(), as_dict=True) | {"kid": "ec-1", "use": "sig"}
    made.jwks_file.write_text(json.dumps({"keys": [jwk]}))
    return made


def claims(sub: str, **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 300}
    payload.update(changes)
    return payload


def rs256(
    keys: Keys, sub: str = "ada", *, key: rsa.RSAPrivateKey | None = None, **changes: Any
) -> str:
    payload = claims(sub, **{"aud": AUDIENCE, "iss": ISSUER, **changes})
    return jwt.encode(payload, key or keys.rsa, algorithm="RS256")


def es256(keys: Keys, sub: str = "ada", *, key: Any = None, kid: str = "ec-1") -> str:
    return jwt.encode(claims(sub), key or keys.ec, algorithm="ES256", headers={"kid": kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"


def alg_none(payload: dict[str, Any]) -> str:
    return unsigned({"alg": "none", "typ": "JWT"}, payload) + "."


def hs_rs_confusion(keys: Keys) -> str:
    """HS256 keyed with the server's RSA public key: PyJWT will not sign it, so by hand."""
    signing_input = unsigned(
        {"alg": "HS256", "typ": "JWT"}, claims("ada", aud=AUDIENCE, iss=ISSUER)
    )
    mac = hmac.new(keys.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


@dataclass(frozen=True)
class Mode:
    server: RunningServer
    # A valid credential naming the user (None: authentication is off).
    mint: Callable[[str], str | None]

    @property
    def authenticating(self) -> bool:
        return self.mint("ada") is not None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def modes(keys: Keys) -> AsyncIterator[dict[str, Mode]]:
    tables: dict[str, Any] = {"providers": PROVIDERS, "limits": LIMITS}
    rs_auth = {
        "mode": "jwt",
        "jwt_public_key_file": str(keys.pem_file),
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
        "admin_users": ["root"],
    }
    jwks_auth = {"mode": "jwt", "jwks_file": str(keys.jwks_file), "admin_users": ["root"]}
    configured: dict[str, tuple[Any, Callable[[str], str | None]]] = {
        "none": (simulated_settings(**tables), lambda user: None),
        "api_key": (api_key_settings(**tables), KEY_OF_USER.__getitem__),
        "jwt_hs256": (jwt_settings(**tables), hs256),
        "jwt_rs256": (simulated_settings(auth=rs_auth, **tables), lambda u: rs256(keys, u)),
        "jwt_es256_jwks": (simulated_settings(auth=jwks_auth, **tables), lambda u: es256(keys, u)),
    }
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for name, (settings, mint) in configured.items():
            server = await stack.enter_async_context(running_server(settings, environ=ENVIRON))
            running[name] = Mode(server, mint)
        yield running


async def owned(server: RunningServer, user: str) -> set[str]:
    """The ids of the requests the server holds for `user`."""
    return {entry["request_id"] for entry in await server.gateway.requests_of(user)}


# -- one call on each transport, presenting the credential the transport's usual way ---------


def new_id() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


# The servers are plain HTTP on loopback; one TLS context for every client spares each
# the 60 ms of loading certifi's bundle.
TLS = ssl.create_default_context()


def http_client(url: str, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, verify=TLS, **options)


def openai_client(url: str, credential: str | None, query: dict[str, str]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=url + "/v1",
        api_key=credential or "unused",
        max_retries=0,
        timeout=15,
        default_query=query or None,
        http_client=openai.DefaultAsyncHttpxClient(verify=TLS),
    )


def openai_options(credential: str | None) -> dict[str, Any]:
    # Without a credential the SDK must be told to send no Authorization header at all.
    return {} if credential else {"extra_headers": {"Authorization": openai.Omit()}}


def anthropic_client(
    url: str, credential: str | None, query: dict[str, str]
) -> anthropic.AsyncAnthropic:
    # `x-api-key`, as Anthropic's API takes it (this SDK would otherwise send a Bearer).
    headers: dict[str, Any] = {"Authorization": anthropic.Omit()}
    if credential:
        headers["X-Api-Key"] = credential
    return anthropic.AsyncAnthropic(
        base_url=url,
        max_retries=0,
        timeout=15,
        default_headers=headers,
        default_query=query or None,
        http_client=anthropic.DefaultAsyncHttpxClient(verify=TLS),
    )


def ws_url(url: str, query: dict[str, str]) -> str:
    encoded = httpx.QueryParams(query)
    return url.replace("http", "ws", 1) + "/ws/ai-stream" + (f"?{encoded}" if query else "")


def sse_text(body: str) -> str:
    """The answer text in an SSE response of tokenwire events."""
    frames = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert frames[-1]["event_type"] == "stream_end"
    return "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))


HTTP_PLACES = ["authorization", "x-api-key", "access_token"]
WS_PLACES = [*HTTP_PLACES, "subprotocol"]
Presented = tuple[dict[str, str], dict[str, str], list[Subprotocol] | None]


def presented(place: str, credential: str | None) -> Presented:
    """The query parameters, headers and WebSocket subprotocols carrying `credential`."""
    if credential is None:
        return {}, {}, None
    if place == "access_token":
        return {"access_token": credential}, {}, None
    if place == "x-api-key":
        return {}, {"x-api-key": credential}, None
    if place == "subprotocol":
        return {}, {}, [Subprotocol("tokenwire"), Subprotocol(f"bearer.{credential}")]
    return {}, bearer(credential), None


@dataclass(frozen=True)
class Answer:
    request_id: str
    text: str
    # The requests the connection's user has, as the transport lists them.
    listed: set[str]


async def ws_ask(url: str, place: str, credential: str | None, query: dict[str, str]) -> Answer:
    """One request over a WebSocket whose credential is in `place`."""
    carried, headers, protocols = presented(place, credential)
    target = ws_url(url, {**query, **carried})
    connecting = connect(target, additional_headers=headers, subprotocols=protocols)
    async with asyncio.timeout(15), connecting as ws:
        assert json.loads(await ws.recv())["data"]["status"] == "connected"
        request_id = new_id()
        await ws.send(
            json.dumps({"type": "ai_request", "prompt": PROMPT, "request_id": request_id})
        )
        frames = []
        while not frames or frames[-1]["event_type"] != "stream_end":
            frames.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "list_requests"}))
        listed = json.loads(await ws.recv())["data"]["requests"]
    assert frames[-1]["data"]["status"] == "completed"
    text = "".join(f["data"]["chunk"] for f in of_type(frames, "chunk"))
    return Answer(request_id, text, {entry["request_id"] for entry in listed})


async def on_websocket(url: str, credential: str | None, query: dict[str, str]) -> str:
    return (await ws_ask(url, "authorization", credential, query)).text


async def on_sse(url: str, credential: str | None, query: dict[str, str]) -> str:
    headers = bearer(credential) if credential else {}
    async with http_client(url, headers=headers, params=query) as http:
        response = (await http.post("/api/streams", json={"prompt": PROMPT})).raise_for_status()
    return sse_text(response.text)


async def on_sse_reattached(url: str, credential: str | None, query: dict[str, str]) -> str:
    headers = bearer(credential) if credential else {}
    request_id = new_id()
    async with http_client(url, headers=headers, params=query) as http:
        body = {"prompt": PROMPT, "request_id": request_id}
        (await http.post("/api/streams", json=body)).raise_for_status()
        again = await http.get(f"/api/streams/{request_id}/events", headers={"last-event-id": "1"})
    return sse_text(again.raise_for_status().text)


async def on_openai_chat(url: str, credential: str | None, query: dict[str, str]) -> str:
    async with openai_client(url, credential, query) as client:
        answer = await client.chat.completions.create(
            model="simulated",
            messages=[{"role": "user", "content": PROMPT}],
            **openai_options(credential),
        )
    return answer.choices[0].message.content or ""


async def on_openai_chat_stream(url: str, credential: str | None, query: dict[str, str]) -> str:
    async with openai_client(url, credential, query) as client:
        stream = await client.chat.completions.create(
            model="simulated",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            **openai_options(credential),
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


async def on_openai_responses(url: str, credential: str | None, query: dict[str, str]) -> str:
    async with openai_client(url, credential, query) as client:
        response = await client.responses.create(
            model="simulated", input=PROMPT, **openai_options(credential)
        )
    return response.output_text


async def on_openai_responses_retrieved(
    url: str, credential: str | None, query: dict[str, str]
) -> str:
    async with openai_client(url, credential, query) as client:
        options = openai_options(credential)
        created = await client.responses.create(model="simulated", input=PROMPT, **options)
        response = await client.responses.retrieve(created.id, **options)
    return response.output_text


async def on_anthropic_messages(url: str, credential: str | None, query: dict[str, str]) -> str:
    async with anthropic_client(url, credential, query) as client:
        message = await client.messages.create(
            model="simulated", max_tokens=50, messages=[{"role": "user", "content": PROMPT}]
        )
    block = message.content[0]
    assert block.type == "text"
    return block.text


Call = Callable[[str, str | None, dict[str, str]], Awaitable[str]]
CALLS: dict[str, Call] = {
    "websocket": on_websocket,
    "sse": on_sse,
    "sse_reattached": on_sse_reattached,
    "openai_chat": on_openai_chat,
    "openai_chat_stream": on_openai_chat_stream,
    "openai_responses": on_openai_responses,
    "openai_responses_retrieved": on_openai_responses_retrieved,
    "anthropic_messages": on_anthropic_messages,
}


# -- each mode, on every transport ------------------------------------------------------------


@pytest.mark.parametrize("transport", CALLS)
@pytest.mark.parametrize(
    ("mode", "user"),
    [
        ("none", "ada"),
        ("none", None),
        ("api_key", "bob"),
        ("jwt_hs256", "ada"),
        ("jwt_rs256", "ada"),
        ("jwt_es256_jwks", "ada"),
    ],
)
async def test_each_mode_serves_its_user_on_every_transport(
    modes: dict[str, Mode], mode: str, user: str | None, transport: str
) -> None:
    given = modes[mode]
    expected = user or "anonymous"
    # Authentication off: the user is `user_id`. On: `user_id` is ignored.
    query = MALLORY if given.authenticating else ({"user_id": user} if user else {})
    before = await owned(given.server, expected)

    answer = await CALLS[transport](given.server.url, given.mint(expected), query)

    assert answer.strip()
    assert len(await owned(given.server, expected) - before) == 1
    if given.authenticating:
        assert await owned(given.server, "mallory") == set()


# -- each bad credential, refused on every transport ------------------------------------------


Mint = Callable[[Keys], str | None]
BAD_CREDENTIALS: dict[str, tuple[str, Mint]] = {
    # name: (the mode whose server must refuse it, how to make it)
    "missing": ("jwt_rs256", lambda keys: None),
    "garbage": ("jwt_rs256", lambda keys: "garbage-that-is-no-token"),
    "expired": ("jwt_rs256", lambda keys: rs256(keys, exp=int(time.time()) - 120)),
    # Beyond the 30 s leeway.
    "not_yet_valid": ("jwt_rs256", lambda keys: rs256(keys, nbf=int(time.time()) + 120)),
    "wrong_signature": ("jwt_rs256", lambda keys: rs256(keys, key=keys.other_rsa)),
    "alg_none": ("jwt_rs256", lambda keys: alg_none(claims("ada", aud=AUDIENCE, iss=ISSUER))),
    "hs_rs_confusion": ("jwt_rs256", hs_rs_confusion),
    "wrong_audience": ("jwt_rs256", lambda keys: rs256(keys, aud="another-service")),
    "wrong_issuer": ("jwt_rs256", lambda keys: rs256(keys, iss="https://issuer.evil.example")),
    "hs256_wrong_secret": (
        "jwt_hs256",
        lambda keys: jwt.encode(claims("ada"), "x" * 40, algorithm="HS256"),
    ),
    "hs256_alg_none": ("jwt_hs256", lambda keys: alg_none(claims("ada"))),
    "jwks_wrong_key": ("jwt_es256_jwks", lambda keys: es256(keys, key=keys.other_ec)),
    "jwks_unknown_kid": ("jwt_es256_jwks", lambda keys: es256(keys, kid="not-published")),
    "api_key_unknown": ("api_key", lambda keys: ADA_KEY + "0"),
    "api_key_missing": ("api_key", lambda keys: None),
}


def refused_json(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_failed"
    return response.text + str(dict(response.headers))


async def ws_refused(url: str, place: str, credential: str | None) -> str:
    """The refused handshake's headers and body, as text."""
    query, headers, protocols = presented(place, credential)
    with pytest.raises(InvalidStatus) as caught:
        await connect(ws_url(url, query), additional_headers=headers, subprotocols=protocols)
    response = caught.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert json.loads(response.body)["error"]["type"] == "authentication_failed"
    return response.body.decode() + str(dict(response.headers))


def seen_in(refusal: BaseException) -> str:
    """What the client was told, once checked to be a 401 in the transport's own shape."""
    if isinstance(refusal, httpx.HTTPStatusError):
        return refused_json(refusal.response)
    if isinstance(refusal, openai.AuthenticationError):
        assert refusal.status_code == 401
        assert refusal.code == "authentication_failed"
        return str(refusal) + json.dumps(refusal.body)
    assert isinstance(refusal, anthropic.AuthenticationError)
    assert refusal.status_code == 401
    assert refusal.body["type"] == "error"
    assert refusal.body["error"]["type"] == "authentication_error"
    return str(refusal)


def getting(path: str) -> Call:
    async def get(url: str, credential: str | None, query: dict[str, str]) -> str:
        headers = bearer(credential) if credential else {}
        async with http_client(url, headers=headers, params=query) as http:
            return (await http.get(path)).raise_for_status().text

    return get


# Each refusable call, and what its client raises when refused (the WebSocket's is apart).
REFUSABLE: dict[str, tuple[Call, type[BaseException]]] = {
    "sse": (on_sse, httpx.HTTPStatusError),
    "sse_reattach": (getting("/api/streams/r-1/events"), httpx.HTTPStatusError),
    "admin_stats": (getting("/api/streaming/stats"), httpx.HTTPStatusError),
    "admin_sessions": (getting("/api/streaming/sessions"), httpx.HTTPStatusError),
    "admin_providers": (getting("/api/providers"), httpx.HTTPStatusError),
    "openai_chat": (on_openai_chat, openai.AuthenticationError),
    "openai_chat_stream": (on_openai_chat_stream, openai.AuthenticationError),
    "openai_responses": (on_openai_responses, openai.AuthenticationError),
    "anthropic_messages": (on_anthropic_messages, anthropic.AuthenticationError),
}


async def refused(transport: str, url: str, credential: str | None) -> str:
    """Make the call with `credential`, which must be refused; what the client was told."""
    if transport == "websocket":
        return await ws_refused(url, "authorization", credential)
    call, error = REFUSABLE[transport]
    with pytest.raises(error) as caught:
        await call(url, credential, {})
    return seen_in(caught.value)


@pytest.mark.parametrize("transport", ["websocket", *REFUSABLE])
@pytest.mark.parametrize("bad", BAD_CREDENTIALS)
async def test_a_bad_credential_is_refused_on_every_transport_before_anything_runs(
    modes: dict[str, Mode], keys: Keys, bad: str, transport: str
) -> None:
    mode, mint = BAD_CREDENTIALS[bad]
    server, credential = modes[mode].server, mint(keys)
    before = await owned(server, "ada")

    seen = await refused(transport, server.url, credential)

    if credential:
        assert credential not in seen
    assert await owned(server, "ada") == before


# -- where a credential may be, and whose requests it makes ----------------------------------


@pytest.mark.parametrize("place", WS_PLACES)
@pytest.mark.parametrize("mode", ["api_key", "jwt_hs256"])
async def test_a_websocket_credential_counts_in_each_place_and_user_id_is_ignored(
    modes: dict[str, Mode], mode: str, place: str
) -> None:
    given = modes[mode]

    answer = await ws_ask(given.server.url, place, given.mint("bob"), MALLORY)

    assert answer.request_id in answer.listed
    assert answer.listed == await owned(given.server, "bob")
    assert await owned(given.server, "mallory") == set()


@pytest.mark.parametrize("place", WS_PLACES)
async def test_a_bad_websocket_credential_is_refused_in_each_place(
    modes: dict[str, Mode], place: str
) -> None:
    token = hs256("ada", lifetime=-120)

    seen = await ws_refused(modes["jwt_hs256"].server.url, place, token)

    assert token not in seen


MESSAGES = [{"role": "user", "content": PROMPT}]
HTTP_CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "sse": ("/api/streams", {"prompt": PROMPT}),
    "openai_chat": ("/v1/chat/completions", {"model": "simulated", "messages": MESSAGES}),
    "anthropic_messages": (
        "/v1/messages",
        {"model": "simulated", "max_tokens": 20, "messages": MESSAGES},
    ),
}


async def http_post(
    url: str, endpoint: str, place: str, credential: str | None, query: dict[str, str]
) -> httpx.Response:
    """A raw call of `endpoint` whose credential is in `place`."""
    carried, headers, _ = presented(place, credential)
    path, body = HTTP_CALLS[endpoint]
    async with http_client(url, headers=headers) as http:
        return await http.post(path, json=body, params={**query, **carried})


@pytest.mark.parametrize("place", HTTP_PLACES)
@pytest.mark.parametrize("endpoint", HTTP_CALLS)
async def test_an_http_credential_counts_in_each_place_and_user_id_is_ignored(
    modes: dict[str, Mode], endpoint: str, place: str
) -> None:
    given = modes["jwt_hs256"]
    query, headers, _ = presented(place, given.mint("bob"))
    before = await owned(given.server, "bob")

    response = await http_post(given.server.url, endpoint, place, given.mint("bob"), MALLORY)

    assert response.status_code == 200, response.text
    made = await owned(given.server, "bob") - before
    assert len(made) == 1
    async with http_client(given.server.url, headers=headers) as http:
        listed = (await http.get("/api/streams", params={**query, **MALLORY})).json()["requests"]
    assert made <= {entry["request_id"] for entry in listed}
    assert await owned(given.server, "mallory") == set()


@pytest.mark.parametrize("place", HTTP_PLACES)
@pytest.mark.parametrize("endpoint", HTTP_CALLS)
async def test_a_bad_http_credential_is_refused_in_each_place(
    modes: dict[str, Mode], endpoint: str, place: str
) -> None:
    token = alg_none(claims("ada"))

    response = await http_post(modes["jwt_hs256"].server.url, endpoint, place, token, {})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert token not in response.text


@pytest.mark.parametrize("first", ["tokenwire", "bearer"])
async def test_only_the_plain_subprotocol_is_echoed_when_one_is_offered(
    modes: dict[str, Mode], first: str
) -> None:
    token = hs256("ada")
    offered = [Subprotocol("tokenwire"), Subprotocol(f"bearer.{token}")]
    if first == "bearer":
        offered.reverse()

    async with connect(ws_url(modes["jwt_hs256"].server.url, {}), subprotocols=offered) as ws:
        assert json.loads(await ws.recv())["data"]["status"] == "connected"
        assert ws.subprotocol == "tokenwire"
        assert ws.response is not None
        assert ws.response.headers["sec-websocket-protocol"] == "tokenwire"


async def test_a_lone_bearer_subprotocol_is_echoed_as_browsers_require(
    modes: dict[str, Mode],
) -> None:
    offered = Subprotocol(f"bearer.{hs256('ada')}")

    async with connect(ws_url(modes["jwt_hs256"].server.url, {}), subprotocols=[offered]) as ws:
        assert json.loads(await ws.recv())["data"]["status"] == "connected"
        assert ws.subprotocol == offered


# -- what is open, and what is not ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/"])
@pytest.mark.parametrize("mode", ["api_key", "jwt_rs256"])
async def test_the_probes_and_the_page_need_no_credential(
    modes: dict[str, Mode], mode: str, path: str
) -> None:
    async with http_client(modes[mode].server.url) as http:
        response = await http.get(path)

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/streams"),
        ("POST", "/api/streams"),
        ("GET", "/api/streams/r-1/events"),
        ("DELETE", "/api/streams/r-1"),
        ("GET", "/api/providers"),
        ("GET", "/api/streaming/stats"),
        ("GET", "/api/streaming/sessions"),
        ("GET", "/ws/ai-stream"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/resp_1"),
        ("POST", "/v1/messages"),
    ],
)
async def test_everything_else_refuses_a_caller_without_a_credential_in_its_own_dialect(
    modes: dict[str, Mode], method: str, path: str
) -> None:
    async with http_client(modes["api_key"].server.url) as http:
        response = await http.request(method, path, json={} if method == "POST" else None)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
    elif path.startswith("/v1/"):
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == "authentication_failed"
    else:
        assert body["error"]["type"] == "authentication_failed"


async def test_the_admin_views_open_to_an_admin_and_are_403_to_another_user(
    modes: dict[str, Mode],
) -> None:
    given = modes["api_key"]
    async with http_client(given.server.url) as http:
        admin = await http.get("/api/providers", headers=bearer(given.mint("root") or ""))
        user = await http.get("/api/providers", headers=bearer(given.mint("ada") or ""))

    assert admin.status_code == 200
    assert admin.json()["providers"][0]["name"] == "simulated"
    assert user.status_code == 403


# -- what the log keeps -----------------------------------------------------------------------

AUDIT_REASONS = {
    "api_key": {"missing credential", "invalid credential"},
    "jwt": {
        "missing credential",
        "invalid credential",
        "expired credential",
        "credential not yet valid",
    },
}
AUTH_TABLES = {
    "api_key": f'mode = "api_key"\napi_keys_env = "{KEYS_ENV}"',
    "jwt": f'mode = "jwt"\njwt_secret_env = "{SECRET_ENV}"',
}


def config_file(folder: Path, mode: str) -> Path:
    path = folder / "tokenwire.toml"
    path.write_text(
        "[[providers]]\n"
        'name = "simulated"\n'
        'kind = "simulated"\n'
        "options = { tokens = 8, delay_ms = 0 }\n"
        f"[auth]\n{AUTH_TABLES[mode]}\n"
        '[logging]\nlevel = "debug"\n'
        "[limits]\n" + "".join(f"{key} = {value}\n" for key, value in LIMITS.items())
    )
    return path


async def present_everywhere(url: str, good: str, bad: list[str | None]) -> list[str]:
    """Use `good` on every transport and in every place, try each of `bad` likewise;
    the answers received."""
    answers = [await call(url, good, {}) for call in CALLS.values()]
    for place in WS_PLACES:
        answers.append((await ws_ask(url, place, good, MALLORY)).text)
    for place in HTTP_PLACES:
        answered = await http_post(url, "sse", place, good, MALLORY)
        answers.append(sse_text(answered.raise_for_status().text))
    for credential in bad:
        for place in WS_PLACES:
            await ws_refused(url, place, credential)
        for place in HTTP_PLACES:
            for endpoint in HTTP_CALLS:
                assert (await http_post(url, endpoint, place, credential, {})).status_code == 401
        for transport in REFUSABLE:
            await refused(transport, url, credential)
    return answers


@pytest.mark.parametrize("mode", ["api_key", "jwt"])
async def test_the_log_keeps_no_credential_prompt_or_answer_and_audits_each_refusal(
    tmp_path: Path, mode: str
) -> None:
    good = ADA_KEY if mode == "api_key" else hs256("ada")
    bad = [None, "garbage-that-is-no-token", BOB_KEY + "0", hs256("ada", lifetime=-120)]
    if mode == "jwt":
        bad += [
            hs256("ada", nbf=time.time() + 120),
            alg_none(claims("ada")),
            jwt.encode(claims("ada"), "y" * 40, algorithm="HS256"),
        ]
    async with serving("--config", str(config_file(tmp_path, mode)), env=ENVIRON) as process:
        reading = asyncio.create_task(process.rest(timeout=120))
        answers = await present_everywhere(process.url, good, bad)
        assert await process.stop() == 0
        lines = await reading

    records = [parse_line(line) for line in lines]
    shown = [
        line for line, record in zip(lines, records, strict=True) if record.get("level") != "debug"
    ]
    secrets = [good, *API_KEYS, SECRET, PROMPT, *[b for b in bad if b], *answers]
    assert all(answer.strip() for answer in answers)
    for secret in secrets:
        assert not [line for line in shown if secret.strip() in line], secret
    # A refusal is a warning: nothing at error level (uvicorn logs one per refused handshake
    # unless told that the handshake is over).
    assert [r for r in records if r.get("level") in ("error", "critical")] == []
    audited = [r for r in records if r.get("event") == "authentication failed"]
    assert {r["reason"] for r in audited} == AUDIT_REASONS[mode]
    assert all(r["client"] == "127.0.0.1" and r["level"] == "warning" for r in audited)


def parse_line(line: str) -> dict[str, Any]:
    """A JSON log record; anything else counts as shown (level unknown)."""
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return record
    return {}


# -- start-up refuses what cannot work --------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "environ", "message"),
    [
        ({"mode": "api_key"}, ENVIRON, "auth.api_keys_env: required when auth.mode is 'api_key'"),
        (
            {"mode": "api_key", "api_keys_env": "TOKENWIRE_TEST_UNSET_KEYS"},
            {},
            "TOKENWIRE_TEST_UNSET_KEYS is not set or empty",
        ),
        (
            {"mode": "jwt", "jwt_secret_env": SECRET_ENV, "jwks_file": "/etc/keys.json"},
            ENVIRON,
            "(auth.jwt_secret_env and auth.jwks_file are set)",
        ),
        ({"mode": "jwt"}, ENVIRON, "JWT authentication needs exactly one of auth.jwt_secret_env"),
        (
            {"mode": "jwt", "jwt_secret_env": SECRET_ENV},
            {SECRET_ENV: "short-but-secret"},
            "auth.jwt_secret_env: an HS256 secret needs at least 32 bytes",
        ),
    ],
)
async def test_start_up_refuses_bad_auth_config_with_one_clear_message(
    auth: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_app(simulated_settings(auth=auth), environ=environ)

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "short-but-secret" not in str(caught.value)


async def test_the_command_line_says_what_is_wrong_in_one_line_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "tokenwire.toml"
    config.write_text('[auth]\nmode = "api_key"\napi_keys_env = "TOKENWIRE_TEST_UNSET_KEYS"\n')

    status, output = await run_cli(
        "serve", "--config", str(config), "--provider", "simulated", "--port", "0"
    )

    assert status == 2
    assert output.strip().splitlines() == [
        "tokenwire: configuration error: TOKENWIRE_TEST_UNSET_KEYS is not set or empty: "
        "it must hold the API keys"
    ]
