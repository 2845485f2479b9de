"""The proxy keeps its configuration current through API server restarts, 410 Gone and node changes."""

from __future__ import annotations

import json
import threading

import urllib3
from kubernetes import client

from tests.fixtures.proxy_process import HTTP, Cluster, StartBackends, StartProxy
from tests.fixtures.sandbox import SandboxProcess
from tests.kube_helpers import wait_for


def test_survives_api_server_restarts_and_410_gone(
    restartable_sandbox: SandboxProcess, backends: StartBackends, proxy_process: StartProxy
) -> None:
    api = restartable_sandbox.api_client()
    namespace = "proxy-restart"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    cluster = Cluster(api, namespace)
    cluster.create()
    a, b = backends("a", "b")
    cluster.add_node("a", *a.address)
    cluster.add_node("b", *b.address)
    proxy = proxy_process(restartable_sandbox.kubeconfig, namespace)
    wait_for(lambda: proxy.routable() == ["a", "b"], 10, "both routable")
    lists = proxy.stats()["api"]["lists"]

    restartable_sandbox.restart()  # the watches break; after the restart, resuming them is 410 Gone
    api = restartable_sandbox.api_client()
    cluster = Cluster(api, namespace)
    assert HTTP.request("GET", proxy.url + "/").status == 200, "traffic goes on while the API is away"
    cluster.set_health("b", "Unhealthy")
    wait_for(lambda: proxy.routable() == ["a"], 15, "a change made after the restart")
    assert proxy.stats()["api"]["lists"] > lists, "listed again"

    urllib3.request("POST", f"{restartable_sandbox.server}/_sandbox/compact")
    cluster.set_health("b", "Healthy")
    wait_for(lambda: proxy.routable() == ["a", "b"], 15, "a change made after compaction")
    assert "Traceback" not in proxy.log_text()


def test_a_node_turned_unhealthy_gets_no_new_requests_and_drains(
    sandbox_api: SandboxProcess,
    sandbox_client: client.ApiClient,
    namespace: str,
    backends: StartBackends,
    proxy_process: StartProxy,
) -> None:
    cluster = Cluster(sandbox_client, namespace)
    cluster.create(algorithm="leastConnections")
    busy, spare = backends("busy", "spare")
    cluster.add_node("busy", *busy.address)
    cluster.add_node("spare", *spare.address)
    proxy = proxy_process(sandbox_api.kubeconfig, namespace)
    wait_for(lambda: proxy.routable() == ["busy", "spare"], 10, "both routable")
    results: list[tuple[int, str]] = []

    def slow(path: str) -> None:
        response = HTTP.request("GET", proxy.url + path)
        results.append((response.status, json.loads(response.data)["node"]))

    # leastConnections sends the second slow request to the other node; find the one on "busy".
    threads = [threading.Thread(target=slow, args=("/slow/2",)) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: proxy.stats()["totals"]["active"] == 2, 5, "two requests in flight")
    cluster.set_health("busy", "Unhealthy")
    wait_for(lambda: proxy.routable() == ["spare"], 10, "busy out of rotation")
    assert proxy.stats()["nodes"]["busy"]["active"] == 1, "its request is still in flight"
    for _ in range(5):
        assert json.loads(HTTP.request("GET", proxy.url + "/x").data)["node"] == "spare"
    cluster.delete_node("busy")
    wait_for(lambda: "busy" not in [n["name"] for n in proxy.config()["nodes"]], 10, "busy removed")
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [(200, "busy"), (200, "spare")], "in-flight requests finished"
