"""Client addresses through the real proxy: what a node is told about who connected, and who may tell it otherwise.

At the edge (no trusted network) a client's own X-Real-IP, Forwarded and X-Forwarded-Proto never reach a node;
a trusted load balancer's are kept, and PROXY protocol headers are taken from trusted peers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
import urllib3
from kubernetes import client

from tests.fixtures.proxy_process import HTTP, Backend, Cluster, ProxyProcess, StartBackends, StartProxy
from tests.fixtures.sandbox import SandboxProcess
from tests.fixtures.tls_nodes import SERVER_NAME, TLSNodes
from tests.kube_helpers import wait_for
from tests.tls_helpers import put_secret, tls_secret
from whm_ha.db.local_server import free_port
from whm_ha_proxy.handshake import read_proxy_header
from whm_ha_proxy.proxy_protocol import NO_HEADER, ProxyHeader

StartFor = Callable[..., ProxyProcess]


@pytest.fixture
def proxy_for(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, proxy_process: StartProxy
) -> StartFor:
    """``proxy_for(node, *options, **load_balancer)``: a proxy for a new cluster of that one node, with its HTTPS
    listener open once it serves its certificates when ``load_balancer`` has ``tls``."""

    def start(node: Backend, *options: str, **load_balancer: Any) -> ProxyProcess:
        cluster = Cluster(sandbox_client, namespace)
        cluster.create(**load_balancer)
        cluster.add_node(node.name, *node.address)
        tls = "tls" in load_balancer
        proxy = proxy_process(sandbox_api.kubeconfig, namespace, options=options, tls_port=free_port() if tls else None)
        wait_for(
            lambda: proxy.routable() == [node.name] and (not tls or proxy.stats()["tls"]["served"]),
            10,
            "the node routable (and the certificate served)",
        )
        return proxy

    return start


def seen_headers(response: urllib3.BaseHTTPResponse) -> list[tuple[str, str]]:
    assert response.status == 200, response.data
    return [(name.lower(), value) for name, value in json.loads(response.data)["headers"]]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key == name]


FORGED = urllib3.HTTPHeaderDict(
    [
        ("X-Real-IP", "6.6.6.6"),
        ("X-Real-IP", "6.6.6.7"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "6.6.6.6"),
    ]
)


def test_a_client_cannot_forge_its_address_at_the_edge(proxy_for: StartFor, backends: StartBackends) -> None:
    (node,) = backends("edge")
    proxy = proxy_for(node)
    for _ in range(2):  # the first over a new node connection (general path), the second over a pooled one
        seen = seen_headers(HTTP.request("GET", proxy.url + "/headers", headers=FORGED))
        assert values(seen, "x-real-ip") == ["127.0.0.1"]
        assert values(seen, "forwarded") == ["for=127.0.0.1;proto=http"]
        assert values(seen, "x-forwarded-proto") == ["http"]
        assert values(seen, "x-forwarded-for") == ["6.6.6.6, 127.0.0.1"], "appended to, as nginx does"


def test_underscore_variants_of_the_forwarding_headers_never_reach_a_node(
    proxy_for: StartFor, backends: StartBackends
) -> None:
    """CGI, PHP and WSGI servers map X_Real_IP and X-Real-IP alike to HTTP_X_REAL_IP: a client's underscore variant
    would stand beside (or, read last, for) the proxy's own (nginx drops every header with an underscore)."""
    (node,) = backends("underscores")
    proxy = proxy_for(node)
    forged = [("X_Real_IP", "6.6.6.6"), ("x_forwarded_for", "6.6.6.6"), ("X_Forwarded-Proto", "https")]
    forged += [("X_Forwarded_Host", "evil.example"), ("X_Other", "kept")]
    seen = seen_headers(HTTP.request("GET", proxy.url + "/headers", headers=urllib3.HTTPHeaderDict(forged)))
    assert values(seen, "x_other") == ["kept"]
    assert not [name for name, _ in seen if "_" in name and name != "x_other"], seen
    assert values(seen, "x-real-ip") == ["127.0.0.1"]


