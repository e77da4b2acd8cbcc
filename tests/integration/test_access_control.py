"""Who may reach what: allowed origins and CORS on every transport, the admin views,
requests that belong to the user who started them, and the client's address behind a
trusted proxy (audit lines, per-address throttling)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from tests.support.auth import ADA_KEY, BOB_KEY, ENVIRON, ROOT_KEY, api_key_settings, bearer
from tests.support.server import (
    RunningServer,
    WsClient,
    of_type,
    running_server,
    simulated_settings,
    ws_client,
)
from tests.support.waiting import eventually
from tokenwire.core.spec import RequestKey

# One event loop for the module, so that the origin and admin matrices share a server.
pytestmark = pytest.mark.asyncio(loop_scope="module")

APP = "https://app.example.com"
HI = [{"role": "user", "content": "hi"}]
FAST = {"name": "simulated", "kind": "simulated", "options": {"tokens": 5, "delay_ms": 1}}
# Half a second: long enough for another user to try to reach it while it runs.
SLOW = {"name": "slow", "kind": "simulated", "options": {"tokens": 50, "delay_ms": 10}}
LONG = {"provider": "slow"}
NEVER_USED = "never-used-1"
PROVIDERS = [FAST, SLOW]


@dataclass(frozen=True)
class Handshake:
    status: int  # 101 when the WebSocket opened
    headers: dict[str, str]
    body: bytes


async def handshake(server: RunningServer, query: str = "", **options: Any) -> Handshake:
    try:
        async with connect(server.ws_url + query, **options) as ws:
            await ws.recv()  # the connection_status of an open connection
    except InvalidStatus as exc:
        response = exc.response
        headers = {name.lower(): value for name, value in response.headers.raw_items()}
        return Handshake(response.status_code, headers, response.body or b"")
    return Handshake(101, {}, b"")


# -- origins ----------------------------------------------------------------------


@dataclass(frozen=True)
class BrowserCall:
    """An HTTP call a browser app makes, and how its API words a refusal."""

    method: str
    path: str
    body: dict[str, Any] | None

    async def send(self, http: httpx.AsyncClient, **headers: str) -> httpx.Response:
        return await http.request(self.method, self.path, json=self.body, headers=headers)

    def refused_as_forbidden(self, response: httpx.Response) -> bool:
        body = response.json()
        if self.path.startswith("/v1/messages"):
            return body["type"] == "error" and body["error"]["type"] == "permission_error"
        if self.path.startswith("/v1/"):
            return body["error"]["type"] == "permission_error" and (
                body["error"]["code"] == "forbidden"
            )
        return bool(body["error"]["type"] == "forbidden")


CALLS = {
    "sse start": BrowserCall("POST", "/api/streams", {"prompt": "hi"}),
    "sse list": BrowserCall("GET", "/api/streams", None),
    "chat completions": BrowserCall(
        "POST", "/v1/chat/completions", {"model": "simulated", "messages": HI}
    ),
    "messages": BrowserCall(
        "POST", "/v1/messages", {"model": "simulated", "max_tokens": 16, "messages": HI}
    ),
}
REFUSED_ORIGINS = {
    "look-alike": "https://app.example.com.evil.com",
    "sub-domain": "https://evil.app.example.com",
    "prefix of it": "https://app.example.co",
    "null": "null",
    "other scheme": "http://app.example.com",
    "other port": "https://app.example.com:8443",
    "with a path": "https://app.example.com/app",
}
PREFLIGHT_PATHS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/messages",
    "/api/streams",
    "/api/streams/r1/events",
]
ADMIN_PATHS = ["/api/streaming/stats", "/api/streaming/sessions", "/api/providers"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded() -> AsyncIterator[RunningServer]:
    """api_key mode, one allowed origin, `root` the admin."""
    settings = api_key_settings(auth={"allowed_origins": [APP]}, providers=[FAST])
    async with running_server(settings, environ=ENVIRON) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(guarded: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=guarded.url, timeout=30) as client:
        yield client


async def test_a_websocket_from_an_allowed_origin_opens(guarded: RunningServer) -> None:
    opened = await handshake(guarded, origin=Origin(APP), additional_headers=bearer(ADA_KEY))
    assert opened.status == 101


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_browser_call_from_an_allowed_origin_carries_its_cors_headers(
    http: httpx.AsyncClient, call: BrowserCall
) -> None:
    response = await call.send(http, origin=APP, **bearer(ADA_KEY))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "Origin" in response.headers.get_list("vary")


@pytest.mark.parametrize("origin", REFUSED_ORIGINS.values(), ids=REFUSED_ORIGINS.keys())
async def test_a_websocket_from_another_origin_is_refused_with_403(
    guarded: RunningServer, origin: str
) -> None:
    refused = await handshake(guarded, origin=Origin(origin), additional_headers=bearer(ADA_KEY))
    assert refused.status == 403
    assert json.loads(refused.body)["error"]["type"] == "forbidden"


@pytest.mark.parametrize("origin", REFUSED_ORIGINS.values(), ids=REFUSED_ORIGINS.keys())
@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_browser_call_from_another_origin_gets_403_in_its_api_s_shape(
    http: httpx.AsyncClient, call: BrowserCall, origin: str
) -> None:
    # A good credential does not help: the page that sent it is not trusted.
    response = await call.send(http, origin=origin, **bearer(ADA_KEY))
    assert response.status_code == 403
    assert call.refused_as_forbidden(response), response.text
    assert "access-control-allow-origin" not in response.headers


async def test_origins_are_compared_in_lower_case(
    guarded: RunningServer, http: httpx.AsyncClient
) -> None:
    # Scheme and host are case-insensitive; browsers send them in lower case anyway.
    # The allow-origin header repeats the Origin exactly as it was sent.
    shouting = "HTTPS://APP.EXAMPLE.COM"
    response = await CALLS["sse list"].send(http, origin=shouting, **bearer(ADA_KEY))
    opened = await handshake(guarded, origin=Origin(shouting), additional_headers=bearer(ADA_KEY))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == shouting
    assert opened.status == 101


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_call_without_an_origin_goes_on_to_authentication(
    http: httpx.AsyncClient, call: BrowserCall
) -> None:
    anonymous = await call.send(http)
    known = await call.send(http, **bearer(ADA_KEY))
    assert anonymous.status_code == 401
    assert known.status_code == 200
    assert "access-control-allow-origin" not in known.headers


async def test_a_websocket_without_an_origin_goes_on_to_authentication(
    guarded: RunningServer,
) -> None:
    anonymous = await handshake(guarded)
    known = await handshake(guarded, additional_headers=bearer(ADA_KEY))
    assert anonymous.status == 401
    assert known.status == 101


@pytest.mark.parametrize("path", PREFLIGHT_PATHS)
async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_credential(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.options(
        path,
        headers={
            "origin": APP,
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-stainless-os, authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "x-stainless-os, authorization"
    assert "Origin" in response.headers.get_list("vary")


async def test_a_preflight_that_names_no_headers_allows_the_credential_headers(
    http: httpx.AsyncClient,
) -> None:
    response = await http.options(
        "/v1/messages", headers={"origin": APP, "access-control-request-method": "POST"}
    )
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert response.status_code == 204
    assert {"authorization", "x-api-key", "content-type"} <= allowed


async def test_cors_answers_never_let_a_page_send_cookies(http: httpx.AsyncClient) -> None:
    # Credentials are headers: with allow-credentials, cookies set by a proxy in front
    # (a single sign-on) would ride along with every call the page makes.
    preflight = await http.options(
        "/api/streams", headers={"origin": APP, "access-control-request-method": "POST"}
    )
    answer = await CALLS["sse list"].send(http, origin=APP, **bearer(ADA_KEY))
    assert preflight.status_code == 204
    assert answer.status_code == 200
    assert "access-control-allow-credentials" not in preflight.headers
    assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize("path", PREFLIGHT_PATHS)
async def test_a_preflight_from_another_origin_gets_403(http: httpx.AsyncClient, path: str) -> None:
    response = await http.options(
        path,
        headers={
            "origin": REFUSED_ORIGINS["look-alike"],
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        },
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


async def test_with_no_allowed_origins_only_the_server_s_own_origin_is_allowed() -> None:
    async with running_server(api_key_settings(), environ=ENVIRON) as server:
        port = server.url.rsplit(":", 1)[1]
        own = server.url  # http://127.0.0.1:PORT, the Host header's host:port
        others = [
            f"http://localhost:{port}",
            f"http://127.0.0.1:{int(port) + 1}",
            f"{own}/app",
            APP,
            "null",
        ]
        async with httpx.AsyncClient(base_url=server.url) as http:
            served = await CALLS["sse list"].send(http, origin=own, **bearer(ADA_KEY))
            refused = [
                (await CALLS["sse list"].send(http, origin=o, **bearer(ADA_KEY))).status_code
                for o in others
            ]
        opened = await handshake(server, origin=Origin(own), additional_headers=bearer(ADA_KEY))
        handshakes = [
            (await handshake(server, origin=Origin(o), additional_headers=bearer(ADA_KEY))).status
            for o in others
        ]
    assert served.status_code == 200
    assert served.headers["access-control-allow-origin"] == own
    assert refused == [403] * len(others)
    assert opened.status == 101
    assert handshakes == [403] * len(others)


async def test_origins_are_checked_with_authentication_off() -> None:
    settings = simulated_settings(auth={"allowed_origins": [APP]}, providers=[FAST])
    async with running_server(settings) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            served = await CALLS["chat completions"].send(http, origin=APP)
            refused = await CALLS["chat completions"].send(http, origin=REFUSED_ORIGINS["null"])
            preflight = await http.options(
                "/v1/chat/completions",
                headers={"origin": APP, "access-control-request-method": "POST"},
            )
        opened = await handshake(server, origin=Origin(APP))
        hijacked = await handshake(server, origin=Origin(REFUSED_ORIGINS["look-alike"]))
    assert served.status_code == 200
    assert served.headers["access-control-allow-origin"] == APP
    assert refused.status_code == 403
    assert preflight.status_code == 204
    assert opened.status == 101
    assert hijacked.status == 403


async def test_with_authentication_off_a_host_name_rebound_to_loopback_is_refused() -> None:
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so its page is "the
    # server's own origin", and its same-origin GETs carry no Origin at all.
    async with running_server(simulated_settings(providers=[FAST])) as server:
        port = server.url.rsplit(":", 1)[1]
        rebound = f"evil.example:{port}"
        async with httpx.AsyncClient(base_url=server.url) as http:
            listed = await http.get("/api/streams", headers={"host": rebound})
            started = await CALLS["sse start"].send(http, origin=f"http://{rebound}", host=rebound)
            served = [
                (await http.get("/api/streams", headers={"host": host})).status_code
                for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")
            ]
        # Connected to the loopback port under the rebound name, as the browser does.
        with pytest.raises(InvalidStatus) as hijacked:
            async with connect(
                f"ws://{rebound}/ws/ai-stream",
                origin=Origin(f"http://{rebound}"),
                host="127.0.0.1",
                port=int(port),
            ):
                pass
    assert listed.status_code == 403
    assert started.status_code == 403
    assert hijacked.value.response.status_code == 403
    assert served == [200, 200, 200]


# -- admin views --------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN_PATHS)
@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), (ADA_KEY, 403), (ROOT_KEY, 200)],
    ids=["no credential", "not an admin", "the admin"],
)
async def test_admin_views_are_for_the_admin_only(
    http: httpx.AsyncClient, path: str, key: str | None, status: int
) -> None:
    response = await http.get(path, headers=bearer(key) if key else {})
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["type"] == "authentication_failed"
        assert response.headers["www-authenticate"] == "Bearer"
    elif status == 403:
        assert response.json()["error"]["type"] == "forbidden"


async def test_with_no_admin_users_the_admin_views_are_refused_to_every_user() -> None:
    settings = api_key_settings(auth={"admin_users": []})
    async with running_server(settings, environ=ENVIRON) as server, httpx.AsyncClient() as http:
        statuses = [
            (await http.get(server.url + path, headers=bearer(key))).status_code
            for path in ADMIN_PATHS
            for key in (ADA_KEY, ROOT_KEY)
        ]
    assert statuses == [403] * 2 * len(ADMIN_PATHS)


async def test_admin_views_are_open_with_authentication_off() -> None:
    async with running_server(simulated_settings()) as server, httpx.AsyncClient() as http:
        statuses = [(await http.get(server.url + path)).status_code for path in ADMIN_PATHS]
    assert statuses == [200] * len(ADMIN_PATHS)


# -- ownership ------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A caller: by API key, or, with authentication off, by `user_id`."""

    name: str
    key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.key) if self.key else {}

    @property
    def params(self) -> dict[str, str]:
        return {} if self.key else {"user_id": self.name}

    def ws(self, server: RunningServer) -> contextlib.AbstractAsyncContextManager[WsClient]:
        query = "" if self.key else f"?user_id={self.name}"
        return ws_client(server, query, additional_headers=self.headers)

    def http(self, server: RunningServer) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=server.url, headers=self.headers, params=self.params, timeout=30
        )

    def openai(self, server: RunningServer) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=server.url + "/v1",
            api_key=self.key or "unused",
            default_query=self.params or None,
            max_retries=0,
        )


