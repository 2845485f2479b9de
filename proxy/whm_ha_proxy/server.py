"""Serving clients: HTTP/1.1 on asyncio protocols with httptools' parser, lean enough for the hot path.

One ``Downstream`` protocol per client connection parses requests and hands them, one at a time and
in order, to the handler, which answers through the request: ``respond`` for a whole answer in one
write, or ``start``/``write``/``finish`` to stream. The handler first gets the chance to serve a
request from the loop's callbacks with no task (``forward_now``, then ``Downstream.finished``); what it
declines it serves as a coroutine in a task.
Request bodies stream in with flow control (reading from the client pauses while too much is
buffered). An upgrade request (WebSocket) becomes a byte tunnel only once the node has answered 101.

Every byte from a client is hostile until parsed: the head is bounded (request line, each header
line, all header bytes, header count), slow heads and stalled bodies time out, and anything the
proxy cannot frame unambiguously is answered with a 4xx/5xx and the connection closed. A refused
request never reaches a node; an upload refused half-way is cut, so the node's connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

import httptools

from .client_address import EDGE, Addressing
from .proxy_protocol import ProxyHeader, ProxyProtocolError, read_preface

log = logging.getLogger("whm_ha_proxy.server")
HIGH_WATER = 262144
"""Buffered request-body bytes above which reading from the client pauses."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
"""After refusing a request, how long and how much of what the client still sends is read and dropped,
so that the answer is not lost to a reset (nginx's lingering close)."""
PIPELINE_DEPTH = 16
"""Requests waiting for their turn above which further bytes are held back (and reading pauses)."""
MAX_PIPELINED = 256
"""Requests one read may queue at most (a read of tiny pipelined requests); more are refused."""
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
REFUSED_METHODS = frozenset({b"CONNECT", b"TRACE"})
VERSION_ERRORS = frozenset({"Invalid HTTP version", "Invalid major version", "Invalid minor version", "Expected dot"})
"""llhttp's reasons for a version it cannot parse (HTTP/1.2, HTTP/3): answered 505, not 400."""
NODE_HSTS = re.compile(rb"^strict-transport-security:[^\r\n]*\r\n", re.IGNORECASE | re.MULTILINE)
"""A Strict-Transport-Security line among a node's header lines."""
POLICED_LENGTHS = frozenset({len(b"host"), len(b"content-length"), len(b"transfer-encoding")})
UNKNOWN_ORIGIN = EDGE.origin("", https=False)
"""A connection's origin until it is accepted."""
REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}


@dataclass(frozen=True)
class ClientLimits:
    """What one client connection may send, and how slowly (nginx's equivalents in the README)."""

    max_request_line: int = 8192
    max_header_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    client_header_timeout: float = 60.0
    """From the first byte of a request head to its end."""
    client_body_timeout: float = 60.0
    """Between two reads of a request body."""
    keepalive_timeout: float = 75.0
    """How long a connection with no request in progress stays open."""
    max_connections: int = 4096
    """Client connections per worker; more are closed at once."""

    @property
    def shortest_timeout(self) -> float:
        return min(self.client_header_timeout, self.client_body_timeout, self.keepalive_timeout)


class ClientGone(ConnectionError):
    """The client closed its connection."""


