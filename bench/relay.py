"""A naive relay: the reference that tokenwire's WebSocket path is measured against.

A raw ASGI app, served by the same uvicorn as `tokenwire serve`, with the same
WebSocket protocol class (transports/uvicorn_ws.py), HTTP protocol and options
(`tokenwire.app.uvicorn_config` on the same settings, so that
`TOKENWIRE_SERVER__WS_PER_MESSAGE_DEFLATE` applies to both) and the same garbage
collector tuning. What it leaves out is everything tokenwire does per token: the
event log, sessions, limits, routing, the outbox and its writer.

On a WebSocket it greets as tokenwire does (`connection_status`), and for each
`ai_request` sends the frames tokenwire sends for the simulated provider:
stream_start, typing_indicator, metadata, one `token` frame per token (a progress
frame every 10), typing_indicator, stream_end, each frame the v1 envelope encoded
with orjson from a dict, one `await send(...)` per frame. Tokens are the simulated
provider's words; `config.options.tokens` and `delay_ms` are read as the simulated
provider reads them (the delay defaults to 0 here: no pacing unless asked for). Like the
simulated provider, and like a relay reading its upstream's socket, it lets the event loop
turn before each token even with no delay (`asyncio.sleep(0)`); `--burst` leaves that out,
and then one stream's frames go out back to back while the others wait.
Requests on one connection are served one after the other. It answers GET /healthz,
so that `bench/ws_load.py --server-cmd` can start it:

    .venv/bin/python bench/relay.py --port 8001
    .venv/bin/python bench/ws_load.py --clients 100 --tokens 200 \\
        --server-cmd "{root}/.venv/bin/python {root}/bench/relay.py --port {port}"
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokenwire.providers.simulated import _WORDS  # noqa: E402  (the same token sizes)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WS_PATH = "/ws/ai-stream"
PROGRESS_EVERY = 10
# Set by --burst: no loop turn between tokens when no delay is asked for.
BURST = False
DELTAS_PER_SECOND = 30.0  # only for stream_start's estimated_duration, as tokenwire guesses


def envelope(
    event_type: str,
    data: dict[str, Any],
    session_id: str,
    request_id: str | None = None,
    seq: int | None = None,
) -> str:
    return orjson.dumps(
        {
            "event_type": event_type,
            "data": data,
            "timestamp": time.time(),
            "request_id": request_id,
            "session_id": session_id,
            "metadata": {},
            "seq": seq,
        }
    ).decode()


async def stream(send: Send, session_id: str, message: dict[str, Any]) -> None:
    """One ai_request's frames, in tokenwire's order."""
    started = time.monotonic()
    config = message.get("config") or {}
    options = config.get("options") or {}
    count = int(options.get("tokens", 60))
    delay = float(options.get("delay_ms", 0.0)) / 1000
    request_id = str(message.get("request_id") or uuid.uuid4())
    prompt = str(message.get("prompt", ""))
    rng = random.Random(prompt)
    seq = 0

    async def emit(event_type: str, data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        frame = envelope(event_type, data, session_id, request_id, seq)
        await send({"type": "websocket.send", "text": frame})

    await emit(
        "stream_start",
        {
            "request_id": request_id,
            "prompt_length": len(prompt),
            "estimated_duration": round(max(0.5, count / DELTAS_PER_SECOND), 2),
        },
    )
    await emit("typing_indicator", {"is_typing": True})
    await emit(
        "metadata",
        {
            "task_type": "conversation",
            "task_reason": "no task cue",
            "recommended_provider": "simulated",
            "routing_strategy": "intelligent",
            "model": "simulated-1",
            "candidates": [
                {
                    "provider": "simulated",
                    "score": 3.0,
                    "reason": "unmeasured; 0% errors; est. $0.000000",
                }
            ],
        },
    )
    ttft: float | None = None
    length = 0
    for index in range(count):
        if delay or not BURST:
            await asyncio.sleep(delay)
        word = rng.choice(_WORDS)
        text = word if index == 0 else " " + word
        length += len(text)
        if ttft is None:
            ttft = time.monotonic() - started
        await emit("token", {"token": text, "index": index})
        if (index + 1) % PROGRESS_EVERY == 0:
            progress = round(100.0 * (index + 1) / count, 2)
            await emit("progress", {"progress": progress, "chunks_sent": index + 1})
    await emit("typing_indicator", {"is_typing": False})
    prompt_tokens = max(1, math.ceil(len(prompt) / 4))
    await emit(
        "stream_end",
        {
            "request_id": request_id,
            "status": "completed",
            "total_chunks": count,
            "total_length": length,
            "duration": time.monotonic() - started,
            "provider_used": "simulated",
            "model": "simulated-1",
            "cache_hit": False,
            "ttft": ttft,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": count,
                "total_tokens": prompt_tokens + count,
                "estimated": False,
            },
            "cost_usd": 0.0,
            "finish_reason": "stop",
        },
    )


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] != WS_PATH:
        await send({"type": "websocket.close", "code": 1008})
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    session_id = str(uuid.uuid4())
    hello = envelope(
        "connection_status", {"status": "connected", "session_id": session_id}, session_id
    )
    await send({"type": "websocket.send", "text": hello})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            continue
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(request, dict) or request.get("type") != "ai_request":
            continue
        try:
            await stream(send, session_id, request)
        except OSError:  # uvicorn's ClientDisconnected: the client went away mid-stream
            return


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    found = scope["path"] == "/healthz"
    body = b'{"status":"ok"}' if found else b'{"detail":"not found"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200 if found else 404,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
    elif scope["type"] == "http":
        await http(scope, receive, send)
    elif scope["type"] == "lifespan":
        await lifespan(receive, send)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument(
        "--burst", action="store_true", help="no loop turn between tokens when no delay is asked"
    )
    args = p.parse_args(argv)
    global BURST
    BURST = args.burst

    import uvicorn

    from tokenwire.app import uvicorn_config
    from tokenwire.cli import tune_garbage_collector
    from tokenwire.settings import load_settings

    # The same uvicorn options as `tokenwire serve` on the same settings (environment
    # included); the app is typed as FastAPI there, any ASGI app serves.
    config = uvicorn_config(load_settings(), app, args.host, args.port)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    tune_garbage_collector()
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
