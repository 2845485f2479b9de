"""The operator and the shim run with exactly the RBAC the chart grants (real API only): a verb the code
needs but the chart lacks fails these tests. The rules come from manifests/base/whm-ha.yaml, which is the
chart rendered with its default values (a unit test keeps the two identical)."""

from __future__ import annotations

import copy
import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import trustme
import yaml
from kubernetes import client

from tests.fixtures.control_plane import IDENTITIES, ControlPlane
from tests.fixtures.kubelet import IMAGE, Kubelet
from tests.fixtures.mariadb import StartServers
from tests.fixtures.node_certs import NodeCA
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.proxy_process import Cluster as ProxyCluster
from tests.fixtures.proxy_process import StartProxy
from tests.fixtures.shim_process import StartShim
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import BOUND, Cluster, three_nodes
from tests.integration.test_operator_replication import SERVER_ARGS, Replication, member_host
from tests.kube_helpers import create_replication, wait_for
from tests.tls_helpers import client_context, tls_secret
from whm_ha.db.local_server import free_port

pytestmark = pytest.mark.real_api
CHART = Path(__file__).resolve().parents[2] / "charts" / "whm-ha"


def chart_rbac(component: str, namespace: str = "rbac-check") -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The chart's ClusterRole and Role of one component, rendered in single-namespace mode for ``namespace``
    (the components run namespaced in these tests, as the chart then runs them)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render({"watchNamespace": namespace}, name="whm-ha", namespace=namespace)
    docs = [d for name, text in files.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    name = f"whm-ha-{component}"
    cluster_role = next((d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name), None)
    role = next((d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == name), None)
    return cluster_role, role


def grant(plane: ControlPlane, component: str, namespace: str) -> None:
    """Bind the chart's rules of a component to its chart-<component> identity in the token file."""
    user = IDENTITIES[f"chart-{component}"][0]
    subject = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]
    cluster_role, role = chart_rbac(component, namespace)
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
    # Pod discovery: a matching pod becomes a WHMNode, and goes with its pod.
    port = free_port()
    (pod_node,) = node_servers("pod-node", host="127.0.0.5", port=port)
    discovered = Cluster(admin, namespace, "disc")
    discovered.create(discovery={"podSelector": {"matchLabels": {"app": "whm-disc"}}, "port": port})
    core = client.CoreV1Api(admin)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "pod-node", "labels": {"app": "whm-disc"}},
            "spec": {"containers": [{"name": "whm", "image": "whm:demo"}]},
        },
    )
    core.patch_namespaced_pod_status(
        "pod-node", namespace, {"status": {"podIP": pod_node.host, "podIPs": [{"ip": pod_node.host}]}}
    )
    discovered.wait(lambda s: s.get("phase") == "Healthy", 30, "the discovered node to serve")
    core.delete_namespaced_pod("pod-node", namespace, grace_period_seconds=0)
    discovered.wait(lambda s: s.get("totalNodes") == 0, 30, "the node of the deleted pod to go")
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
    client.CustomObjectsApi(admin).patch_namespaced_custom_object(
        "ha.whm.io",
        "v1alpha1",
        namespace,
        "mysqlreplications",
        "db",
        {"metadata": {"annotations": {"ha.whm.io/promote": "m1", "ha.whm.io/request-id": "rbac"}}},
    )
    replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 60, "m1 promoted")

    def primary_points_at_m1() -> bool:
        for piece in client.DiscoveryV1Api(admin).list_namespaced_endpoint_slice(namespace).items:
            if piece.metadata.labels.get("kubernetes.io/service-name") == "db-primary":
                return any(str(servers[1].port) == str(p.port) for p in piece.ports or [])
        return False

    wait_for(primary_points_at_m1, 30, "the -primary EndpointSlice to follow the promotion")
    log = operator.log_text()
    assert "Forbidden" not in log, log[-3000:]


def backed_up_replication(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    mariadb_servers: StartServers,
    tmp_path: Path,
    **backup: Any,
) -> Replication:
    """The chart's operator grants in ``namespace``, and a replication of two servers backing up to a directory
    with ``backup``'s settings."""
    grant(real_control_plane, "operator", namespace)
    host = member_host("real")
    servers = mariadb_servers(2, extra_args=(*SERVER_ARGS, f"--bind-address=127.0.0.1,{host}"))
    replication = Replication(admin, namespace, servers, host)
    replication.create(backup={"storage": {"filesystem": {"path": str(tmp_path / "backups")}}, **backup})
    return replication