@pytest.fixture(params=["api_key", "none"], ids=["api keys", "auth off"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def two_users(mode: str) -> AsyncIterator[tuple[RunningServer, User, User]]:
    if mode == "api_key":
        settings = api_key_settings(providers=PROVIDERS)
        ada, bob = User("ada", ADA_KEY), User("bob", BOB_KEY)
    else:
        settings = simulated_settings(providers=PROVIDERS)
        ada, bob = User("ada", None), User("bob", None)
    async with running_server(settings, environ=ENVIRON) as server:
        yield server, ada, bob


def ai_request(request_id: str, prompt: str = "ada's question") -> dict[str, Any]:
    return {
        "type": "ai_request",
        "prompt": prompt,
        "request_id": request_id,
        "config": LONG,
        "stream_config": {"granularity": "token"},
    }


async def started(client: WsClient, request_id: str) -> None:
    """Start a long request and wait for its first token."""
    await client.send(ai_request(request_id))
    async with asyncio.timeout(5):
        while (await client.recv()).get("event_type") != "token":
            pass


async def listed(client: WsClient) -> set[str]:
    """The ids `list_requests` shows, whatever other frames come first."""
    await client.send({"type": "list_requests"})
    async with asyncio.timeout(5):
        while (frame := await client.recv()).get("data", {}).get("status") != "request_list":
            pass
    return {r["request_id"] for r in frame["data"]["requests"]}


def apart_from(request_id: str, payload: Any) -> str:
    """`payload` without what may differ between two ids: the id itself and the time."""
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "timestamp"}
    return json.dumps(payload, sort_keys=True).replace(request_id, "<id>")


def sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["data"]["token"] for f in of_type(frames, "token"))


