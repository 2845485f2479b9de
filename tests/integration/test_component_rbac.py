"""The operator and the shim run with exactly the RBAC the chart grants (real API only): a verb the code
needs but the chart lacks fails these tests. The rules come from manifests/base/whm-ha.yaml, which is the
chart rendered with its default values (a unit test keeps the two identical)."""

from __future__ import annotations

import copy
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.fixtures.control_plane import IDENTITIES, ControlPlane
from tests.fixtures.mariadb import StartServers
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.proxy_process import Cluster as ProxyCluster
from tests.fixtures.proxy_process import StartProxy
from tests.fixtures.shim_process import StartShim
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import BOUND, Cluster, three_nodes
from tests.integration.test_operator_replication import SERVER_ARGS, Replication, member_host
from tests.kube_helpers import wait_for

pytestmark = pytest.mark.real_api
RENDERED = Path(__file__).resolve().parents[2] / "manifests" / "base" / "whm-ha.yaml"


def chart_rbac(component: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The chart's ClusterRole and Role of one component (either may be absent)."""
    docs = [d for d in yaml.safe_load_all(RENDERED.read_text()) if d]
    name = f"whm-ha-{component}"
    cluster_role = next((d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name), None)
    role = next((d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == name), None)
    return cluster_role, role


def grant(plane: ControlPlane, component: str, namespace: str) -> None:
    """Bind the chart's rules of a component to its chart-<component> identity in the token file."""
    user = IDENTITIES[f"chart-{component}"][0]
    subject = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]
    cluster_role, role = chart_rbac(component)
    with plane.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        if cluster_role is not None:
            body = copy.deepcopy(cluster_role)
            body["metadata"] = {"name": f"{body['metadata']['name']}-{namespace}"}
            rbac.create_cluster_role(body)
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": body["metadata"]["name"]},
                    "subjects": subject,
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": body["metadata"]["name"],
                    },
                }
            )
        if role is not None:
            body = copy.deepcopy(role)
            body["metadata"] = {"name": body["metadata"]["name"], "namespace": namespace}
            rbac.create_namespaced_role(namespace, body)
            rbac.create_namespaced_role_binding(
                namespace,
                {
                    "metadata": {"name": body["metadata"]["name"]},
                    "subjects": subject,
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": body["metadata"]["name"],
                    },
                },
            )


@pytest.fixture
def admin(real_control_plane: ControlPlane) -> Any:
    with real_control_plane.api_client() as api:
        yield api


@pytest.fixture
def namespace(admin: client.ApiClient) -> str:
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": name}})
    return name


def test_operator_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    node_servers: StartNodes,
    operator_process: StartOperator,
) -> None:
    grant(real_control_plane, "operator", namespace)
    cluster = Cluster(admin, namespace)
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    operator = operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[0].kill()
    status = cluster.wait_primary("n2", timeout=BOUND + 10)
    assert status["lastFailover"]["type"] == "automatic"
    wait_for(lambda: cluster.events("Failover"), 10, "the Failover event")
    cluster.annotate({"ha.whm.io/failover-to": "n3", "ha.whm.io/request-id": "rbac"})
    cluster.wait_primary("n3", timeout=10)
    log = operator.log_text()
    assert "Forbidden" not in log, log[-3000:]


def test_replication_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    mariadb_servers: StartServers,
    operator_process: StartOperator,
) -> None:
    grant(real_control_plane, "operator", namespace)
    host = member_host("real")
    servers = mariadb_servers(2, extra_args=(*SERVER_ARGS, f"--bind-address=127.0.0.1,{host}"))
    replication = Replication(admin, namespace, servers, host)
    replication.create()
    operator = operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace)
    replication.wait(lambda s: s.get("phase") == "Healthy", 60, "a Healthy replication")
    core = client.CoreV1Api(admin)
    wait_for(lambda: core.read_namespaced_service("db-primary", namespace), 30, "the -primary Service")
    slices = client.DiscoveryV1Api(admin).list_namespaced_endpoint_slice(namespace).items
    assert slices, "EndpointSlices for the Services"
    log = operator.log_text()
    assert "Forbidden" not in log, log[-3000:]


def test_shim_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    node_servers: StartNodes,
    operator_process: StartOperator,
    shim_process: StartShim,
) -> None:
    grant(real_control_plane, "operator", namespace)
    grant(real_control_plane, "shim", namespace)
    cluster = Cluster(admin, namespace)
    cluster.create()
    three_nodes(cluster, node_servers)
    operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    shim = shim_process(
        real_control_plane.kubeconfigs["chart-shim"],
        namespace,
        "--cluster=whm",
        "--request-timeout=10",
        "--proxy-pods=app=proxy:1",
    )
    token = real_control_plane.tokens["admin"]
    calls = [
        ("GET", "/api/ha/status", None, 200),
        ("GET", "/api/ha/nodes", None, 200),
        ("POST", "/api/ha/nodes", {"hostname": "n9", "ip": "10.0.0.9"}, 201),
        ("DELETE", "/api/ha/nodes/n9", None, 200),
        ("POST", "/api/ha/failover", {"targetNodeId": "n2"}, 200),
        ("GET", "/api/ha/failover/history", None, 200),
        ("GET", "/api/ha/loadbalancer/stats", None, 200),
        ("POST", "/api/ha/loadbalancer/reload", None, 200),
    ]
    for method, path, body, expected in calls:
        status, answer = shim.call(method, path, token, body)
        assert status == expected, (method, path, answer)
    assert "Forbidden" not in shim.log_text() and "API trouble" not in shim.log_text(), shim.log_text()[-3000:]


def test_proxy_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    node_servers: StartNodes,
    proxy_process: StartProxy,
) -> None:
    grant(real_control_plane, "proxy", namespace)
    cluster = ProxyCluster(admin, namespace)
    cluster.create()
    (node,) = node_servers("n1")
    cluster.add_node("n1", node.host, node.port)
    proxy = proxy_process(real_control_plane.kubeconfigs["chart-proxy"], namespace)
    wait_for(lambda: proxy.routable() == ["n1"], 30, "the proxy to route to n1")
    with urllib.request.urlopen(proxy.url + "/", timeout=10) as response:
        assert response.headers["X-WHM-Node"] == "n1"
    assert "Forbidden" not in proxy.log_text(), proxy.log_text()[-3000:]
