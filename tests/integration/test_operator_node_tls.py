"""The operator's https probes end to end: a real operator process, HTTPS stand-in nodes on loopback with
certificates from a test CA held in a Secret, and the Kubernetes API of either tier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.node_certs import NodeCA
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import BOUND, FAST, Cluster, start
from tests.kube_helpers import wait_for


@pytest.fixture
def cluster(kube_client: client.ApiClient, kube_namespace: str) -> Cluster:
    return Cluster(kube_client, kube_namespace)


def test_an_expired_certificate_makes_a_node_unhealthy_until_it_is_renewed(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, node_ca: NodeCA, operator_process: StartOperator
) -> None:
    cluster.create(nodeTLS={"caSecret": {"name": "node-ca"}}, healthCheck={**FAST_HTTPS})
    good, stale = node_servers("n1", "n2", tls=node_ca.issue("127.0.0.1"))
    cluster.add(good, 100)
    cluster.add(stale, 50)
    start(cluster, kube_api, operator_process)
    status = wait_for(
        lambda: (s := cluster.node("n1").get("status") or {}).get("health") == "Unhealthy" and s,
        BOUND + 10,
        "n1 Unhealthy without the CA to verify it with",
    )
    assert status["message"] == "cannot verify node certificates: CA Secret node-ca not found"
    cluster.core.create_namespaced_secret(cluster.namespace, node_ca.secret("node-ca"))
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster over https probes")

    expired_at = datetime.now(UTC) - timedelta(minutes=1)
    stale.kill()
    stale.tls = node_ca.issue("127.0.0.1", not_before=expired_at - timedelta(days=90), not_after=expired_at)
    stale.start()
    status = wait_for(
        lambda: (s := cluster.node("n2").get("status") or {}).get("health") == "Unhealthy" and s,
        BOUND + 10,
        "n2 Unhealthy with an expired certificate",
    )
    reason = f"certificate expired (notAfter {expired_at.strftime('%Y-%m-%dT%H:%M:%SZ')})"
    assert status["message"] == f"https://127.0.0.1:{stale.port}/healthz: {reason}"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and reason in ready["message"]
    # The cluster's status is its own patch, after the node's: awaited, not read at once.
    cluster.wait(lambda s: s.get("phase") == "Degraded", 10, "the cluster Degraded")

    stale.kill()
    stale.tls = node_ca.issue("127.0.0.1")  # renewed
    stale.start()
    wait_for(lambda: (cluster.node("n2").get("status") or {}).get("health") == "Healthy", BOUND + 10, "n2 Healthy")
    cluster.wait(lambda s: s.get("phase") == "Healthy", 15, "the cluster Healthy again")


def test_insecure_skip_verify_probes_any_certificate_and_warns(
    cluster: Cluster,
    kube_api: KubeAPI,
    node_servers: StartNodes,
    node_ca: NodeCA,
    other_ca: NodeCA,
    operator_process: StartOperator,
) -> None:
    cluster.core.create_namespaced_secret(cluster.namespace, node_ca.secret("node-ca"))
    cluster.create(nodeTLS={"enabled": True, "caSecret": {"name": "node-ca"}}, healthCheck=FAST)
    (node,) = node_servers("n1", tls=other_ca.issue("127.0.0.1"))  # not from the CA the cluster trusts
    cluster.add(node, 100)
    start(cluster, kube_api, operator_process)
    status = wait_for(
        lambda: (s := cluster.node("n1").get("status") or {}).get("health") == "Unhealthy" and s,
        BOUND + 10,
        "n1 Unhealthy with an untrusted certificate",
    )
    assert "certificate not trusted: unable to get local issuer certificate; issuer " in status["message"]
    assert cluster.events("InsecureNodeTLS") == []

    cluster.custom.patch_namespaced_custom_object(
        "ha.whm.io",
        "v1alpha1",
        cluster.namespace,
        "whmclusters",
        cluster.name,
        {"spec": {"nodeTLS": {"caSecret": None, "insecureSkipVerify": True}}},
    )
    wait_for(lambda: (cluster.node("n1").get("status") or {}).get("health") == "Healthy", BOUND + 10, "n1 Healthy")
    events = wait_for(lambda: cluster.events("InsecureNodeTLS"), 10, "an InsecureNodeTLS Event")
    assert len(events) == 1 and "insecureSkipVerify is on" in events[0]
    warning = [e for e in cluster.core.list_namespaced_event(cluster.namespace).items if e.reason == "InsecureNodeTLS"]
    assert warning[0].type == "Warning"
    assert warning[0].involved_object.kind == "WHMCluster" and warning[0].involved_object.name == cluster.name


FAST_HTTPS = {**FAST, "scheme": "https"}