async def test_another_user_cannot_cancel_a_stream_over_the_websocket(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.ws(server) as mine,
        bob.ws(server) as his,
    ):
        await started(mine, "ada-1")
        await his.send({"type": "cancel_request", "request_id": "ada-1"})
        theirs = await his.recv()
        await his.send({"type": "cancel_request", "request_id": NEVER_USED})
        nobodys = await his.recv()
        end = (await mine.until_end("ada-1"))[-1]
    assert theirs["data"]["error_type"] == "unknown_request"
    assert apart_from("ada-1", theirs) == apart_from(NEVER_USED, nobodys)
    assert end["data"]["status"] == "completed"


async def test_another_user_cannot_cancel_a_stream_over_sse(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.ws(server) as mine,
        bob.http(server) as his,
    ):
        await started(mine, "ada-1")
        theirs = await his.delete("/api/streams/ada-1")
        nobodys = await his.delete(f"/api/streams/{NEVER_USED}")
        end = (await mine.until_end("ada-1"))[-1]
    assert theirs.status_code == 404
    assert theirs.json()["error"]["type"] == "unknown_request"
    assert apart_from("ada-1", theirs.json()) == apart_from(NEVER_USED, nobodys.json())
    assert end["data"]["status"] == "completed"


async def test_another_user_cannot_resume_a_stream_and_cannot_tell_it_exists(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.ws(server) as mine,
        bob.ws(server) as his,
    ):
        await started(mine, "ada-1")
        await his.send({"type": "resume", "request_id": "ada-1", "last_seq": 0})
        running = await his.recv()
        await his.send({"type": "resume", "request_id": NEVER_USED, "last_seq": 0})
        nobodys = await his.recv()
        await mine.until_end("ada-1")
        await his.send({"type": "resume", "request_id": "ada-1", "last_seq": 0})
        finished = await his.recv()
        # Nothing of ada's stream reached bob: the next frame answers his ping.
        await his.send({"type": "ping", "timestamp": 1})
        pong = await his.recv()
    assert running["data"]["error_type"] == "unknown_request"
    assert apart_from("ada-1", running) == apart_from(NEVER_USED, nobodys)
    assert apart_from("ada-1", finished) == apart_from(NEVER_USED, nobodys)
    assert pong["type"] == "pong"


