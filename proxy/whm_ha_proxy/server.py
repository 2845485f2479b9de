"""Serving clients: HTTP/1.1 on asyncio protocols with httptools' parser, lean enough for the hot path.

One ``Downstream`` protocol per client connection parses requests and hands them, one at a time and
in order, to the handler (an ``async`` callable taking a ``Request``), which answers through the
request: ``respond`` for a whole answer in one write, or ``start``/``write``/``finish`` to stream.
Request bodies stream in with flow control (reading from the client pauses while too much is
buffered). An upgrade request (WebSocket) becomes a byte tunnel once the handler calls ``tunnel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import httptools

log = logging.getLogger("whm_ha_proxy.server")
HIGH_WATER = 262144
"""Buffered request-body bytes above which reading from the client pauses."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientGone(ConnectionError):
    """The client closed its connection."""


class Body:
    """A request body as it arrives from the client."""

    __slots__ = ("_chunks", "_downstream", "_size", "_waiter", "done", "error")

    def __init__(self, downstream: Downstream) -> None:
        self._downstream = downstream
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.error: Exception | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._downstream.pause_reading()
        self._wake()

    def finish(self, error: Exception | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive; raises ClientGone if the client leaves before the end."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size < HIGH_WATER // 2:
                    self._downstream.resume_reading()
                yield chunk
            elif self.done:
                if self.error is not None:
                    raise self.error
                return
            else:
                self._waiter = self._downstream.loop.create_future()
                await self._waiter
                self._waiter = None


class Request:
    """One parsed request (headers as raw bytes, as the client sent them)."""

    __slots__ = ("body", "downstream", "headers", "http10", "keep_alive", "method", "path", "responded", "upgrade")

    def __init__(
        self, downstream: Downstream, method: str, path: bytes, headers: list[tuple[bytes, bytes]], *, http10: bool
    ) -> None:
        self.downstream = downstream
        self.method = method
        self.path = path
        self.headers = headers
        self.http10 = http10
        self.keep_alive = True
        self.upgrade = False
        self.body = Body(downstream)
        self.responded = False

    @property
    def peer(self) -> str:
        return self.downstream.peer

    def respond(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """Send a whole answer in one write."""
        self.responded = True
        self.downstream.send(self._head(status, reason, headers, len(body)) + body)

    def respond_bodiless(self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None) -> None:
        """Send an answer that has no body (to HEAD, or 204/304), with the Content-Length the node gave."""
        self.responded = True
        self.downstream.send(self._head(status, reason, headers, length))

    def start(self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None) -> None:
        """Send the head of a streamed answer: with Content-Length when known, else chunked (or until close)."""
        self.responded = True
        if length is None:
            if self.http10:
                self.keep_alive = False
            else:
                self.downstream.chunked = True
        self.downstream.send(self._head(status, reason, headers, length))

    async def write(self, data: bytes) -> None:
        await self.downstream.write(data)

    def finish(self) -> None:
        if self.downstream.chunked:
            self.downstream.send(b"0\r\n\r\n")
            self.downstream.chunked = False

    def continue_(self) -> None:
        """Tell a client that sent ``Expect: 100-continue`` to send its body."""
        self.downstream.send(CONTINUE)

    def tunnel(self, upstream: asyncio.Transport) -> Callable[[bytes], None]:
        """Turn the connection into a byte tunnel to ``upstream``; returns the writer towards the client."""
        self.responded = True
        self.keep_alive = False
        return self.downstream.start_tunnel(upstream)

    def _head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if length is not None:
            lines.append(f"Content-Length: {length}")
        elif self.downstream.chunked:
            lines.append("Transfer-Encoding: chunked")
        if not self.keep_alive or self.downstream.server.draining:
            self.keep_alive = False
            lines.append("Connection: close")
        elif self.http10:
            lines.append("Connection: keep-alive")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")


Handler = Callable[[Request], Awaitable[None]]


class Downstream(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.chunked = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._parsing: Request | None = None
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._closed = False
        self._idle: asyncio.TimerHandle | None = None
        self._tunnel: asyncio.Transport | None = None
        self._upgraded = bytearray()
        self._upgrading = False

    @property
    def busy(self) -> bool:
        return self._task is not None or self._tunnel is not None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.forget(self)
        if self._idle is not None:
            self._idle.cancel()
        for request in (self._parsing, *self._queue):
            if request is not None and not request.body.done:
                request.body.finish(ClientGone("client closed the connection"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ClientGone("client closed the connection"))
        if self._tunnel is not None:
            self._tunnel.close()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._upgrading:
            self._upgraded += data
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrading = True
            self._upgraded += data[exc.args[0] :]
        except httptools.HttpParserError:
            if self.transport is not None and not self.busy:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.close()

    def pause_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.pause_reading()
        elif self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._tunnel is not None:
            self._tunnel.resume_reading()
        elif self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        request = Request(
            self, parser.get_method().decode(), self._url, self._headers, http10=parser.get_http_version() == "1.0"
        )
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        self._url = b""
        self._headers = []
        self._parsing = request
        self._queue.append(request)
        if self._task is None:
            self._task = self.loop.create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.finish()
            self._parsing = None

    # -- serving ------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        while self._queue and not self._closed:
            request = self._queue.popleft()
            try:
                await self.server.handler(request)
            except ClientGone:
                return
            except Exception:
                log.exception("request handler failed")
                request.keep_alive = False
                if not request.responded:
                    request.respond(500, "Internal Server Error", [("Content-Type", "application/json")], b"{}")
            if self._tunnel is not None:
                return
            if request.upgrade or not request.keep_alive or not request.body.done or self.server.draining:
                self.close()
                return
        self._task = None
        self._arm_idle()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self._closed:
            self.transport.write(data)

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise ClientGone("client closed the connection")
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        assert self.transport is not None
        self.transport.write(data)
        if self._drain is not None and not self._drain.done():
            await self._drain

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def start_tunnel(self, upstream: asyncio.Transport) -> Callable[[bytes], None]:
        """Pass every further byte from the client to ``upstream``; returns the writer towards the client."""
        self._tunnel = upstream
        self._upgrading = False
        if self._upgraded:
            upstream.write(bytes(self._upgraded))
            self._upgraded.clear()
        assert self.transport is not None
        return self.transport.write

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self._closed:
            return
        if self.server.draining:
            self.close()
            return
        self._idle = self.loop.call_later(self.server.idle_timeout, self.close)


class Server:
    """The protocol factory for the listening socket; knows its connections, to drain them."""

    def __init__(self, handler: Handler, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.connections: set[Downstream] = set()
        self.draining = False
        self._drained = asyncio.Event()

    def __call__(self) -> Downstream:
        return Downstream(self)

    def forget(self, connection: Downstream) -> None:
        self.connections.discard(connection)
        if self.draining and not self.connections:
            self._drained.set()

    async def drain(self, timeout: float) -> None:
        """Close idle connections now and the others once their current request is answered."""
        self.draining = True
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for connection in list(self.connections):
            connection.close()
