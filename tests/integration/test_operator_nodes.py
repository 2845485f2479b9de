"""``whm-ha operator`` for WHMCluster/WHMNode, end to end: a real operator process, stand-in node servers on
loopback, and the Kubernetes API of either tier."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.fixtures.kube import KubeAPI
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.whm_nodes import NodeServer, StartNodes
from tests.kube_helpers import GROUP, VERSION, create_replication, wait_for
from whm_ha.db.dsn import DSN
from whm_ha.db.local_server import ADMIN_PASSWORD, LocalMariaDB, free_port
from whm_ha.db.migrate import migrate
from whm_ha.nodes.health import HEARTBEAT_SECONDS

FAST = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
BOUND = FAST["periodSeconds"] * FAST["failureThreshold"] + FAST["timeoutSeconds"]


class Cluster:
    """Helpers around one WHMCluster in one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str = "whm") -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    def create(self, **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WHMCluster",
            "metadata": {"name": self.name},
            "spec": {"healthCheck": FAST, "failover": {"minIntervalSeconds": 0}, **spec},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "whmclusters", body)

    def add(self, server: NodeServer, priority: int, **spec: Any) -> None:
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "whmnodes", server.manifest(self.namespace, self.name, priority, **spec)
        )

    def get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "whmclusters", self.name
        )
        return obj

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "whmnodes"
        )["items"]
        return items

    def node(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "whmnodes", name)
        return obj

    def patch_node(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, "whmnodes", name, {"spec": spec})

    def annotate(self, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "whmclusters", self.name, {"metadata": {"annotations": annotations}}
        )

    def wait_primary(self, name: str, timeout: float = 30) -> dict[str, Any]:
        status: dict[str, Any] = wait_for(
            lambda: (s := self.status()).get("primaryNode") == name and s, timeout, f"{name} to be primary"
        )
        return status

    def wait(self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> dict[str, Any]:
        status: dict[str, Any] = wait_for(lambda: (s := self.status()) and predicate(s) and s, timeout, what)
        return status

    def roles(self) -> dict[str, str | None]:
        return {n["metadata"]["name"]: (n.get("status") or {}).get("role") for n in self.nodes()}

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(self.namespace).items if e.reason == reason]


@pytest.fixture
def cluster(kube_client: client.ApiClient, kube_namespace: str) -> Cluster:
    return Cluster(kube_client, kube_namespace)


def start(cluster: Cluster, kube_api: KubeAPI, operator_process: StartOperator, **options: object) -> Any:
    return operator_process(kube_api.kubeconfig, cluster.namespace, **options)


def three_nodes(cluster: Cluster, node_servers: StartNodes) -> list[NodeServer]:
    servers = node_servers("n1", "n2", "n3")
    for server, priority in zip(servers, (100, 50, 10), strict=True):
        cluster.add(server, priority)
    return servers


def test_initial_election_status_and_roles(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    three_nodes(cluster, node_servers)
    operator = start(cluster, kube_api, operator_process)
    status = cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    assert status["primaryNode"] == "n1"
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5) as liveness:
        assert liveness.status == 200
    assert (status["totalNodes"], status["healthyNodes"], status["healthy"]) == (3, 3, "3/3")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "Degraded": "False",
        "FailoverInProgress": "False",
    }
    wait_for(lambda: cluster.roles() == {"n1": "Primary", "n2": "Secondary", "n3": "Secondary"}, 15, "roles")
    nodes = {n["metadata"]["name"]: n for n in cluster.nodes()}
    assert sorted(n["status"]["nodeId"] for n in nodes.values()) == [1, 2, 3]
    assert nodes["n1"]["metadata"]["labels"]["ha.whm.io/role"] == "primary"
    assert nodes["n2"]["metadata"]["labels"]["ha.whm.io/role"] == "secondary"
    assert nodes["n1"]["status"]["health"] == "Healthy"
    assert status.get("failoverHistory", []) == [], "the initial election is not a failover"


