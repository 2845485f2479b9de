"""Nodes that fail the proxy: answers a proxy must not relay. A real proxy process; raw-socket nodes on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.proxy_process import (
    Cluster,
    NodeRequest,
    ProxyProcess,
    Reply,
    StartProxy,
    StartRecordingNode,
)
from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import wait_for

StartProxyFor = Callable[..., tuple[ProxyProcess, Cluster]]


@pytest.fixture
def start_proxy(
    sandbox_api: SandboxProcess, sandbox_client: client.ApiClient, namespace: str, proxy_process: StartProxy
) -> StartProxyFor:
    """``start_proxy(nodes, *options, **load_balancer)``: the WHMCluster with ``nodes`` (name: port on loopback),
    all Healthy, and a proxy (one worker) in front of them that routes to every one."""

    def start(nodes: dict[str, int], *options: str, **load_balancer: Any) -> tuple[ProxyProcess, Cluster]:
        cluster = Cluster(sandbox_client, namespace)
        cluster.create(**load_balancer)
        for name, port in nodes.items():
            cluster.add_node(name, "127.0.0.1", port)
        proxy = proxy_process(sandbox_api.kubeconfig, namespace, options=options)
        wait_for(lambda: proxy.routable() == sorted(nodes), 10, "every node routable")
        return proxy, cluster

    return start


INVALID_ANSWERS = {
    "bare LF in the status line": b"HTTP/1.1 200 OK\nSet-Cookie: session=x\r\nContent-Length: 2\r\n\r\nok",
    "NUL in a value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "xchunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "chunked, gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n",
}


def test_an_answer_a_proxy_must_not_relay_never_reaches_the_client(
    start_proxy: StartProxyFor, recording_nodes: StartRecordingNode
) -> None:
    """A header injected after a bare LF in the status line, a NUL in a value, and a transfer coding other than
    chunked alone fail the exchange: the client gets the proxy's 502, nothing of the node's answer."""

    def invalid(request: NodeRequest, index: int) -> Reply:
        return INVALID_ANSWERS[request.header("x-case")[0]]

    node = recording_nodes(invalid)
    proxy, _ = start_proxy({"n": node.port}, retries=0)
    for case in INVALID_ANSWERS:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: panel\r\nX-Case: %s\r\nConnection: close\r\n\r\n" % case.encode())
            answer = b""
            while data := sock.recv(65536):
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502 "), (case, answer)
        assert b"session" not in answer and b"X-A" not in head and json.loads(body)["error"] == "upstream failure"