async def test_another_user_cannot_read_a_stream_over_sse(mode: str) -> None:
    async with two_users(mode) as (server, ada, bob), ada.ws(server) as mine:
        await started(mine, "ada-1")
        async with bob.http(server) as his:
            theirs = await his.get("/api/streams/ada-1/events")
            nobodys = await his.get(f"/api/streams/{NEVER_USED}/events")
        async with ada.http(server) as hers:
            own = await hers.get("/api/streams/ada-1/events")
        await mine.until_end("ada-1")
    assert theirs.status_code == 404
    assert theirs.json()["error"]["type"] == "unknown_request"
    assert apart_from("ada-1", theirs.json()) == apart_from(NEVER_USED, nobodys.json())
    assert own.status_code == 200
    assert sse_data(own.text)[-1]["data"]["status"] == "completed"


async def refused(attempt: Awaitable[Any]) -> dict[str, Any]:
    """The body of the 404 that `attempt` (an SDK call) meets."""
    with pytest.raises(openai.NotFoundError) as caught:
        await attempt
    body: dict[str, Any] = caught.value.response.json()
    return body


NO_RESPONSE = "resp_" + "0" * 32


async def test_another_user_cannot_retrieve_or_cancel_a_response(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.openai(server) as hers,
        bob.openai(server) as his,
    ):
        answer = await hers.responses.create(model="simulated", input="ada's question")
        retrieved = await refused(his.responses.retrieve(answer.id))
        cancelled = await refused(his.responses.cancel(answer.id))
        retrieved_nothing = await refused(his.responses.retrieve(NO_RESPONSE))
        cancelled_nothing = await refused(his.responses.cancel(NO_RESPONSE))
        own = await hers.responses.retrieve(answer.id)
    assert retrieved["error"]["code"] == "unknown_request"
    assert apart_from(answer.id, retrieved) == apart_from(NO_RESPONSE, retrieved_nothing)
    assert apart_from(answer.id, cancelled) == apart_from(NO_RESPONSE, cancelled_nothing)
    assert own.status == "completed"
    assert own.output_text == answer.output_text


