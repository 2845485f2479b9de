"""What the proxy does to traffic: streaming, encodings, headers, WebSockets, retries, ejection, timeouts, drain.

These depend on the proxy, not on the API tier, so they run on the sandbox only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import urllib3
from kubernetes import client

from tests.fixtures.proxy_process import (
    HTTP,
    Backend,
    Cluster,
    PeakMemory,
    ProxyProcess,
    StartBackends,
    StartProxy,
)
from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import wait_for

MB = 1024 * 1024


@pytest.fixture
def cluster(sandbox_client: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(sandbox_client, namespace)


def start(
    sandbox_api: SandboxProcess,
    cluster: Cluster,
    proxy_process: StartProxy,
    nodes: list[Backend],
    *options: str,
    **load_balancer: object,
) -> ProxyProcess:
    cluster.create(**load_balancer)
    for node in nodes:
        cluster.add_node(node.name, *node.address)
    proxy = proxy_process(sandbox_api.kubeconfig, cluster.namespace, options=options)
    wait_for(lambda: proxy.routable() == sorted(n.name for n in nodes), 10, "all nodes routable")
    return proxy


async def test_100_mb_upload_and_download_stream_with_bounded_memory(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("big")
    proxy = start(sandbox_api, cluster, proxy_process, [node])
    assert proxy.process is not None
    size = 100 * MB
    block = bytes(range(256)) * 256
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    memory = PeakMemory(proxy.process.pid)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(proxy.url + "/upload", data=body()) as response:
            assert response.status == 200
            assert await response.json() == {"bytes": size, "sha256": expected.hexdigest(), "node": "big"}
        received = 0
        async with session.get(f"{proxy.url}/bytes/{size}") as response:
            assert response.status == 200 and response.content_length == size
            async for chunk in response.content.iter_any():
                received += len(chunk)
    growth = memory.stop()
    assert received == size
    assert growth < 40 * MB, f"proxy memory grew by {growth / MB:.1f} MB while streaming 2 x 100 MB"


def test_chunked_and_gzip_pass_through_untouched(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("enc")
    proxy = start(sandbox_api, cluster, proxy_process, [node])
    direct = HTTP.request("GET", f"http://127.0.0.1:{node.port}/gzip", decode_content=False)
    proxied = HTTP.request("GET", proxy.url + "/gzip", headers={"Accept-Encoding": "gzip"}, decode_content=False)
    assert proxied.headers["Content-Encoding"] == "gzip"
    assert proxied.data == direct.data
    assert gzip.decompress(proxied.data) == b"compressible text " * 5000

    chunked = HTTP.request("GET", proxy.url + "/chunked", preload_content=False)
    assert chunked.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in chunked.headers
    assert chunked.read() == b"".join(f"chunk {i:03d} ".encode() * 100 for i in range(50))

    upload = HTTP.request(
        "POST", proxy.url + "/upload", body=iter([b"a" * 1000, b"b" * 5000]), chunked=True, preload_content=True
    )
    assert json.loads(upload.data)["bytes"] == 6000

    get = HTTP.request("GET", proxy.url + "/page")
    head = HTTP.request("HEAD", proxy.url + "/page")
    assert head.status == 200 and head.data == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.data))


def test_header_hygiene(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("hdr")
    proxy = start(sandbox_api, cluster, proxy_process, [node])
    response = HTTP.request(
        "GET",
        proxy.url + "/headers",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "Upgrade": "h2c",
            "X-Forwarded-For": "203.0.113.7",
            "Host": "panel.example.com",
            "X-Custom": "kept",
            "Accept-Encoding": "br",
        },
    )
    assert response.status == 200
    seen = {name.lower(): value for name, value in json.loads(response.data)["headers"]}
    for dropped in ("x-secret-hop", "keep-alive", "proxy-authorization", "te", "upgrade", "transfer-encoding"):
        assert dropped not in seen, dropped
    assert seen.get("connection", "keep-alive").lower() == "keep-alive", "only the proxy's own Connection header"
    assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "panel.example.com"
    assert seen["host"] == "panel.example.com"
    assert seen["x-custom"] == "kept"
    assert seen["accept-encoding"] == "br", "the client's Accept-Encoding, not aiohttp's"
    assert seen["user-agent"].startswith("python-urllib3/"), "the client's User-Agent, not aiohttp's"
    for dropped in ("X-Hop", "Keep-Alive", "Proxy-Thing"):
        assert dropped not in response.headers, dropped
    assert not ("Content-Length" in response.headers and "Transfer-Encoding" in response.headers)


async def test_websocket_echo(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("ws")
    proxy = start(sandbox_api, cluster, proxy_process, [node])
    async with aiohttp.ClientSession() as session, session.ws_connect(proxy.url + "/ws") as ws:
        for i in range(20):
            await ws.send_str(f"hello {i}")
            assert await ws.receive_str(timeout=5) == f"ws: hello {i}"
        await ws.send_bytes(b"\x00\x01\x02")
        assert await ws.receive_bytes(timeout=5) == b"\x02\x01\x00"
    wait_for(lambda: proxy.stats()["nodes"]["ws"]["active"] == 0, 10, "websocket released")


def test_get_to_a_dead_node_is_retried_and_the_node_ejected(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    nodes = backends("r1", "r2", "r3")
    proxy = start(sandbox_api, cluster, proxy_process, nodes, "--eject-seconds=1", retries=2)
    nodes[0].stop()  # still Healthy in the API: only the proxy's passive health notices
    for _ in range(30):
        response = HTTP.request("GET", proxy.url + "/page")
        assert response.status == 200, response.data
        assert json.loads(response.data)["node"] in {"r2", "r3"}
    stats = proxy.stats()["nodes"]
    assert stats["r1"]["errors"] == 1 and stats["r1"]["retries"] == 1 and stats["r1"]["ejections"] == 1
    nodes[0].start()  # the same port again: back after the backoff
    wait_for(lambda: "r1" in {json.loads(HTTP.request("GET", proxy.url).data)["node"] for _ in range(3)}, 10, "r1 back")


def test_a_post_that_reached_a_node_is_never_retried(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    nodes = backends("p1", "p2")
    proxy = start(sandbox_api, cluster, proxy_process, nodes, retries=2)
    for method, expected_hits in (("POST", 1), ("GET", 2), ("PUT", 1)):
        for node in nodes:
            node.hits.clear()
        response = HTTP.request(method, proxy.url + "/drop", body=b"payload" if method == "PUT" else None)
        assert response.status == 502, (method, response.data)
        assert json.loads(response.data)["error"] == "upstream failure"
        hits = sum(node.hits.get(f"drop-{method}", 0) for node in nodes)
        # A GET without a body may go to the other node; a POST, or a PUT whose body was sent, never.
        assert hits == expected_hits, (method, hits)


def test_consecutive_5xx_eject_and_the_node_recovers(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    bad, good = backends("bad", "good")
    proxy = start(sandbox_api, cluster, proxy_process, [bad, good], "--eject-after=3", "--eject-seconds=1")
    bad.status = 500
    statuses = [HTTP.request("GET", proxy.url + "/x").status for _ in range(10)]
    assert statuses.count(500) == 3, "5xx answers are passed on, not retried, until the ejection"
    assert proxy.stats()["nodes"]["bad"]["ejections"] == 1
    bad.status = 200
    wait_for(lambda: "bad" in {json.loads(HTTP.request("GET", proxy.url).data)["node"] for _ in range(3)}, 10, "back")

    good.stop()  # the last routable node is never ejected, even when it fails
    bad.status = 500
    assert {HTTP.request("GET", proxy.url + "/x").status for _ in range(12)} <= {500, 200}
    assert HTTP.request("GET", proxy.url + "/x").status == 500


def test_timeouts_answer_504_and_no_node_503(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("slow")
    proxy = start(sandbox_api, cluster, proxy_process, [node], "--header-timeout=0.5", retries=0)
    started = time.monotonic()
    response = HTTP.request("GET", proxy.url + "/slow/3")
    assert response.status == 504 and json.loads(response.data)["error"] == "upstream timeout"
    assert time.monotonic() - started < 2.5
    assert HTTP.request("GET", proxy.url + "/slow/0.1").status == 200
    cluster.set_health("slow", "Unhealthy")
    wait_for(lambda: not proxy.routable(), 10, "no routable node")
    response = HTTP.request("GET", proxy.url + "/")
    assert response.status == 503 and response.headers["Content-Type"].startswith("application/json")


def test_a_pooled_connection_takes_every_path_a_fresh_one_does(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    """A GET over an idle pooled connection is followed from callbacks until its small answer is whole; a
    timeout, a dropped connection, a streamed, large or split answer hands it to the general path as sent."""
    (node,) = backends("warm")
    proxy = start(sandbox_api, cluster, proxy_process, [node], "--header-timeout=0.5", retries=1)

    def get(path: str) -> urllib3.BaseHTTPResponse:
        warm = HTTP.request("GET", proxy.url + "/")  # leaves the node's connection idle in the pool
        assert warm.status == 200, warm.data
        return HTTP.request("GET", proxy.url + path)

    started = time.monotonic()
    response = get("/slow/3")
    assert response.status == 504 and json.loads(response.data)["error"] == "upstream timeout"
    assert time.monotonic() - started < 2.5
    node.hits.clear()
    response = get("/drop")  # the pooled connection, then a fresh one: both dropped
    assert response.status == 502 and node.hits.get("drop-GET") == 2, node.hits
    response = get("/chunked")
    assert response.status == 200 and response.data == b"".join(f"chunk {i:03d} ".encode() * 100 for i in range(50))
    response = get("/bytes/200000")
    assert response.status == 200 and response.data == b"x" * 200000
    response = get("/bytes/100")
    assert response.status == 200 and response.data == b"x" * 100
    node.status = 204
    response = HTTP.request("GET", proxy.url + "/empty")
    assert response.status == 204 and response.data == b"" and "Content-Length" not in response.headers
    node.status = 200
    assert get("/").status == 200
    stats = proxy.stats()["nodes"]["warm"]
    assert stats["active"] == 0 and stats["responses"]["2xx"] >= 11, stats


def test_sigterm_drains_requests_in_flight(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("drain")
    proxy = start(sandbox_api, cluster, proxy_process, [node])
    result: dict[str, object] = {}

    def slow_request() -> None:
        response = HTTP.request("GET", proxy.url + "/slow/1.5")
        result["status"], result["body"] = response.status, json.loads(response.data)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_for(lambda: node.hits.get("slow"), 5, "request in flight")
    started = time.monotonic()
    assert proxy.stop() == 0
    thread.join(10)
    assert result == {"status": 200, "body": {"node": "drain", "slow": True}}
    assert 1.0 < time.monotonic() - started < 10


def test_a_dead_worker_is_started_again(
    sandbox_api: SandboxProcess, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    (node,) = backends("w")
    cluster.create()
    cluster.add_node("w", *node.address)
    proxy = proxy_process(sandbox_api.kubeconfig, cluster.namespace, workers=2)
    wait_for(proxy.ready, 10, "ready")
    workers = proxy.worker_pids()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    wait_for(
        lambda: proxy.stats()["workers"] == {"running": 2, "reporting": 2, "listening": 2, "applied": 2},
        15,
        "worker started again",
    )
    for _ in range(10):
        assert HTTP.request("GET", proxy.url + "/x").status == 200