def test_backups_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    mariadb_servers: StartServers,
    operator_process: StartOperator,
    tmp_path: Path,
) -> None:
    """A schedule of every minute with retention down to one: the operator creates a scheduled MySQLBackup, takes
    it (its status), and deletes the older scheduled one (retention)."""
    replication = backed_up_replication(
        real_control_plane, admin, namespace, mariadb_servers, tmp_path, schedule="* * * * *", retention={"keep": 1}
    )
    operator = operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace)
    replication.wait(lambda s: s.get("phase") == "Healthy", 60, "a Healthy replication")
    replication.create_app()
    custom = client.CustomObjectsApi(admin)
    earlier = {
        "apiVersion": "ha.whm.io/v1alpha1",
        "kind": "MySQLBackup",
        "metadata": {
            "name": "db-20261201031500",
            "labels": {"ha.whm.io/replication": "db", "ha.whm.io/scheduled": "true"},
            "annotations": {"ha.whm.io/scheduled-for": "2026-12-01T03:15:00Z"},
        },
        "spec": {"replication": "db"},
    }
    custom.create_namespaced_custom_object("ha.whm.io", "v1alpha1", namespace, "mysqlbackups", earlier)

    def names() -> set[str]:
        listed = custom.list_namespaced_custom_object("ha.whm.io", "v1alpha1", namespace, "mysqlbackups")
        return {item["metadata"]["name"] for item in listed["items"]}

    scheduled = wait_for(lambda: names() - {"db-20261201031500"}, 75, "a scheduled backup")
    wait_for(lambda: names() == scheduled, 60, "retention to delete the earlier scheduled backup")
    log = operator.log_text()
    assert "Forbidden" not in log, log[-3000:]


