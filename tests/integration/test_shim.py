"""The legacy /api/ha endpoints over the custom resources: shapes, auth, audit, and the request protocol."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.operator_process import StartOperator
from tests.fixtures.shim_process import ShimProcess, StartShim
from tests.fixtures.whm_nodes import StartNodes
from tests.integration.test_operator_nodes import Cluster, three_nodes
from tests.kube_helpers import GROUP, VERSION, create_application_account, create_replication, wait_for
from whm_ha.db.dsn import DSN
from whm_ha.db.local_server import ADMIN_PASSWORD, LocalMariaDB
from whm_ha.db.migrate import migrate


@pytest.fixture
def world(kube_client: client.ApiClient, kube_namespace: str) -> client.CustomObjectsApi:
    """A cluster of three nodes with statuses as the operator would write them, and a replication."""
    custom = client.CustomObjectsApi(kube_client)
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        kube_namespace,
        "whmclusters",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WHMCluster",
            "metadata": {"name": "whm"},
            "spec": {"database": {"replicationRef": {"name": "db"}}},
        },
    )
    for index, (name, role, health) in enumerate(
        (("n1", "Primary", "Healthy"), ("n2", "Secondary", "Healthy"), ("n3", "Secondary", "Unhealthy")), start=1
    ):
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            kube_namespace,
            "whmnodes",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "WHMNode",
                "metadata": {"name": name},
                "spec": {
                    "cluster": "whm",
                    "hostname": f"{name}.example.com",
                    "address": f"10.0.0.{index}",
                    "priority": 100 - index,
                },
            },
        )
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            kube_namespace,
            "whmnodes",
            name,
            {"status": {"role": role, "health": health, "nodeId": index}},
        )
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        kube_namespace,
        "whmclusters",
        "whm",
        {
            "status": {
                "primaryNode": "n1",
                "totalNodes": 3,
                "healthyNodes": 2,
                "phase": "Degraded",
                "failoverHistory": [
                    {
                        "time": "2026-11-26T10:00:00Z",
                        "from": "n2",
                        "to": "n1",
                        "reason": "test",
                        "type": "manual",
                        "durationMs": 12,
                    }
                ],
            }
        },
    )
    return custom


@pytest.fixture
def shim(
    world: client.CustomObjectsApi, kube_api: KubeAPI, kube_namespace: str, shim_process: StartShim
) -> ShimProcess:
    return shim_process(kube_api.kubeconfig, kube_namespace, "--cluster=whm", "--request-timeout=3")


def add_replication(custom: client.CustomObjectsApi, namespace: str, core: client.CoreV1Api, port: int = 3306) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "db-admin"}, "stringData": {"username": "root", "password": ADMIN_PASSWORD}}
    )
    members = [{"name": "db-0", "host": "127.0.0.1", "port": port}, {"name": "db-1", "host": "127.0.0.2", "port": port}]
    create_replication(custom, namespace, members, credentials="db-admin", replication="db-admin")
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "mysqlreplications",
        "db",
        {
            "status": {
                "currentPrimary": "db-0",
                "phase": "Healthy",
                "members": [
                    {"name": "db-0", "role": "Primary", "reachable": True, "readOnly": False},
                    {
                        "name": "db-1",
                        "role": "Replica",
                        "reachable": True,
                        "readOnly": True,
                        "ioRunning": True,
                        "sqlRunning": True,
                        "lagSeconds": 0,
                    },
                ],
            }
        },
    )


class Responder:
    """Plays the operator's part of the request protocol: answers request annotations in status.lastRequest."""

    def __init__(
        self,
        custom: client.CustomObjectsApi,
        namespace: str,
        plural: str,
        name: str,
        annotation: str,
        result: str,
        delay: float = 0.0,
    ) -> None:
        self.args = (custom, namespace, plural, name, annotation, result, delay)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        custom, namespace, plural, name, annotation, result, delay = self.args
        while not self.stop.is_set():
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            annotations = obj["metadata"].get("annotations") or {}
            if annotations.get(annotation):
                time.sleep(delay)  # the operator takes a while: a concurrent request sees this one pending
                outcome = {
                    "id": annotations["ha.whm.io/request-id"],
                    "type": "failover" if plural == "whmclusters" else "promote",
                    "target": annotations[annotation],
                    "result": result,
                    "reason": f"test says {result}",
                    "time": "2026-11-26T10:00:00Z",
                }
                custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": {"lastRequest": outcome}}
                )
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    plural,
                    name,
                    {"metadata": {"annotations": {annotation: None, "ha.whm.io/request-id": None}}},
                )
            time.sleep(0.05)

    def __enter__(self) -> Responder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def test_status_and_nodes_in_legacy_shapes(shim: ShimProcess, kube_api: KubeAPI) -> None:
    status, body = shim.call("GET", "/api/ha/status", kube_api.tokens["reader"])
    assert status == 200 and body["success"] is True
    assert body["cluster"]["totalNodes"] == 3 and body["cluster"]["healthyNodes"] == 2
    assert body["cluster"]["primaryNode"] == {"id": 1, "hostname": "n1.example.com", "status": "healthy"}
    assert body["database"] is None, "the replication does not exist yet"
    status, body = shim.call("GET", "/api/ha/nodes", kube_api.tokens["reader"])
    assert status == 200
    first = body["nodes"][0]
    assert {k: first[k] for k in ("id", "name", "hostname", "ip", "port", "priority", "role", "status")} == {
        "id": 1,
        "name": "n1",
        "hostname": "n1.example.com",
        "ip": "10.0.0.1",
        "port": 4000,
        "priority": 99,
        "role": "primary",
        "status": "healthy",
    }
    assert [n["status"] for n in body["nodes"]] == ["healthy", "healthy", "unhealthy"]
    status, body = shim.call("GET", "/api/ha/failover/history", kube_api.tokens["reader"])
    assert body["history"][0]["to"] == "n1"


