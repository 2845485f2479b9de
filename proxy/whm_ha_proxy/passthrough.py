"""L4 TLS passthrough: TLS connections spliced to nodes that terminate TLS themselves, never decrypted.

The proxy reads the client's ClientHello (bounded, within the client header timeout; anything else closes the
connection), learns the server name it asks for, picks a node with the worker's balancer (the routable nodes,
passive ejection), sticky by client address (``Balancer.pick_affine``), connects to it on the cluster's
``passthrough.nodePort`` and from then on copies bytes both ways, with flow control on each side and half-closes
passed on, until neither side has sent a byte for the idle timeout (nginx's ``proxy_timeout``). A node that leaves
the rotation gets no new connections; connections already spliced stay.

With PROXY protocol on, a trusted peer's header comes first (read and refused as on the HTTP listener, within the
same client header timeout) and its address is the client's: for stickiness, so that clients behind a load
balancer do not all share its node. The header is not passed on; the nodes see the proxy's address, as without.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from .balancer import Backend
from .client_address import EDGE, Addressing
from .client_hello import HelloError, read_client_hello
from .forward import Forwarder
from .proxy_protocol import ProxyProtocolError, read_preface
from .server import ClientLimits, Listener

log = logging.getLogger("whm_ha_proxy.passthrough")


class PassthroughServer(Listener["ClientSide"]):
    """The protocol factory of the passthrough listener; spliced connections are busy for a drain."""

    def __init__(self, forwarder: Forwarder, limits: ClientLimits, connect_timeout: float, idle_timeout: float) -> None:
        super().__init__(limits)
        self.forwarder = forwarder
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.addressing: Addressing = EDGE
        self.counters = {"accepted": 0, "spliced": 0, "refused": 0, "unrouted": 0, "idle": 0}
        """accepted: connections taken (not counting those over the connection limit); spliced: joined to a node;
        refused: closed for what the client sent; unrouted: no node could take them; idle: spliced ones closed
        after the idle timeout with no byte either way."""

    def __call__(self) -> ClientSide:
        return ClientSide(self)


class ClientSide(asyncio.Protocol):
    """One client connection: its ClientHello, then the splice to a node."""

    def __init__(self, server: PassthroughServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        """The client's address: the peer's, or the one in its PROXY header."""
        self._trusted: bool | None = None
        """Whether the peer is in a trusted network, while its PROXY header (or its absence) is being read."""
        self.server_name: str | None = None
        """The host name the client's ClientHello asked for (for logs and, later, an allow-list)."""
        self.node: asyncio.Transport | None = None
        self.backend: Backend | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False
        self._eofs = 0
        self.last_traffic = 0.0
        """The loop time of the splice's last byte, either way."""

    @property
    def busy(self) -> bool:
        return self.node is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        if not server.admit(self):
            self._closed = True
            self.transport.abort()
            return
        server.counters["accepted"] += 1
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if server.addressing.proxy_protocol:
            self._trusted = server.addressing.origin(self.peer, https=True).trusted
        self._timer = server.loop.call_later(server.limits.client_header_timeout, self._hello_late)

    def data_received(self, data: bytes) -> None:
        if self.node is not None:
            self.last_traffic = self.server.loop.time()
            self.node.write(data)
            return
        self._buffer += data  # bounded: read_client_hello refuses more than a ClientHello's records
        if self._connecting is not None:  # what came in the same read as the end of the ClientHello
            return
        try:
            if self._trusted is not None:
                header = read_preface(self._buffer, trusted=self._trusted)
                if header is None:
                    return
                self._trusted = None
                self.peer = header.source or self.peer
                self._buffer = self._buffer[header.length :]
            hello = read_client_hello(self._buffer)
        except (HelloError, ProxyProtocolError) as exc:
            self._refuse(str(exc))
            return
        if hello is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self.server_name = hello.server_name
        self._pause_reading()  # until the node's connection is open
        self._connecting = self.server.loop.create_task(self._connect())

    def eof_received(self) -> bool:
        if self.node is None:
            self.close()
            return False
        if self.node.can_write_eof():
            self.node.write_eof()
        self.half_closed()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self.node is not None:
            self.node.close()
        if self.backend is not None:
            self.backend.active -= 1
            self.backend = None

    def pause_writing(self) -> None:
        if self.node is not None:
            self.node.pause_reading()

    def resume_writing(self) -> None:
        if self.node is not None:
            self.node.resume_reading()

    def half_closed(self) -> None:
        """One side sent its last byte; once both have, the splice is over."""
        self._eofs += 1
        if self._eofs >= 2:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()
        if self.node is not None:
            self.node.close()

    def _pause_reading(self) -> None:
        if self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def _refuse(self, reason: str) -> None:
        # Counted, and logged only at debug level: what a client sends must not be able to fill the log.
        log.debug("passthrough: closing the connection from %s: %s", self.peer, reason)
        self.server.counters["refused"] += 1
        self._buffer = b""
        self.close()

    def _hello_late(self) -> None:
        if self.node is None and self._connecting is None:
            self._refuse("no ClientHello in time")

    def _idle_check(self) -> None:
        """Close both sides once no byte has passed either way for the idle timeout, else look again then.

        Traffic only stamps ``last_traffic``: one timer per idle period, not one rescheduled per read."""
        server = self.server
        due = self.last_traffic + server.idle_timeout
        now = server.loop.time()
        if now < due:
            self._timer = server.loop.call_at(due, self._idle_check)
            return
        server.counters["idle"] += 1
        log.debug("passthrough: %s idle for %.0f s, closing", self.peer, server.idle_timeout)
        # Aborted, not closed: a side that stopped reading leaves bytes in its transport's buffer that close()
        # would wait for forever, holding the slot the timeout is there to free.
        self._closed = True
        if self.transport is not None:
            self.transport.abort()
        if self.node is not None:
            self.node.abort()

    async def _connect(self) -> None:
        """Splice the connection to a node, trying others (as many as the cluster's retries) when one refuses."""
        server = self.server
        forwarder = server.forwarder
        config = forwarder.config
        if config is None or not config.passthrough:
            return self._refuse("passthrough is not enabled for the cluster")
        tried: list[Backend] = []
        while True:
            backend = forwarder.balancer.pick_affine(server.loop.time(), self.peer.encode(), exclude=tried)
            if backend is None:
                server.counters["unrouted"] += 1
                log.debug("passthrough: no node for %s (SNI %s)", self.peer, self.server_name)
                return self.close()
            tried.append(backend)
            stats = forwarder.stats.get(backend.name)
            port = config.passthrough_port or backend.spec.port
            try:
                transport, _ = await asyncio.wait_for(
                    server.loop.create_connection(lambda: NodeSide(self), backend.spec.address, port),
                    server.connect_timeout,
                )
            except (OSError, TimeoutError) as exc:
                if stats is not None:
                    stats.errors += 1
                if forwarder.balancer.failed(backend, server.loop.time(), refused=True) and stats is not None:
                    stats.ejections += 1
                log.info("passthrough: %s:%d did not connect (%s)", backend.spec.address, port, exc or "timeout")
                if len(tried) > config.retries:
                    server.counters["unrouted"] += 1
                    return self.close()
                continue
            break
        if self._closed:
            transport.close()
            return None
        if stats is not None:
            stats.requests += 1
        backend.active += 1
        self.backend = backend
        self.node = transport
        server.counters["spliced"] += 1
        self.last_traffic = server.loop.time()
        self._timer = server.loop.call_at(self.last_traffic + server.idle_timeout, self._idle_check)
        log.debug("passthrough: %s to %s (SNI %s)", self.peer, backend.name, self.server_name)
        buffered, self._buffer = self._buffer, b""
        self.node.write(buffered)
        if self.transport is not None:
            self.transport.resume_reading()
        return None


class NodeSide(asyncio.Protocol):
    """The node's end of a splice: what the node sends goes to the client as it comes."""

    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.last_traffic = self.client.server.loop.time()
        if self.client.transport is not None:
            self.client.transport.write(data)

    def eof_received(self) -> bool:
        transport = self.client.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
        self.client.half_closed()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()
