"""A lean HTTP/1.1 client for talking to the nodes: pooled keep-alive connections on asyncio protocols.

aiohttp's client costs several times more per request than the rest of the proxy, so the hot path
uses this instead: one ``Connection`` protocol per upstream socket parses the response head and
frames the body (Content-Length, chunked or until close) without decoding it; body bytes are
handed out as they arrive, with flow control both ways. Errors say whether anything could have
reached the node: ``ConnectFailed`` means nothing was sent.

With ``spec.nodeTLS`` the pool connects with TLS (``Pool.use_tls``) and keeps those connections as it keeps
plain ones, so that a keep-alive client costs one handshake per pooled connection, not one per request. A
certificate the node presents that fails verification is a ``TLSFailed``: nothing was sent.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable
from typing import cast

from whm_ha.node_tls import ClientTLS, tls_failure

HEAD_LIMIT = 65536
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
"""Headers that describe one connection; never forwarded, nor any ``Proxy-*`` header."""
NOTICED = frozenset(name.encode() for name in HOP_BY_HOP | {"content-length"})
COMMON_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade"})
WHITESPACE = b" \t"
FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
"""Visible characters, obs-text, space and tab: no NUL, CR, LF or other controls (RFC 9110 5.5)."""
STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9](?: " + FIELD_VALUE + rb")?")
FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:" + FIELD_VALUE)
"""A token, the colon right after it (no whitespace before it, no folded line), and a clean value."""
WELL_FORMED_HEAD = re.compile(STATUS_LINE.pattern + rb"(?:\r\n" + FIELD_LINE.pattern + rb")*")
"""A response head without its blank line, checked in one pass: what RFC 9112 lets a proxy forward."""
HIGH_WATER = 262144
"""Buffered response bytes above which reading from the node pauses."""


class UpstreamError(Exception):
    """The exchange with a node failed."""


class ConnectFailed(UpstreamError):
    """No connection could be made (refused, unreachable or timed out): nothing was sent."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class TLSFailed(ConnectFailed):
    """The TLS handshake failed (a certificate refused, or no TLS spoken): nothing was sent."""


class ConnectAbandoned(ConnectFailed):
    """The connect was given up because the node left the rotation meanwhile (``Pool.abandon``): nothing was
    sent, and the node is not to blame for this request."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The node did not answer (headers) or went silent (body) in time."""


class UpstreamClosed(UpstreamError):
    """The node closed the connection or broke the protocol."""