@pytest.mark.parametrize(
    ("token", "method", "path", "expected"),
    [
        (None, "GET", "/api/ha/status", 401),
        ("wrong-token", "GET", "/api/ha/status", 401),
        ("reader", "GET", "/api/ha/nodes", 200),
        ("reader", "POST", "/api/ha/nodes", 403),
        ("reader", "DELETE", "/api/ha/nodes/n2", 403),
        ("reader", "POST", "/api/ha/failover", 403),
        ("reader", "POST", "/api/ha/loadbalancer/reload", 403),
        ("admin", "DELETE", "/api/ha/nodes/n3", 200),
    ],
)
def test_auth_matrix(
    shim: ShimProcess, kube_api: KubeAPI, token: str | None, method: str, path: str, expected: int
) -> None:
    bearer = kube_api.tokens.get(token or "", token)
    body = {"hostname": "n9", "ip": "10.0.0.9"} if method == "POST" else None
    status, answer = shim.call(method, path, bearer, body)
    assert status == expected, answer
    if expected >= 400:
        assert answer["success"] is False and answer["error"]["code"] and answer["error"]["message"]


def test_add_and_remove_nodes(
    shim: ShimProcess, kube_api: KubeAPI, world: client.CustomObjectsApi, kube_namespace: str
) -> None:
    admin = kube_api.tokens["admin"]
    status, body = shim.call(
        "POST",
        "/api/ha/nodes",
        admin,
        {"hostname": "whm-node-4.example.com", "ip": "10.0.0.4", "port": 4000, "priority": 10},
    )
    assert status == 201 and body["node"]["name"] == "whm-node-4"
    # No operator runs here, so the node has no id yet: none is made up, and the answer says when it comes.
    assert "id" not in body["node"] and "GET /api/ha/nodes shows its id" in body["message"]
    node = world.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes", "whm-node-4")
    assert node["spec"] == {
        "cluster": "whm",
        "hostname": "whm-node-4.example.com",
        "address": "10.0.0.4",
        "port": 4000,
        "priority": 10,
        "weight": 1,
        "maintenance": False,
    }
    status, body = shim.call("POST", "/api/ha/nodes", admin, {"hostname": "whm-node-4.example.com", "ip": "10.0.0.5"})
    assert status == 409 and body["error"]["code"] == "DUPLICATE_NODE"
    status, body = shim.call("POST", "/api/ha/nodes", admin, {"hostname": "x", "port": 70000, "priority": -1})
    assert status == 422
    assert set(body["error"]["fields"]) == {"ip", "port", "priority"}
    status, body = shim.call("POST", "/api/ha/nodes", admin, raw=b"{not json")
    assert status == 400
    assert shim.call("DELETE", "/api/ha/nodes/2", admin)[0] == 200, "by numeric id"
    assert shim.call("DELETE", "/api/ha/nodes/whm-node-4", admin)[0] == 200, "by name"
    assert shim.call("DELETE", "/api/ha/nodes/nope", admin)[0] == 404
    names = {
        n["metadata"]["name"]
        for n in world.list_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmnodes")["items"]
    }
    assert names == {"n1", "n3"}