def test_a_clients_proxy_header_never_reaches_a_node(proxy_for: StartFor, backends: StartBackends) -> None:
    """httpoxy (CVE-2016-5385): CGI and Perl nodes (WHM) read a request's ``Proxy:`` header as HTTP_PROXY, the
    variable their HTTP clients take as the outgoing proxy, so a client could route the node's own requests."""
    (node,) = backends("httpoxy")
    proxy = proxy_for(node)
    for spelling in ("Proxy", "proxy", "PROXY"):
        sent = urllib3.HTTPHeaderDict([(spelling, "http://evil.example:8080"), ("Proxyish", "kept")])
        seen = seen_headers(HTTP.request("GET", proxy.url + "/headers", headers=sent))
        assert values(seen, "proxy") == [], (spelling, seen)
        assert values(seen, "proxyish") == ["kept"], seen
    raw = exchange(proxy.port, request("Proxy: http://evil.example:8080", "X-Other: kept"))
    assert ("proxy", "http://evil.example:8080") not in answered(raw), raw


def test_a_trusted_load_balancers_forwarded_headers_are_kept(proxy_for: StartFor, backends: StartBackends) -> None:
    (node,) = backends("behind-lb")
    trusted = {"trustedNetworks": ["127.0.0.0/8", "10.0.0.0/8"]}
    proxy = proxy_for(node, clientAddress=trusted)
    sent = urllib3.HTTPHeaderDict(
        [
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
            ("X-Forwarded-For", "10.0.0.5"),
            ("Forwarded", 'for=203.0.113.9;proto=https, for="[2001:db8::5]"'),
            ("X-Forwarded-Proto", "https"),
            ("X-Real-IP", "6.6.6.6"),
        ]
    )
    seen = seen_headers(HTTP.request("GET", proxy.url + "/headers", headers=sent))
    assert values(seen, "x-forwarded-for") == ["6.6.6.6, 203.0.113.9, 10.0.0.5, 127.0.0.1"]
    assert values(seen, "x-real-ip") == ["203.0.113.9"], "the last hop outside the trusted networks"
    assert values(seen, "forwarded") == ['for=203.0.113.9;proto=https, for="[2001:db8::5]", for=127.0.0.1;proto=http']
    assert values(seen, "x-forwarded-proto") == ["https"], "the load balancer terminated TLS"


