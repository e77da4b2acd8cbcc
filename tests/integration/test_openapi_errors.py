"""The OpenAPI document names every answer the `/v1` operations can give, the ones
given before any route runs included (found by `test_openapi_fuzz.py`)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.server import running_server
from tokenwire.transports.request_head import MAX_LINE_BYTES

V1_OPERATIONS = [
    ("get", "/v1/models"),
    ("post", "/v1/chat/completions"),
    ("post", "/v1/messages"),
    ("post", "/v1/responses"),
    ("get", "/v1/responses/{response_id}"),
]


@pytest.mark.parametrize(("method", "path"), V1_OPERATIONS)
async def test_a_url_past_the_head_bound_answers_431_as_documented(method: str, path: str) -> None:
    # Given a running server and its OpenAPI document
    async with running_server() as server, httpx.AsyncClient(base_url=server.url) as http:
        document = (await http.get("/openapi.json")).json()
        # When a query string (the fuzzer's long `before_id`) takes the URL past the bound
        url = path.replace("{response_id}", "resp_x")
        answer = await http.request(method, url, params={"before_id": "x" * MAX_LINE_BYTES})

    # Then the answer is a 431 of the type the document gives that operation for it
    assert answer.status_code == 431
    documented = document["paths"][path][method]["responses"]
    assert "431" in documented
    media_type = answer.headers["content-type"].split(";")[0]
    assert media_type in documented["431"]["content"]
