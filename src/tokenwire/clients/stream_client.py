"""`StreamClient`: tokenwire's WebSocket protocol as typed events, with reconnect and resume.

One connection carries every stream of the client. A reader task routes each
frame to the stream it belongs to by request id; the streams drop what they
already have. When the link drops without a close from us, the client reconnects
with backoff and sends each unfinished stream's `resume` with its `last_seq`, so
that its consumer sees every event exactly once; a request whose `ai_request`
the server never received (a `resume` of it is `unknown_request` while no event
of it has arrived) is sent again under the same request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from tokenwire.clients.errors import (
    AuthenticationRefused,
    ClientError,
    ConnectionLost,
    ServerError,
)
from tokenwire.clients.link import Link, open_link
from tokenwire.clients.stream import Stream
from tokenwire.protocol.events import encode_json
from tokenwire.protocol.server_events import (
    ConnectionStatus,
    Error,
    Pong,
    RequestList,
    RequestSummary,
    ServerEvent,
    parse_server_frame,
)

logger = logging.getLogger("tokenwire.client")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How hard to try to restore a dropped link: `attempts` connections, waiting
    `first_delay` before the first and doubling up to `max_delay`. The default gives
    up after about 5 s, well within the server's resume grace (10 s by default)."""

    attempts: int = 6
    first_delay: float = 0.1
    max_delay: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        for _ in range(self.attempts):
            yield delay
            delay = min(self.max_delay, delay * 2)


