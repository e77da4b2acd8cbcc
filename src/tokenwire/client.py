"""tokenwire's Python client (docs/python-client.md).

async with StreamClient("ws://127.0.0.1:8000/ws/ai-stream") as client:
    async for event in client.stream("Write a haiku about sockets"):
        if isinstance(event, Chunk):
            print(event.text, end="", flush=True)
"""

from tokenwire.clients.errors import (
    AuthenticationRefused,
    ClientError,
    ConnectionLost,
    HandshakeRefused,
    RequestRefused,
    ServerError,
    ServerUnreachable,
    StreamFailed,
)
from tokenwire.clients.stream import Stream
from tokenwire.clients.stream_client import Conversation, ReconnectPolicy, StreamClient
from tokenwire.clients.sync import SyncStream, SyncStreamClient
from tokenwire.protocol.server_events import (
    Chunk,
    ConnectionStatus,
    Error,
    Metadata,
    Progress,
    RequestSummary,
    ServerEvent,
    StreamEnd,
    StreamStart,
    Token,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    TypingIndicator,
)

__all__ = [
    "AuthenticationRefused",
    "Chunk",
    "ClientError",
    "ConnectionLost",
    "ConnectionStatus",
    "Conversation",
    "Error",
    "HandshakeRefused",
    "Metadata",
    "Progress",
    "ReconnectPolicy",
    "RequestRefused",
    "RequestSummary",
    "ServerError",
    "ServerEvent",
    "ServerUnreachable",
    "Stream",
    "StreamClient",
    "StreamEnd",
    "StreamFailed",
    "StreamStart",
    "SyncStream",
    "SyncStreamClient",
    "Token",
    "ToolCallDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "TypingIndicator",
]