def test_failover_waits_for_the_operator(
    shim: ShimProcess, kube_api: KubeAPI, world: client.CustomObjectsApi, kube_namespace: str
) -> None:
    admin = kube_api.tokens["admin"]
    with Responder(world, kube_namespace, "whmclusters", "whm", "ha.whm.io/failover-to", "Succeeded"):
        status, body = shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": 2})
    assert status == 200 and body["primaryNode"] == "n2" and body["result"]["result"] == "Succeeded"
    with Responder(world, kube_namespace, "whmclusters", "whm", "ha.whm.io/failover-to", "Refused"):
        status, body = shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": "n3"})
    assert status == 422 and body["error"]["code"] == "REFUSED" and "test says Refused" in body["error"]["message"]
    status, body = shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": "n2"})
    assert status == 504 and body["error"]["requestId"], "no operator answered"
    status, body = shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": "n2"})
    assert status == 409 and body["error"]["code"] == "IN_PROGRESS", "the unanswered request is still pending"
    assert shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": 99})[0] == 404
    assert shim.call("POST", "/api/ha/failover", admin, {"target": "n2"})[0] == 422


def test_two_concurrent_failovers_one_wins_one_409(
    shim: ShimProcess, kube_api: KubeAPI, world: client.CustomObjectsApi, kube_namespace: str
) -> None:
    admin = kube_api.tokens["admin"]
    results: list[tuple[int, Any]] = []
    with Responder(world, kube_namespace, "whmclusters", "whm", "ha.whm.io/failover-to", "Succeeded", delay=1.0):
        threads = [
            threading.Thread(
                target=lambda t=t: results.append(shim.call("POST", "/api/ha/failover", admin, {"targetNodeId": t}))
            )
            for t in ("n2", "n1")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(status for status, _ in results) == [200, 409], results


def test_reload_and_audit(
    shim: ShimProcess,
    kube_api: KubeAPI,
    world: client.CustomObjectsApi,
    kube_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    status, body = shim.call("POST", "/api/ha/loadbalancer/reload", kube_api.tokens["admin"])
    assert status == 200
    cluster = world.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, "whmclusters", "whm")
    assert cluster["metadata"]["annotations"]["ha.whm.io/reload"] == body["reload"]
    wait_for(lambda: '"action": "POST /api/ha/loadbalancer/reload"' in shim.log_text(), 10, "the audit line")
    line = next(ln for ln in shim.log_text().splitlines() if "loadbalancer/reload" in ln)
    assert '"user": "admin"' in line and '"result": "200"' in line
    events = client.CoreV1Api(kube_client).list_namespaced_event(kube_namespace).items
    assert any(e.reason == "LegacyAPI" and "admin: POST /api/ha/loadbalancer/reload" in e.message for e in events)


def test_database_replication_and_promote(
    shim: ShimProcess,
    kube_api: KubeAPI,
    world: client.CustomObjectsApi,
    kube_client: client.ApiClient,
    kube_namespace: str,
) -> None:
    add_replication(world, kube_namespace, client.CoreV1Api(kube_client))
    status, body = shim.call("GET", "/api/ha/database/replication", kube_api.tokens["reader"])
    assert status == 200 and body["master"] == "127.0.0.1"
    assert body["slaves"] == [
        {
            "name": "db-1",
            "host": "127.0.0.2",
            "role": "replica",
            "reachable": True,
            "ioRunning": True,
            "sqlRunning": True,
            "lagSeconds": 0,
        }
    ]
    status, body = shim.call("GET", "/api/ha/status", kube_api.tokens["reader"])
    assert body["database"]["master"] == "127.0.0.1"
    with Responder(world, kube_namespace, "mysqlreplications", "db", "ha.whm.io/promote", "Succeeded"):
        status, body = shim.call(
            "POST", "/api/ha/database/promote", kube_api.tokens["admin"], {"slaveHost": "127.0.0.2"}
        )
    assert status == 200 and body["masterMember"] == "db-1"
    assert shim.call("POST", "/api/ha/database/promote", kube_api.tokens["admin"], {"slaveHost": "10.9.9.9"})[0] == 404


@pytest.mark.mariadb
def test_sessions_stats_and_cleanup(
    shim: ShimProcess,
    kube_api: KubeAPI,
    world: client.CustomObjectsApi,
    kube_client: client.ApiClient,
    kube_namespace: str,
    mariadb: LocalMariaDB,
) -> None:
    core = client.CoreV1Api(kube_client)
    add_replication(world, kube_namespace, core, port=mariadb.port)
    create_application_account(core, kube_namespace, mariadb)
    migrate(DSN("127.0.0.1", mariadb.port, "root", "whm_ha", ADMIN_PASSWORD))
    conn = mariadb.connect(database="whm_ha")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ha_sessions (session_hash, user_id, data, expires_at) VALUES"
            " (REPEAT('a', 64), 'u1', '{}', NOW(3) - INTERVAL 1 MINUTE),"
            " (REPEAT('b', 64), 'u1', '{}', NOW(3) + INTERVAL 1 HOUR),"
            " (REPEAT('c', 64), 'u2', '{}', NOW(3) + INTERVAL 1 HOUR)"
        )
    conn.close()
    status, body = shim.call("GET", "/api/ha/sessions/stats", kube_api.tokens["reader"])
    assert status == 200 and body["stats"] == {"total": 3, "active": 2, "expired": 1, "activeUsers": 2}
    assert shim.call("POST", "/api/ha/sessions/cleanup", kube_api.tokens["reader"])[0] == 403
    status, body = shim.call("POST", "/api/ha/sessions/cleanup", kube_api.tokens["admin"])
    assert status == 200 and body["deleted"] == 1


