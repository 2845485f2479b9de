"""The HTTPS listener's accepting side: a TCP connection holds one of the worker's connection slots from accept
until it closes, its TLS handshake included (as nginx counts it in worker_connections).

A listener created with ``ssl=`` calls the HTTP protocol's ``connection_made``, where connections are admitted,
only once the handshake is done, and tells nothing of a handshake that fails: handshakes in progress were
unbounded (each holds an SSL object and its buffers, ~57 KB). Here each connection is accepted as a socket,
admitted or closed at once, and only then handed to the TLS layer (``connect_accepted_socket``), whose outcome
is awaited: the slot passes to the HTTP protocol when the handshake succeeds and is given back when it fails,
times out or the listener closes.

With PROXY protocol on, the header a load balancer sends precedes the ClientHello, so it is read off the raw
socket first (``read_proxy_header``), within the handshake timeout, consuming no byte of TLS; the connection's
``Downstream`` is given its client address and never looks for a header in decrypted data.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Callable

from .proxy_protocol import V2_HEAD, V2_MAX_PAYLOAD, ProxyHeader, ProxyProtocolError, read_preface
from .server import Downstream, Server

log = logging.getLogger("whm_ha_proxy.server")
ACCEPT_ERROR_PAUSE = 1.0
"""Seconds accepting pauses after an accept error (out of file descriptors, say), as asyncio's servers do."""
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() resets the connection, freeing it at once (as transport.abort())."""
MIN_HANDSHAKE = 0.1
"""Seconds a handshake is given at least, when its PROXY header took (nearly) all of the handshake timeout."""


class TLSListener:
    """Serves ``server``'s HTTP over TLS on the listening socket ``sock`` until closed."""

    def __init__(
        self, server: Server, sock: socket.socket, context: Callable[[], ssl.SSLContext], handshake_timeout: float
    ) -> None:
        self.server = server
        self.sock = sock
        self.context = context
        """The context each new connection is handed to (asked per connection: certificates change)."""
        self.handshake_timeout = handshake_timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        # A coroutine awaiting sock_accept: accepting from a readiness callback (add_reader) instead left the
        # worker's memory growing with every wave of the handshake-flood test (23, 42, 55, 66 MB, against 23, 35,
        # 42, 46 MB), for a saving not told apart from the noise of this shared box.
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    connection, _ = await loop.sock_accept(self.sock)
                except OSError as exc:
                    log.warning("accepting on the TLS listener failed: %s", exc)
                    await asyncio.sleep(ACCEPT_ERROR_PAUSE)
                    continue
                downstream = self.server()
                if not self.server.admit_handshake(downstream):
                    _reset(connection)
                    continue
                handshake = loop.create_task(self._handshake(connection, downstream))
                self._handshakes.add(handshake)
                handshake.add_done_callback(self._handshakes.discard)
        finally:  # cancelled by close(): the socket is closed only once the loop no longer waits on it
            self.sock.close()

    async def _handshake(self, connection: socket.socket, downstream: Downstream) -> None:
        """Read the PROXY header where one is due, complete the TLS handshake (both within one handshake timeout)
        and start serving ``downstream`` on it (it takes the slot in ``connection_made``); on failure the
        connection is closed and the slot is given back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handshake_timeout
        try:
            if self.server.addressing.proxy_protocol and not await self._read_header(connection, downstream, deadline):
                return
            await loop.connect_accepted_socket(
                lambda: downstream,
                connection,
                ssl=self.context(),
                ssl_handshake_timeout=max(deadline - loop.time(), MIN_HANDSHAKE),
            )
        except OSError:  # a failed or timed-out handshake (SSLError, a reset...): the TLS layer closed it
            pass
        finally:
            self.server.end_handshake(downstream)

    async def _read_header(self, connection: socket.socket, downstream: Downstream, deadline: float) -> bool:
        """Give ``downstream`` the PROXY header its peer sent before ``deadline``; False, with the connection
        closed, when it may not go on (as on the plain listener: a header from an untrusted peer, none from a
        trusted one, a malformed one, none in time)."""
        trusted = False
        peer = "?"
        try:
            peer = str(connection.getpeername()[0])
            trusted = self.server.addressing.origin(peer, https=True).trusted
            async with asyncio.timeout_at(deadline):
                downstream.proxied = await read_proxy_header(connection, trusted=trusted)
            return True
        except (ProxyProtocolError, OSError) as exc:  # TimeoutError included
            # Logged when a trusted load balancer is at fault; anyone else's attempts are only refused.
            reason = exc if not isinstance(exc, TimeoutError) else "no PROXY protocol header in time"
            log.log(logging.WARNING if trusted else logging.DEBUG, "closing %s: %s", peer, reason)
        finally:  # on failure, and when close() cancels the wait
            if downstream.proxied is None:
                _reset(connection)
        return False

    def close(self) -> None:
        """Stop accepting and abandon the handshakes in progress (their connections are closed)."""
        self._accepting.cancel()
        for handshake in self._handshakes:
            handshake.cancel()


async def read_proxy_header(sock: socket.socket, *, trusted: bool) -> ProxyHeader:
    """The PROXY header (``proxy_protocol.read_preface``) at the start of the non-blocking ``sock``, consumed,
    and not one byte after it: the TLS layer reads the connection from its ClientHello on. Raises
    ProxyProtocolError when the connection must be closed (no header from a trusted peer, one from any other,
    a malformed or oversized one, or the peer closing first); the caller bounds the wait.

    Bytes are peeked at, and taken only as far as they are known to be the header's: those of a header not yet
    complete are all its own, so taking them leaves the socket to signal the next ones."""
    loop = asyncio.get_running_loop()
    received = b""
    while True:
        try:
            peeked = sock.recv(V2_HEAD + V2_MAX_PAYLOAD - len(received), socket.MSG_PEEK)
        except BlockingIOError:
            await _readable(loop, sock)
            continue
        if not peeked:
            raise ProxyProtocolError("closed by the peer before its PROXY protocol header ended")
        header = read_preface(received + peeked, trusted=trusted)
        if header is not None:
            if header.length > len(received):
                sock.recv(header.length - len(received))  # peeked already: there, and taken at once
            return header
        received += sock.recv(len(peeked))


def _reset(connection: socket.socket) -> None:
    """Close ``connection`` with a reset, freeing it at once."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    connection.close()


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Return once ``sock`` has bytes to read (or an end or error to report)."""
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())
