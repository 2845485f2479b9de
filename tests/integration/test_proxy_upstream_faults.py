"""Nodes that fail the proxy in the ways that decide whether a request may be sent twice: a pooled connection
closed under a request, a node that takes a request and never answers, and answers a proxy must not relay. A
real proxy process; raw-socket nodes on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.proxy_process import (
    HTTP,
    Cluster,
    NodeRequest,
    ProxyProcess,
    RecordingNode,
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


def targets(*nodes: RecordingNode) -> list[tuple[str, str]]:
    return [(request.method, request.target) for node in nodes for request in node.requests]


@pytest.mark.parametrize(("method", "sent"), [("POST", 1), ("PATCH", 1), ("GET", 2)])
def test_only_an_idempotent_request_is_sent_again_when_its_pooled_connection_closes(
    start_proxy: StartProxyFor,
    recording_nodes: StartRecordingNode,
    method: str,
    sent: int,
) -> None:
    """The node answers the first request on a connection and closes the connection under the second
    without answering (as a node that acted on it and then crashed would). A POST or PATCH without a body
    may have been acted on: 502, never sent again; a GET is sent again on a fresh connection."""

    def close_on_reuse(request: NodeRequest, index: int) -> Reply:
        return "close" if index > 0 else "answer"

    node = recording_nodes(close_on_reuse)
    proxy, _ = start_proxy({"n": node.port}, retries=0)
    assert HTTP.request("GET", proxy.url + "/warm").status == 200  # leaves the connection idle in the pool
    response = HTTP.request(method, proxy.url + "/act")
    assert targets(node) == [("GET", "/warm"), *[(method, "/act")] * sent]
    assert response.status == (200 if sent == 2 else 502), response.data


def test_a_get_that_timed_out_is_retried_only_where_the_cluster_allows(
    start_proxy: StartProxyFor, recording_nodes: StartRecordingNode
) -> None:
    """Both nodes take every request and never answer. A GET that timed out goes to the other node, unless
    its path is excluded (WHM's API changes state on GET) or the cluster turned retries after a timeout off."""

    def silent(request: NodeRequest, index: int) -> Reply:
        return "silent"

    a, b = recording_nodes(silent), recording_nodes(silent)
    proxy, cluster = start_proxy(
        {"a": a.port, "b": b.port},
        "--header-timeout=0.3",
        "--eject-after=100",
        retries=1,
        retryAfterTimeout={"excludePaths": ["*/json-api/*"]},
    )
    for target, sent in (("/page", 2), ("/json-api/createacct?user=x", 1), ("/cpsess42/json-api/createacct", 1)):
        response = HTTP.request("GET", proxy.url + target)
        assert response.status == 504 and json.loads(response.data)["error"] == "upstream timeout"
        assert targets(a, b) == [("GET", target)] * sent, target
        a.reset()
        b.reset()
    cluster.patch({"spec": {"loadBalancer": {"retryAfterTimeout": {"enabled": False}}}})
    wait_for(lambda: proxy.stats()["config"]["retryAfterTimeout"] is False, 10, "retries after a timeout off")
    assert HTTP.request("GET", proxy.url + "/page").status == 504
    assert targets(a, b) == [("GET", "/page")]


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
