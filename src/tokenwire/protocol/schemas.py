"""JSON Schemas of the wire protocol, generated from its models (no I/O).

`tools/schemas.py` writes them to docs/schemas/, and a test fails when those files
are not what these functions give, so that the published schemas follow the code.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from tokenwire.protocol.messages import ClientMessage
from tokenwire.protocol.server_events import ServerFrame

DIRECTORY = "docs/schemas"


def client_messages() -> dict[str, Any]:
    """What a client may send: one of the messages, told apart by `type`."""
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[ClientMessage, Field(discriminator="type")])
    return _titled(adapter.json_schema(), "tokenwire client message (WebSocket, v1)")


def server_events() -> dict[str, Any]:
    """What the server sends: an event (told apart by `event_type`) or a pong. Clients
    should ignore fields they do not know: a later server may add some."""
    adapter: TypeAdapter[Any] = TypeAdapter(ServerFrame)
    return _titled(adapter.json_schema(), "tokenwire server frame (WebSocket and SSE, v1)")


def rendered() -> dict[str, str]:
    """Each schema file's name and its exact text."""
    return {
        "client-messages.json": _text(client_messages()),
        "server-events.json": _text(server_events()),
    }


def _titled(schema: dict[str, Any], title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
