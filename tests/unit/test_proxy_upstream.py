"""The proxy's upstream HTTP/1.1 client: response framing survives any split of the bytes on the wire."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whm_ha_proxy.upstream import ConnectAbandoned, Connection, Pool, UpstreamClosed, UpstreamTimeout


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        if point > start:
            pieces.append(data[start:point])
            start = point
    return pieces


async def exchange(wire: bytes, cuts: list[int], *, method_head: bool = False) -> tuple[Connection, Any, bytes]:
    connection = Connection(asyncio.get_running_loop(), "n")
    transport: Any = FakeTransport()
    connection.connection_made(transport)
    connection.begin(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", method_head=method_head)
    for piece in splits(wire, cuts):
        connection.data_received(piece)
    response = await connection.response(1)
    body = bytearray()
    while piece := await connection.read(1):
        body += piece
    return connection, response, bytes(body)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, position = bytearray(), 0
    for size in [*sizes, len(body)]:
        piece = body[position : position + max(size, 1)]
        if not piece:
            break
        out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        position += len(piece)
    return bytes(out + b"0\r\nX-Trailer: t\r\n\r\n")


bodies = st.binary(max_size=3000)
cuts = st.lists(st.integers(min_value=0, max_value=4000), max_size=12)


@settings(max_examples=200)
@given(bodies, cuts)
async def test_content_length_framing(body: bytes, cut: list[int]) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-A: 1\r\nConnection: keep-alive, X-A\r\n\r\n" % len(body)
    connection, response, received = await exchange(head + body, cut)
    assert received == body and response.length == len(body)
    assert response.fields == b"", "Content-Length, Connection and the headers it names are not end-to-end"
    assert connection.complete() and connection.reusable


@settings(max_examples=200)
@given(bodies, st.lists(st.integers(min_value=1, max_value=700), max_size=6), cuts)
async def test_chunked_framing(body: bytes, sizes: list[int], cut: list[int]) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
    connection, response, received = await exchange(head + chunked(body, sizes), cut)
    assert received == body and response.length is None
    assert response.fields == b"Content-Encoding: gzip\r\n"
    assert connection.complete() and connection.reusable


@given(bodies, cuts)
async def test_until_close_framing(body: bytes, cut: list[int]) -> None:
    connection = Connection(asyncio.get_running_loop(), "n")
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    for piece in splits(b"HTTP/1.0 200 OK\r\n\r\n" + body, cut):
        connection.data_received(piece)
    connection.connection_lost(None)
    await connection.response(1)
    received = bytearray()
    while piece := await connection.read(1):
        received += piece
    assert received == body and not connection.reusable


async def test_interim_answers_are_skipped_and_head_has_no_body() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    connection, response, body = await exchange(wire, [], method_head=True)
    assert response.status == 200 and response.length == 5 and body == b"" and connection.complete()
    connection, response, body = await exchange(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", [])
    assert response.length == 0 and body == b"" and connection.complete()


MALFORMED = {
    "folding": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: into X-A\r\n",
    "space before colon": b"HTTP/1.1 200 OK\r\nX-A : 1\r\n",
    "bare CR": b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: injected\r\n",
    "bare LF": b"HTTP/1.1 200 OK\r\nX-A: 1\nSet-Cookie: injected\r\n",
    "bare LF in the status line": b"HTTP/1.1 200 OK\nSet-Cookie: session=x\r\n",
    "bare CR in the status line": b"HTTP/1.1 200 OK\rSet-Cookie: session=x\r\n",
    "NUL in the reason": b"HTTP/1.1 200 O\x00K\r\n",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n",
    "control in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x0bb\r\n",
    "DEL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n",
    "not a token": b"HTTP/1.1 200 OK\r\nX(A): 1\r\n",
    "no colon": b"HTTP/1.1 200 OK\r\nno colon\r\n",
    "negative length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # and the 0 that follows
    "four digits": b"HTTP/1.1 2000 OK\r\n",
    "sign": b"HTTP/1.1 +20 OK\r\n",
    "status 000": b"HTTP/1.1 000 OK\r\n",
    "HTTP/1.2": b"HTTP/1.2 200 OK\r\n",
    "HTTP/2": b"HTTP/2 200 OK\r\n",
    "ICY": b"ICY 200 OK\r\n",
}


@pytest.mark.parametrize("head", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_response_head_is_an_error_not_passed_on(head: bytes) -> None:
    """What RFC 9112 says a proxy must not forward (folding, whitespace before a colon, a bare CR or LF in the
    status line or a header line, NUL or another control, a name that is not a token), framing that is not one
    non-negative Content-Length, and unreadable status lines fail the exchange; the client then gets a 502 from
    the proxy (or the answer of another node)."""
    connection = Connection(asyncio.get_running_loop(), "n")
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    connection.data_received(head + b"Content-Length: 0\r\n\r\n")
    with pytest.raises(UpstreamClosed, match="bad response head"):
        await connection.response(1)


@pytest.mark.parametrize(
    "coding",
    [
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: chunked,",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
    ],
    ids=["xchunked", "chunked, gzip", "gzip, chunked", "gzip", "empty element", "twice", "two lines", "with length"],
)
async def test_a_transfer_coding_other_than_chunked_alone_is_an_error(coding: bytes) -> None:
    """Framed as chunked only when chunked is the one transfer coding (a node gets no TE from the proxy, and no
    other coding could be passed on); anything else fails instead of being read as chunked."""
    connection = Connection(asyncio.get_running_loop(), "n")
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    connection.data_received(b"HTTP/1.1 200 OK\r\n" + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    with pytest.raises(UpstreamClosed, match="bad response head"):
        await connection.response(1)


async def test_a_well_formed_head_with_any_visible_value_passes() -> None:
    """Tabs, obs-text and an empty reason are well formed; the header lines are passed on as received."""
    wire = b"HTTP/1.1 200\r\nX-A:\tv\xe9 \r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"
    connection, response, body = await exchange(wire, [])
    assert (response.status, response.reason, response.fields, body) == (200, b"", b"X-A:\tv\xe9 \r\n", b"")
    assert connection.complete() and connection.reusable


async def test_a_node_closing_mid_body_or_silent_is_an_error() -> None:
    connection = Connection(asyncio.get_running_loop(), "n")
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await connection.response(1)
    assert await connection.read(1) == b"abc"
    connection.connection_lost(None)
    with pytest.raises(UpstreamClosed):
        await connection.read(1)

    silent = Connection(asyncio.get_running_loop(), "n")
    silent.connection_made(FakeTransport())  # type: ignore[arg-type]
    silent.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    with pytest.raises(UpstreamTimeout):
        await silent.response(0.05)


async def test_reading_pauses_above_the_high_water_mark() -> None:
    connection = Connection(asyncio.get_running_loop(), "n")
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    size = 1 << 20
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(size // 65536):
        connection.data_received(b"x" * 65536)
    assert transport.paused
    total = 0
    while piece := await connection.read(1):
        total += len(piece)
    assert total == size and not transport.paused


async def test_a_short_wait_after_a_long_one_times_out_on_time() -> None:
    """The connection's one timer, armed far ahead by a long wait, is moved for a shorter one."""
    loop = asyncio.get_running_loop()
    connection = Connection(loop, "n")
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    waiting = asyncio.ensure_future(connection.response(30))
    await asyncio.sleep(0)  # the wait starts, arming the timer 30 s ahead
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await waiting
    connection.begin(b"GET / HTTP/1.1\r\n\r\n", method_head=False)
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await connection.response(0.1)
    assert 0.1 <= loop.time() - started < 1


