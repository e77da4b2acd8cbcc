"""What a new user meets in the first hour, through the real command line and server."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.fakes.openai_upstream import ScriptedUpstream, openai_answer
from tests.support.process import run_cli, serving
from tests.support.server import WsClient, free_port, running_server, ws_client


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# -- configuration is strict on every path ------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("TOKENWIRE_FOO__BAR", "1", "TOKENWIRE_FOO__BAR: unknown table 'foo'"),
        (
            "TOKENWIRE_STREAMS__RESUME_GRACE",
            "0",
            "TOKENWIRE_STREAMS__RESUME_GRACE: unknown key streams.resume_grace",
        ),
        ("TOKENWIRE_PROVIDERS", "[{name: local}]", "TOKENWIRE_PROVIDERS: not valid JSON"),
        ("TOKENWIRE_AUTH__ALLOWED_ORIGINS", "[https://x", "TOKENWIRE_AUTH__ALLOWED_ORIGINS"),
    ],
)
async def test_a_wrong_environment_variable_stops_start_up_with_one_line_naming_it(
    variable: str, value: str, named: str
) -> None:
    status, output = await run_cli("serve", "--provider", "simulated", env={variable: value})
    assert status == 2
    assert named in one_line(output)


async def test_other_tokenwire_variables_are_not_configuration() -> None:
    async with (
        serving("--provider", "simulated", env={"TOKENWIRE_ROOT": "/x"}) as served,
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(served.url + "/healthz")).status_code == 200


async def test_a_strength_that_is_no_task_type_is_refused_listing_the_valid_ones(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tokenwire.toml"
    config.write_text('[[providers]]\nname = "a"\nkind = "simulated"\nstrengths = ["coding"]\n')
    status, output = await run_cli("serve", "--config", str(config))
    assert status == 2
    line = one_line(output)
    assert "providers[0].strengths" in line
    assert "'coding' is not a task type" in line
    assert "code, analysis, summarization, translation, math, creative, conversation" in line


# -- --provider for hosted kinds ------------------------------------------------


async def test_help_offers_model_and_base_url() -> None:
    status, output = await run_cli("serve", "--help")
    assert status == 0
    assert "--model" in output
    assert "--base-url" in output


@pytest.mark.parametrize("kind", ["openai", "anthropic", "bedrock"])
async def test_a_hosted_kind_without_model_says_what_to_add(kind: str) -> None:
    status, output = await run_cli("serve", "--provider", kind)
    assert status == 2
    assert f"--provider {kind} needs --model" in one_line(output)


async def test_an_openai_compatible_server_is_served_with_one_command_line() -> None:
    async with ScriptedUpstream(openai_answer(["Hello", " there"], 5, 2)) as upstream:
        async with serving(
            "--provider", "openai", "--base-url", upstream.url + "/v1", "--model", "x"
        ) as served:
            ws_url = served.url.replace("http", "ws", 1) + "/ws/ai-stream"
            async with connect(ws_url) as ws:
                client = WsClient(ws)
                await client.recv()
                frames = await client.ask("hi")
        assert frames[-1]["data"]["status"] == "completed"
        assert frames[-1]["data"]["provider_used"] == "openai"
        text = "".join(f["data"]["chunk"] for f in frames if f["event_type"] == "chunk")
        assert text == "Hello there"
        assert (await upstream.exchange()).json()["model"] == "x"


# -- the port: bound before it is announced -----------------------------------


async def test_a_busy_port_is_one_clear_line_and_no_serving_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = await run_cli("serve", "--provider", "simulated", "--port", str(port))
    assert status == 1
    line = one_line(output)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "serving" not in output


async def test_the_serving_line_comes_once_the_port_accepts_connections() -> None:
    async with serving("--provider", "simulated") as served, httpx.AsyncClient() as http:
        # No retry: when the line is out, the port must already answer.
        assert (await http.get(served.url + "/healthz")).status_code == 200


async def test_uvicorn_s_own_error_lines_are_json_too() -> None:
    async with serving("--provider", "simulated") as served:
        host, port = served.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        assert await served.stop() == 0
        lines = await served.rest()
    text_lines = [line for line in lines if line.strip()]
    assert any("Invalid HTTP request" in line for line in text_lines)
    for line in text_lines:
        json.loads(line)  # every line, uvicorn's included, is one JSON object


# -- health and readiness --------------------------------------------------------


class Loading:
    """A provider double whose model is still loading until `loaded` is set."""

    def __init__(self) -> None:
        from tests.support.providers import WatchedProvider

        self.inner = WatchedProvider("slowstart")
        self.loaded = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def readiness(self) -> str | None:
        return None if self.loaded else "loading the model"


async def test_healthz_is_liveness_and_readyz_waits_for_every_provider() -> None:
    from tests.support.server import gateway_with

    provider = Loading()
    async with (
        running_server(gateway=gateway_with(provider)) as server,
        httpx.AsyncClient() as http,
    ):
        assert (await http.get(server.url + "/healthz")).status_code == 200
        unready = await http.get(server.url + "/readyz")
        assert unready.status_code == 503
        assert unready.json() == {
            "status": "not_ready",
            "providers": {"slowstart": "loading the model"},
        }
        provider.loaded = True
        ready = await http.get(server.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        server.gateway.closing = True
        assert (await http.get(server.url + "/readyz")).status_code == 503
        server.gateway.closing = False


# -- the rough edges ------------------------------------------------------------


async def test_a_plain_get_on_the_websocket_endpoint_is_426() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        response = await http.get(server.url + "/ws/ai-stream")
        assert response.status_code == 426
        assert response.headers["upgrade"] == "websocket"


async def test_the_front_page_says_what_is_served_where() -> None:
    async with running_server() as server, httpx.AsyncClient() as http:
        page = await http.get(server.url + "/api", headers={"accept": "text/html"})
        assert page.status_code == 200
        assert "/ws/ai-stream" in page.text
        assert "/readyz" in page.text
        as_json = await http.get(server.url + "/")
        assert "/ws/ai-stream" in as_json.json()["endpoints"]


async def test_a_failed_cancel_names_the_request_it_was_about() -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.send({"type": "cancel_request", "request_id": "gone-1"})
        error = await client.recv()
        assert error["data"]["error_type"] == "unknown_request"
        assert error["request_id"] == error["data"]["request_id"] == "gone-1"


@pytest.mark.parametrize("prompt", [" ", "\n\t  \n"])
async def test_a_prompt_of_only_whitespace_is_an_invalid_request(prompt: str) -> None:
    async with running_server() as server, ws_client(server) as client:
        await client.send({"type": "ai_request", "prompt": prompt})
        error = await client.recv()
        assert error["data"]["error_type"] == "invalid_request"
        assert "whitespace" in error["data"]["error"]
        assert server.gateway.stats.total_streams == 0


async def test_a_request_that_failed_before_any_token_costs_nothing() -> None:
    closed_port = free_port()
    async with serving(
        "--provider",
        "openai",
        "--base-url",
        f"http://127.0.0.1:{closed_port}/v1",
        "--model",
        "x",
    ) as served:
        ws_url = served.url.replace("http", "ws", 1) + "/ws/ai-stream"
        async with connect(ws_url) as ws:
            client = WsClient(ws)
            await client.recv()
            frames = await client.ask("hi")
    end = frames[-1]["data"]
    assert end["status"] == "error"
    assert end["cost_usd"] == 0
    assert end["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "estimated": True,
    }


async def test_a_reconnect_continues_the_user_s_conversation() -> None:
    async with running_server() as server:
        async with ws_client(server, "?user_id=ada") as first:
            before = await first.ask(
                "My name is Ada.", conversation_id="chat", config={"options": {"tokens": 5}}
            )
        answer = "".join(f["data"]["chunk"] for f in before if f["event_type"] == "chunk")
        async with ws_client(server, "?user_id=ada") as again:
            await again.ask("Who am I?", conversation_id="chat", config={"options": {"tokens": 5}})
        async with ws_client(server, "?user_id=bob") as stranger:
            await stranger.ask("Who am I?", conversation_id="chat")
    history = await server.gateway.conversations.history("ada", "chat")
    assert [(m.role, m.content) for m in history][:2] == [
        ("user", "My name is Ada."),
        ("assistant", answer),
    ]
    assert len(history) == 4
    assert len(await server.gateway.conversations.history("bob", "chat")) == 2


async def test_llama_cpp_s_own_lines_are_json_and_the_default_leaves_a_core_free() -> None:
    from tokenwire.providers.cpus import default_threads

    debug = {"TOKENWIRE_LOGGING__LEVEL": "debug"}  # llama.cpp's load lines are at debug
    async with serving("--provider", "local", env=debug) as served:
        loaded = await served.until_event("local model loaded")
        assert loaded["threads"] == default_threads(1)
        async with httpx.AsyncClient() as http:
            assert (await http.get(served.url + "/readyz")).status_code == 200
        assert await served.stop() == 0
        lines = [line for line in await served.rest() if line.strip()]
    for line in lines:
        json.loads(line)  # llama.cpp's lines included
    assert any("llama" in json.loads(line)["event"] for line in lines)


async def test_a_plain_start_of_the_packaged_model_shows_no_warning() -> None:
    # llama.cpp warns at every load of the packaged model ("this is probably a bug in the
    # model"): nothing a new user can act on, so it goes out at debug.
    async with serving("--provider", "local") as served:
        await served.until_event("local model loaded")
        assert await served.stop() == 0
        records = [json.loads(line) for line in await served.rest() if line.strip()]
    assert [r for r in records if r["level"] in ("warning", "error")] == []
