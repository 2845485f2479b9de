"""The operator runs with exactly the RBAC that manifests/base/operator-rbac.yaml grants (real API only):
a verb the code needs but the manifest lacks fails this test."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.fixtures.control_plane import ControlPlane
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import BOUND, Cluster, three_nodes
from tests.kube_helpers import wait_for

pytestmark = pytest.mark.real_api
MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "base" / "operator-rbac.yaml"


@pytest.fixture(scope="module")
def operator_rbac(real_control_plane: ControlPlane) -> None:
    """The manifest's ClusterRole, bound to the operator's identity of the token file."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    with real_control_plane.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role(docs["ClusterRole"])
        binding = copy.deepcopy(docs["ClusterRoleBinding"])
        binding["subjects"] = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "whm-ha-operator"}]
        rbac.create_cluster_role_binding(binding)
    with real_control_plane.api_client("operator") as api:
        wait_for(
            lambda: client.CustomObjectsApi(api).list_cluster_custom_object("ha.whm.io", "v1alpha1", "whmclusters"),
            30,
            "the binding to take effect",
        )


def test_operator_fails_over_with_only_the_manifest_rbac(
    operator_rbac: None,
    real_control_plane: ControlPlane,
    node_servers: StartNodes,
    operator_process: StartOperator,
) -> None:
    with real_control_plane.api_client() as admin:
        namespace = f"rbac-{id(admin) % 100000}"
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": namespace}})
        cluster = Cluster(admin, namespace)
        cluster.create()
        servers = three_nodes(cluster, node_servers)
        operator = operator_process(real_control_plane.kubeconfigs["operator"], namespace)
        cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
        servers[0].kill()
        status = cluster.wait_primary("n2", timeout=BOUND + 10)
        assert status["lastFailover"]["type"] == "automatic"
        wait_for(lambda: cluster.events("Failover"), 10, "the Failover event")
        cluster.annotate({"ha.whm.io/failover-to": "n3", "ha.whm.io/request-id": "rbac"})
        cluster.wait_primary("n3", timeout=10)
    log = operator.log_text()
    assert "403" not in log and "Forbidden" not in log, log[-3000:]