class StreamClient:
    """`async with StreamClient("ws://127.0.0.1:8000/ws/ai-stream") as client:`
    `async for event in client.stream("Hi"): ...`

    `url` is the full WebSocket URL (with `?user_id=...` when the server runs
    without authentication); `token` is an API key or JWT, sent as the
    `bearer.<token>` subprotocol. Leaving the `async with` closes the connection
    with code 1000, which cancels the streams only this connection follows.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        reconnect: ReconnectPolicy | None = None,
        open_timeout: float = 10.0,
        reply_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._token = token
        self._policy = reconnect or ReconnectPolicy()
        self._open_timeout = open_timeout
        self._reply_timeout = reply_timeout
        self._link: Link | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restoring: asyncio.Task[Link] | None = None
        self._streams: dict[str, Stream] = {}
        self._lists: deque[asyncio.Future[list[RequestSummary]]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def session_id(self) -> str | None:
        """The server's id for the current connection (a new one after a reconnect)."""
        return self._link.session_id if self._link is not None else None

    async def __aenter__(self) -> StreamClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (`async with` does this)."""
        await self._ensure_link()

    async def close(self) -> None:
        """Close with 1000; streams still being read end with `ConnectionLost`."""
        self._closed = True
        tasks = [t for t in (self._restoring, self._reader, *self._tasks) if t is not None]
        link, self._link = self._link, None
        if link is not None:
            await link.ws.close(1000)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(ConnectionLost("the client was closed"))

    # -- requests ---------------------------------------------------------------

    def stream(
        self,
        prompt: str | None = None,
        *,
        request_id: str | None = None,
        conversation_id: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        granularity: str | None = None,
        config: dict[str, Any] | None = None,
        stream_config: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Stream:
        """A request's events, sent when iteration starts. `fields` go into the
        `ai_request` as they are (`messages`, `images`, `tools`, `tool_results`, ...);
        `provider`, `model`, `max_tokens`, `temperature` into its `config`."""
        config = dict(config or {})
        given = {"provider": provider, "model": model, "max_tokens": max_tokens}
        config.update({k: v for k, v in given.items() if v is not None})
        if temperature is not None:
            config["temperature"] = temperature
        stream_config = dict(stream_config or {})
        if granularity is not None:
            stream_config["granularity"] = granularity
        message: dict[str, Any] = {"type": "ai_request", "request_id": request_id or _new_id()}
        if prompt is not None:
            message["prompt"] = prompt
        if conversation_id is not None:
            message["conversation_id"] = conversation_id
        if config:
            message["config"] = config
        if stream_config:
            message["stream_config"] = stream_config
        message.update(fields)
        return self._new_stream(message)

    def attach(self, request_id: str, last_seq: int = 0, *, compact: bool = False) -> Stream:
        """Follow a request started elsewhere (another device, an earlier client): its
        events after `last_seq`, then live ones, to its `stream_end`. With `compact`,
        the text held so far arrives as one chunk."""
        message = {"type": "resume", "request_id": request_id, "last_seq": last_seq}
        if compact:
            message["compact"] = True
        return self._new_stream(message, last_seq)

    async def cancel(self, request_id: str) -> None:
        """Ask the server to cancel a request of this user (no answer comes back; a
        stream of it ends with `stream_end` status `cancelled`)."""
        await self._send({"type": "cancel_request", "request_id": request_id})

    async def list_requests(self) -> list[RequestSummary]:
        """The user's running and kept requests, newest first."""
        waiter: asyncio.Future[list[RequestSummary]] = asyncio.get_running_loop().create_future()
        self._lists.append(waiter)
        try:
            await self._send({"type": "list_requests"})
            return await asyncio.wait_for(asyncio.shield(waiter), self._reply_timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._lists.remove(waiter)

    def conversation(self, conversation_id: str | None = None) -> Conversation:
        """Turns that the server keeps together as one conversation."""
        return Conversation(self, conversation_id or _new_id())

    # -- streams ----------------------------------------------------------------

    def _new_stream(self, opening: dict[str, Any], last_seq: int = 0) -> Stream:
        return Stream(opening["request_id"], opening, self._open_stream, self.cancel, last_seq)

    async def _open_stream(self, stream: Stream) -> None:
        if stream.request_id in self._streams:
            raise ValueError(f"request {stream.request_id!r} is already being followed")
        # Known before the message goes, so that no answering frame finds no stream.
        self._streams[stream.request_id] = stream
        try:
            await self._send(stream.opening)
        except BaseException:
            self._streams.pop(stream.request_id, None)
            raise

    def _route(self, frame: ServerEvent | Pong) -> None:
        if isinstance(frame, Pong):
            return
        if isinstance(frame, ConnectionStatus):
            if isinstance(frame.data, RequestList) and self._lists:
                waiter = self._lists.popleft()
                if not waiter.done():
                    waiter.set_result(frame.data.requests)
            return
        stream = self._streams.get(frame.request_id or "")
        if stream is None:
            if isinstance(frame, Error) and frame.request_id is None and self._lists:
                waiter = self._lists.popleft()
                if not waiter.done():
                    waiter.set_exception(ServerError(frame.data))
            return
        if self._never_arrived(stream, frame):
            stream.resuming = False
            self._spawn(self._send(stream.opening))
            return
        if stream.receive(frame):
            self._streams.pop(stream.request_id, None)

    @staticmethod
    def _never_arrived(stream: Stream, frame: ServerEvent) -> bool:
        """Whether a resume after a reconnect found that the request never reached the
        server (the link dropped with its `ai_request`): then it is safe to send again."""
        return (
            isinstance(frame, Error)
            and frame.seq is None
            and frame.data.error_type == "unknown_request"
            and stream.resuming
            and stream.is_request
            and not stream.accepted
        )

    def _fail_all(self, error: ClientError) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.fail(error)
        while self._lists:
            waiter = self._lists.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    # -- the link ---------------------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        link = await self._ensure_link()
        try:
            await link.ws.send(encode_json(message))
        except ConnectionClosed:
            # Lost on the way: once the link is back, resumes carry what was in flight.
            self._link_down(link)
            link = await self._ensure_link()
            if message["type"] not in ("ai_request", "resume"):
                await link.ws.send(encode_json(message))

    async def _ensure_link(self) -> Link:
        if self._closed:
            raise ConnectionLost("the client is closed")
        if self._link is not None:
            return self._link
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.create_task(self._restore(), name="tokenwire restore")
            self._restoring.add_done_callback(_retrieve)
        return await asyncio.shield(self._restoring)

    async def _restore(self) -> Link:
        """Connect (again), with backoff; then resume every unfinished stream."""
        failure: ClientError | None = None
        first = self._link is None and self._reader is None
        for attempt, delay in enumerate(self._policy.delays()):
            if attempt or not first:
                await asyncio.sleep(delay)
            try:
                link = await open_link(self.url, self._token, self._open_timeout)
            except AuthenticationRefused as exc:
                self._fail_all(exc)
                raise
            except ClientError as exc:
                failure = exc
                if first:
                    break  # the first connection reports at once; only a lost one retries
                continue
            self._link = link
            self._reader = asyncio.create_task(self._read(link), name="tokenwire reader")
            await self._resume_all(link)
            return link
        error = failure if first and failure else self._gave_up(failure)
        self._fail_all(error)
        raise error

    def _gave_up(self, failure: ClientError | None) -> ConnectionLost:
        return ConnectionLost(
            f"lost the connection to {self.url} and could not restore it "
            f"in {self._policy.attempts} attempts: {failure}"
        )

    async def _resume_all(self, link: Link) -> None:
        for stream in list(self._streams.values()):
            stream.resuming = True
            resume = {
                "type": "resume",
                "request_id": stream.request_id,
                "last_seq": stream.last_seq,
            }
            try:
                await link.ws.send(encode_json(resume))
            except ConnectionClosed:
                return  # lost again at once: the reader sees it and restores anew

    async def _read(self, link: Link) -> None:
        try:
            async for frame in link.ws:
                try:
                    parsed = parse_server_frame(frame)
                except ValidationError:
                    # An event this client does not know (a newer server): not ours to read.
                    logger.debug("skipped a frame the client does not know")
                    continue
                self._route(parsed)
        except ConnectionClosed:
            pass
        finally:
            self._link_down(link)

    def _link_down(self, link: Link) -> None:
        if self._link is not link:
            return
        self._link = None
        if self._closed:
            return
        while self._lists:  # their answer went with the link; asking again is the caller's
            waiter = self._lists.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionLost("the link dropped before the answer"))
        if self._streams:
            self._restoring = asyncio.create_task(self._restore(), name="tokenwire restore")
            self._restoring.add_done_callback(_retrieve)
        # With nothing running, the next call reconnects.

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_retrieve)


class Conversation:
    """Turns under one `conversation_id`: the server sends each with the history."""

    def __init__(self, client: StreamClient, conversation_id: str) -> None:
        self.client = client
        self.id = conversation_id

    def stream(self, prompt: str | None = None, **options: Any) -> Stream:
        return self.client.stream(prompt, conversation_id=self.id, **options)


def _new_id() -> str:
    return str(uuid.uuid4())


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Errors of background tasks reach the streams (`_fail_all`); this only keeps
    asyncio from reporting them as never retrieved."""
    if not task.cancelled():
        task.exception()