async def test_another_user_cannot_cancel_a_running_background_response(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.openai(server) as hers,
        bob.openai(server) as his,
    ):
        running = await hers.responses.create(model="slow", input="ada's", background=True)
        key = RequestKey("ada", running.id)
        await refused(his.responses.cancel(running.id))
        still_running = server.gateway.is_running(key)
        await eventually(lambda: not server.gateway.is_running(key))
        final = await hers.responses.retrieve(running.id)
    assert still_running
    assert final.status == "completed"


async def test_another_user_cannot_continue_from_a_response(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.openai(server) as hers,
        bob.openai(server) as his,
    ):
        answer = await hers.responses.create(model="simulated", input="ada's question")
        theirs = await refused(
            his.responses.create(model="simulated", input="go on", previous_response_id=answer.id)
        )
        nobodys = await refused(
            his.responses.create(model="simulated", input="go on", previous_response_id=NO_RESPONSE)
        )
        own = await hers.responses.create(
            model="simulated", input="go on", previous_response_id=answer.id
        )
    assert theirs["error"]["code"] == "unknown_request"
    assert apart_from(answer.id, theirs) == apart_from(NO_RESPONSE, nobodys)
    assert own.status == "completed"


async def test_another_user_does_not_see_a_user_s_requests_listed(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.ws(server) as mine,
        bob.ws(server) as his,
    ):
        await mine.ask("short", request_id="ada-0", config={"provider": "simulated"})
        await started(mine, "ada-1")
        listed_to_him = await listed(his)
        listed_to_her = await listed(mine)
        async with bob.http(server) as bob_http, ada.http(server) as ada_http:
            his_page = (await bob_http.get("/api/streams")).json()["requests"]
            her_page = (await ada_http.get("/api/streams")).json()["requests"]
    assert listed_to_him == set()
    assert his_page == []
    assert listed_to_her == {"ada-0", "ada-1"}
    assert {r["request_id"] for r in her_page} == {"ada-0", "ada-1"}