class Refused(Exception):
    """A request the proxy will not forward: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str, headers: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        """Extra header lines, each ending with CRLF."""


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
        """The body's bytes as they arrive; raises ClientGone if the client leaves (or is refused) before the end."""
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
    """One parsed request: end-to-end headers as the client sent them, framing as the parser found it."""

    __slots__ = (
        "body",
        "chunked",
        "downstream",
        "headers",
        "host",
        "http10",
        "keep_alive",
        "length",
        "method",
        "path",
        "responded",
        "upgrade",
    )

    def __init__(
        self,
        downstream: Downstream,
        method: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        http10: bool,
        host: bytes,
        length: int | None,
        chunked: bool,
    ) -> None:
        self.downstream = downstream
        self.method = method
        self.path = path
        self.headers = headers
        """Every header line but the framing ones (Host, Content-Length, Transfer-Encoding)."""
        self.http10 = http10
        self.host = host
        """The one Host header's value (b"" when an HTTP/1.0 client sent none)."""
        self.length = length
        """The body's Content-Length, None when absent or chunked."""
        self.chunked = chunked
        self.keep_alive = True
        self.upgrade = False
        self.body = Body(downstream)
        self.responded = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)

    def respond(self, status: int, reason: bytes, fields: bytes, body: bytes = b"") -> None:
        """Send a whole answer in one write; ``fields`` are header lines, each ending with CRLF."""
        self.responded = True
        self.downstream.send(self._head(status, reason, fields, len(body)) + body)

    def respond_bodiless(self, status: int, reason: bytes, fields: bytes, length: int | None) -> None:
        """Send an answer that has no body (to HEAD, or 204/304), with the Content-Length the node gave."""
        self.responded = True
        self.downstream.send(self._head(status, reason, fields, length))

    def start(self, status: int, reason: bytes, fields: bytes, length: int | None) -> None:
        """Send the head of a streamed answer: with Content-Length when known, else chunked (or until close)."""
        self.responded = True
        if length is None:
            if self.http10:
                self.keep_alive = False
            else:
                self.downstream.chunked = True
        self.downstream.send(self._head(status, reason, fields, length))

    async def write(self, data: bytes) -> None:
        await self.downstream.write(data)

    def finish(self) -> None:
        if self.downstream.chunked:
            self.downstream.send(b"0\r\n\r\n")
            self.downstream.chunked = False

    def continue_(self) -> None:
        """Tell a client that sent ``Expect: 100-continue`` to send its body."""
        self.downstream.send(CONTINUE)

    def switch(self, fields: bytes, protocol: bytes, upstream: asyncio.Transport) -> None:
        """Answer 101 (the node switched protocols) and turn the connection into a byte tunnel to ``upstream``."""
        self.responded = True
        self.keep_alive = False
        self.downstream.send(
            b"HTTP/1.1 101 Switching Protocols\r\n%sConnection: Upgrade\r\nUpgrade: %s\r\n\r\n" % (fields, protocol)
        )
        self.downstream.start_tunnel(upstream)

    def _head(self, status: int, reason: bytes, fields: bytes, length: int | None) -> bytes:
        if length is not None:
            framing = b"Content-Length: %d\r\n" % length
        elif self.downstream.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b""
        if not self.keep_alive or self.downstream.server.draining:
            self.keep_alive = False
            framing += b"Connection: close\r\n"
        elif self.http10:
            framing += b"Connection: keep-alive\r\n"
        if self.downstream.tls and (hsts := self.downstream.server.hsts):
            # The cluster's policy replaces a node's own (browsers honour the first header, the node's).
            fields = NODE_HSTS.sub(b"", fields) + hsts
        return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (status, reason, fields, framing)


class Handler(Protocol):
    """What serves requests: a coroutine per request, unless ``forward_now`` takes it."""

    def __call__(self, request: Request) -> Awaitable[None]: ...

    def forward_now(self, request: Request) -> bool:
        """Start serving ``request`` from callbacks (True: it calls ``request.downstream.finished`` once
        answered, or hands over with ``continue_in_task``); False to have it served by ``__call__``."""
        ...