async def until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_pooled_connections_are_reused_then_closed_when_idle() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(connect_timeout=1, keepalive=0.3)

    async def get() -> Connection:
        connection = await pool.acquire("n", "127.0.0.1", port)
        connection.begin(b"GET / HTTP/1.1\r\nHost: n\r\n\r\n", method_head=False)
        await connection.response(1)
        assert await connection.read(1) == b"ok" and await connection.read(1) == b""
        pool.release(connection)
        return connection

    first = await get()
    second = await get()
    assert second is first and second.reused and not second.closed
    await until(lambda: first.closed, 2)
    assert (await get()) is not first
    pool.close()
    server.close()


class VanishedTransport(FakeTransport):
    """uvloop's transport once the node has gone: not yet marked closing, but every write refused."""

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


@pytest.mark.parametrize("gone", ["closing", "refusing writes"])
async def test_a_pooled_connection_the_node_closed_is_an_upstream_error_not_a_crash(gone: str) -> None:
    """The forwarder retries an UpstreamClosed on a fresh connection; a RuntimeError failed the request."""
    connection = Connection(asyncio.get_running_loop(), "n")
    transport: Any = FakeTransport() if gone == "closing" else VanishedTransport()
    connection.connection_made(transport)
    transport.closed = gone == "closing"
    with pytest.raises(UpstreamClosed):
        connection.begin(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", method_head=False)


async def test_abandon_ends_the_connects_in_flight_and_only_those() -> None:
    """Connects to a node whose accept queue is full hang; ``abandon`` ends them at once with ConnectAbandoned,
    while a request cancelled for its own reasons still sees CancelledError."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the one place in the queue: further SYNs are dropped
    pool = Pool(connect_timeout=30, keepalive=1)
    loop = asyncio.get_running_loop()
    try:
        connecting = [asyncio.ensure_future(pool.acquire("stuck", "127.0.0.1", port)) for _ in range(3)]
        cancelled = connecting.pop()
        await asyncio.sleep(0)  # each task starts its connect
        cancelled.cancel()
        started = loop.time()
        pool.abandon("stuck")
        for task in connecting:
            with pytest.raises(ConnectAbandoned):
                await task
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert loop.time() - started < 1
        pool.abandon("stuck")  # nothing left in flight: a no-op
    finally:
        filler.close()
        listener.close()
        pool.close()
