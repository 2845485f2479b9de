"""The floor of the proxy's design on this machine: CPU per request of a do-nothing uvloop relay.

    PYTHONPATH=. .venv/bin/python -m bench.uvloop_floor [--seconds S]

Two worker processes (SO_REUSEPORT, as the proxy's), each an asyncio protocol per client connection on uvloop that
answers every read from the client by writing a fixed request to a pooled keep-alive connection to an nginx backend
(the benchmark's 1 KB answer), and every read from the backend by writing a fixed response to the client: no
parsing, no header work, no stats; the same number of reads, writes and protocol callbacks per request as the proxy.
Over plain HTTP and HTTPS (the proxy's certificate policy), keep-alive and one handshake per request, with nginx as a
reverse proxy in the same rig for reference. What this relay costs is what no Python code on this design can save.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKERS = 2
REQUEST = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n"
HEAD_END = b"\r\n\r\n"


class Upstream(asyncio.Protocol):
    """A keep-alive connection to the backend, handing each whole answer to the client that asked, then back to the
    pool."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.pending:  # a head: its Content-Length says how much follows
            start = data.find(b"Content-Length: ")
            self.pending = int(data[start + 16 : data.find(b"\r", start)]) + data.find(HEAD_END) + 4
        self.pending -= len(data)
        if self.pending <= 0 and self.client is not None:
            self.pending = 0
            client, self.client = self.client, None
            self.pool.append(self)
            client.answer(data)


class Client(asyncio.Protocol):
    """A client connection: each read is taken for one request."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.close = b"Connection: close" in data
        upstream = self.pool.pop()
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(REQUEST)

    def answer(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.transport.write(data)  # the backend's answer as it came (one read on loopback)
        if self.close:
            self.transport.close()


async def relay(port: int, tls_port: int, backend: int, context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    pool: list[Upstream] = []
    for _ in range(256):
        _, upstream = await loop.create_connection(lambda: Upstream(pool), "127.0.0.1", backend)
        pool.append(upstream)
    await loop.create_server(lambda: Client(pool), sock=_listen(port))
    await loop.create_server(lambda: Client(pool), sock=_listen(tls_port), ssl=context)
    await asyncio.Event().wait()


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        import uvloop

        from whm_ha.tls import server_context

        port, tls_port, backend = (int(a) for a in sys.argv[2:5])
        context = server_context(Path(sys.argv[5]).read_text(), Path(sys.argv[6]).read_text())
        uvloop.run(relay(port, tls_port, backend, context))
        return
    import trustme

    from bench.proxy_cpu import children, cost
    from bench.proxy_vs_nginx import BODY, Nginx, ensure_tools
    from whm_ha.db.local_server import free_port
    from whm_ha.tls import TLS12_CIPHERS

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="whm-floor-") as tmp:
        workdir = Path(tmp)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = workdir / "tls.crt", workdir / "tls.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        backend_port, port, tls_port, nginx_port, nginx_tls = (free_port() for _ in range(5))
        backend = Nginx(
            workdir / "backend", f' server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 "{BODY}"; }} }}'
        )
        nginx = Nginx(
            workdir / "nginx",
            f" upstream nodes {{ server 127.0.0.1:{backend_port}; keepalive 256; }}\n"
            f" server {{ listen 127.0.0.1:{nginx_port}; listen 127.0.0.1:{nginx_tls} ssl; ssl_certificate {cert};"
            f" ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers {TLS12_CIPHERS};"
            ' location / { proxy_pass http://nodes; proxy_http_version 1.1; proxy_set_header Connection ""; } }',
            workers=WORKERS,
        )
        workers: list[subprocess.Popen[bytes]] = []
        try:
            backend.start(backend_port)
            nginx.start(nginx_port)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
            for _ in range(WORKERS):
                command = [sys.executable, "-m", "bench.uvloop_floor", "--worker", str(port), str(tls_port)]
                workers.append(subprocess.Popen([*command, str(backend_port), str(cert), str(key)], env=env))
            time.sleep(2)
            assert nginx.process is not None
            nginx_pids = children(nginx.process.pid)
            loads = (
                ("plain keep-alive", port, nginx_port, "http", False),
                ("HTTPS keep-alive", tls_port, nginx_tls, "https", False),
                ("HTTPS new connection per request", tls_port, nginx_tls, "https", True),
            )
            for name, ours, theirs, scheme, close in loads:
                relay_us, relay_rps = cost(
                    f"{scheme}://127.0.0.1:{ours}/", [w.pid for w in workers], args.seconds, workdir, close=close
                )
                nginx_us, nginx_rps = cost(
                    f"{scheme}://127.0.0.1:{theirs}/", nginx_pids, args.seconds, workdir, close=close
                )
                print(
                    f"{name}: uvloop relay {relay_us:.1f} µs/request ({relay_rps:,.0f} req/s), "
                    f"nginx {nginx_us:.1f} µs/request ({nginx_rps:,.0f} req/s)"
                )
            print(f"load average {os.getloadavg()}")
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()
            nginx.kill()
            backend.kill()


if __name__ == "__main__":
    main()