def test_errors_are_json(shim: ShimProcess, kube_api: KubeAPI) -> None:
    status, body = shim.call("GET", "/api/ha/nope", kube_api.tokens["admin"])
    assert status == 404 and body["success"] is False
    status, body = shim.call("PUT", "/api/ha/status", kube_api.tokens["admin"])
    assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"
    status, body = shim.call("GET", "/api/ha/sessions/stats", kube_api.tokens["admin"])
    assert status == 503, "the replication named by spec.database does not exist: no database to ask"


@pytest.fixture
def fuzz_target(shim: ShimProcess) -> Iterator[ShimProcess]:
    yield shim


def test_openapi_document_and_fuzzing(fuzz_target: ShimProcess, kube_api: KubeAPI) -> None:
    import schemathesis
    from hypothesis import HealthCheck, settings

    status, document = fuzz_target.call("GET", "/api/ha/openapi.json")
    assert status == 200 and len(document["paths"]) == 11, "12 endpoints on 11 paths"
    schema = schemathesis.openapi.from_url(f"{fuzz_target.url}/api/ha/openapi.json")
    headers = {"Authorization": f"Bearer {kube_api.tokens['admin']}"}
    failures: list[str] = []
    calls: list[str] = []
    for operation in schema.get_all_operations():
        op = operation.ok()
        strategy = op.as_strategy()

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(base_url=fuzz_target.url, headers=headers, timeout=30)
            calls.append(f"{case.method} {case.formatted_path} {response.status_code}")
            if response.status_code >= 500 and response.status_code not in (503, 504):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")
            case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])

        from hypothesis import given

        given(strategy)(check)()
    assert failures == []
    assert {c.split(" ")[0] for c in calls} == {"GET", "POST", "DELETE"}
    assert len(calls) >= 12 * 3, "every operation was exercised several times"


