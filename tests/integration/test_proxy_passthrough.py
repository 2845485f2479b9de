"""L4 TLS passthrough through the real proxy to nodes that terminate TLS themselves (Python ssl servers with a
trustme CA): the client verifies the node's certificate end to end, the proxy reads only the ClientHello."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import pytest
from kubernetes import client

from tests.fixtures.proxy_process import Cluster, PeakMemory, ProxyProcess, StartProxy, serve_connections
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.tls_nodes import SERVER_NAME, TLSNodes, client_hello
from tests.kube_helpers import wait_for
from whm_ha.db.local_server import free_port


class Named(Protocol):
    name: str
    port: int


class Endpoint(NamedTuple):
    name: str
    port: int


Rig = tuple[ProxyProcess, int, Cluster]
StartRig = Callable[..., Rig]


@pytest.fixture
def passthrough(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, proxy_process: StartProxy
) -> StartRig:
    """``passthrough(nodes, *options, **passthrough_settings)``: a proxy with a passthrough listener for a cluster of
    those nodes (each a WHMNode on its TLS port unless ``nodePort`` says otherwise); the proxy, the port, the cluster."""

    def start(
        nodes: Sequence[Named],
        *options: str,
        node_ports: dict[str, int] | None = None,
        client_address: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Rig:
        cluster = Cluster(sandbox_client, namespace)
        cluster.create(
            passthrough={"enabled": True, **settings}, **({"clientAddress": client_address} if client_address else {})
        )
        for node in nodes:
            cluster.add_node(node.name, "127.0.0.1", (node_ports or {}).get(node.name, node.port))
        port = free_port()
        proxy = proxy_process(
            sandbox_api.kubeconfig, namespace, options=(f"--listen-passthrough=127.0.0.1:{port}", *options)
        )
        wait_for(lambda: proxy.routable() == sorted(n.name for n in nodes), 10, "all nodes routable")
        return proxy, port, cluster

    return start


def test_bytes_pass_unchanged_and_the_client_verifies_the_node(passthrough: StartRig, tls_nodes: TLSNodes) -> None:
    (node,) = tls_nodes.start("tls-a")
    proxy, port, _ = passthrough([node], node_ports={"tls-a": 1}, nodePort=node.port)  # WHMNode port: HTTP, unused
    payload = os.urandom(3 * 1024 * 1024)
    tls, name = tls_nodes.connect(port)
    with tls:
        assert name == "tls-a"
        assert tls.getpeercert()["subjectAltName"] == (("DNS", SERVER_NAME),)  # type: ignore[index]
        tls.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            chunk = tls.recv(1 << 20)
            assert chunk, "closed early"
            echoed += chunk
        assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
        raw = tls.unwrap()  # close_notify both ways, then the node's FIN passed on
        assert raw.recv(10) == b""
    assert node.server_names == [SERVER_NAME], "the node got the client's own ClientHello, SNI and all"
    passed = proxy.stats()["passthrough"]
    assert passed["spliced"] == 1 and passed["refused"] == 0
    assert proxy.stats()["nodes"]["tls-a"]["requests"] == 1


def test_sticky_by_client_address_and_new_connections_leave_a_node_out_of_rotation(
    passthrough: StartRig, tls_nodes: TLSNodes
) -> None:
    nodes = tls_nodes.start("tls-a", "tls-b", "tls-c")
    proxy, port, cluster = passthrough(nodes)

    def node_for(source: str) -> str:
        tls, name = tls_nodes.connect(port, source)
        tls.close()
        return name

    pinned = node_for("127.0.0.1")
    assert {node_for("127.0.0.1") for _ in range(6)} == {pinned}
    assert len({node_for(f"127.0.0.{i}") for i in range(2, 40)}) == 3, "clients spread over the nodes"

    held, name = tls_nodes.connect(port)
    with held:
        assert name == pinned
        cluster.set_health(pinned, "Unhealthy")
        wait_for(lambda: pinned not in proxy.routable(), 10, f"{pinned} out of rotation")
        moved = {node_for("127.0.0.1") for _ in range(4)}
        assert len(moved) == 1 and pinned not in moved, "new connections go to one other node"
        held.sendall(b"still here")
        assert held.recv(100) == b"still here", "a spliced connection stays"
    cluster.set_health(pinned, "Healthy")
    wait_for(lambda: pinned in proxy.routable(), 10, f"{pinned} back")
    assert node_for("127.0.0.1") == pinned, "the client's node takes it back"


def test_proxy_protocol_gives_stickiness_the_clients_address(passthrough: StartRig, tls_nodes: TLSNodes) -> None:
    """Behind a trusted load balancer speaking PROXY protocol, clients are sticky by their own address, not all
    pinned to the balancer's node; its header is required, and refused from anyone else."""
    nodes = tls_nodes.start("tls-a", "tls-b", "tls-c")
    balancer = "127.0.0.2"
    settings = {"trustedNetworks": [f"{balancer}/32"], "proxyProtocol": True}
    _, port, _ = passthrough(nodes, "--client-header-timeout=1", client_address=settings)

    def node_for(client: str) -> str:
        tls, name = tls_nodes.connect(port, balancer, f"PROXY TCP4 {client} 10.1.1.1 40000 443\r\n".encode())
        tls.close()
        return name

    assert len({node_for("198.51.100.1") for _ in range(6)}) == 1, "one client, one node"
    assert len({node_for(f"198.51.100.{i}") for i in range(2, 40)}) == 3, "clients spread over the nodes"
    hello = client_hello(SERVER_NAME)
    for data, source in (
        (hello, balancer),  # no header from the trusted peer
        (b"PROXY TCP4 198.51.100.1 10.1.1.1 40000 443\r\n" + hello, "127.0.0.1"),  # one from an untrusted peer
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
            sock.sendall(data)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b"", f"closed without an answer ({source})"
    untrusted, _ = tls_nodes.connect(port)  # no header from an untrusted peer: spliced as always
    untrusted.close()


def closed_without_answer(port: int, data: bytes, *, trickle: float = 0.0) -> float:
    """Send ``data`` (a byte at a time every ``trickle`` seconds), then wait; how long the proxy took to close."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for i in range(0, len(data), 1 if trickle else len(data) or 1):
                sock.sendall(data[i : i + 1] if trickle else data)
                if trickle:
                    time.sleep(trickle)
            assert sock.recv(100) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
    return time.monotonic() - started


def test_hostile_first_bytes_are_closed_and_reach_no_node(passthrough: StartRig, tls_nodes: TLSNodes) -> None:
    nodes = tls_nodes.start("tls-a", "tls-b")
    proxy, port, _ = passthrough(nodes, "--client-header-timeout=1")
    hello = client_hello(SERVER_NAME)
    assert closed_without_answer(port, b"GET / HTTP/1.1\r\nHost: panel\r\n\r\n") < 1, "plaintext: closed at once"
    assert closed_without_answer(port, b"\x16\x03\x01\x40\x01") < 1, "a record above 16 KiB: closed at once"
    assert closed_without_answer(port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") < 1, "not a ClientHello"
    assert 0.9 < closed_without_answer(port, hello[: len(hello) // 2]) < 3, "a truncated hello: at the timeout"
    assert closed_without_answer(port, hello[:40], trickle=0.1) < 5, "a slow hello: cut at the timeout"
    assert sum(node.accepted for node in nodes) == 0, "no node saw any of it"
    assert proxy.stats()["passthrough"]["refused"] == 5
    tls, _ = tls_nodes.connect(port)
    tls.close()


def test_connections_are_closed_while_the_cluster_has_passthrough_off(
    passthrough: StartRig, tls_nodes: TLSNodes
) -> None:
    (node,) = tls_nodes.start("tls-a")
    proxy, port, cluster = passthrough([node], enabled=False)
    assert closed_without_answer(port, client_hello(SERVER_NAME)) < 2
    assert node.accepted == 0
    cluster.patch({"spec": {"loadBalancer": {"passthrough": {"enabled": True}}}})
    wait_for(lambda: proxy.config()["passthrough"]["enabled"], 10, "passthrough on")  # type: ignore[index]
    tls, name = tls_nodes.connect(port)
    tls.close()
    assert name == "tls-a"


MB = 1024 * 1024


def flood(sock: socket.socket, seconds: float, limit: int = 500 * MB) -> int:
    """Send as much as ``sock`` takes within ``seconds`` (never reading); the bytes it took."""
    sock.setblocking(False)
    block, sent = b"x" * 65536, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < limit:
        try:
            sent += sock.send(block)
        except BlockingIOError:
            time.sleep(0.005)
    return sent


def test_flow_control_both_ways_bounds_what_the_proxy_holds(passthrough: StartRig) -> None:
    """Neither side reads: what each manages to send is bounded by the sockets' buffers, not the proxy's memory."""
    from_node: list[int] = []

    def serve(sock: socket.socket) -> None:
        with sock:
            sock.recv(65536)  # the ClientHello
            from_node.append(flood(sock, 3))

    node_listener = socket.create_server(("127.0.0.1", 0))
    serve_connections(node_listener, serve)
    node = Endpoint("flood", node_listener.getsockname()[1])
    try:
        proxy, port, _ = passthrough([node])
        assert proxy.process is not None
        memory = PeakMemory(proxy.process.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client_hello(SERVER_NAME))
            from_client = flood(sock, 3)
            wait_for(lambda: from_node, 10, "the node to stop sending")
        growth = memory.stop()
    finally:
        node_listener.close()
    assert from_client < 64 * MB and from_node[0] < 64 * MB, (from_client, from_node)
    assert growth < 32 * MB, f"the proxy grew by {growth / MB:.0f} MB"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_spliced_connection_finishes_during_a_drain(passthrough: StartRig, tls_nodes: TLSNodes) -> None:
    nodes = tls_nodes.start("tls-a")
    proxy, port, _ = passthrough(nodes)
    assert proxy.process is not None
    tls, _ = tls_nodes.connect(port)
    with tls:
        proxy.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(port), 10, "the listener closed for the drain")
        tls.sendall(b"after SIGTERM")
        assert tls.recv(100) == b"after SIGTERM"
    assert proxy.process.wait(20) == 0


def test_a_silent_splice_is_closed_on_both_sides_at_the_idle_timeout(passthrough: StartRig) -> None:
    node_closed: list[float] = []

    def serve(sock: socket.socket) -> None:
        with sock:
            sock.settimeout(30)
            while sock.recv(65536):  # the ClientHello, then nothing
                pass
            node_closed.append(time.monotonic())

    node_listener = socket.create_server(("127.0.0.1", 0))
    serve_connections(node_listener, serve)
    try:
        proxy, port, _ = passthrough(
            [Endpoint("silent", node_listener.getsockname()[1])], "--passthrough-idle-timeout=1"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client_hello(SERVER_NAME))
            started = time.monotonic()
            assert sock.recv(100) == b"", "the proxy closed the client's side"
            client_closed = time.monotonic() - started
        wait_for(lambda: node_closed, 10, "the node's side closed")
    finally:
        node_listener.close()
    assert 0.9 < client_closed < 3, client_closed
    assert node_closed[0] - started < 3
    passed = proxy.stats()["passthrough"]
    assert passed["spliced"] == 1 and passed["idle"] == 1


def test_an_idle_splice_whose_sides_stopped_reading_is_freed(passthrough: StartRig) -> None:
    """Neither side reads, so the proxy holds bytes it cannot deliver: the idle timeout still frees the splice
    (the node's active connection count goes back to 0) while both peers stay open and silent."""
    node_done = threading.Event()

    def serve(sock: socket.socket) -> None:
        with sock:
            sock.recv(65536)  # the ClientHello
            flood(sock, 1)
            node_done.wait(30)

    node_listener = socket.create_server(("127.0.0.1", 0))
    serve_connections(node_listener, serve)
    try:
        proxy, port, _ = passthrough(
            [Endpoint("stuck", node_listener.getsockname()[1])], "--passthrough-idle-timeout=1"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client_hello(SERVER_NAME))
            flood(sock, 1)
            wait_for(lambda: proxy.stats()["passthrough"].get("idle") == 1, 10, "the idle timeout")
            wait_for(lambda: proxy.stats()["nodes"]["stuck"]["active"] == 0, 5, "the splice freed")
    finally:
        node_done.set()
        node_listener.close()


def keep_talking(sock: socket.socket, talks: bool, until: Callable[[], bool]) -> bool:
    """Read (and send a byte every 0.25 s if ``talks``) until ``until()``; False if the peer closed before."""
    sock.settimeout(0.25)
    while not until():
        try:
            if not sock.recv(65536):
                return until()
        except TimeoutError:
            pass
        if talks:
            sock.sendall(b"x")
    return True


def for_seconds(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


@pytest.mark.parametrize("talking", ["both", "client", "node"])
def test_a_splice_with_traffic_outlasts_the_idle_timeout(passthrough: StartRig, talking: str) -> None:
    """Bytes every 0.25 s, one way or both, keep a splice with a 1 s idle timeout open for 3.5 s."""
    node_lasted: list[bool] = []

    def serve(sock: socket.socket) -> None:
        with sock:
            node_lasted.append(keep_talking(sock, talking in ("both", "node"), for_seconds(3.5)))

    node_listener = socket.create_server(("127.0.0.1", 0))
    serve_connections(node_listener, serve)
    try:
        proxy, port, _ = passthrough(
            [Endpoint("chatty", node_listener.getsockname()[1])], "--passthrough-idle-timeout=1"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(client_hello(SERVER_NAME))
            # Until the node is done (or 10 s), so that the client's side is never the one that fell silent first.
            give_up = for_seconds(10)
            client_lasted = keep_talking(sock, talking in ("both", "client"), lambda: bool(node_lasted) or give_up())
    finally:
        node_listener.close()
    assert node_lasted == [True] and client_lasted, "the splice was cut"
    assert proxy.stats()["passthrough"]["idle"] == 0
