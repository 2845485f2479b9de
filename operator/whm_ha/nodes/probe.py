"""One health probe of one node: HTTP GET (healthy on 2xx/3xx) or TCP connect, bounded by a timeout.

Each probe opens a fresh connection, as kubelet's and HAProxy's checks do, so that a node which no longer
accepts connections fails even while old ones still work. The HTTP probe is a small protocol rather than a
client library: it sends one request with ``Connection: close``, reads the status line and closes. One
operator probes thousands of nodes every few seconds, and a general-purpose client costs several times more
per probe. For the same reason probes run on their own uvloop event loop, in a thread of their own
(``probe_all``): kopf needs the standard loop, whose Python-level connection setup cost four times more
than the rest of a probe.

An https probe verifies the node's certificate as the proxy does (``whm_ha.node_tls``); when it refuses one, a
second handshake that verifies nothing fetches the certificate, so that the status says what is wrong with it
(expired when, valid for which names, issued by whom).
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import uvloop

from ..node_tls import ClientTLS, PresentedCertificate, client_context, presented_certificate, tls_failure
from .health import ProbeResult

T = TypeVar("T")

STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r\n)")
HEAD_LIMIT = 8192
"""Bytes read for the status line at most."""


class ProbeFailed(Exception):
    """The node answered, but not with an HTTP status line."""


class _Exchange(asyncio.Protocol):
    """Sends the request once connected; resolves ``answered`` with the status code of the status line."""

    def __init__(self, request: bytes, answered: asyncio.Future[int]) -> None:
        self.request = request
        self.answered = answered
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return
        self.received += data
        if b"\r\n" in self.received or len(self.received) > HEAD_LIMIT:
            match = STATUS_LINE.match(self.received)
            if match is None:
                self.answered.set_exception(ProbeFailed(f"not an HTTP answer: {self.received[:40]!r}"))
            else:
                self.answered.set_result(int(match.group(1)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc or ConnectionResetError("connection closed before an answer"))


async def probe_http(host: str, port: int, path: str, timeout: float, tls: ClientTLS | None = None) -> ProbeResult:
    """GET ``path`` over a fresh connection (TLS verified as ``tls`` says, when given); healthy on 2xx or 3xx."""
    url = url_for(host, port, path, "https" if tls is not None else "http")
    authority = url.split("/", 3)[2]
    request = f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: whm-ha-probe\r\nConnection: close\r\n\r\n"
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    transport: asyncio.BaseTransport | None = None
    name = tls.name_for(host) if tls is not None else None
    try:
        async with asyncio.timeout(timeout):
            answered: asyncio.Future[int] = loop.create_future()
            transport, _ = await loop.create_connection(
                lambda: _Exchange(request.encode("latin-1"), answered),
                host.strip("[]"),
                port,
                ssl=tls.context() if tls is not None else None,
                server_hostname=name,
            )
            status = await answered
    except TimeoutError:
        return ProbeResult(False, timeout * 1000, f"no answer from {url} within {timeout:g}s")
    except ssl.SSLError as exc:
        assert name is not None
        presented = None
        if isinstance(exc, ssl.SSLCertVerificationError):
            presented = await _presented(host, port, name, timeout - (time.monotonic() - started))
        return ProbeResult(False, (time.monotonic() - started) * 1000, f"{url}: {tls_failure(exc, name, presented)}")
    except (OSError, ProbeFailed) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return ProbeResult(False, (time.monotonic() - started) * 1000, f"{url}: {reason}")
    finally:
        if transport is not None:
            transport.close()
    elapsed = (time.monotonic() - started) * 1000
    if 200 <= status < 400:
        return ProbeResult(True, elapsed, f"HTTP {status}")
    return ProbeResult(False, elapsed, f"HTTP {status} from {url}")


async def _presented(host: str, port: int, name: str, timeout: float) -> PresentedCertificate | None:
    """The certificate a node presents, read without verifying it (None if that fails too, or in no time)."""
    try:
        async with asyncio.timeout(max(timeout, 0.001)):
            _, writer = await asyncio.open_connection(
                host.strip("[]"), port, ssl=client_context(None, True), server_hostname=name
            )
    except (OSError, TimeoutError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return presented_certificate(der) if der else None
    except ValueError:
        return None
    finally:
        writer.close()


async def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return ProbeResult(True, (time.monotonic() - started) * 1000, "TCP connect succeeded")
    except TimeoutError:
        return ProbeResult(False, timeout * 1000, f"no TCP connection to {host}:{port} within {timeout:g}s")
    except OSError as exc:
        return ProbeResult(False, (time.monotonic() - started) * 1000, f"TCP {host}:{port}: {exc.strerror or exc}")


class ProbeLoop:
    """A uvloop event loop running on a daemon thread; ``run`` awaits a coroutine on it from another loop."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="whm-ha-probes", daemon=True).start()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))


@functools.cache
def probe_loop() -> ProbeLoop:
    """The process's one probe loop, started on first use."""
    return ProbeLoop()


async def probe_all(
    targets: Sequence[tuple[str, str, int]], *, kind: str, path: str, timeout: float, tls: ClientTLS | None = None
) -> list[tuple[str, ProbeResult]]:
    """Probe every (name, address, port) at once on the probe loop: an HTTP GET of ``path`` (over TLS verified as
    ``tls`` says, when given), or (``kind`` "tcp") a connection."""

    async def one(name: str, address: str, port: int) -> tuple[str, ProbeResult]:
        if kind == "tcp":
            return name, await probe_tcp(address, port, timeout)
        return name, await probe_http(address, port, path, timeout, tls)

    async def every() -> list[tuple[str, ProbeResult]]:
        return list(await asyncio.gather(*(one(*target) for target in targets)))

    return await probe_loop().run(every())


def url_for(address: str, port: int, path: str, scheme: str = "http") -> str:
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"{scheme}://{host}:{port}{path}"
