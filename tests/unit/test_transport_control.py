"""`TransportControl.send_texts`: a connection's queued frames in one write, as websockets
would frame them (with and without permessage-deflate), or nothing while it must wait."""

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from tokenwire.transports.uvicorn_ws import TransportControl, text_frame

# Around each length limit of the frame header (7 bits, 16 bits, 64 bits), and non-ASCII.
TEXTS = ["", "a" * 125, "b" * 126, "c" * 65535, "d" * 65536, "é" * 70, '{"token":"日本"}']


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def opened(deflate: bool) -> tuple[Any, Protocol]:
    # Both ends past their opening handshake (a Protocol starts OPEN).
    server, client = Protocol(Side.SERVER), Protocol(Side.CLIENT)
    if deflate:
        server.extensions = [PerMessageDeflate(False, False, 15, 15)]
        client.extensions = [PerMessageDeflate(False, False, 15, 15)]
    writable = asyncio.Event()
    writable.set()
    protocol = SimpleNamespace(
        conn=server,
        transport=FakeTransport(),
        close_sent=False,
        disconnected=False,
        handshake_complete=True,
        writable=writable,
    )
    return protocol, client


def received(client: Protocol, data: bytes) -> list[Frame]:
    client.receive_data(data)
    return [event for event in client.events_received() if isinstance(event, Frame)]


@pytest.mark.parametrize("deflate", [False, True])
async def test_queued_frames_go_out_in_one_write_that_a_client_reads_in_order(
    deflate: bool,
) -> None:
    protocol, client = opened(deflate)
    assert TransportControl(protocol).send_texts(TEXTS)  # type: ignore[arg-type]
    assert len(protocol.transport.writes) == 1
    frames = received(client, protocol.transport.writes[0])
    assert [(f.opcode, f.fin, f.data.decode()) for f in frames] == [
        (Opcode.TEXT, True, text) for text in TEXTS
    ]


def test_a_text_frame_is_what_websockets_makes_without_extensions() -> None:
    server = Protocol(Side.SERVER)
    for text in TEXTS:
        server.send_text(text.encode())
        assert text_frame(text) == b"".join(server.data_to_send())


@pytest.mark.parametrize(
    "state", ["paused", "close_sent", "disconnected", "transport_closing", "conn_closing"]
)
async def test_nothing_is_written_while_the_connection_cannot_take_it_now(state: str) -> None:
    protocol, _ = opened(False)
    if state == "paused":
        protocol.writable.clear()
    elif state == "transport_closing":
        protocol.transport.closing = True
    elif state == "conn_closing":
        protocol.conn.state = State.CLOSING
    else:
        setattr(protocol, state, True)
    assert not TransportControl(protocol).send_texts(["x"])  # type: ignore[arg-type]
    assert protocol.transport.writes == []