def exchange(port: int, data: bytes, source: str = "127.0.0.1", *, pause_after: int | None = None) -> bytes:
    """What the proxy answers to ``data`` sent from ``source``, read until it closes the connection (``pause_after``:
    send only that many bytes, then wait for the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        sock.sendall(data if pause_after is None else data[:pause_after])
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def request(*headers: str) -> bytes:
    return (
        "GET /headers HTTP/1.1\r\nHost: panel\r\nConnection: close\r\n" + "".join(h + "\r\n" for h in headers)
    ).encode() + b"\r\n"


def answered(raw: bytes) -> list[tuple[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:300]
    return [(name.lower(), value) for name, value in json.loads(body)["headers"]]


def proxy_v2(source: bytes, destination: bytes, *, family: int, command: int = 1, tlvs: bytes = b"") -> bytes:
    payload = source + destination + (443).to_bytes(2, "big") + (8443).to_bytes(2, "big") + tlvs
    return (
        b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, family << 4 | 1]) + len(payload).to_bytes(2, "big") + payload
    )


def test_proxy_protocol_from_trusted_peers_only(proxy_for: StartFor, backends: StartBackends) -> None:
    (node,) = backends("pp")
    balancer = "127.0.0.2"  # the trusted load balancer; 127.0.0.1 is a client connecting straight
    settings = {"trustedNetworks": [f"{balancer}/32"], "proxyProtocol": True}
    proxy = proxy_for(node, "--client-header-timeout=1", clientAddress=settings)
    forged = request("X-Real-IP: 6.6.6.6", "Forwarded: for=6.6.6.6")

    v1 = answered(exchange(proxy.port, b"PROXY TCP4 198.51.100.7 10.1.1.1 40000 443\r\n" + forged, balancer))
    assert values(v1, "x-real-ip") == ["198.51.100.7"]
    assert values(v1, "forwarded") == ["for=198.51.100.7;proto=http"]
    assert values(v1, "x-forwarded-for") == ["198.51.100.7"]

    header = proxy_v2(socket.inet_pton(socket.AF_INET6, "2001:db8::7"), bytes(16), family=2, tlvs=b"\x04\x00\x01x")
    v2 = answered(exchange(proxy.port, header + forged, balancer))
    assert values(v2, "x-real-ip") == ["2001:db8::7"]
    assert values(v2, "forwarded") == ['for="[2001:db8::7]";proto=http']

    local = proxy_v2(b"", b"", family=0, command=0)  # the balancer's own health check: its address stands
    assert values(answered(exchange(proxy.port, local + forged, balancer)), "x-real-ip") == [balancer]

    direct = answered(exchange(proxy.port, forged))  # no header from an untrusted peer: the edge rules
    assert values(direct, "x-real-ip") == ["127.0.0.1"]

    refused = {
        "a PROXY header from an untrusted peer": (b"PROXY TCP4 198.51.100.7 10.1.1.1 1 2\r\n" + forged, "127.0.0.1"),
        "a v2 header from an untrusted peer": (header + forged, "127.0.0.1"),
        "no header from the trusted peer": (forged, balancer),
        "a v1 header without its end in 107 bytes": (b"PROXY TCP4 " + b"1" * 120, balancer),
        "a v1 header with a bad address": (b"PROXY TCP4 198.51.100.300 10.1.1.1 1 2\r\n" + forged, balancer),
        "a v2 header longer than allowed": (header[:14] + (5000).to_bytes(2, "big") + b"x" * 5000, balancer),
    }
    for case, (data, source) in refused.items():
        assert exchange(proxy.port, data, source) == b"", f"{case}: closed without an answer"

    started = time.monotonic()
    assert exchange(proxy.port, b"PROXY TCP4 198.51.100.7 10.1.1.1 40000 443\r\n", balancer, pause_after=20) == b""
    assert time.monotonic() - started < 5, "a stalled PROXY header is cut at the client header timeout"
    seen = seen_headers(HTTP.request("GET", proxy.url + "/headers"))  # still serving
    assert values(seen, "x-real-ip") == ["127.0.0.1"]


PANEL = {"certificates": [{"secretName": "panel"}]}
"""``loadBalancer.tls`` serving the Secret ``panel_secret`` puts."""


@pytest.fixture
def panel_secret(sandbox_client: client.ApiClient, namespace: str, tls_nodes: TLSNodes) -> None:
    put_secret(sandbox_client, namespace, tls_secret("panel", tls_nodes.ca.issue_cert(SERVER_NAME)))


@pytest.mark.usefixtures("panel_secret")
def test_a_tls_listener_is_told_as_https(proxy_for: StartFor, backends: StartBackends, tls_nodes: TLSNodes) -> None:
    """Through the proxy's HTTPS listener (--listen-tls): proto=https, whatever the client says."""
    (node,) = backends("over-tls")
    proxy = proxy_for(node, tls=PANEL)
    assert proxy.tls_port is not None
    with (
        socket.create_connection(("127.0.0.1", proxy.tls_port), timeout=10) as raw,
        tls_nodes.client.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        tls.sendall(request("X-Forwarded-Proto: http", "Forwarded: for=6.6.6.6;proto=http", "X-Real-IP: 6.6.6.6"))
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    seen = answered(received)
    assert values(seen, "x-forwarded-proto") == ["https"]
    assert values(seen, "forwarded") == ["for=127.0.0.1;proto=https"]
    assert values(seen, "x-real-ip") == ["127.0.0.1"]


def tls_exchange(port: int, tls_nodes: TLSNodes, preface: bytes, source: str) -> bytes:
    """What the proxy's HTTPS listener answers to a request over TLS from ``source``, after ``preface`` sent in
    the clear (a PROXY header, in the same segment as the ClientHello where the kernel joins them); b"" when it
    closes the connection instead, during the handshake or after it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as raw:
            raw.sendall(preface)
            with tls_nodes.client.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                tls.sendall(request("X-Real-IP: 6.6.6.6", "Forwarded: for=6.6.6.6;proto=http"))
                received = b""
                while chunk := tls.recv(65536):
                    received += chunk
                return received
    except (ssl.SSLError, ConnectionError):  # a reset may come as early as the connect
        return b""


async def test_reading_a_proxy_header_off_a_socket_leaves_what_follows() -> None:
    """However the header and the ClientHello after it are split into reads, the header is taken whole and not
    one byte of what follows (the TLS layer reads from there)."""
    hello = b"\x16\x03\x01\x00\x05hello"
    v1 = b"PROXY TCP4 198.51.100.7 10.1.1.1 40000 443\r\n"
    v2 = proxy_v2(socket.inet_pton(socket.AF_INET, "198.51.100.7"), bytes(4), family=1, tlvs=b"\x04\x00\x01x")
    for header in (v1, v2):
        sent = header + hello
        for split in range(1, len(sent)):
            ours, theirs = socket.socketpair()
            with ours, theirs:
                ours.setblocking(False)
                theirs.sendall(sent[:split])
                reading = asyncio.ensure_future(read_proxy_header(ours, trusted=True))
                await asyncio.sleep(0)  # the reader waits for the rest, or has read all it needs
                theirs.sendall(sent[split:])
                async with asyncio.timeout(5):
                    assert await reading == ProxyHeader("198.51.100.7", len(header))
                assert ours.recv(100) == hello, f"split at {split}"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        theirs.sendall(hello)
        assert await read_proxy_header(ours, trusted=False) == NO_HEADER
        assert ours.recv(100) == hello, "an untrusted peer's bytes are only looked at"


SLOTS = range(3)
"""The proxy's connection slots in ``test_proxy_protocol_on_the_tls_listener``: more than one, as a connection
just answered may hold its slot a moment after the client saw it closed."""


@pytest.mark.usefixtures("panel_secret")
def test_proxy_protocol_on_the_tls_listener(proxy_for: StartFor, backends: StartBackends, tls_nodes: TLSNodes) -> None:
    """A network load balancer in front of the HTTPS listener: its PROXY header comes before the ClientHello."""
    (node,) = backends("pp-tls")
    balancer = "127.0.0.2"
    settings = {"trustedNetworks": [f"{balancer}/32"], "proxyProtocol": True}
    # Few connection slots: stalled connections holding them show, as do the slots given back.
    options = ("--tls-handshake-timeout=1", f"--max-connections={len(SLOTS)}")
    proxy = proxy_for(node, *options, tls=PANEL, clientAddress=settings)
    assert proxy.tls_port is not None
    port = proxy.tls_port

    v1 = answered(tls_exchange(port, tls_nodes, b"PROXY TCP4 198.51.100.7 10.1.1.1 40000 443\r\n", balancer))
    assert values(v1, "x-real-ip") == ["198.51.100.7"]
    assert values(v1, "forwarded") == ["for=198.51.100.7;proto=https"]
    assert values(v1, "x-forwarded-proto") == ["https"]

    header = proxy_v2(socket.inet_pton(socket.AF_INET6, "2001:db8::7"), bytes(16), family=2, tlvs=b"\x04\x00\x01x")
    v2 = answered(tls_exchange(port, tls_nodes, header, balancer))
    assert values(v2, "x-real-ip") == ["2001:db8::7"]
    assert values(v2, "forwarded") == ['for="[2001:db8::7]";proto=https']

    local = proxy_v2(b"", b"", family=0, command=0)  # the balancer's own health check: its address stands
    assert values(answered(tls_exchange(port, tls_nodes, local, balancer)), "x-real-ip") == [balancer]
    direct = answered(tls_exchange(port, tls_nodes, b"", "127.0.0.1"))  # an untrusted peer, no header: the edge
    assert values(direct, "forwarded") == ["for=127.0.0.1;proto=https"]

    refused = {
        "a PROXY header from an untrusted peer": (b"PROXY TCP4 198.51.100.7 10.1.1.1 1 2\r\n", "127.0.0.1"),
        "a v2 header from an untrusted peer": (header, "127.0.0.1"),
        "no header from the trusted peer": (b"", balancer),
        "a v2 header longer than allowed": (header[:14] + (5000).to_bytes(2, "big") + b"x" * 5000, balancer),
    }
    for case, (preface, source) in refused.items():
        assert tls_exchange(port, tls_nodes, preface, source) == b"", f"{case}: closed without an answer"

    stalled = [socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(balancer, 0)) for _ in SLOTS]
    try:
        for sock in stalled:
            sock.sendall(b"PROXY TCP4 198.51.100.7 10.1.1.")  # and nothing more
        started = time.monotonic()
        wait_for(lambda: tls_exchange(port, tls_nodes, b"", "127.0.0.1") == b"", 5, "every slot held by a stall")
        for sock in stalled:
            with contextlib.suppress(ConnectionResetError):  # reset, to free it at once
                assert sock.recv(1) == b"", "closed by the proxy"
        assert time.monotonic() - started < 5, "a stalled PROXY header is cut at the handshake timeout"
    finally:
        for sock in stalled:
            sock.close()
    after = answered(tls_exchange(port, tls_nodes, b"PROXY TCP4 198.51.100.8 10.1.1.1 1 443\r\n", balancer))
    assert values(after, "x-real-ip") == ["198.51.100.8"], "the stalled connections' slots were given back"
