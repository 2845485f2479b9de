"""The proxy re-encrypts to HTTPS nodes (``spec.nodeTLS``): real HTTPS stand-in nodes on loopback with
certificates from a test CA held in a Secret, a real proxy process, the Kubernetes API of either tier."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.node_certs import NodeCA
from tests.fixtures.proxy_process import HTTP, Cluster, ProxyProcess, StartProxy
from tests.fixtures.whm_nodes import StartNodes
from tests.kube_helpers import wait_for


@dataclass
class World:
    """A cluster with nodeTLS settings, HTTPS nodes with certificates of either CA, and the proxy."""

    kube_api: KubeAPI
    cluster: Cluster
    node_servers: StartNodes
    node_ca: NodeCA
    other_ca: NodeCA
    proxy_process: StartProxy

    def create(self, **node_tls: Any) -> None:
        self.cluster.create()
        self.cluster.patch({"spec": {"nodeTLS": node_tls}})

    def proxy(self, *routable: str) -> ProxyProcess:
        proxy = self.proxy_process(self.kube_api.kubeconfig, self.cluster.namespace)
        wait_for(lambda: proxy.routable() == list(routable), 10, f"routable nodes {routable}")
        return proxy


@pytest.fixture
def world(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    node_servers: StartNodes,
    node_ca: NodeCA,
    other_ca: NodeCA,
    proxy_process: StartProxy,
) -> World:
    return World(kube_api, Cluster(kube_client, kube_namespace), node_servers, node_ca, other_ca, proxy_process)


def create_secret(cluster: Cluster, ca: NodeCA, name: str = "node-ca") -> None:
    client.CoreV1Api(cluster.custom.api_client).create_namespaced_secret(cluster.namespace, ca.secret(name))


def get(proxy: ProxyProcess, path: str = "/") -> tuple[int, dict[str, Any]]:
    response = HTTP.request("GET", proxy.url + path)
    return response.status, json.loads(response.data)


def node_tls(proxy: ProxyProcess) -> dict[str, Any]:
    config = proxy.config()
    assert config is not None
    tls: dict[str, Any] = config["nodeTLS"]
    return tls


def test_verified_against_the_secrets_ca_and_failing_over_from_an_untrusted_node(world: World) -> None:
    cluster = world.cluster
    create_secret(cluster, world.node_ca)
    world.create(enabled=True, caSecret={"name": "node-ca"})
    (good,) = world.node_servers("good", tls=world.node_ca.issue("127.0.0.1"))
    (rogue,) = world.node_servers("rogue", tls=world.other_ca.issue("127.0.0.1"))
    cluster.add_node("good", good.host, good.port)
    cluster.add_node("rogue", rogue.host, rogue.port)
    proxy = world.proxy("good", "rogue")
    assert node_tls(proxy)["ca"] == "secret" and node_tls(proxy)["problem"] is None

    answers = [get(proxy) for _ in range(20)]
    assert {status for status, _ in answers} == {200}
    assert {body["node"] for _, body in answers} == {"good"}, (
        "the rogue node's requests fail over like a refused connect"
    )
    stats = proxy.stats()["nodes"]
    assert stats["rogue"]["tls_failures"] >= 1 and stats["rogue"]["responses"]["2xx"] == 0
    assert stats["good"]["tls_handshakes"] >= 1 and stats["good"]["tls_failures"] == 0
    log = proxy.log_text()
    assert "node rogue: TLS to 127.0.0.1:" in log and "certificate not trusted" in log, log[-2000:]

    cluster.set_health("good", "Unhealthy")
    wait_for(lambda: proxy.routable() == ["rogue"], 10, "only the rogue node left")
    assert proxy.admin("POST", "/reload")[0] == 200  # forget the rogue node's passive ejection
    status, body = get(proxy)
    assert (status, body["error"], body["node"]) == (502, "upstream TLS handshake failed", "rogue")


def test_server_name_and_a_rotated_ca(world: World) -> None:
    cluster, node_ca = world.cluster, world.node_ca
    create_secret(cluster, world.other_ca)  # the wrong CA, to begin with
    world.create(enabled=True, caSecret={"name": "node-ca"})
    (node,) = world.node_servers("n1", tls=node_ca.issue("whm.example"))
    cluster.add_node("n1", node.host, node.port)
    proxy = world.proxy("n1")
    status, body = get(proxy)
    assert (status, body["error"]) == (502, "upstream TLS handshake failed")
    assert "certificate not trusted" in proxy.log_text()

    core = client.CoreV1Api(cluster.custom.api_client)
    core.replace_namespaced_secret("node-ca", cluster.namespace, node_ca.secret("node-ca"))
    rotated = node_ca.pem
    wait_for(lambda: node_tls(proxy)["caFingerprint"] == _fingerprint(rotated), 10, "the rotated CA")

    def refused_for_its_address() -> bool:
        """A request fails on the node's name, no longer on its CA: the workers verify with the rotated CA."""
        return get(proxy)[0] == 502 and "certificate is not valid for 127.0.0.1" in proxy.log_text()

    wait_for(refused_for_its_address, 10, "the rotated CA applied: the node is checked against its address")

    cluster.patch({"spec": {"nodeTLS": {"serverName": "whm.example"}}})
    wait_for(lambda: node_tls(proxy)["serverName"] == "whm.example", 10, "serverName applied")
    wait_for(lambda: get(proxy)[0] == 200, 10, "n1 answering over TLS checked against whm.example")

    core.delete_namespaced_secret("node-ca", cluster.namespace)
    wait_for(lambda: node_tls(proxy)["problem"] == "CA Secret node-ca not found", 10, "the CA gone")
    status, body = get(proxy)
    assert (status, body["error"]) == (502, "upstream TLS handshake failed"), "no CA: nothing goes unverified"