def test_static_tokens_and_anonymous_reads(
    world: client.CustomObjectsApi,
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    shim_process: StartShim,
    node_servers: StartNodes,
) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_secret(
        kube_namespace,
        {
            "metadata": {"name": "shim-tokens"},
            "stringData": {"tool": "sha256:" + hashlib.sha256(b"tool-secret").hexdigest()},
        },
    )
    if kube_api.tier == "real":  # the sandbox's permissions file already lets "tool" read
        client.RbacAuthorizationV1Api(kube_client).create_namespaced_role_binding(
            kube_namespace,
            {
                "metadata": {"name": "tool-reads"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "whm-ha-reader"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tool"}],
            },
        )
    (stats_stand_in,) = node_servers("proxy-admin")
    shim = shim_process(
        kube_api.kubeconfig,
        kube_namespace,
        "--cluster=whm",
        "--static-tokens-secret=shim-tokens",
        "--anonymous-reads",
        f"--proxy-admin=http://127.0.0.1:{stats_stand_in.port}",
        "--proxy-admin=http://127.0.0.1:1",
        f"--proxy-pods=app=proxy:{stats_stand_in.port}",
    )
    core.create_namespaced_pod(
        kube_namespace,
        {
            "metadata": {"name": "proxy-0", "labels": {"app": "proxy"}},
            "spec": {"containers": [{"name": "p", "image": "whm-ha"}]},
        },
    )
    core.patch_namespaced_pod_status(
        "proxy-0", kube_namespace, {"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    )
    wait_for(lambda: shim.call("GET", "/api/ha/nodes", "tool-secret")[0] == 200, 15, "the static token to read")
    assert shim.call("POST", "/api/ha/loadbalancer/reload", "tool-secret")[0] == 403
    assert shim.call("GET", "/api/ha/nodes", "tool-secret-wrong")[0] == 401
    status, body = shim.call("GET", "/api/ha/status")
    assert status == 200 and body["cluster"]["totalNodes"] == 3, "anonymous reads when enabled"
    assert shim.call("POST", "/api/ha/loadbalancer/reload")[0] == 401, "never anonymous mutations"
    status, body = shim.call("GET", "/api/ha/loadbalancer/stats")
    assert status == 200
    assert body["proxies"][0]["stats"]["node"] == "proxy-admin"
    assert "error" in body["proxies"][1]
    assert body["proxies"][2]["stats"]["node"] == "proxy-admin", "a replica found as a pod"


def test_failover_through_the_real_operator(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    shim_process: StartShim,
    node_servers: StartNodes,
    operator_process: StartOperator,
) -> None:
    cluster = Cluster(kube_client, kube_namespace)
    cluster.create()
    three_nodes(cluster, node_servers)
    operator_process(kube_api.kubeconfig, kube_namespace)
    cluster.wait(lambda s: s.get("phase") == "Healthy", 30, "a Healthy cluster")
    shim = shim_process(kube_api.kubeconfig, kube_namespace, "--cluster=whm", "--request-timeout=10")
    started = time.monotonic()
    status, body = shim.call("POST", "/api/ha/failover", kube_api.tokens["admin"], {"targetNodeId": "n3"})
    assert status == 200 and body["primaryNode"] == "n3", body
    assert time.monotonic() - started < 5
    status, body = shim.call("POST", "/api/ha/failover", kube_api.tokens["admin"], {"targetNodeId": 99})
    assert status == 404
    cluster.patch_node("n2", {"maintenance": True})
    status, body = shim.call("POST", "/api/ha/failover", kube_api.tokens["admin"], {"targetNodeId": "n2"})
    assert status == 422 and "in maintenance" in body["error"]["message"]
    status, body = shim.call("GET", "/api/ha/failover/history", kube_api.tokens["admin"])
    assert body["history"][0]["to"] == "n3" and body["history"][0]["type"] == "manual"
