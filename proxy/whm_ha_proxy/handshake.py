"""The HTTPS listener's accepting side: a TCP connection holds one of the worker's connection slots from accept
until it closes, its TLS handshake included (as nginx counts it in worker_connections).

A listener created with ``ssl=`` calls the HTTP protocol's ``connection_made``, where connections are admitted,
only once the handshake is done, and tells nothing of a handshake that fails: handshakes in progress were
unbounded (each holds an SSL object and its buffers, ~57 KB). Here each connection is accepted as a socket,
admitted or closed at once, and only then handed to the TLS layer (``connect_accepted_socket``), whose outcome
is awaited: the slot passes to the HTTP protocol when the handshake succeeds and is given back when it fails,
times out or the listener closes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct

from .server import Downstream, Server

log = logging.getLogger("whm_ha_proxy.server")
ACCEPT_ERROR_PAUSE = 1.0
"""Seconds accepting pauses after an accept error (out of file descriptors, say), as asyncio's servers do."""
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() resets the connection, freeing it at once (as transport.abort())."""


class TLSListener:
    """Serves ``server``'s HTTP over TLS on the listening socket ``sock`` until closed."""

    def __init__(self, server: Server, sock: socket.socket, context: ssl.SSLContext, handshake_timeout: float) -> None:
        self.server = server
        self.sock = sock
        self.context = context
        self.handshake_timeout = handshake_timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
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
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    connection.close()
                    continue
                handshake = loop.create_task(self._handshake(connection, downstream))
                self._handshakes.add(handshake)
                handshake.add_done_callback(self._handshakes.discard)
        finally:  # cancelled by close(): the socket is closed only once the loop no longer waits on it
            self.sock.close()

    async def _handshake(self, connection: socket.socket, downstream: Downstream) -> None:
        """Complete the TLS handshake and start serving ``downstream`` on it (it takes the slot in
        ``connection_made``); on failure the TLS layer has closed the connection, and the slot is given back."""
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: downstream, connection, ssl=self.context, ssl_handshake_timeout=self.handshake_timeout
            )
        except OSError:  # a failed or timed-out handshake (SSLError, a reset...): nothing to answer
            pass
        finally:
            self.server.end_handshake(downstream)

    def close(self) -> None:
        """Stop accepting and abandon the handshakes in progress (their connections are closed)."""
        self._accepting.cancel()
        for handshake in self._handshakes:
            handshake.cancel()