class Response:
    """A response head with its end-to-end header lines (no hop-by-hop ones, no Content-Length) as received;
    the body is read with ``Connection.read``."""

    __slots__ = ("fields", "length", "reason", "status", "upgrade")

    def __init__(self, status: int, reason: bytes, fields: bytes, length: int | None, upgrade: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.fields = fields
        """The header lines passed on, each ending with CRLF."""
        self.length = length
        """Body length when known (Content-Length, or 0 for bodiless answers); None when chunked or until close."""
        self.upgrade = upgrade
        """The protocol a 101 answer switches to."""


_HEAD, _BODY, _DONE = 0, 1, 2
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS = 0, 1, 2, 3


class Connection(asyncio.Protocol):
    """One keep-alive connection to a node, carrying one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: str, tls: ClientTLS | None = None) -> None:
        self.loop = loop
        self.key = key
        self.tls = tls
        """The TLS settings the connection was made and verified with (None: plain)."""
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self.reusable = True
        self.received = False
        """Whether any byte of the current response has arrived."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline: float | None = None
        """When the current wait for the node, or the idle time in the pool, ends (None: no deadline)."""
        self._on_idle_expiry: Callable[[Connection], None] | None = None
        self._watcher: Callable[[Connection], None] | None = None
        """Called instead of waking a waiter while an exchange is followed from callbacks (``watch``)."""
        self._watch_timeout = 0.0
        self._state = _DONE
        self._head = bytearray()
        self._method_head = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._remaining = 0
        self._framing = 0  # 0 length, 1 chunked, 2 until close
        self._chunk_state = _CHUNK_SIZE
        self._line = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._response: Response | None = None
        self._error: Exception | None = None
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None
        self._closed = False
        self._to_client: Callable[[bytes], None] | None = None
        self._client_flow: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._tunnel_closed: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
        if self._state == _BODY and self._framing == 2:
            self._state = _DONE
        elif self._state != _DONE and self._error is None:
            self._error = UpstreamClosed(f"connection closed by the node{f': {exc}' if exc else ''}")
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(UpstreamClosed("connection closed while sending"))
        if self._tunnel_closed is not None and not self._tunnel_closed.done():
            self._tunnel_closed.set_result(None)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self._client_flow is not None:
            self._client_flow[0]()
        elif self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._client_flow is not None:
            self._client_flow[1]()
        elif self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._to_client is not None:
            self._to_client(data)
        elif self._state == _BODY:
            self._feed(data)
        elif self._state == _HEAD:
            if self._head:
                self._head += data
                data = bytes(self._head)
                self._head.clear()
            self._parse_head(data)
        else:
            self.reusable = False  # bytes nobody asked for
            self._close()

    # -- one exchange -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Closed, or closing: the transport may close (a node that went away) before connection_lost runs."""
        return self._closed or self.transport is None or self.transport.is_closing()

    def begin(self, head: bytes, *, method_head: bool) -> None:
        """Send a request head and expect a response."""
        assert self.transport is not None
        self._state = _HEAD
        self._head.clear()
        self._response = None
        self._error = None
        self._method_head = method_head
        self.received = False
        if self.closed:  # a pooled connection the node closed after it was taken: nothing is sent
            raise UpstreamClosed("the node closed the connection before the request was sent")
        try:
            self.transport.write(head)
        except RuntimeError as exc:  # uvloop refuses a write on a transport that closed under it
            raise UpstreamClosed("the node closed the connection before the request was sent") from exc

    async def send_body(self, body: AsyncIterable[bytes], *, chunked: bool) -> None:
        """Stream a request body (chunk-encoded when ``chunked``), respecting the node's pace."""
        assert self.transport is not None
        write = self.transport.write
        async for chunk in body:
            if self._closed:
                raise UpstreamClosed("connection closed while sending")
            if chunked:
                write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            else:
                write(chunk)
            if self._drain is not None and not self._drain.done():
                await self._drain
        if chunked:
            write(b"0\r\n\r\n")

    async def response(self, timeout: float) -> Response:
        """Wait for the response head (at most ``timeout`` seconds)."""
        while self._response is None:
            if self._error is not None:
                raise self._error
            await self._wait(timeout, "no response headers")
        return self._response

    async def read(self, timeout: float) -> bytes:
        """The next piece of the body; b"" at its end."""
        while not self._chunks:
            if self._state == _DONE:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout, "response body stalled")
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused_reading and self._buffered < HIGH_WATER // 2 and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        return chunk

    def watch(self, watcher: Callable[[Connection], None] | None, timeout: float = 0.0) -> None:
        """Follow the exchange from callbacks instead of awaiting it: ``watcher`` runs each time it advances
        (and once if it fails, or if no response head arrives within ``timeout``), until ``watch(None)``."""
        self._watcher = watcher
        if watcher is None:
            self._deadline = None
        else:
            self._watch_timeout = timeout
            self._arm(self.loop.time() + timeout)

    @property
    def waiting_for_head(self) -> bool:
        return self._response is None and self._error is None

    @property
    def response_head(self) -> Response | None:
        return self._response

    def whole_body(self, limit: int) -> bytes | None:
        """The body of a response that has wholly arrived with a length up to ``limit`` (taken out of the
        connection), else None: read it with ``read``."""
        response = self._response
        if response is None or self._error is not None or self._state != _DONE:
            return None
        if response.length is None or response.length > limit or response.status == 101:
            return None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    def complete(self) -> bool:
        """Whether the whole response has been read, so the connection may carry another exchange."""
        return self._state == _DONE and not self._chunks and self._error is None

    def abort(self) -> None:
        self.reusable = False
        self._close()

    async def tunnel(
        self, to_client: Callable[[bytes], None], pause_client: Callable[[], None], resume_client: Callable[[], None]
    ) -> None:
        """After a 101: pass every byte from the node to the client until the connection closes."""
        assert self.transport is not None
        self._tunnel_closed = self.loop.create_future()
        self._client_flow = (pause_client, resume_client)
        while self._chunks:
            to_client(self._chunks.popleft())
        self._to_client = to_client
        if self._paused_reading:
            self._paused_reading = False
            self.transport.resume_reading()
        if self._closed:
            return
        await self._tunnel_closed

    # -- internals ----------------------------------------------------------------------------------

    def idle_until(self, deadline: float, expire: Callable[[Connection], None]) -> None:
        """Wait in the pool; ``expire`` is called with the connection if it is still idle at ``deadline``."""
        self._on_idle_expiry = expire
        self._arm(deadline)

    def reuse(self) -> None:
        """Taken from the pool for an exchange."""
        self._on_idle_expiry = None
        self._deadline = None
        self.reused = True

    async def _wait(self, timeout: float, what: str) -> None:
        waiter = self._waiter = self.loop.create_future()
        self._arm(self.loop.time() + timeout)
        try:
            await waiter
        except UpstreamTimeout:
            self.abort()
            raise UpstreamTimeout(f"{what} after {timeout:g}s") from None
        finally:
            self._deadline = None
            self._waiter = None

    def _arm(self, deadline: float) -> None:
        """Set the deadline. The one timer is moved only when it would fire too late: it fires at or before
        every deadline, and re-arms itself while the deadline lies ahead (no timer per exchange)."""
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._closed:
            return
        if self.loop.time() < deadline:
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)
            return
        self._deadline = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamTimeout())
        elif self._watcher is not None:
            self._error = UpstreamTimeout(f"no response headers after {self._watch_timeout:g}s")
            self.abort()
            self._watcher(self)
        elif self._on_idle_expiry is not None:
            self._on_idle_expiry(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif self._watcher is not None:
            self._watcher(self)

    def _close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def _parse_head(self, data: bytes) -> None:
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._head += data
                if len(self._head) > HEAD_LIMIT:
                    self._fail("response head too large")
                return
            try:
                response = self._head_of(data[:end])
            except ValueError as exc:
                self._fail(f"bad response head: {exc}")
                return
            data = data[end + 4 :]
            if response is None:  # an interim 1xx answer: the real one follows
                continue
            self._response = response
            self._state = _DONE if self._framing == 0 and self._remaining == 0 else _BODY
            if data:
                self._feed(data)
            self._wake()
            return

    def _head_of(self, head: bytes) -> Response | None:
        """The response head (without its blank line), or None for an interim 1xx; raises ValueError on a
        malformed one. End-to-end header lines are passed on as bytes, unparsed beyond their name."""
        if WELL_FORMED_HEAD.fullmatch(head) is None:
            raise ValueError(_flaw(head))
        first, _, rest = head.partition(b"\r\n")
        status = int(first[9:12])
        if 100 <= status < 200 and status != 101:
            return None
        reason = first[13:]
        close = first[5:8] == b"1.0"  # HTTP/1.0 closes unless it says keep-alive
        kept: list[bytes] = []
        append = kept.append
        length: int | None = None
        codings: bytes | None = None
        hop: set[bytes] | None = None
        upgrade = b""
        for line in rest.split(b"\r\n") if rest else ():
            name, _, value = line.partition(b":")
            lower = name.lower()
            if lower in NOTICED:
                if lower == b"content-length":
                    length = _content_length(value, length)
                elif lower == b"transfer-encoding":  # several lines make one list
                    codings = value if codings is None else codings + b"," + value
                elif lower == b"connection":
                    lowered = value.lower()
                    # One token (keep-alive, close) is what nodes send: no set comprehension for it.
                    tokens = {token.strip() for token in lowered.split(b",")} if b"," in lowered else {lowered.strip()}
                    close = b"close" in tokens or (close and b"keep-alive" not in tokens)
                    hop = tokens if hop is None else hop | tokens
                elif lower == b"upgrade":
                    upgrade = value.strip()
                continue
            if lower[:6] == b"proxy-":
                continue
            append(line)
        if hop and (hop := hop - COMMON_TOKENS):  # rare: drop the headers the node named in Connection
            kept = [line for line in kept if line.partition(b":")[0].lower() not in hop]
        fields = b"\r\n".join(kept) + b"\r\n" if kept else b""
        chunked = _chunked(codings, length)
        if close:
            self.reusable = False
        if status == 101:  # what follows is another protocol: tunnelled until either side closes
            self._framing = 2
            self.reusable = False
            return Response(status, reason, fields, None, upgrade)
        if self._method_head or status in (204, 304):
            self._framing, self._remaining = 0, 0
            return Response(status, reason, fields, length if self._method_head else 0)
        if chunked:
            self._framing, self._chunk_state = 1, _CHUNK_SIZE
            self._line.clear()
            return Response(status, reason, fields, None)
        if length is not None:
            self._framing, self._remaining = 0, length
            return Response(status, reason, fields, length)
        self._framing = 2
        self.reusable = False
        return Response(status, reason, fields, None)

    def _feed(self, data: bytes) -> None:
        if self._framing == 0:
            if len(data) > self._remaining:
                self.reusable = False
                data = data[: self._remaining]
            self._remaining -= len(data)
            self._push(data)
            if self._remaining == 0:
                self._state = _DONE
        elif self._framing == 1:
            self._feed_chunked(data)
        else:
            self._push(data)
        self._wake()

    def _feed_chunked(self, data: bytes) -> None:
        position, size = 0, len(data)
        while position < size and self._state == _BODY:
            state = self._chunk_state
            if state == _CHUNK_DATA:
                take = min(self._remaining, size - position)
                self._push(data[position : position + take])
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._chunk_state = _CHUNK_CRLF
                continue
            end = data.find(b"\n", position)
            if end < 0:
                self._line += data[position:]
                if len(self._line) > HEAD_LIMIT:
                    self._fail("chunk line too long")
                return
            self._line += data[position:end]
            position = end + 1
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
            if state == _CHUNK_SIZE:
                try:
                    self._remaining = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self._fail("bad chunk size")
                    return
                self._chunk_state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_CRLF:
                self._chunk_state = _CHUNK_SIZE
            elif not line:  # the empty line after the (ignored) trailers
                self._state = _DONE
        if position < size:
            self.reusable = False

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if not self._paused_reading and self._buffered > HIGH_WATER and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()

    def _fail(self, message: str) -> None:
        self._error = UpstreamClosed(message)
        self.abort()
        self._wake()


def _flaw(head: bytes) -> str:
    """What makes a response head that ``WELL_FORMED_HEAD`` refuses malformed (for the log)."""
    first, _, rest = head.partition(b"\r\n")
    if STATUS_LINE.fullmatch(first) is None:
        return f"status line {first[:80]!r}"
    for line in rest.split(b"\r\n"):
        if FIELD_LINE.fullmatch(line) is None:
            return f"header line {line[:80]!r}"
    return "malformed"


def _chunked(codings: bytes | None, length: int | None) -> bool:
    """Whether a response with these transfer codings (None: no Transfer-Encoding) is chunked; ValueError
    unless they are ``chunked`` alone, without a Content-Length.

    The proxy sends a node no TE, so a node may apply no other transfer coding (RFC 9110 10.1.4), and one
    could not be passed on (Transfer-Encoding is hop-by-hop, the framing to the client is the proxy's
    own): like a request's, anything else fails, where RFC 9112 6.3 would read it until close or let
    the coding override Content-Length, the ambiguity responses are split with.
    """
    if codings is None:
        return False
    if length is not None:
        raise ValueError("Transfer-Encoding with Content-Length")
    if [coding.strip(WHITESPACE).lower() for coding in codings.split(b",")] != [b"chunked"]:
        raise ValueError(f"transfer coding {codings[:40]!r} (only chunked, alone)")
    return True


def _content_length(value: bytes, previous: int | None) -> int:
    """A Content-Length value: digits only, and equal to any earlier one (two differing lengths are how
    responses are smuggled)."""
    digits = value.strip()
    if not digits.isdigit() or (previous is not None and int(digits) != previous):
        raise ValueError(f"bad or conflicting Content-Length {digits[:20]!r}")
    return int(digits)


class Pool:
    """Idle keep-alive connections per node address, closed after ``keepalive`` idle seconds."""

    def __init__(self, connect_timeout: float, keepalive: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.tls: ClientTLS | None = None
        self.tls_problem: str | None = None
        self.handshakes: dict[str, int] = {}
        """TLS handshakes completed (new TLS connections) per node."""
        self._idle: dict[str, list[Connection]] = {}
        self._connecting: dict[str, set[asyncio.Task[tuple[asyncio.BaseTransport, Connection]]]] = {}

    def take_idle(self, key: str) -> Connection | None:
        """An idle open connection to the node ``key``, if there is one."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.reuse()
                return connection
        return None

    def use_tls(self, tls: ClientTLS | None, problem: str | None = None) -> None:
        """Connect with TLS verified as ``tls`` says from now on (None: plain), or (``problem``) fail every connect
        with that reason. Idle connections made otherwise are closed; those in use are closed when released."""
        if (tls, problem) == (self.tls, self.tls_problem):
            return
        self.tls, self.tls_problem = tls, problem
        self.close()

    async def acquire(self, key: str, host: str, port: int) -> Connection:
        """An idle connection to ``host:port`` if one is open, else a new one (with TLS as ``use_tls`` said);
        ConnectAbandoned when ``abandon(key)`` is called while it connects, TLSFailed when its handshake fails."""
        connection = self.take_idle(key)
        if connection is not None:
            return connection
        tls = self.tls
        if self.tls_problem is not None:
            raise TLSFailed(f"cannot connect to {host}:{port} with TLS: {self.tls_problem}")
        name = tls.name_for(host) if tls is not None else None
        connecting = self.loop.create_task(
            self.loop.create_connection(
                lambda: Connection(self.loop, key, tls),
                host,
                port,
                ssl=tls.context() if tls is not None else None,
                server_hostname=name,
            )
        )
        pending = self._connecting.setdefault(key, set())
        pending.add(connecting)
        try:
            _, protocol = await asyncio.wait_for(connecting, self.connect_timeout)
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out", timed_out=True) from None
        except ssl.SSLError as exc:
            assert name is not None
            raise TLSFailed(f"TLS to {host}:{port} failed: {tls_failure(exc, name)}") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # the request itself is cancelled, not the connect
                raise
            raise ConnectAbandoned(f"connect to {host}:{port} abandoned: the node left the rotation") from None
        finally:
            pending.discard(connecting)
            if not pending and self._connecting.get(key) is pending:
                del self._connecting[key]
        if tls is not None:
            self.handshakes[key] = self.handshakes.get(key, 0) + 1
        return protocol

    def abandon(self, key: str) -> None:
        """Give up every connect in flight to the node ``key`` (it left the rotation): each waiting ``acquire``
        raises ConnectAbandoned at once, instead of waiting out the connect timeout of a node that may be gone."""
        for connecting in self._connecting.pop(key, ()):
            connecting.cancel()

    def release(self, connection: Connection) -> None:
        """Take a connection back: kept if its exchange completed cleanly, closed otherwise."""
        if not connection.reusable or connection.closed or not connection.complete() or connection.tls is not self.tls:
            connection.abort()
            return
        self._idle.setdefault(connection.key, []).append(connection)
        connection.idle_until(self.loop.time() + self.keepalive, self._expire)

    def _expire(self, connection: Connection) -> None:
        idle = self._idle.get(connection.key)
        if idle is not None and connection in idle:
            idle.remove(connection)
        connection.abort()

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.abort()
        self._idle.clear()