async def test_two_users_may_run_requests_with_the_same_id_at_once(mode: str) -> None:
    async with (
        two_users(mode) as (server, ada, bob),
        ada.ws(server) as mine,
        bob.ws(server) as his,
    ):
        await mine.send(ai_request("same", "ada's question"))
        await his.send(ai_request("same", "bob's question"))
        both = (RequestKey("ada", "same"), RequestKey("bob", "same"))
        await eventually(lambda: all(server.gateway.is_running(k) for k in both))
        # The id is still held within each user's own namespace.
        await mine.send(ai_request("same", "ada again"))
        hers = await mine.until_end("same")
        his_frames = await his.until_end("same")
        async with bob.http(server) as bob_http:
            replayed = sse_data((await bob_http.get("/api/streams/same/events")).text)
    assert [e["data"]["error_type"] for e in of_type(hers, "error")] == ["invalid_request"]
    assert of_type(his_frames, "error") == []
    assert hers[-1]["data"]["status"] == his_frames[-1]["data"]["status"] == "completed"
    assert text_of(hers) != text_of(his_frames)
    assert text_of(replayed) == text_of(his_frames)


# -- behind a proxy -------------------------------------------------------------------


def forwarded_for(address: str, key: str | None = None) -> dict[str, str]:
    return {"x-forwarded-for": address, **bearer(key or "tw-key-not-a-key")}


@pytest.mark.parametrize(
    ("trusted", "chain", "client"),
    [
        (["127.0.0.1"], "203.0.113.7", "203.0.113.7"),
        # The proxy appends its peer; what the client wrote itself is not believed.
        (["127.0.0.1"], "198.51.100.9, 203.0.113.7", "203.0.113.7"),
        (["127.0.0.1", "10.0.0.0/8"], "198.51.100.9, 203.0.113.7, 10.1.2.3", "203.0.113.7"),
        (["10.0.0.0/8"], "203.0.113.7", "127.0.0.1"),
        ([], "203.0.113.7", "127.0.0.1"),
    ],
    ids=["one proxy", "spoofed entry", "two proxies", "peer not trusted", "no proxies"],
)
async def test_the_audit_line_names_the_client_behind_trusted_proxies_only(
    trusted: list[str], chain: str, client: str
) -> None:
    settings = api_key_settings(server={"trusted_proxies": trusted})
    async with running_server(settings, environ=ENVIRON) as server, httpx.AsyncClient() as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.get(server.url + "/api/streams", headers=forwarded_for(chain))
            refused = await handshake(server, additional_headers=forwarded_for(chain))
    audited = [line["client"] for line in logs if line["event"] == "authentication failed"]
    assert (response.status_code, refused.status) == (401, 401)
    assert audited == [client, client]


async def test_the_client_behind_a_proxy_is_read_from_every_forwarded_for_line() -> None:
    # Some proxies add a line of their own rather than append to the client's: the
    # lines are one list, in order, so the proxy's entry still comes last.
    lines = [("x-forwarded-for", "198.51.100.66"), ("x-forwarded-for", "203.0.113.7")]
    headers = [*lines, *bearer("tw-key-not-a-key").items()]
    settings = api_key_settings(server={"trusted_proxies": ["127.0.0.1"]})
    async with running_server(settings, environ=ENVIRON) as server, httpx.AsyncClient() as http:
        with structlog.testing.capture_logs() as logs:
            response = await http.get(server.url + "/api/streams", headers=headers)
            refused = await handshake(server, additional_headers=headers)
    audited = [line["client"] for line in logs if line["event"] == "authentication failed"]
    assert (response.status_code, refused.status) == (401, 401)
    assert audited == ["203.0.113.7", "203.0.113.7"]


