"""The operator's node probe against real servers on loopback: what counts as healthy, and every way a node can
fail to answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from whm_ha.db.local_server import free_port
from whm_ha.nodes.probe import probe_all, probe_http, probe_loop, probe_tcp

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def node() -> AsyncIterator[Callable[[Answer], Awaitable[int]]]:
    """``await node(answer)``: a server on a loopback port that runs ``answer`` for each connection."""
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> int:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def answering(*pieces: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    return answer


@pytest.mark.parametrize(
    ("answer", "healthy", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True, "HTTP 200"),
        (b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n", True, "HTTP 302"),
        (b"HTTP/1.0 204 No Content\r\n\r\n", True, "HTTP 204"),
        (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", False, "HTTP 503 from http://"),
        (b"HTTP/1.1 404 Not Found\r\n\r\n", False, "HTTP 404 from http://"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False, "not an HTTP answer"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", False, "not an HTTP answer"),
        (b"", False, "closed before an answer"),
    ],
)
async def test_http_probe_judges_the_status_line(
    node: Callable[[Answer], Awaitable[int]], answer: bytes, healthy: bool, message: str
) -> None:
    port = await node(answering(answer))
    result = await probe_http("127.0.0.1", port, "/healthz", 2.0)
    assert (result.ok, message in result.message) == (healthy, True), result


async def test_http_probe_sends_one_closing_get_and_reads_a_split_status_line(
    node: Callable[[Answer], Awaitable[int]],
) -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        for piece in (b"HTT", b"P/1.1 20", b"0 OK\r\n", b"Content-Length: 0\r\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    port = await node(answer)
    result = await probe_http("127.0.0.1", port, "/status?deep=1", 2.0)
    assert result.ok and result.latency_ms > 0, result
    (head,) = heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /status?deep=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines and "Connection: close" in lines


async def test_a_silent_node_fails_within_the_timeout(node: Callable[[Answer], Awaitable[int]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads until the probe gives up and closes

    port = await node(silent)
    started = time.monotonic()
    result = await probe_http("127.0.0.1", port, "/healthz", 0.3)
    assert not result.ok and "no answer" in result.message, result
    assert time.monotonic() - started < 1.0


async def test_nothing_listening_fails_at_once() -> None:
    port = free_port()
    for result in (await probe_http("127.0.0.1", port, "/", 2.0), await probe_tcp("127.0.0.1", port, 2.0)):
        assert not result.ok and result.latency_ms < 1000, result


async def test_tcp_probe_needs_only_a_connection(node: Callable[[Answer], Awaitable[int]]) -> None:
    port = await node(answering())
    result = await probe_tcp("127.0.0.1", port, 2.0)
    assert result.ok, result


async def test_probe_all_runs_a_round_on_the_probe_loop(node: Callable[[Answer], Awaitable[int]]) -> None:
    """A round of probes runs on the probe thread's own loop, and each result comes back by name."""
    healthy = await node(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    failing = await node(answering(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"))
    targets = [("up", "127.0.0.1", healthy), ("down", "127.0.0.1", failing), ("gone", "127.0.0.1", free_port())]
    results = dict(await probe_all(targets, kind="http", path="/healthz", timeout=2.0))
    assert {name: result.ok for name, result in results.items()} == {"up": True, "down": False, "gone": False}
    assert probe_loop().loop is not asyncio.get_running_loop()
    tcp = dict(await probe_all(targets, kind="tcp", path="/", timeout=2.0))
    assert {name: result.ok for name, result in tcp.items()} == {"up": True, "down": True, "gone": False}
