"""A JSON endpoint called without a JSON content type (as `curl -d` without `-H` does)
is told, in its own error shape, to send `Content-Type: application/json`."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import starlette.requests

from tests.support.server import RunningServer, running_server, simulated_settings

HI = [{"role": "user", "content": "hi"}]
FEW = {"options": {"tokens": 3, "delay_ms": 0}}
BODIES = {
    "/v1/chat/completions": {"model": "simulated", "messages": HI, "max_tokens": 3},
    "/v1/responses": {"model": "simulated", "input": "hi", "max_output_tokens": 3},
    "/v1/messages": {"model": "simulated", "messages": HI, "max_tokens": 3},
    "/api/streams": {"prompt": "hi", "config": FEW},
}


def openai_message(body: Any) -> str:
    assert body["error"]["type"] == "invalid_request_error"
    return str(body["error"]["message"])


def anthropic_message(body: Any) -> str:
    assert (body["type"], body["error"]["type"]) == ("error", "invalid_request_error")
    return str(body["error"]["message"])


def tokenwire_message(body: Any) -> str:
    assert body["error"]["type"] == "invalid_request"
    return str(body["error"]["message"])


SHAPES: dict[str, Callable[[Any], str]] = {
    "/v1/chat/completions": openai_message,
    "/v1/responses": openai_message,
    "/v1/messages": anthropic_message,
    "/api/streams": tokenwire_message,
}


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server(simulated_settings()) as running:
        yield running


async def post(server: RunningServer, path: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        return await http.post(path, content=json.dumps(BODIES[path]), headers=headers)


@pytest.mark.parametrize("path", sorted(BODIES))
async def test_a_json_body_sent_as_curl_d_sends_it_is_told_to_send_the_content_type(
    server: RunningServer, path: str
) -> None:
    response = await post(server, path, {"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    message = SHAPES[path](response.json())
    assert "Content-Type: application/json" in message
    assert '"application/x-www-form-urlencoded"' in message
    assert "curl -d" in message
    assert server.gateway.stats.total_streams == 0


@pytest.mark.parametrize("path", sorted(BODIES))
@pytest.mark.parametrize(
    ("headers", "says"),
    [({}, "no content type"), ({"content-type": "text/plain"}, '"text/plain"')],
)
async def test_a_body_of_another_or_no_content_type_is_told_to_send_json(
    server: RunningServer, path: str, headers: dict[str, str], says: str
) -> None:
    response = await post(server, path, headers)
    assert response.status_code == 415
    message = SHAPES[path](response.json())
    assert "Content-Type: application/json" in message
    assert says in message


@pytest.mark.parametrize("path", sorted(BODIES))
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/x+json"]
)
async def test_json_with_parameters_or_a_json_suffix_is_taken(
    server: RunningServer, path: str, content_type: str
) -> None:
    response = await post(server, path, {"content-type": content_type})
    assert response.status_code == 200, response.text


async def test_a_post_that_takes_no_body_needs_no_content_type(server: RunningServer) -> None:
    # Only a background response can be cancelled, as on OpenAI.
    background = {**BODIES["/v1/responses"], "background": True}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        created = await http.post("/v1/responses", json=background)
        response_id = created.json()["id"]
        cancelled = await http.post(f"/v1/responses/{response_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text


@pytest.mark.parametrize("path", [p for p in sorted(BODIES) if p.startswith("/v1/")])
async def test_a_dialect_s_body_is_parsed_once_by_its_checks_and_not_again(
    server: RunningServer, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starlette's `Request.json()` (what FastAPI reads the body through) would parse it
    # again with the standard library's json: the value the checks decoded is handed on.
    def again(*args: object) -> object:
        raise AssertionError("the body was parsed a second time")

    monkeypatch.setattr(starlette.requests, "json", types.SimpleNamespace(loads=again))
    answer = await post(server, path, {"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
