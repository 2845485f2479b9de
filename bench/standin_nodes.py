"""Many stand-in WHM nodes in one process: each listens on its own loopback port and answers HTTP health probes.

    python -m bench.standin_nodes COUNT

Prints the ports it listens on (one JSON list on the first line of stdout), then answers every request on any of
them with ``200 {"status":"ok"}`` (HTTP/1.1, keep-alive unless the client asks to close) until it is killed. Each
node is a real listening socket, so a probe of it is a real TCP connection and HTTP exchange; one process keeps
10,000 of them cheap enough to leave the machine to the operator being measured.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys

import uvloop

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"ok"}'
CLOSING = ANSWER.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class Node(asyncio.Protocol):
    """Answers each request head as it completes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            head, self.pending = self.pending[:end].lower(), self.pending[end + 4 :]
            if b"connection: close" in head:
                self.transport.write(CLOSING)
                self.transport.close()
                return
            self.transport.write(ANSWER)
        if len(self.pending) > 65536:
            self.transport.close()


FIRST_PORT, LAST_PORT = 12000, 32000
"""Below the kernel's ephemeral range (32768-60999 here), so that neither outgoing connections nor the free ports
the harness picks for other processes collide with 10,000 listeners."""


async def serve(count: int) -> None:
    loop = asyncio.get_running_loop()
    ports: list[int] = []
    candidates = iter(range(FIRST_PORT, LAST_PORT))
    while len(ports) < count:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", next(candidates)))
        except OSError:  # in use
            sock.close()
            continue
        sock.listen(64)
        sock.setblocking(False)
        await loop.create_server(Node, sock=sock)
        ports.append(sock.getsockname()[1])
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