def test_backup_jobs_and_the_archiver_deployment_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    mariadb_servers: StartServers,
    operator_process: StartOperator,
    tmp_path: Path,
) -> None:
    """With --backup-runner=job: the archiver Deployment made, a try's Job and task Secret made, its failure read
    from its pod, its Secret deleted, the backup Failed; the archive disabled, the Deployment deleted."""
    replication = backed_up_replication(
        real_control_plane, admin, namespace, mariadb_servers, tmp_path, archive={"enabled": True}
    )
    args = ("--backup-runner=job", f"--backup-image={IMAGE}", "--archiver-service-account=whm-ha-binlog-archive")
    operator = operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace, args=args)
    replication.wait(lambda s: s.get("phase") == "Healthy", 60, "a Healthy replication")
    apps = client.AppsV1Api(admin)

    def archivers() -> set[str]:
        return {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}

    wait_for(lambda: archivers() == {"db-binlog-archive"}, 30, "the archiver Deployment")
    custom = client.CustomObjectsApi(admin)
    backup = {"apiVersion": "ha.whm.io/v1alpha1", "kind": "MySQLBackup", "metadata": {"name": "once"}}
    backup["spec"] = {"replication": "db", "attempts": 1}
    custom.create_namespaced_custom_object("ha.whm.io", "v1alpha1", namespace, "mysqlbackups", backup)
    kubelet = Kubelet(admin, namespace)
    kubelet.job("once-try-1")
    kubelet.fail("once-try-1", "m1: mariadb-dump failed (2): refused")

    def failed() -> bool:
        obj = custom.get_namespaced_custom_object("ha.whm.io", "v1alpha1", namespace, "mysqlbackups", "once")
        return bool((obj.get("status") or {}).get("phase") == "Failed")

    wait_for(failed, 30, "the backup Failed")
    core = client.CoreV1Api(admin)
    assert "once-try-1" not in {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
    replication.custom.patch_namespaced_custom_object(
        "ha.whm.io", "v1alpha1", namespace, "mysqlreplications", "db", {"spec": {"backup": {"archive": None}}}
    )
    wait_for(lambda: not archivers(), 30, "the archiver Deployment deleted")
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
    cluster.create(database={"replicationRef": {"name": "db"}})
    three_nodes(cluster, node_servers)
    client.CoreV1Api(admin).create_namespaced_secret(
        namespace, {"metadata": {"name": "db-admin"}, "stringData": {"username": "root", "password": "x"}}
    )
    members = [{"name": f"m{i}", "host": "127.0.0.1", "port": free_port()} for i in range(2)]
    create_replication(
        client.CustomObjectsApi(admin), namespace, members, credentials="db-admin", replication="db-admin"
    )
    operator_process(real_control_plane.kubeconfigs["chart-operator"], namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    ca = trustme.CA()
    client.CoreV1Api(admin).create_namespaced_secret(namespace, tls_secret("shim-tls", ca.issue_cert("shim.example")))
    tls_port = free_port()
    shim = shim_process(
        real_control_plane.kubeconfigs["chart-shim"],
        namespace,
        "--request-timeout=3",
        "--proxy-pods=app=proxy:1",
        f"--listen-tls=127.0.0.1:{tls_port}",
        "--tls-secret=shim-tls",
    )
    wait_for(
        lambda: "TLS certificate from Secret" in shim.log_text(), 10, "the shim to load its certificate from its Secret"
    )
    assert "serving shim.example" in shim.log_text(), shim.log_text()[-3000:]
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
        ("GET", "/api/ha/database/replication", None, 200),
        ("POST", "/api/ha/database/promote", {"slaveHost": "m1"}, None),  # whatever the operator answers
        ("GET", "/api/ha/sessions/stats", None, 503),  # the Secret is read; no database listens
    ]
    for method, path, body, expected in calls:
        status, answer = shim.call(method, path, token, body)
        assert status == expected or (expected is None and status != 403), (method, path, answer)
    assert "Forbidden" not in shim.log_text() and "API trouble" not in shim.log_text(), shim.log_text()[-3000:]


def test_proxy_with_only_the_chart_rbac(
    real_control_plane: ControlPlane,
    admin: client.ApiClient,
    namespace: str,
    node_servers: StartNodes,
    node_ca: NodeCA,
    proxy_process: StartProxy,
) -> None:
    """With nodeTLS on and an HTTPS listener: the proxy reads and watches the CA Secret, and the namespace's
    Secrets for its certificates."""
    grant(real_control_plane, "proxy", namespace)
    client.CoreV1Api(admin).create_namespaced_secret(namespace, node_ca.secret("node-ca"))
    cluster = ProxyCluster(admin, namespace)
    cluster.create(tls={"certificates": [{"secretName": "web"}]})
    cluster.patch({"spec": {"nodeTLS": {"enabled": True, "caSecret": {"name": "node-ca"}}}})
    (node,) = node_servers("n1", tls=node_ca.issue("127.0.0.1"))
    cluster.add_node("n1", node.host, node.port)
    ca = trustme.CA()
    client.CoreV1Api(admin).create_namespaced_secret(namespace, tls_secret("web", ca.issue_cert("panel.example")))
    proxy = proxy_process(real_control_plane.kubeconfigs["chart-proxy"], namespace, tls_port=free_port())
    wait_for(lambda: proxy.routable() == ["n1"], 30, "the proxy to route to n1")
    with urllib.request.urlopen(proxy.url + "/", timeout=10) as response:
        assert response.headers["X-WHM-Node"] == "n1"
    with urllib.request.urlopen(
        f"https://127.0.0.1:{proxy.tls_port}/", timeout=10, context=client_context(ca, check_hostname=False)
    ) as response:
        assert response.headers["X-WHM-Node"] == "n1", "the certificate came from the Secret the proxy watches"
    assert "Forbidden" not in proxy.log_text(), proxy.log_text()[-3000:]


# Grants the code needs on paths these tests do not take, each with the path.
NOT_EXERCISED = {
    "operator": {
        ("", "services", "delete"): "a Service of a member address type that no longer exists is removed",
        ("discovery.k8s.io", "endpointslices", "delete"): "stale EndpointSlices are removed after a change",
        ("", "services", "patch"): "a Service is updated when someone has changed it",
        ("discovery.k8s.io", "endpointslices", "patch"): "a slice is updated in place when its port stays the same",
        ("", "secrets", "patch"): "a try's task Secret left by an operator that stopped before creating its Job",
        ("apps", "deployments", "patch"): "an archiver Deployment is replaced when its spec changes (a new image)",
    },
    "shim": {},
    "proxy": {},
}


def _granted(component: str) -> set[tuple[str, str, str]]:
    grants = set()
    for doc in chart_rbac(component):
        for rule in (doc or {}).get("rules", []):
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants |= {(group, resource, verb) for verb in rule["verbs"]}
    return grants


def _used(audit_log: Path, user: str) -> set[tuple[str, str, str]]:
    used = set()
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if event.get("user", {}).get("username") != user or not ref.get("resource"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


@pytest.mark.parametrize("component", ["operator", "shim", "proxy"])
def test_chart_grants_only_what_the_code_uses(real_control_plane: ControlPlane, component: str) -> None:
    """Runs after the tests above (file order): every grant of the chart was used by them, or is listed with
    the path that needs it. With the tests above proving the grants suffice, the RBAC is exactly the code's."""
    used = _used(real_control_plane.audit_log, IDENTITIES[f"chart-{component}"][0])
    assert used, "the component tests above must run first"
    unused = _granted(component) - used - set(NOT_EXERCISED[component])
    assert unused == set(), f"{component}: granted but never used: {sorted(unused)}"
