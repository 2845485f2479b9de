"""Client addresses through the real proxy: what a node is told about who connected, and who may tell it otherwise.

At the edge (no trusted network) a client's own X-Real-IP, Forwarded and X-Forwarded-Proto never reach a node;
a trusted load balancer's are kept, and PROXY protocol headers are taken from trusted peers only.
"""

from __future__ import annotations

import json
import socket
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

StartFor = Callable[..., ProxyProcess]


@pytest.fixture
def proxy_for(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, proxy_process: StartProxy
) -> StartFor:
    """``proxy_for(node, *options, **load_balancer)``: a proxy for a new cluster of that one node."""

    def start(node: Backend, *options: str, **load_balancer: Any) -> ProxyProcess:
        cluster = Cluster(sandbox_client, namespace)
        cluster.create(**load_balancer)
        cluster.add_node(node.name, *node.address)
        proxy = proxy_process(sandbox_api.kubeconfig, namespace, options=options)
        wait_for(lambda: proxy.routable() == [node.name], 10, "the node routable")
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


def test_a_tls_listener_is_told_as_https(
    sandbox_api: SandboxProcess,
    sandbox_client: client.ApiClient,
    namespace: str,
    proxy_process: StartProxy,
    backends: StartBackends,
    tls_nodes: TLSNodes,
) -> None:
    """Through the proxy's HTTPS listener (--listen-tls): proto=https, whatever the client says."""
    (node,) = backends("over-tls")
    cluster = Cluster(sandbox_client, namespace)
    cluster.create(tls={"certificates": [{"secretName": "panel"}]})
    cluster.add_node(node.name, *node.address)
    put_secret(sandbox_client, namespace, tls_secret("panel", tls_nodes.ca.issue_cert(SERVER_NAME)))
    proxy = proxy_process(sandbox_api.kubeconfig, namespace, tls_port=free_port())
    wait_for(lambda: proxy.routable() == [node.name] and proxy.stats()["tls"]["served"], 10, "the certificate served")
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
