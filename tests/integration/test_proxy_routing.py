"""The proxy routes by the nodes' health and spec, balances, pins sessions and reloads (either API tier)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import urllib3
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.kube import KubeAPI
from tests.fixtures.proxy_process import HTTP, Cluster, ProxyProcess, StartBackends, StartProxy
from tests.fixtures.whm_nodes import StartNodes
from tests.kube_helpers import wait_for


def served_by(proxy: ProxyProcess, count: int, path: str = "/", **headers: str) -> Counter[str]:
    nodes: Counter[str] = Counter()
    for _ in range(count):
        response = HTTP.request("GET", proxy.url + path, headers=headers)
        assert response.status == 200, response.data
        nodes[json.loads(response.data)["node"]] += 1
    return nodes


@pytest.fixture
def cluster(kube_client: client.ApiClient, kube_namespace: str) -> Cluster:
    return Cluster(kube_client, kube_namespace)


def test_routes_by_health_maintenance_weight_and_membership(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy
) -> None:
    cluster.create()
    servers = node_servers("n1", "n2", "n3")
    for server in servers:
        cluster.add_node(server.name, server.host, server.port)
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace)
    wait_for(lambda: proxy.routable() == ["n1", "n2", "n3"], 10, "three routable nodes")
    assert proxy.ready()
    assert served_by(proxy, 30) == {"n1": 10, "n2": 10, "n3": 10}

    cluster.set_health("n2", "Unhealthy")
    wait_for(lambda: proxy.routable() == ["n1", "n3"], 10, "n2 out")
    assert set(served_by(proxy, 20)) == {"n1", "n3"}

    cluster.patch_node("n1", maintenance=True)
    cluster.set_health("n2", "Unknown")
    wait_for(lambda: proxy.routable() == ["n3"], 10, "n1 in maintenance")
    assert set(served_by(proxy, 10)) == {"n3"}

    cluster.set_health("n2", "Healthy")
    cluster.patch_node("n3", weight=0)
    wait_for(lambda: proxy.routable() == ["n2"], 10, "n3 at weight 0")
    assert set(served_by(proxy, 10)) == {"n2"}

    cluster.delete_node("n2")
    wait_for(lambda: not proxy.routable(), 10, "no routable node")
    assert set(proxy.stats()["nodes"]) == {"n1", "n3"}, "a deleted node leaves /stats"
    assert 'node="n2"' not in HTTP.request("GET", proxy.admin_url + "/metrics").data.decode()
    response = HTTP.request("GET", proxy.url + "/page")
    assert response.status == 503
    assert json.loads(response.data)["error"] == "no healthy node"
    assert not proxy.ready()
    assert proxy.stats()["totals"]["unrouted"] == 1


def test_weighted_and_least_connections_live(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy
) -> None:
    cluster.create(algorithm="weighted")
    a, b = node_servers("a", "b")
    cluster.add_node("a", a.host, a.port, weight=3)
    cluster.add_node("b", b.host, b.port, weight=1)
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace)
    # Ready needs one routable node, not both: b may reach the workers a moment after a.
    wait_for(lambda: proxy.routable() == ["a", "b"], 10, "a and b routable")
    assert served_by(proxy, 40) == {"a": 30, "b": 10}

    cluster.patch_node("b", weight=4)
    wait_for(lambda: proxy.config()["nodes"][1]["weight"] == 4, 10, "new weight")
    assert served_by(proxy, 35) == {"a": 15, "b": 20}

    cluster.patch({"spec": {"loadBalancer": {"algorithm": "leastConnections"}}})
    wait_for(lambda: proxy.config()["algorithm"] == "leastConnections", 10, "new algorithm")
    assert served_by(proxy, 20) == {"a": 10, "b": 10}  # sequential: always a tie, ties rotate


def test_sticky_sessions_pin_and_fall_back(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy
) -> None:
    cluster.create(stickySessions={"enabled": True, "cookieName": "PIN"})
    servers = node_servers("s1", "s2")
    for server in servers:
        cluster.add_node(server.name, server.host, server.port)
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace)
    wait_for(lambda: proxy.routable() == ["s1", "s2"], 10, "two routable nodes")

    first = HTTP.request("GET", proxy.url + "/")
    pinned = json.loads(first.data)["node"]
    assert f"PIN={pinned}; " in first.headers["Set-Cookie"]
    assert served_by(proxy, 10, Cookie=f"PIN={pinned}") == {pinned: 10}
    again = HTTP.request("GET", proxy.url + "/", headers={"Cookie": f"PIN={pinned}"})
    assert "Set-Cookie" not in again.headers, "the cookie is only set when it changes"

    cluster.set_health(pinned, "Unhealthy")
    other = "s2" if pinned == "s1" else "s1"
    wait_for(lambda: proxy.routable() == [other], 10, "pinned node out")
    fallback = HTTP.request("GET", proxy.url + "/", headers={"Cookie": f"PIN={pinned}"})
    assert json.loads(fallback.data)["node"] == other
    assert f"PIN={other}; " in fallback.headers["Set-Cookie"], "the cookie is re-set to the new node"


def test_a_worker_applying_a_change_late_is_waited_for_and_counted_once_it_has(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy
) -> None:
    """The watch has a change before the workers route with it: /stats counts the workers that have applied the
    configuration it shows (what proxy.routable() waits for), and a worker that confirms it after the supervisor
    stopped waiting (CALL_TIMEOUT; here stopped, as one starved of CPU) counts once it does: it makes /readyz 200."""
    cluster.create()
    (server,) = node_servers("n1")
    cluster.add_node("n1", server.host, server.port, health="Unhealthy")
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace, workers=2)
    stopped = proxy.worker_pids()[0]
    os.kill(stopped, signal.SIGSTOP)
    try:
        cluster.set_health("n1", "Healthy")
        wait_for(lambda: proxy.admin("GET", "/readyz")[1]["reason"] == "a worker has no routable node yet", 10, "n1")
        # Asked after the configuration was sent: answered once the supervisor gave up on the stopped worker.
        stats = proxy.stats()
        assert stats["workers"] == {"running": 2, "reporting": 1, "listening": 2, "applied": 1}
        assert [node["routable"] for node in stats["config"]["nodes"]] == [True]
    finally:
        os.kill(stopped, signal.SIGCONT)
    wait_for(proxy.ready, 10, "ready once the stopped worker confirmed n1 routable")
    assert proxy.routable() == ["n1"]
    assert served_by(proxy, 4) == {"n1": 4}


def test_reload_by_annotation_and_admin_post(
    kube_api: KubeAPI, cluster: Cluster, backends: StartBackends, proxy_process: StartProxy
) -> None:
    cluster.create(retries=1)
    good, flaky = backends("good", "flaky")
    cluster.add_node("good", *good.address)
    cluster.add_node("flaky", *flaky.address)
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace, options=("--eject-after=2", "--eject-seconds=300"))
    wait_for(lambda: proxy.routable() == ["flaky", "good"], 10, "two routable nodes")
    flaky.status = 500
    for _ in range(6):
        HTTP.request("GET", proxy.url + "/x")
    assert proxy.stats()["nodes"]["flaky"]["ejections"] == 1
    flaky.status = 200
    assert set(served_by(proxy, 6)) == {"good"}, "ejected for 300 s"

    lists = proxy.stats()["api"]["lists"]
    status, body = proxy.admin("POST", "/reload")
    assert status == 200 and body["generation"] == 1 and body["routable"] == ["flaky", "good"]
    assert proxy.stats()["api"]["lists"] == lists + 1
    assert set(served_by(proxy, 6)) == {"flaky", "good"}, "a reload forgets passive ejections"

    flaky.status = 500
    for _ in range(6):
        HTTP.request("GET", proxy.url + "/x")
    flaky.status = 200
    assert set(served_by(proxy, 4)) == {"good"}
    cluster.patch({"metadata": {"annotations": {"ha.whm.io/reload": "2024-01-01T00:00:00Z"}}})
    wait_for(lambda: proxy.config()["generation"] == 2, 10, "reload by annotation")
    wait_for(lambda: set(served_by(proxy, 4)) == {"flaky", "good"}, 10, "flaky back after the reload")


def test_cluster_missing_then_created(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy, tmp_path: Path
) -> None:
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace)
    status, body = proxy.admin("GET", "/readyz")
    assert status == 503 and "not found" in body["reason"]
    response = HTTP.request("GET", proxy.url + "/")
    assert response.status == 503
    (server,) = node_servers("late")
    cluster.create()
    cluster.add_node("late", server.host, server.port)
    wait_for(proxy.ready, 10, "ready once the cluster exists")
    assert served_by(proxy, 2) == {"late": 2}


def test_metrics_and_healthz(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, proxy_process: StartProxy
) -> None:
    cluster.create()
    (server,) = node_servers("m1")
    cluster.add_node("m1", server.host, server.port)
    proxy = proxy_process(kube_api.kubeconfig, cluster.namespace, workers=2)
    wait_for(proxy.ready, 10, "ready")
    served_by(proxy, 20)
    stats = proxy.stats()
    assert stats["workers"] == {"running": 2, "reporting": 2, "listening": 2, "applied": 2}
    assert stats["nodes"]["m1"]["requests"] == 20 and stats["nodes"]["m1"]["responses"]["2xx"] == 20
    assert stats["nodes"]["m1"]["latency"]["count"] == 20
    text = urllib3.request("GET", proxy.admin_url + "/metrics").data.decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = (("cluster", "whm"), ("namespace", cluster.namespace), ("node", "m1"))
    assert samples["whm_ha_proxy_requests_total", labels] == 20
    assert samples["whm_ha_proxy_responses_total", tuple(sorted((*labels, ("code", "2xx"))))] == 20
    assert samples["whm_ha_proxy_request_duration_seconds_count", labels] == 20
    assert samples["whm_ha_proxy_active_requests", labels] == 0
    assert proxy.admin("GET", "/healthz") == (200, {"status": "ok"})


def test_ready_only_once_a_worker_listens(
    kube_api: KubeAPI, cluster: Cluster, node_servers: StartNodes, tmp_path: Path
) -> None:
    """Kubernetes sends traffic to a pod as soon as /readyz answers 200: the traffic port must accept by then
    (a worker process starts and binds its socket some time after it is spawned)."""
    cluster.create()
    (server,) = node_servers("n1")
    cluster.add_node("n1", server.host, server.port)
    proxy = ProxyProcess(kube_api.kubeconfig, cluster.namespace, "whm", tmp_path / "proxy.log", workers=2)
    command = [
        *(sys.executable, "-m", "whm_ha", "proxy", f"--cluster={proxy.cluster}", f"--namespace={proxy.namespace}"),
        *(f"--listen=127.0.0.1:{proxy.port}", f"--admin={proxy.admin_host}:{proxy.admin_port}", "--workers=2"),
    ]
    with proxy.log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kube_api.kubeconfig)}
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, proxy.log_text()[-3000:]
            try:
                if HTTP.request("GET", proxy.admin_url + "/readyz", retries=False).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.005)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5):
            pass  # refused here: ready was said before a worker listened
    finally:
        process.terminate()
        process.wait(30)