class Downstream(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.tls = False
        """Whether the client connected to the TLS listener."""
        self.origin = UNKNOWN_ORIGIN
        self.proxied: ProxyHeader | None = None
        """The PROXY header the TLS listener read off the connection before its handshake (TLS connections
        never look for one in decrypted data)."""
        self._preface: bytes | None = None
        """What arrived before a PROXY header (or its absence) was established; None once it was, or when PROXY
        protocol is off."""
        self._preface_timer: asyncio.TimerHandle | None = None
        self.chunked = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._host: bytes | None = None
        self._hosts = 0
        self._length: bytes | None = None
        self._coding: bytes | None = None
        self._room = server.limits.max_header_bytes
        """Bytes the current head (or, in a chunked body, framing and trailers) may still take on the wire."""
        self._line_ended = False
        """Whether an earlier read of the current head held the end of its request line."""
        self._heads = 0
        self._body_bytes = False
        self._parsing: Request | None = None
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._serving = False
        """A request is being served (from callbacks or in ``_task``)."""
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._head_started: float | None = None
        self._body_read: float | None = None
        self._idle_since: float | None = None
        self._tunnel: asyncio.Transport | None = None
        self._upgraded = bytearray()
        self._upgrading = False
        self._refused: Refused | None = None
        self._dropped = 0
        self._held = b""
        """Bytes held back while PIPELINE_DEPTH requests wait."""

    @property
    def busy(self) -> bool:
        return self._serving or self._tunnel is not None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.tls = transport.get_extra_info("ssl_object") is not None
        if not self.server.admit(self):
            self._closed = True
            self.transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        addressing = self.server.addressing
        source = self.proxied.source if self.proxied is not None else None
        self.origin = addressing.origin(source or self.peer, https=self.tls)
        if addressing.proxy_protocol and not self.tls:
            self._preface = b""
            self._preface_timer = self.loop.call_later(self.limits.client_header_timeout, self._preface_timeout)
        self._idle_since = self.loop.time()
        self._timer = self.loop.call_later(self.limits.shortest_timeout, self._check_time)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        for request in (self._parsing, *self._queue):
            if request is not None and not request.body.done:
                request.body.finish(ClientGone("client closed the connection"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ClientGone("client closed the connection"))
        if self._tunnel is not None:
            self._tunnel.close()

    def data_received(self, data: bytes) -> None:
        if self._preface is not None:
            self._read_preface(data)
        elif self._tunnel is not None:
            self._tunnel.write(data)
        elif self._upgrading:
            self._upgraded += data
            if len(self._upgraded) > HIGH_WATER:
                self.pause_reading()
        elif self._refused is not None:  # lingering: read and dropped
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.close()
        elif self._parsing is None:
            if len(self._queue) >= PIPELINE_DEPTH or self._held:
                self._held += data
                self.pause_reading()
            else:
                self._feed_head(data)
        else:
            self._feed_body(data)

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

    # -- PROXY protocol ---------------------------------------------------------------------------------

    def _read_preface(self, data: bytes) -> None:
        """Read the PROXY header a trusted peer must send (and no other may) before HTTP starts."""
        assert self._preface is not None
        received = self._preface + data
        try:
            header = read_preface(received, trusted=self.origin.trusted)
        except ProxyProtocolError as exc:
            # Logged when a trusted load balancer is at fault; anyone else's attempts are only refused.
            log.log(logging.WARNING if self.origin.trusted else logging.DEBUG, "closing %s: %s", self.peer, exc)
            self._preface = None
            self.close()
            return
        if header is None:
            self._preface = received
            return
        self._preface = None
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        if header.source is not None:
            self.origin = self.server.addressing.origin(header.source, https=self.origin.https)
        if len(received) > header.length:
            self.data_received(received[header.length :])

    def _preface_timeout(self) -> None:
        if self._preface is not None:
            level = logging.WARNING if self.origin.trusted else logging.DEBUG
            log.log(level, "closing %s: no PROXY protocol header in time", self.peer)
            self._preface = None
            self.close()

    # -- feeding the parser -------------------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        """Bytes that start in a request head, which may take only ``_room`` more bytes."""
        if self._head_started is None:
            self._head_started = self.loop.time()
            self._idle_since = None
        heads = self._heads
        room = self._room
        if len(data) <= room:
            self._feed(data)
            if self._heads == heads:
                self._room -= len(data)
                if not self._line_ended:
                    self._line_ended = b"\n" in data
            return
        if room > 0:
            self._feed(data[:room])
        if self._heads != heads:  # the head ended within the limit: the rest is body or what follows
            if self._refused is None:
                self.data_received(data[room:])
            return
        line_ended = self._line_ended or b"\n" in data[:room]
        self._refuse(Refused(431, "request header fields too large") if line_ended else Refused(414, "URI too long"))

    def _feed_body(self, data: bytes) -> None:
        """Bytes that start in a request body; in a chunked one, framing and trailers share the head's bound."""
        request = self._parsing
        self._body_read = self.loop.time()
        self._body_bytes = False
        self._feed(data)
        if not self._body_bytes and self._parsing is request and request is not None:
            self._room -= len(data)
            if self._room < 0:
                self._refuse(Refused(400, "chunk framing or trailers too large"))

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrading = True
            self._upgraded += data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if not isinstance(refused, Refused):
                reason = str(exc)
                refused = (
                    Refused(505, "HTTP version not supported") if reason in VERSION_ERRORS else Refused(400, reason)
                )
            self._refuse(refused)
        if self._queue and not self._serving:
            self._serve_next()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_request_line:
            raise Refused(414, "URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        size = len(name) + len(value)
        if size + 2 > limits.max_header_line:
            raise Refused(431, "request header field too large")
        self._header_bytes += size + 4
        if self._header_bytes > limits.max_header_bytes:
            raise Refused(431, "request header fields too large")
        if self._parsing is not None:
            return  # a trailer of a chunked body: bounded, then dropped
        if len(self._headers) >= limits.max_headers:
            raise Refused(431, "too many request header fields")
        if len(name) in POLICED_LENGTHS:
            lower = name.lower()
            if lower == b"host":
                self._host = value
                self._hosts += 1
                return
            if lower == b"content-length":
                self._length = value
                return
            if lower == b"transfer-encoding":
                self._coding = value
                return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        request = self._request(parser)
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        if request.upgrade and request.has_body:
            raise Refused(400, "an upgrade request cannot carry a body")
        if len(self._queue) >= MAX_PIPELINED:
            raise Refused(400, f"more than {MAX_PIPELINED} pipelined requests")
        self._heads += 1
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._host = self._length = self._coding = None
        self._hosts = 0
        self._room = self.limits.max_header_bytes
        self._line_ended = False
        self._head_started = None
        self._body_read = self.loop.time() if request.has_body else None
        self._parsing = request
        self._queue.append(request)

    def _request(self, parser: httptools.HttpRequestParser) -> Request:
        """The request just parsed, once it is known to be unambiguous; Refused otherwise."""
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            if version == "0.9":
                raise Refused(400, "HTTP/0.9 is not supported")
            raise Refused(505, "HTTP version not supported")
        method = parser.get_method()
        if method in REFUSED_METHODS:
            raise Refused(405, "method not allowed", f"Allow: {ALLOWED_METHODS}\r\n")
        http10 = version == "1.0"
        if self._hosts > 1 or (self._hosts == 0 and not http10):
            raise Refused(400, "exactly one Host header is required")
        chunked = False
        if self._coding is not None:
            if http10:
                raise Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
            codings = self._coding.lower().split(b",")
            if codings[-1].strip(b" \t") != b"chunked":  # RFC 9112 6.3: the length cannot be known
                raise Refused(400, "a request's last transfer coding must be chunked")
            if len(codings) > 1:
                raise Refused(501, "only the chunked transfer coding is implemented")
            chunked = True
        length = int(self._length) if self._length is not None else None  # llhttp checked its digits
        return Request(
            self,
            method.decode(),
            self._url,
            self._headers,
            http10=http10,
            host=self._host or b"",
            length=length,
            chunked=chunked,
        )

    def on_body(self, body: bytes) -> None:
        self._body_bytes = True
        self._room = self.limits.max_header_bytes
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.body.finish()
            self._parsing = None
            self._header_bytes = 0
            self._room = self.limits.max_header_bytes
            self._body_read = None

    # -- refusing -----------------------------------------------------------------------------------

    def _refuse(self, refused: Refused) -> None:
        """Stop parsing: requests before the refused one are still answered, the refused one is never
        forwarded (or its upload is cut), then the refusal is answered and the connection closed."""
        if self._refused is not None:
            return
        self._refused = refused
        self._head_started = self._body_read = None
        broken, self._parsing = self._parsing, None
        if broken is not None:
            if broken in self._queue:
                self._queue.remove(broken)
            else:
                broken.body.finish(ClientGone(refused.message))
        if not self._serving and not self._queue:
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        refused = self._refused
        if refused is None or self._closed or self.transport is None:
            return
        body = json.dumps({"error": refused.message}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s"
            % (refused.status, REASONS[refused.status].encode(), len(body), refused.headers.encode("latin-1"), body)
        )
        self._linger()

    def _linger(self) -> None:
        """Close our side now and the connection once the client has closed its side (or after a while)."""
        transport = self.transport
        if transport is None or self._closed:
            return
        self.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.close)

    # -- timeouts -----------------------------------------------------------------------------------

    def _check_time(self) -> None:
        """The connection's one timer: fires at the next deadline, or within the shortest timeout after
        being armed, so that state changes never need to re-arm it."""
        if self._closed:
            return
        now = self.loop.time()
        limits = self.limits
        if self._head_started is not None:
            deadline = self._head_started + limits.client_header_timeout
            if now >= deadline:
                self._refuse(Refused(408, "request header timeout"))
                return
        elif self._body_read is not None:
            if self._reading_paused:  # the node is slow, not the client
                self._body_read = now
            deadline = self._body_read + limits.client_body_timeout
            if now >= deadline:
                self._refuse(Refused(408, "request body timeout"))
                return
        elif self._idle_since is not None:
            deadline = self._idle_since + limits.keepalive_timeout
            if now >= deadline:
                self.close()
                return
        else:
            deadline = now + limits.shortest_timeout
        self._timer = self.loop.call_at(min(deadline, now + limits.shortest_timeout), self._check_time)

    # -- serving ------------------------------------------------------------------------------------

    def _serve_next(self) -> None:
        """Serve the next request in line, or, when none is left, answer a pending refusal or idle."""
        if self._queue and not self._closed:
            self._serving = True
            if self.server.handler.forward_now(self._queue[0]):
                self._queue.popleft()
            else:
                self._task = self.loop.create_task(self._serve_first())
            return
        self._serving = False
        if self._refused is not None:
            self._answer_refusal()
        elif self.server.draining:
            self.close()
        elif self._head_started is None:
            self._idle_since = self.loop.time()

    async def _serve_first(self) -> None:
        """Serve the first request in line; it is taken only now, so that a refusal of what follows in the
        same read (an upload's framing) still finds it unsent and removes it."""
        if self._queue and not self._closed:
            request = self._queue.popleft()
            await self._serve(self.server.handler(request), request)
        else:
            self._task = None
            self._serve_next()

    def continue_in_task(self, serving: Awaitable[None], request: Request) -> None:
        """Serve ``request`` by awaiting ``serving`` in a task, then go on (``finished``)."""
        self._task = self.loop.create_task(self._serve(serving, request))

    async def _serve(self, serving: Awaitable[None], request: Request) -> None:
        try:
            await serving
        except ClientGone:
            if self._refused is None:
                return
        except Exception:
            log.exception("request handler failed")
            request.keep_alive = False
            if not request.responded:
                request.respond(500, b"Internal Server Error", b"Content-Type: application/json\r\n", b"{}")
        self._task = None
        self.finished(request)

    def finished(self, request: Request) -> None:
        """``request`` is answered: serve the next one, or close the connection."""
        if self._tunnel is not None:
            return
        if self._refused is not None and request.body.error is not None:  # its upload was refused
            self._serving = False
            if request.responded:
                self.close()
            else:
                self._answer_refusal()
            return
        if request.upgrade:  # the node did not switch protocols: HTTP goes on
            self._resume_http()
        if not request.keep_alive or not request.body.done or self.server.draining:
            self.close()
            return
        if self._held and len(self._queue) < PIPELINE_DEPTH:
            held, self._held = self._held, b""
            self.resume_reading()
            self.data_received(held)
        self._serve_next()

    def _resume_http(self) -> None:
        """Parse again what the client sent after an upgrade request that was answered without 101."""
        self._upgrading = False
        self.parser = httptools.HttpRequestParser(self)
        pending = bytes(self._upgraded)
        self._upgraded.clear()
        self.resume_reading()
        if pending:
            self.data_received(pending)

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
        if self._reading_paused and self.transport is not None and not self._closed and not self._held:
            self._reading_paused = False
            self.transport.resume_reading()

    def start_tunnel(self, upstream: asyncio.Transport) -> None:
        """Pass every further byte from the client to ``upstream``."""
        self._tunnel = upstream
        self._upgrading = False
        if self._upgraded:
            upstream.write(bytes(self._upgraded))
            self._upgraded.clear()
        self.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()


class Connection(Protocol):
    """What a listener's connections offer it."""

    @property
    def busy(self) -> bool:
        """Something is in progress that a drain lets finish."""
        ...

    def close(self) -> None: ...


C = TypeVar("C", bound=Connection)


class Listener(Generic[C]):
    """A listener's connections: bounded per worker, forgotten as they close, drained on SIGTERM."""

    def __init__(self, limits: ClientLimits) -> None:
        self.loop = asyncio.get_running_loop()
        self.limits = limits
        self.connections: set[C] = set()
        self.handshakes: set[C] = set()
        """Connections to a TLS listener whose handshake is in progress: they count against the bound too."""
        self.draining = False
        self.refused_connections = 0
        self._at_limit = False
        self._drained = asyncio.Event()

    def admit(self, connection: C) -> bool:
        """Count a new connection in, or refuse it when the worker is at its bound (logged once per episode)."""
        if connection in self.handshakes:  # counted in since its accept: its handshake is done
            self.handshakes.discard(connection)
        elif not self._room():
            return False
        self.connections.add(connection)
        return True

    def admit_handshake(self, connection: C) -> bool:
        """Count in a connection whose TLS handshake is starting (until it is admitted or ``end_handshake``), or
        refuse it as ``admit`` does."""
        if not self._room():
            return False
        self.handshakes.add(connection)
        return True

    def end_handshake(self, connection: C) -> None:
        """The handshake of ``connection`` is over: its slot is given back unless it was admitted."""
        if connection in self.handshakes:
            self.handshakes.discard(connection)
            self.forget(connection)

    def _room(self) -> bool:
        """Whether one more connection fits in the worker's bound; counts and logs a refusal when not."""
        if len(self.connections) + len(self.handshakes) >= self.limits.max_connections:
            self.refused_connections += 1
            if not self._at_limit:
                self._at_limit = True
                log.warning(
                    "client connection limit reached (%d in this worker): closing new connections",
                    self.limits.max_connections,
                )
            return False
        return True

    def forget(self, connection: C) -> None:
        self.connections.discard(connection)
        if self._at_limit and len(self.connections) + len(self.handshakes) < self.limits.max_connections * 0.9:
            self._at_limit = False
        if self.draining and not self.connections:
            self._drained.set()

    async def drain(self, timeout: float) -> None:
        """Close idle connections now and the others once their work is done (or after ``timeout`` seconds)."""
        self.draining = True
        for connection in list(self.connections):
            if not connection.busy:
                connection.close()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        for connection in list(self.connections):
            connection.close()


class Server(Listener[Downstream]):
    """The protocol factory for the listening socket; knows its connections, to bound and drain them."""

    def __init__(self, handler: Handler, limits: ClientLimits) -> None:
        super().__init__(limits)
        self.handler = handler
        self.addressing: Addressing = EDGE
        """How new connections' client addresses are established (the cluster's clientAddress settings)."""
        self.hsts = b""
        """The Strict-Transport-Security header line added to answers over TLS (empty: none)."""

    def __call__(self) -> Downstream:
        return Downstream(self)