def test_at_steady_state_only_the_cluster_heartbeat_is_written(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    """Probes that change nothing write nothing: no node status is rewritten, and the cluster's lastProbeTime is
    the one heartbeat (every 30 s), so that API writes grow with clusters, not with nodes."""
    cluster.create()
    three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy" and s.get("lastProbeTime"), 30, "a Healthy cluster")
    wait_for(lambda: cluster.roles() == {"n1": "Primary", "n2": "Secondary", "n3": "Secondary"}, 15, "roles")
    nodes = {n["metadata"]["name"]: n["metadata"]["resourceVersion"] for n in cluster.nodes()}
    first = cluster.status()["lastProbeTime"]
    beat = cluster.wait(lambda s: s["lastProbeTime"] != first, HEARTBEAT_SECONDS + 10, "the next heartbeat")
    assert {n["metadata"]["name"]: n["metadata"]["resourceVersion"] for n in cluster.nodes()} == nodes
    assert beat["phase"] == "Healthy"


def test_automatic_failover_within_the_bound(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    killed = time.monotonic()
    servers[0].kill()
    status = cluster.wait_primary("n2", timeout=BOUND + 10)
    elapsed = time.monotonic() - killed
    assert elapsed < BOUND + 2, f"failover took {elapsed:.1f}s, bound {BOUND}s"
    last = status["lastFailover"]
    assert (last["from"], last["to"], last["type"]) == ("n1", "n2", "automatic")
    assert 0 < last["durationMs"] < (BOUND + 2) * 1000
    assert status["failoverHistory"][0] == last
    wait_for(lambda: cluster.roles()["n2"] == "Primary" and cluster.roles()["n1"] == "Secondary", 10, "roles")
    wait_for(lambda: cluster.events("Failover"), 10, "a Failover event")
    assert "n1 -> n2" in cluster.events("Failover")[0]


def test_manual_failover_eligible_and_refused(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    requested = time.monotonic()
    cluster.annotate({"ha.whm.io/failover-to": "n3", "ha.whm.io/request-id": "req-1"})
    status = cluster.wait_primary("n3", timeout=10)
    latency = time.monotonic() - requested
    assert latency < 3, f"manual failover took {latency:.2f}s"
    assert status["lastRequest"]["id"] == "req-1" and status["lastRequest"]["result"] == "Succeeded"
    assert status["lastFailover"]["type"] == "manual"
    wait_for(lambda: "ha.whm.io/failover-to" not in (cluster.get()["metadata"].get("annotations") or {}), 10, "removal")

    cluster.patch_node("n2", {"maintenance": True})
    servers[0].set_mode("unhealthy")
    for target, why in (("n2", "in maintenance"), ("n1", "health is Unhealthy"), ("nope", "not part of the cluster")):
        cluster.wait(lambda s, t=target: s.get("primaryNode") == "n3", 5, "n3 still primary")
        if target == "n1":
            wait_for(lambda: cluster.node("n1")["status"]["health"] == "Unhealthy", 10, "n1 Unhealthy")
        cluster.annotate({"ha.whm.io/failover-to": target, "ha.whm.io/request-id": f"refuse-{target}"})
        status = cluster.wait(
            lambda s, t=target: (s.get("lastRequest") or {}).get("id") == f"refuse-{t}", 10, f"refusal of {target}"
        )
        assert status["lastRequest"]["result"] == "Refused"
        assert why in status["lastRequest"]["reason"]
        assert status["primaryNode"] == "n3"
    wait_for(lambda: len(cluster.events("FailoverRefused")) >= 3, 10, "FailoverRefused events")


def test_anti_flapping_blocks_automatic_not_manual(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create(failover={"minIntervalSeconds": 3600})
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[0].kill()
    cluster.wait_primary("n2", timeout=BOUND + 10)
    servers[1].set_mode("unhealthy")
    status = cluster.wait(
        lambda s: "minIntervalSeconds" in {c["type"]: c for c in s.get("conditions", [])}["Degraded"]["message"],
        BOUND + 10,
        "the anti-flapping reason",
    )
    assert status["primaryNode"] == "n2" and status["phase"] == "Degraded"
    cluster.annotate({"ha.whm.io/failover-to": "n3"})
    status = cluster.wait_primary("n3", timeout=10)
    assert status["lastRequest"]["id"] == "failover:n3", "without a request id, one is derived from the target"


def test_no_candidate_keeps_the_primary_and_says_why(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    cluster.patch_node("n3", {"priority": 0})
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[1].set_mode("unhealthy")
    servers[0].kill()
    status = cluster.wait(
        lambda s: s.get("phase") == "Degraded" and "no node can take over" in s.get("reason", ""),
        BOUND + 10,
        "Degraded without a candidate",
    )
    assert status["primaryNode"] == "n1"
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "FailoverBlocked"
    assert "n2: health is Unhealthy" in degraded["message"]
    assert "n3: priority 0 (never primary)" in degraded["message"]
    servers[1].set_mode("healthy")
    cluster.wait_primary("n2", timeout=BOUND + 10)


def test_maintenance_hands_over_and_is_never_elected(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    cluster.patch_node("n1", {"maintenance": True})
    status = cluster.wait_primary("n2", timeout=10)
    assert "maintenance" in status["lastFailover"]["reason"]
    cluster.patch_node("n2", {"maintenance": True})
    cluster.wait_primary("n3", timeout=10)
    cluster.patch_node("n2", {"maintenance": False})
    cluster.patch_node("n1", {"maintenance": False})
    time.sleep(0)  # the next assertions wait on conditions
    wait_for(lambda: cluster.status().get("phase") == "Healthy", 15, "Healthy again")
    assert cluster.status()["primaryNode"] == "n3", "a healthy primary is kept (failback is off)"


def test_failback_returns_to_the_highest_priority(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create(failover={"minIntervalSeconds": 0, "failback": True})
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[0].set_mode("unhealthy")
    cluster.wait_primary("n2", timeout=BOUND + 10)
    servers[0].set_mode("healthy")
    status = cluster.wait_primary("n1", timeout=BOUND + 10)
    assert "failback" in status["lastFailover"]["reason"]


def test_nodes_join_and_leave_and_removing_the_primary_fails_over_first(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    n1, n2 = node_servers("n1", "n2")
    cluster.add(n1, 100)
    cluster.add(n2, 50)
    start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy" and s["totalNodes"] == 2, 30, "two healthy nodes")
    (n3,) = node_servers("n3")
    cluster.add(n3, 10)
    status = cluster.wait(lambda s: s.get("totalNodes") == 3 and s.get("healthyNodes") == 3, 15, "n3 to join")
    assert status["primaryNode"] == "n1"
    assert cluster.node("n3")["status"]["nodeId"] == 3
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "whmnodes", "n1")
    status = cluster.wait_primary("n2", timeout=10)
    assert "being deleted" in status["lastFailover"]["reason"]

    def gone() -> bool:
        try:
            cluster.node("n1")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, 15, "n1 to be removed once it is no longer primary")
    cluster.wait(lambda s: s.get("totalNodes") == 2, 10, "two nodes left")
    assert cluster.node("n3")["status"]["nodeId"] == 3, "ids are stable"


def test_operator_killed_mid_failover_rolls_forward(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    three_nodes(cluster, node_servers)
    first = start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    wait_for(lambda: cluster.roles()["n1"] == "Primary", 10, "n1 Primary")
    first.kill()
    # What a killed operator leaves behind after recording a manual switch to n2, before publishing roles:
    obj = cluster.get()
    record = {
        "time": "2026-01-01T00:00:00Z",
        "from": "n1",
        "to": "n2",
        "reason": "test",
        "type": "manual",
        "durationMs": 5,
    }
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        cluster.namespace,
        "whmclusters",
        cluster.name,
        {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": {
                "primaryNode": "n2",
                "phase": "FailingOver",
                "lastFailover": record,
                "failoverHistory": [record],
                "conditions": [
                    {
                        "type": "FailoverInProgress",
                        "status": "True",
                        "reason": "PrimaryChanging",
                        "message": "switching",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            },
        },
    )
    assert cluster.roles()["n1"] == "Primary", "roles not yet published"
    start(cluster, kube_api, operator_process)
    status = cluster.wait(
        lambda s: {c["type"]: c["status"] for c in s.get("conditions", [])}.get("FailoverInProgress") == "False",
        30,
        "the failover to be rolled forward",
    )
    assert status["primaryNode"] == "n2"
    assert len(status["failoverHistory"]) == 1, "no second failover"
    wait_for(lambda: cluster.roles() == {"n1": "Secondary", "n2": "Primary", "n3": "Secondary"}, 15, "roles")


def test_operator_restarted_during_an_outage_fails_over_once(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    first = start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[0].kill()
    first.kill()
    second = start(cluster, kube_api, operator_process)
    cluster.wait_primary("n2", timeout=30)
    second.kill()
    start(cluster, kube_api, operator_process)
    status = cluster.wait(lambda s: s.get("phase") == "Degraded", 30, "Degraded with n1 down")
    assert status["primaryNode"] == "n2"
    assert len(status["failoverHistory"]) == 1


@pytest.mark.parametrize("standalone", [False, True], ids=["peering", "both-active"])
def test_two_operators_never_make_two_primaries(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator, standalone: bool
) -> None:
    """With peering one replica acts; without it (both active) the resourceVersion of each decision keeps
    them from electing two primaries."""
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process, standalone=standalone)
    start(cluster, kube_api, operator_process, standalone=standalone)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    violations: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            roles = cluster.roles()
            primaries = [name for name, role in roles.items() if role == "Primary"]
            labelled = [
                n["metadata"]["name"]
                for n in cluster.nodes()
                if (n["metadata"].get("labels") or {}).get("ha.whm.io/role") == "primary"
            ]
            if len(primaries) > 1 or len(labelled) > 1:
                violations.append(f"{primaries} {labelled}")
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        servers[0].kill()
        cluster.wait_primary("n2", timeout=BOUND + 10)
        servers[1].kill()
        cluster.wait_primary("n3", timeout=BOUND + 10)
    finally:
        stop.set()
        sampler.join()
    assert violations == []
    history = cluster.status()["failoverHistory"]
    assert [(h["from"], h["to"]) for h in history] == [("n2", "n3"), ("n1", "n2")], "each failover once"


def test_pods_matching_the_selector_become_nodes(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    port = free_port()
    servers = [node_servers(f"pod-{i}", host=f"127.0.0.{i + 2}", port=port)[0] for i in range(2)]
    cluster.create(discovery={"podSelector": {"matchLabels": {"app": "whm"}}, "port": port})
    for index, server in enumerate(servers):
        pod = {
            "metadata": {"name": server.name, "labels": {"app": "whm"}},
            "spec": {"containers": [{"name": "whm", "image": "whm:demo"}]},
        }
        cluster.core.create_namespaced_pod(cluster.namespace, pod)
        cluster.core.patch_namespaced_pod_status(
            server.name, cluster.namespace, {"status": {"podIP": server.host, "podIPs": [{"ip": server.host}]}}
        )
        if index == 0:
            cluster.core.create_namespaced_pod(
                cluster.namespace, {**pod, "metadata": {"name": "other", "labels": {"app": "db"}}}
            )
    operator = start(cluster, kube_api, operator_process)
    status = cluster.wait(lambda s: s.get("phase") == "Healthy" and s.get("totalNodes") == 2, 30, "two pod nodes")
    nodes = {n["metadata"]["name"]: n for n in cluster.nodes()}
    assert set(nodes) == {"whm-pod-0", "whm-pod-1"}
    node = nodes["whm-pod-0"]
    assert node["spec"]["podRef"]["name"] == "pod-0" and node["spec"]["address"] == "127.0.0.2"
    assert node["metadata"]["ownerReferences"][0]["kind"] == "WHMCluster"
    primary_pod = nodes[status["primaryNode"]]["spec"]["podRef"]["name"]
    wait_for(
        lambda: (
            (cluster.core.read_namespaced_pod(primary_pod, cluster.namespace).metadata.labels or {}).get(
                "ha.whm.io/role"
            )
            == "primary"
        ),
        10,
        "the role label on the primary pod",
    )
    other = "pod-1" if primary_pod == "pod-0" else "pod-0"
    assert cluster.core.read_namespaced_pod(other, cluster.namespace).metadata.labels["ha.whm.io/role"] == "secondary"
    cluster.core.delete_namespaced_pod(primary_pod, cluster.namespace, grace_period_seconds=0)
    status = cluster.wait(lambda s: s.get("totalNodes") == 1, 30, "the node of the deleted pod to go")
    assert status["primaryNode"] == f"whm-{other}"
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert f'whm_ha_probes_total{{cluster="whm",namespace="{cluster.namespace}",result="success"}}' in metrics
    assert "whm_ha_failovers_total" in metrics and "whm_ha_healthy_nodes" in metrics
    # The node of the deleted pod took its primary-node series with it.
    assert f'node="whm-{other}"' in metrics and f'node="whm-{primary_pod}"' not in metrics


@pytest.mark.mariadb
def test_legacy_tables_are_filled(
    cluster: Cluster,
    kube_api: KubeAPI,
    node_servers: StartNodes,
    operator_process: StartOperator,
    mariadb: LocalMariaDB,
) -> None:
    cluster.core.create_namespaced_secret(
        cluster.namespace,
        {
            "metadata": {"name": "db-admin"},
            "type": "kubernetes.io/basic-auth",
            "stringData": {"username": "root", "password": ADMIN_PASSWORD},
        },
    )
    members = [{"name": "db-0", "host": "127.0.0.1", "port": mariadb.port}]
    create_replication(
        cluster.custom,
        cluster.namespace,
        members,
        credentials="db-admin",
        replication="db-admin",
        schemas=("whm_legacy",),
    )
    cluster.create(database={"replicationRef": {"name": "db"}, "schemaName": "whm_legacy"})
    servers = three_nodes(cluster, node_servers)
    migrate(DSN("127.0.0.1", mariadb.port, "root", "whm_legacy", ADMIN_PASSWORD))
    conn = mariadb.connect(database="whm_legacy")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ha_sessions (session_hash, user_id, data, expires_at) VALUES"
            " (REPEAT('a', 64), 'u', '{}', NOW(3) - INTERVAL 1 HOUR), (REPEAT('b', 64), 'u', '{}', NOW(3) + INTERVAL 1 HOUR)"
        )
        cur.execute("INSERT INTO ha_cache (cache_key, value, expires_at) VALUES ('old', 'x', NOW(3) - INTERVAL 1 HOUR)")
    conn.close()
    operator = start(cluster, kube_api, operator_process)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    servers[0].kill()
    cluster.wait_primary("n2", timeout=BOUND + 10)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        conn = mariadb.connect(database="whm_legacy")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    wait_for(lambda: rows("SELECT COUNT(*) FROM ha_failover_events")[0][0] == 1, 15, "the failover row")
    event = rows("SELECT from_node, to_node, failover_type, scope, duration_ms FROM ha_failover_events")[0]
    assert event[:4] == ("n1", "n2", "automatic", "node") and event[4] > 0
    registry = wait_for(
        lambda: (
            (r := rows("SELECT node_name, node_id, role, status FROM whm_cluster_nodes ORDER BY node_name"))
            and r[0][3] == "unhealthy"
            and r
        ),
        15,
        "the node registry",
    )
    assert [(r[0], r[1], r[2]) for r in registry] == [
        ("n1", 1, "secondary"),
        ("n2", 2, "primary"),
        ("n3", 3, "secondary"),
    ]
    # A round writes the registry before its probe results, and rounds that found no database primary yet kept
    # theirs for later: wait for the batch rather than read it once.
    checks = wait_for(
        lambda: (
            (
                c := rows(
                    "SELECT node_name, SUM(healthy), COUNT(*) FROM ha_health_checks GROUP BY node_name ORDER BY node_name"
                )
            )
            and [r[0] for r in c] == ["n1", "n2", "n3"]
            and c
        ),
        15,
        "the probe results of all three nodes",
    )
    assert all(c[2] >= 2 for c in checks) and checks[0][1] < checks[0][2], "n1 has failed checks"
    # The first cleanup runs at the first probe round that finds the database's primary (retried until then).
    wait_for(
        lambda: rows("SELECT COUNT(*) FROM ha_sessions") == [(1,)] and rows("SELECT COUNT(*) FROM ha_cache") == [(0,)],
        15,
        "the expired session and cache rows deleted",
    )
    assert (
        '"event": "expired-rows-deleted"' in operator.log_text() and '"sessions": 1, "cache": 1' in operator.log_text()
    )


def test_the_standby_operator_takes_over_when_the_active_one_dies(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    cluster.create()
    servers = three_nodes(cluster, node_servers)
    active = start(cluster, kube_api, operator_process, priority=20)
    standby = start(cluster, kube_api, operator_process, priority=10)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    active.kill()
    servers[0].kill()
    status = cluster.wait_primary("n2", timeout=30)
    assert len(status["failoverHistory"]) == 1
    # The process logs the change just after writing it (and its Event): wait for the line, then check who acted.
    changed = '"event": "primary-changed"'
    wait_for(lambda: '"to": "n2"' in standby.log_text().split(changed, 2)[-1], 10, "the standby's log line")
    assert '"to": "n2"' not in active.log_text(), "the killed operator did not act"


def test_failback_honours_the_interval_and_never_delays_the_next_failover(
    cluster: Cluster, kube_api: KubeAPI, node_servers: StartNodes, operator_process: StartOperator
) -> None:
    """The reproduced case: n1 dies (failover to n2), comes back at once, dies again right after the failback."""
    interval = 6
    cluster.create(failover={"failback": True, "minIntervalSeconds": interval})
    servers = three_nodes(cluster, node_servers)
    start(cluster, kube_api, operator_process)
    cluster.wait_primary("n1")
    servers[0].kill()
    failed_over = time.monotonic()
    cluster.wait_primary("n2", timeout=BOUND + 5)
    servers[0].start()
    status = cluster.wait_primary("n1", timeout=interval + BOUND + 10)
    assert time.monotonic() - failed_over >= interval - 1, "the failback waited for minIntervalSeconds"
    assert [h["type"] for h in status["failoverHistory"][:2]] == ["failback", "automatic"]
    servers[0].kill()
    killed = time.monotonic()
    cluster.wait_primary("n2", timeout=BOUND + 5)
    took = time.monotonic() - killed
    assert took <= BOUND + 1, f"the failback delayed the failover: {took:.1f}s, bound {BOUND}s"