def test_a_ca_secret_that_does_not_load_fails_connects_saying_so(world: World) -> None:
    """A ca.crt in PEM armour that OpenSSL cannot load: every connect fails as with a missing CA, with the reason in
    /stats, rather than every request crashing in the worker (500 and a traceback each)."""
    cluster = world.cluster
    unparsable = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    client.CoreV1Api(cluster.custom.api_client).create_namespaced_secret(
        cluster.namespace,
        {"metadata": {"name": "node-ca"}, "data": {"ca.crt": base64.b64encode(unparsable.encode()).decode()}},
    )
    world.create(enabled=True, caSecret={"name": "node-ca"})
    (node,) = world.node_servers("n1", tls=world.node_ca.issue("127.0.0.1"))
    cluster.add_node("n1", node.host, node.port)
    proxy = world.proxy("n1")
    assert (node_tls(proxy)["problem"] or "").startswith("CA Secret node-ca key ca.crt holds no usable"), node_tls(
        proxy
    )
    status, body = get(proxy)
    assert (status, body.get("error")) == (502, "upstream TLS handshake failed"), (status, body)
    assert "Traceback" not in proxy.log_text()


def test_insecure_skip_verify_accepts_any_certificate_and_says_so_once(world: World) -> None:
    cluster = world.cluster
    world.create(enabled=True, insecureSkipVerify=True)
    (node,) = world.node_servers("n1", tls=world.other_ca.issue("somewhere.else"))
    cluster.add_node("n1", node.host, node.port)
    proxy = world.proxy("n1")
    assert [get(proxy)[0] for _ in range(5)] == [200] * 5
    cluster.patch_node("n1", weight=2)  # another configuration, still insecure: no second warning
    wait_for(lambda: proxy.config()["nodes"][0]["weight"] == 2, 10, "the new weight")  # type: ignore[index]
    assert proxy.log_text().count("nodeTLS.insecureSkipVerify is on") == 1


def test_tls_connections_are_pooled_under_keep_alive_load(world: World) -> None:
    """Requests per TLS handshake to the nodes: 8 keep-alive clients, 250 requests each."""
    create_secret(world.cluster, world.node_ca)
    world.create(enabled=True, caSecret={"name": "node-ca"})
    for server in world.node_servers("n1", "n2", tls=world.node_ca.issue("127.0.0.1")):
        world.cluster.add_node(server.name, server.host, server.port)
    proxy = world.proxy("n1", "n2")
    clients, each = 8, 250
    failures: list[int] = []

    def run() -> None:
        pool = urllib3.HTTPConnectionPool("127.0.0.1", proxy.port, maxsize=1, retries=False)
        for _ in range(each):
            response = pool.request("GET", "/")
            if response.status != 200:
                failures.append(response.status)
        pool.close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    nodes = proxy.stats()["nodes"]
    requests = sum(node["requests"] for node in nodes.values())
    handshakes = sum(node["tls_handshakes"] for node in nodes.values())
    assert requests == clients * each
    print(f"node TLS pooling: {requests} requests, {handshakes} handshakes, {requests / handshakes:.0f} per handshake")
    assert handshakes <= 2 * clients, "a pooled TLS connection carries many requests"


def _fingerprint(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()[:16]