async def test_failed_authentications_are_counted_per_forwarded_address() -> None:
    settings = api_key_settings(
        server={"trusted_proxies": ["127.0.0.1"]},
        limits={"auth_failures_per_minute_per_address": 3},
    )
    async with running_server(settings, environ=ENVIRON) as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            failures = [
                (await http.get("/api/streams", headers=forwarded_for("203.0.113.7"))).status_code
                for _ in range(3)
            ]
            blocked = await http.get("/api/streams", headers=forwarded_for("203.0.113.7", ADA_KEY))
            other = await http.get("/api/streams", headers=forwarded_for("203.0.113.8", ADA_KEY))
        blocked_ws = await handshake(
            server, additional_headers=forwarded_for("203.0.113.7", ADA_KEY)
        )
    assert failures == [401, 401, 401]
    assert blocked.status_code == 429
    assert blocked.json()["error"]["type"] == "too_many_connections"
    assert int(blocked.headers["retry-after"]) >= 1
    assert blocked_ws.status == 429
    assert other.status_code == 200


async def test_failed_authentications_from_one_ipv6_subnet_are_counted_together() -> None:
    # An IPv6 client holds a /64 (2^64 addresses): counted per address, it could try
    # every credential from a fresh one.
    settings = api_key_settings(
        server={"trusted_proxies": ["127.0.0.1"]},
        limits={"auth_failures_per_minute_per_address": 3},
    )
    async with (
        running_server(settings, environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        failures = [
            (await http.get("/api/streams", headers=forwarded_for(address))).status_code
            for address in ("2001:db8::1", "2001:db8::2", "2001:db8::3")
        ]
        same_subnet = await http.get(
            "/api/streams", headers=forwarded_for("2001:db8::ffff:4", ADA_KEY)
        )
        next_subnet = await http.get(
            "/api/streams", headers=forwarded_for("2001:db8:0:1::1", ADA_KEY)
        )
    assert failures == [401, 401, 401]
    assert same_subnet.status_code == 429
    assert next_subnet.status_code == 200


async def test_successful_authentications_do_not_count_against_the_address() -> None:
    settings = api_key_settings(limits={"auth_failures_per_minute_per_address": 2})
    async with (
        running_server(settings, environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        statuses = [
            (await http.get("/api/streams", headers=bearer(ADA_KEY))).status_code for _ in range(3)
        ]
        opened = await handshake(server, additional_headers=bearer(ADA_KEY))
    assert statuses == [200, 200, 200]
    assert opened.status == 101


async def test_without_trusted_proxies_every_call_counts_against_the_peer() -> None:
    settings = api_key_settings(limits={"auth_failures_per_minute_per_address": 3})
    async with (
        running_server(settings, environ=ENVIRON) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        failures = [
            (await http.get("/api/streams", headers=forwarded_for("203.0.113.7"))).status_code
            for _ in range(3)
        ]
        forwarded = await http.get("/api/streams", headers=forwarded_for("203.0.113.8", ADA_KEY))
        direct = await http.get("/api/streams", headers=bearer(ADA_KEY))
    assert failures == [401, 401, 401]
    assert forwarded.status_code == 429
    assert direct.status_code == 429


async def test_handshakes_past_the_rate_per_address_are_refused_with_429() -> None:
    settings = simulated_settings(
        server={"trusted_proxies": ["127.0.0.1"]},
        limits={"handshakes_per_minute_per_address": 3},
    )
    from_seven = {"x-forwarded-for": "203.0.113.7"}
    async with running_server(settings) as server:
        statuses = [
            (await handshake(server, additional_headers=from_seven)).status for _ in range(3)
        ]
        refused = await handshake(server, additional_headers=from_seven)
        other = await handshake(server, additional_headers={"x-forwarded-for": "203.0.113.8"})
    assert statuses == [101, 101, 101]
    assert refused.status == 429
    assert json.loads(refused.body)["error"]["type"] == "too_many_connections"
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status == 101
