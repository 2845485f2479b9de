"""``whm-ha operator`` for MySQLReplication, end to end: a real operator process, three real ``mariadbd`` and the
Kubernetes API of either tier.

Every server starts as the deployment requires: read-only (``--read-only=ON``), so that only the operator makes a
member writable, and ``--init-rpl-role=SLAVE``, so that a crashed semi-sync primary drops at recovery the
transactions no replica acknowledged (nor any client: AFTER_SYNC) instead of coming back with errant ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartServers
from tests.fixtures.netns import freeze, thaw
from tests.fixtures.operator_process import OperatorProcess, StartOperator
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB, LocalServer
from whm_ha.demo.checkers import Direct, Writers, missing
from whm_ha.kube.client import KubeClient
from whm_ha.replication.controller import ReplicationController

pytestmark = pytest.mark.mariadb

SERVER_ARGS = ("--read-only=ON", "--init-rpl-role=SLAVE")
FAST = {"periodSeconds": 1, "failureThreshold": 2, "minIntervalSeconds": 0}
APP_USER, APP_PASSWORD = "app", "app-secret"
REPL_PASSWORD = "repl-'secret"


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def condition_is(status: dict[str, Any], kind: str, value: str) -> bool:
    return conditions(status).get(kind, {}).get("status") == value


class Replication:
    """One MySQLReplication ``db`` over three servers m0..m2 (m0 the bootstrap primary), and helpers."""

    def __init__(
        self, api: client.ApiClient, namespace: str, servers: Sequence[LocalServer], host: str, flavor: str = "mariadb"
    ) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.servers = servers
        self.host = host
        """The address of every member for the operator, the replicas and the Services."""
        self.name = "db"
        self.flavor = flavor
        """spec.flavor: the servers' product."""

    # -- the custom resource ----------------------------------------------------------------------------

    def secret(self, name: str, username: str, password: str) -> None:
        self.core.create_namespaced_secret(
            self.namespace,
            {
                "metadata": {"name": name},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": username, "password": password},
            },
        )

    def create(self, admin: tuple[str, str] = (ADMIN_USER, ADMIN_PASSWORD), **spec: Any) -> None:
        self.secret("db-admin", *admin)
        self.secret("db-repl", "repl", REPL_PASSWORD)
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLReplication",
            "metadata": {"name": self.name},
            "spec": {
                "flavor": self.flavor,
                "primary": "m0",
                "members": self.members(),
                "credentialsSecret": {"name": "db-admin"},
                "replicationSecret": {"name": "db-repl"},
                **FAST,
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "mysqlreplications", body)

    def members(self) -> list[dict[str, Any]]:
        return [{"name": f"m{i}", "host": self.host, "port": s.port} for i, s in enumerate(self.servers)]

    def get(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mysqlreplications", self.name
        )
        return obj

    def status(self) -> dict[str, Any]:
        return self.get().get("status") or {}

    def wait(self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> dict[str, Any]:
        seen: list[dict[str, Any]] = [{}]

        def check() -> dict[str, Any] | None:
            seen[0] = self.status()
            return seen[0] if seen[0] and predicate(seen[0]) else None

        try:
            status: dict[str, Any] = wait_for(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last status: {json.dumps(seen[0])}") from None
        return status

    def healthy(self, timeout: float = 30) -> dict[str, Any]:
        return self.wait(lambda s: s.get("phase") == "Healthy" and s.get("readyReplicas") == 2, timeout, "Healthy")

    def left_promoting(self, old: str, new: str, **record: str) -> None:
        """What an operator killed just after opening ``new`` leaves: ``old`` fenced, ``new`` writable and no
        longer a replica, the promotion recorded in status at step Promoting."""
        self.sql(old, "SET GLOBAL read_only = ON")
        for statement in ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"):
            self.sql(new, statement)
        body = {"from": old, "to": new, "type": "manual", "step": "Promoting", "reason": "test"}
        body |= {"detectedAt": "2026-01-01T00:00:00Z", **record}
        version = self.get()["metadata"]["resourceVersion"]
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            "mysqlreplications",
            self.name,
            {"metadata": {"resourceVersion": version}, "status": {"promotion": body}},
        )

    def annotate(self, annotations: dict[str, str]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mysqlreplications", self.name, {"metadata": {"annotations": annotations}}
        )

    def roles(self, status: dict[str, Any] | None = None) -> dict[str, str]:
        return {m["name"]: m["role"] for m in (status or self.status()).get("members", [])}

    def events(self, reason: str) -> list[str]:
        return [e.message for e in self.core.list_namespaced_event(self.namespace).items if e.reason == reason]

    def endpoints(self, service: str) -> list[int]:
        """The ports of the endpoints of a Service (all members share one address)."""
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        assert all(a == self.host for s in slices for e in s.endpoints or [] for a in e.addresses)
        return sorted(p.port for s in slices for p in s.ports or [] for _ in s.endpoints or [])

    # -- the servers ------------------------------------------------------------------------------------

    def port(self, member: str) -> int:
        return self.servers[int(member[1:])].port

    def index(self, member: str) -> int:
        return int(member[1:])

    def sql(self, member: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self.servers[self.index(member)].connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)
                return list(cur.fetchall())
        finally:
            conn.close()

    def unlogged(self, member: str, *statements: str) -> None:
        """Statements run on one member only, not binlogged: no transaction of its own that would look errant."""
        conn = self.servers[self.index(member)].connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION sql_log_bin = 0")
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def operator_account(self) -> tuple[str, str]:
        """An administrative account of the operator's own on every member, which a test may lock on one."""
        for member in ("m0", "m1", "m2"):
            self.unlogged(
                member,
                "CREATE USER 'operator'@'%' IDENTIFIED BY 'op-secret'",
                "GRANT ALL PRIVILEGES ON *.* TO 'operator'@'%' WITH GRANT OPTION",
            )
        return "operator", "op-secret"

    def dropped_by_m0(self, member: str) -> None:
        """Row 99 on ``member`` under m0's next GTID: what a restarted m0 dropped at recovery while a replica
        held it."""
        server_id = self.variable("m0", "server_id")
        seq = int(self.variable("m0", "gtid_binlog_pos").split("-")[2])
        conn = self.servers[self.index(member)].connect()
        try:
            with conn.cursor() as cur:
                for statement in (f"SET SESSION server_id = {server_id}", f"SET SESSION gtid_seq_no = {seq + 1}"):
                    cur.execute(statement)
                cur.execute("INSERT INTO app.t VALUES (99)")
        finally:
            conn.close()

    def variable(self, member: str, name: str) -> Any:
        return self.sql(member, f"SELECT @@GLOBAL.{name}")[0][0]

    def source_port(self, member: str) -> int | None:
        conn = self.servers[self.index(member)].connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
        finally:
            conn.close()
        return int(row["Master_Port"]) if row else None

    def replicates_from(self, member: str, source: str) -> bool:
        return self.source_port(member) == self.port(source) and self.variable(member, "read_only") == 1

    def ids(self, member: str) -> set[int]:
        return {r[0] for r in self.sql(member, "SELECT id FROM app.t")}

    def create_app(self, primary: str = "m0") -> None:
        """The application schema and an account without READ ONLY ADMIN: read-only members refuse it."""
        for statement in (
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY)",
            f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
            f"GRANT SELECT, INSERT ON app.* TO '{APP_USER}'@'%'",
        ):
            self.sql(primary, statement)


def member_host(tier: str) -> str:
    """127.0.0.1; on the real API tier, which refuses loopback endpoints, this machine's outbound address."""
    if tier == "sandbox":
        return "127.0.0.1"
    # The machine's own addresses, as `hostname -I` lists them: nothing is sent anywhere to find one.
    listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False).stdout.split()
    address = next((a for a in listed if "." in a and not a.startswith("127.")), "127.0.0.1")
    if address.startswith("127."):
        pytest.skip("no non-loopback address for the members: kube-apiserver refuses loopback endpoints")
    return address


@pytest.fixture
def replication(
    kube_api: KubeAPI, kube_client: client.ApiClient, kube_namespace: str, mariadb_servers: StartServers
) -> Replication:
    host = member_host(kube_api.tier)
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    return Replication(kube_client, kube_namespace, mariadb_servers(3, extra_args=SERVER_ARGS + bind), host)


def start(replication: Replication, kube_api: KubeAPI, operator_process: StartOperator) -> OperatorProcess:
    return operator_process(kube_api.kubeconfig, replication.namespace)


def metric(operator: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def wait_inspections(operator: OperatorProcess, rounds: int) -> None:
    """Let the operator inspect every member ``rounds`` more times."""
    target = metric(operator, "whm_ha_mysql_inspections_total") + rounds
    wait_for(lambda: metric(operator, "whm_ha_mysql_inspections_total") >= target, rounds * 3 + 5, "inspections")


def app_writers(port: int) -> Writers:
    """8 writers inserting into app.t on one server as the application account, each until an insert fails (the
    server died or became read-only), once 50 writes were acknowledged."""
    source = Direct("127.0.0.1", port, APP_USER, APP_PASSWORD, read_timeout=30)
    return Writers(source, table="app.t", until_error=True).start(warm_up=50, timeout=20)


class WritableSampler(threading.Thread):
    """Reads @@read_only on every running member every 50 ms and records each moment two were writable."""

    def __init__(self, servers: list[LocalMariaDB]) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.violations: list[str] = []
        self.samples = 0
        self._halt = threading.Event()
        self._conns: dict[int, Any] = {}

    def _writable(self, index: int) -> bool:
        try:
            if index not in self._conns:
                self._conns[index] = self.servers[index].connect(connect_timeout=1)
            with self._conns[index].cursor() as cur:
                cur.execute("SELECT @@GLOBAL.read_only")
                return bool(cur.fetchone()[0] == 0)
        except pymysql.MySQLError:
            self._conns.pop(index, None)
            return False

    def run(self) -> None:
        while not self._halt.is_set():
            writable = [f"m{i}" for i in range(len(self.servers)) if self._writable(i)]
            if len(writable) > 1:
                self.violations.append(f"{time.monotonic():.3f}: {writable}")
            self.samples += 1
            time.sleep(0.05)

    def stop(self) -> list[str]:
        self._halt.set()
        self.join(10)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        return self.violations


@pytest.fixture
def sampler(replication: Replication) -> Iterator[WritableSampler]:
    sampler = WritableSampler(replication.servers)
    sampler.start()
    yield sampler
    assert sampler.stop() == [], "never two writable members"


def counters(replication: Replication, member: str) -> dict[str, Any]:
    """What would move if the operator wrote anything: statement counters, GTIDs, settings."""
    names = ("Com_change_master", "Com_start_slave", "Com_stop_slave", "Com_create_user", "Com_grant", "Com_alter_user")
    rows = replication.sql(member, "SHOW GLOBAL STATUS WHERE Variable_name IN (" + ", ".join(["%s"] * 6) + ")", names)
    found: dict[str, Any] = dict(rows)
    for variable in ("gtid_binlog_state", "read_only", "rpl_semi_sync_master_enabled", "rpl_semi_sync_slave_enabled"):
        found[variable] = replication.variable(member, variable)
    return found


def test_setup_from_scratch_then_a_healthy_topology_gets_no_writes(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    replication.create(semiSync=True)
    started = time.monotonic()
    operator = start(replication, kube_api, operator_process)
    status = replication.healthy()
    print(f"setup from scratch: {time.monotonic() - started:.1f}s")
    assert status["currentPrimary"] == "m0"
    assert replication.roles(status) == {"m0": "Primary", "m1": "Replica", "m2": "Replica"}
    assert {k: c["status"] for k, c in conditions(status).items()} == {
        "Ready": "True",
        "Degraded": "False",
        "ReplicationBroken": "False",
        "LagHigh": "False",
        "ErrantTransactions": "False",
        "PrimaryUnreachable": "False",
    }
    assert status["maxObservedLagSeconds"] == 0 and status["observedGeneration"] == 1
    assert [replication.variable(m, "read_only") for m in ("m0", "m1", "m2")] == [0, 1, 1]
    assert replication.replicates_from("m1", "m0") and replication.replicates_from("m2", "m0")
    assert replication.variable("m0", "rpl_semi_sync_master_enabled") == 1
    wait_for(
        lambda: replication.sql("m0", "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")[0][1] == "2", 10, "2 acks"
    )

    replication.create_app()
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2)")
    wait_for(lambda: replication.ids("m1") == replication.ids("m2") == {1, 2}, 10, "rows on both replicas")

    wait_for(lambda: replication.endpoints("db-primary") == [replication.port("m0")], 10, "the primary Service")
    wait_for(
        lambda: replication.endpoints("db-replicas") == sorted([replication.port("m1"), replication.port("m2")]),
        10,
        "the replicas Service",
    )
    service = replication.core.read_namespaced_service("db-primary", replication.namespace)
    assert service.spec.selector is None and service.spec.ports[0].name == "mysql"
    owner = service.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("MySQLReplication", "db", replication.get()["metadata"]["uid"])
    slices = replication.discovery.list_namespaced_endpoint_slice(
        replication.namespace, label_selector="kubernetes.io/service-name=db-replicas"
    ).items
    assert {s.address_type for s in slices} == {"IPv4"} and all(s.ports[0].name == "mysql" for s in slices)

    wait_for(
        lambda: len({replication.variable(m, "gtid_binlog_state") for m in ("m0", "m1", "m2")}) == 1, 10, "caught up"
    )
    wait_inspections(operator, 1)
    before = {m: counters(replication, m) for m in ("m0", "m1", "m2")}
    version = replication.get()["metadata"]["resourceVersion"]
    wait_inspections(operator, 4)
    assert {m: counters(replication, m) for m in ("m0", "m1", "m2")} == before, "no writes to a healthy topology"
    assert replication.get()["metadata"]["resourceVersion"] == version, "no status write either"
    assert metric(operator, "whm_ha_mysql_replica_thread_running") == 4
    assert metric(operator, "whm_ha_mysql_replica_lag_seconds") == 0


def test_a_replica_whose_sql_thread_stopped_is_reported_broken(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    replication.create()
    operator = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    wait_for(lambda: replication.sql("m2", "SHOW TABLES FROM app"), 10, "the table on m2")
    conn = replication.servers[2].connect()
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("INSERT INTO app.t VALUES (7)")
    conn.close()
    replication.sql("m0", "INSERT INTO app.t VALUES (7)")
    status = replication.wait(lambda s: condition_is(s, "ReplicationBroken", "True"), 15, "ReplicationBroken")
    broken = conditions(status)["ReplicationBroken"]["message"]
    assert broken.startswith("m2: SQL thread stopped: ") and "Duplicate entry '7'" in broken, broken
    assert status["phase"] == "Degraded" and status["readyReplicas"] == 1
    m2 = next(m for m in status["members"] if m["name"] == "m2")
    assert (m2["role"], m2["ioRunning"], m2["sqlRunning"]) == ("Replica", True, False)
    wait_for(lambda: replication.endpoints("db-replicas") == [replication.port("m1")], 10, "m2 out of the Service")
    wait_inspections(operator, 2)
    assert condition_is(replication.status(), "ReplicationBroken", "True"), "a failed SQL thread is left to a human"

    replication.sql("m1", "STOP SLAVE SQL_THREAD")
    wait_for(lambda: _sql_running(replication, "m1"), 10, "m1's SQL thread started again")


def test_a_replica_whose_slave_position_lags_its_binlog_resumes_after_its_binlog(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """MariaDB leaves gtid_slave_pos behind the binlog when its applier is killed while it commits a replicated
    DDL (seen in CI). Repointed from @@gtid_current_pos, such a replica re-applied what it had and stopped on a
    duplicate GTID; it must resume after what its binlog holds."""
    replication.create()
    operator = operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    replication.healthy()
    replication.create_app()
    wait_for(lambda: replication.sql("m1", "SHOW TABLES FROM app"), 10, "the table on m1")
    operator.kill()  # stage the lost update without the operator restarting the applier half-way
    binlog = replication.variable("m1", "gtid_binlog_pos")
    domain, server, seq = (int(part) for part in binlog.split("-"))
    for statement in ("STOP SLAVE", f"SET GLOBAL gtid_slave_pos = '{domain}-{server}-{seq - 2}'", "RESET SLAVE ALL"):
        replication.sql("m1", statement)
    operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    wait_for(lambda: replication.replicates_from("m1", "m0"), 15, "m1 a replica of m0 again")
    replication.sql("m0", "INSERT INTO app.t VALUES (1)")
    wait_for(lambda: replication.ids("m1") == {1}, 10, "m1 applies what comes next")
    assert _sql_running(replication, "m1"), "nothing re-applied"
    replication.wait(lambda s: s.get("phase") == "Healthy" and s.get("readyReplicas") == 2, 15, "Healthy")


def test_a_primary_back_read_only_behind_a_replica_is_switched_over_from_not_reopened(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    """A MariaDB primary restarted with init_rpl_role=SLAVE drops what it binlogged but had not committed; a
    replica may hold it. Reopened, the primary would reuse those GTIDs for new writes, which that replica skips:
    an acknowledged write lost (seen end to end). Staged here: m1 holds a transaction under m0's next GTID, and
    m0 is read-only as after a restart."""
    replication.create(semiSync=True)
    operator = operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    replication.healthy()
    replication.create_app()
    wait_for(lambda: replication.sql("m1", "SHOW TABLES FROM app"), 10, "the table on m1")
    operator.kill()  # staged at once, as the operator would find it after the restart
    replication.dropped_by_m0("m1")
    replication.sql("m0", "SET GLOBAL read_only = ON")
    operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    status = replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 30, "m1")
    (promotion,) = status["promotionHistory"]
    assert (promotion["from"], promotion["to"], promotion["type"]) == ("m0", "m1", "automatic")
    assert "came back read-only without transactions replicas received: m1 (1:" in promotion["reason"]
    assert replication.replicates_from("m0", "m1") and replication.replicates_from("m2", "m1")
    wait_for(lambda: replication.ids("m2") == {99}, 10, "the row on m2")
    wait_for(lambda: replication.ids("m0") == {99}, 10, "the row on m0")


def test_a_primary_back_read_only_is_not_reopened_while_a_replica_that_may_hold_more_does_not_answer(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    """As above, but m2, which holds the transaction m0 dropped, does not answer the operator (its account is
    locked there). Reopened, m0 would reuse that GTID for a new write, which m2 skips once it answers: a later
    failover to m2 would lose it. m0 stays read-only and status says why; once m2 answers, m0 is switched over
    from."""
    replication.create(admin=replication.operator_account(), semiSync=True)
    operator = operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    replication.healthy()
    replication.create_app()
    wait_for(lambda: replication.sql("m2", "SHOW TABLES FROM app"), 10, "the table on m2")
    operator.kill()
    replication.dropped_by_m0("m2")
    replication.unlogged("m2", "ALTER USER 'operator'@'%' ACCOUNT LOCK")
    replication.sql("m0", "SET GLOBAL read_only = ON")
    operator = operator_process(kube_api.kubeconfig, replication.namespace, standalone=True)
    status = replication.wait(lambda s: "not opened again" in s.get("reason", ""), 15, "m0 held read-only")
    assert "m2 unreachable, not seen since m0 came back read-only" in status["reason"], status["reason"]
    wait_inspections(operator, 3)
    assert replication.variable("m0", "read_only") == 1, "m0 reopened while m2 may hold what it lacks"
    assert replication.status()["currentPrimary"] == "m0"
    replication.unlogged("m2", "ALTER USER 'operator'@'%' ACCOUNT UNLOCK")
    status = replication.wait(lambda s: s.get("currentPrimary") == "m2" and s.get("phase") == "Healthy", 30, "m2")
    assert (
        "came back read-only without transactions replicas received: m2 (1:" in status["promotionHistory"][0]["reason"]
    )
    wait_for(lambda: replication.ids("m0") == replication.ids("m1") == {99}, 10, "the row on m0 and m1")


def test_a_primary_reopened_then_cut_off_is_not_taken_for_fenced(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """m0 is found read-only (as after a restart), reopened by the operator, then killed before an inspection
    sees it writable. Read-only when it last answered, it must not be skipped by the promotion as known fenced:
    it is tried, recorded in ``unfenced`` and a FencePending Event says it is fenced when it answers."""
    replication.create(periodSeconds=3)  # the next inspection comes some 3 s after the reopen
    start(replication, kube_api, operator_process)
    replication.healthy()
    replication.sql("m0", "SET GLOBAL read_only = ON")
    wait_for(lambda: replication.variable("m0", "read_only") == 0, 15, "m0 reopened")
    replication.servers[0].kill()
    status = replication.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 40, "a new primary")
    assert status["promotionHistory"][0].get("unfenced") == ["m0"], status["promotionHistory"][0]
    wait_for(lambda: replication.events("FencePending"), 10, "a FencePending Event")


def _sql_running(replication: Replication, member: str) -> bool:
    conn = replication.servers[replication.index(member)].connect()
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            return bool(cur.fetchone()["Slave_SQL_Running"] == "Yes")
    finally:
        conn.close()


def test_primary_killed_under_writes_loses_no_acknowledged_row_and_rejoins(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    replication.create(semiSync=True)
    operator = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    writers = app_writers(replication.port("m0"))
    wait_for(lambda: len(writers.acks) >= 300, 20, "300 acknowledged inserts")
    killed = time.monotonic()
    replication.servers[0].kill()
    assert writers.join(30), "writers still writing to a killed primary"
    status = replication.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 20, "a new primary")
    elapsed = time.monotonic() - killed
    new = status["currentPrimary"]
    other = ({"m1", "m2"} - {new}).pop()
    record = status["promotionHistory"][0]
    print(
        f"kill -9 to new primary recorded: {elapsed:.2f}s; durationMs {record['durationMs']}; {len(writers.acks)} rows"
    )
    assert (record["from"], record["to"], record["type"]) == ("m0", new, "automatic")
    assert 0 < record["durationMs"] < 10_000 and elapsed < 10
    assert missing(writers.acks.all(), replication.ids(new)) == [], "every acknowledged insert survived"
    assert replication.variable(new, "read_only") == 0

    replication.sql(new, "INSERT INTO app.t VALUES (-1)")
    wait_for(lambda: replication.replicates_from(other, new) and -1 in replication.ids(other), 15, f"{other} follows")
    wait_for(lambda: replication.endpoints("db-primary") == [replication.port(new)], 10, "the primary Service moved")

    replication.servers[0].start()
    assert replication.variable("m0", "read_only") == 1, "the old primary comes back read-only"
    status = replication.wait(
        lambda s: s.get("phase") == "Healthy" and replication.roles(s)["m0"] == "Replica", 20, "m0 to rejoin"
    )
    assert replication.replicates_from("m0", new)
    wait_for(lambda: -1 in replication.ids("m0"), 10, "m0 replicates from the new primary")
    assert len(status["promotionHistory"]) == 1 and status["lastPromotionTime"]
    assert any(f"m0 -> {new}" in e for e in replication.events("Promoted"))
    rows = wait_for(
        lambda: _rows(
            replication, new, "SELECT scope, from_node, to_node, failover_type FROM whm_ha.ha_failover_events"
        ),
        15,
        "the legacy failover row",
    )
    assert rows == [("database", "m0", new, "automatic")]
    assert metric(operator, "whm_ha_mysql_promotions_total") == 1
    assert sampler.stop() == [] and sampler.samples > 50, "never two writable members"


def test_a_failover_abandoned_once_is_tried_again_within_the_bound(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """m0 vanishes (frozen: its sockets open, nothing answers) while m1's applier waits on a table lock, so m1's
    lag is unknown and m2 is chosen. The lock goes as that promotion starts; m1, as up to date, then ranks first
    and the promotion of m2 is abandoned, as in a fault-tier run, which left the replicas it had stopped
    stopped: confirming nothing, they held every later attempt off (55 s without a primary). The next attempt
    must promote within the bound of a vanished primary (period x (threshold + 1) + net timeout + 2 s)."""
    replication.create(semiSync=True)
    start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    wait_for(lambda: _rows(replication, "m1", "SELECT 1 FROM app.t LIMIT 0") == [], 10, "app.t on m1")
    holder = replication.servers[1].connect()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLES app.t READ")  # m1's applier waits; its IO thread still receives
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    wait_for(lambda: replication.ids("m2") == {1, 2, 3}, 10, "m2 applies the rows")
    primary = replication.servers[0].process
    assert primary is not None
    freeze(primary)
    try:
        replication.wait(lambda s: (s.get("promotion") or {}).get("to") == "m2", 20, "a promotion of m2")
        holder.close()  # m1 applies all it received before the replicas' fresh states are read
        released = time.monotonic()
        bound = FAST["periodSeconds"] * (FAST["failureThreshold"] + 1) + 2 + 2
        status = replication.wait(lambda s: s.get("currentPrimary") != "m0", bound + 20, "a new primary")
        took = time.monotonic() - released
    finally:
        thaw(primary)
    abandoned = replication.events("PromotionFailed")
    assert any("m2 is no longer the member to promote" in e and "m1, which ranks first" in e for e in abandoned), (
        abandoned
    )
    print(f"abandoned promotion to a new primary: {took:.2f}s (bound {bound}s)")
    assert status["currentPrimary"] == "m1" and took <= bound, f"{took:.1f}s to {status['currentPrimary']}"


def _rows(replication: Replication, member: str, statement: str) -> list[tuple[Any, ...]]:
    try:
        return replication.sql(member, statement)
    except pymysql.MySQLError:
        return []


def test_operator_cut_off_from_a_live_primary_does_not_promote(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """The operator's own account is locked on the primary only (not replicated): the replicas, which use the
    replication account, still replicate, so the primary is not confirmed dead."""
    replication.create(admin=replication.operator_account())
    operator = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.unlogged("m0", "ALTER USER 'operator'@'%' ACCOUNT LOCK")
    status = replication.wait(
        lambda s: "still replicate" in conditions(s)["PrimaryUnreachable"]["message"], 15, "PrimaryUnreachable"
    )
    unreachable = conditions(status)["PrimaryUnreachable"]
    assert unreachable["status"] == "True" and unreachable["reason"] == "Unreachable"
    assert unreachable["message"].startswith(
        "the operator cannot reach the primary (Access denied, this account is locked"
    )
    assert status["phase"] == "Degraded"
    wait_inspections(operator, FAST["failureThreshold"] + 3)
    status = replication.status()
    assert status["currentPrimary"] == "m0" and not status.get("promotionHistory")
    assert "replicas m1, m2 still replicate" in conditions(status)["PrimaryUnreachable"]["message"]
    assert replication.replicates_from("m1", "m0") and replication.variable("m0", "read_only") == 0

    replication.unlogged("m0", "ALTER USER 'operator'@'%' ACCOUNT UNLOCK")
    status = replication.healthy()
    assert condition_is(status, "PrimaryUnreachable", "False")


def test_manual_promotion_switches_over_without_losing_writes_and_refuses_explicitly(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    members = replication.members()
    members[2]["neverPromote"] = True
    replication.create(semiSync=True, members=members)
    start(replication, kube_api, operator_process)
    replication.healthy()
    for target, request_id, why in (("nope", "r-1", "nope is not a member"), ("m2", "r-2", "marked neverPromote")):
        replication.annotate({"ha.whm.io/promote": target, "ha.whm.io/request-id": request_id})
        status = replication.wait(lambda s, r=request_id: (s.get("lastRequest") or {}).get("id") == r, 10, request_id)
        assert status["lastRequest"]["result"] == "Refused" and why in status["lastRequest"]["reason"]
    wait_for(lambda: len(replication.events("PromotionRefused")) == 2, 10, "two PromotionRefused events")
    assert "marked neverPromote" in " ".join(replication.events("PromotionRefused"))

    replication.create_app()
    writers = app_writers(replication.port("m0"))
    wait_for(lambda: len(writers.acks) >= 200, 20, "200 acknowledged inserts")
    requested = time.monotonic()
    replication.annotate({"ha.whm.io/promote": "m1", "ha.whm.io/request-id": "switch-1"})
    status = replication.wait(lambda s: s.get("currentPrimary") == "m1", 15, "m1 to be primary")
    elapsed = time.monotonic() - requested
    assert writers.join(10), "writers still writing to the fenced primary"
    assert all("read-only" in error for error in writers.errors), writers.errors
    record = status["promotionHistory"][0]
    print(f"switchover: {elapsed:.2f}s from the request; durationMs {record['durationMs']}")
    assert (record["from"], record["to"], record["type"]) == ("m0", "m1", "manual")
    assert status["lastRequest"]["id"] == "switch-1" and status["lastRequest"]["result"] == "Succeeded"
    assert missing(writers.acks.all(), replication.ids("m1")) == [], "no acknowledged write lost"
    status = replication.healthy()
    assert replication.roles(status) == {"m0": "Replica", "m1": "Primary", "m2": "Replica"}
    assert replication.replicates_from("m0", "m1") and replication.replicates_from("m2", "m1")
    assert replication.variable("m0", "rpl_semi_sync_master_enabled") == 0, "a replica waits for no one"
    wait_for(lambda: "ha.whm.io/promote" not in (replication.get()["metadata"].get("annotations") or {}), 10, "removal")

    replication.annotate({"ha.whm.io/promote": "m0", "ha.whm.io/request-id": "switch-1"})
    wait_for(lambda: "ha.whm.io/promote" not in (replication.get()["metadata"].get("annotations") or {}), 10, "removal")
    status = replication.status()
    assert status["currentPrimary"] == "m1" and len(status["promotionHistory"]) == 1, "an id is never replayed"
    assert sampler.stop() == [], "never two writable members"


def test_errant_transactions_on_the_old_primary_quarantine_it(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    replication.create()
    start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    replication.annotate({"ha.whm.io/promote": "m1"})
    replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 15, "m1 primary")
    assert replication.replicates_from("m0", "m1")
    conn = replication.servers[0].connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO app.t VALUES (99)")  # the admin account may write on a read-only server
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        (errant,) = cur.fetchone()
        cur.execute("STOP SLAVE")
        cur.execute("RESET SLAVE ALL")
    conn.close()
    status = replication.wait(lambda s: replication.roles(s).get("m0") == "Quarantined", 15, "m0 quarantined")
    errant_condition = conditions(status)["ErrantTransactions"]
    assert errant_condition["status"] == "True" and errant_condition["reason"] == "Quarantined"
    assert errant_condition["message"].startswith(f"m0: 1 errant transaction(s) the primary lacks: {errant}")
    assert status["phase"] == "Degraded" and status["readyReplicas"] == 1
    assert replication.variable("m0", "read_only") == 1 and replication.source_port("m0") is None
    assert 99 not in replication.ids("m1"), "nothing was discarded or copied silently"
    wait_for(lambda: replication.endpoints("db-replicas") == [replication.port("m2")], 10, "m0 out of the Service")
    wait_for(lambda: replication.events("Quarantined"), 10, "a Quarantined event")


def test_errant_transactions_on_a_replicating_member_are_reported_at_the_next_inspection(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """A replica that still replicates but holds a transaction the primary lacks (an administrator's write, or
    one landed on a former primary) is named at once, before its SQL thread trips over it."""
    replication.create()
    operator = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    replication.wait(lambda s: replication.roles(s).get("m2") == "Replica", 10, "m2 replicating")
    conn = replication.servers[2].connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO app.t VALUES (7)")  # the admin account may write on a read-only server
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        (errant,) = cur.fetchone()
    conn.close()
    assert replication.replicates_from("m2", "m0")
    target = metric(operator, "whm_ha_mysql_inspections_total") + 2
    status = replication.wait(
        lambda s: condition_is(s, "ErrantTransactions", "True"), 10, "the errant transaction reported"
    )
    assert metric(operator, "whm_ha_mysql_inspections_total") <= target, "within two inspections"
    message = conditions(status)["ErrantTransactions"]["message"]
    assert message.startswith(f"m2: 1 errant transaction(s) the primary lacks: {errant}"), message
    assert replication.roles(status) == {"m0": "Primary", "m1": "Replica", "m2": "Quarantined"}
    wait_for(lambda: replication.endpoints("db-replicas") == [replication.port("m1")], 10, "m2 out of the Service")


def test_operator_killed_mid_promotion_converges_with_one_promotion(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    replication.create(semiSync=True)
    first = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.annotate({"ha.whm.io/promote": "m1", "ha.whm.io/request-id": "kill-1"})
    # A switchover takes some 20 ms: the kill lands during it or just after (the staged case below is exact).
    wait_for(
        lambda: (s := replication.status()).get("phase") == "Promoting" or s.get("promotionHistory"),
        10,
        "the promotion recorded",
    )
    first.kill()
    second = start(replication, kube_api, operator_process)
    status = replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 30, "m1")
    assert [(h["from"], h["to"]) for h in status["promotionHistory"]] == [("m0", "m1")], "one promotion"
    assert status["lastRequest"]["id"] == "kill-1" and status["lastRequest"]["result"] == "Succeeded"
    assert replication.replicates_from("m0", "m1") and replication.replicates_from("m2", "m1")

    second.kill()
    replication.left_promoting("m1", "m2", requestId="kill-2")
    start(replication, kube_api, operator_process)
    status = replication.wait(lambda s: s.get("currentPrimary") == "m2" and s.get("phase") == "Healthy", 30, "m2")
    assert [(h["from"], h["to"]) for h in status["promotionHistory"]] == [("m1", "m2"), ("m0", "m1")]
    assert "promotion" not in status and status["lastRequest"]["id"] == "kill-2"
    assert replication.replicates_from("m0", "m2") and replication.replicates_from("m1", "m2")
    assert sampler.stop() == [], "never two writable members"


def test_with_semi_sync_no_failover_while_a_replica_is_missing_too(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """The primary and one replica die: the replica left may lack commits the dead one acknowledged, so nobody is
    promoted (FailoverBlocked says why) until the other replica answers again."""
    replication.create(semiSync=True)
    start(replication, kube_api, operator_process)
    replication.healthy()
    replication.servers[2].kill()
    replication.servers[0].kill()
    status = replication.wait(
        lambda s: conditions(s).get("Degraded", {}).get("reason") == "FailoverBlocked", 20, "the failover blocked"
    )
    assert "only 1 of 2 replicas reachable (m2 not)" in conditions(status)["Degraded"]["message"]
    wait_for(lambda: replication.events("FailoverBlocked"), 10, "a FailoverBlocked event")
    assert replication.status()["currentPrimary"] == "m0" and replication.variable("m1", "read_only") == 1
    replication.servers[2].start()
    status = replication.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a promotion with quorum")
    assert status["promotionHistory"][0]["from"] == "m0"


def test_a_recreated_replication_keeps_the_real_primary(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """Status lost (the object deleted and applied again, as GitOps or a restore does) after a switchover to m1:
    the operator records m1, which holds everything, not spec.primary m0, which would roll back m1's writes."""
    replication.create()
    operator = start(replication, kube_api, operator_process)
    replication.healthy()
    replication.create_app()
    replication.annotate({"ha.whm.io/promote": "m1"})
    replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 20, "m1 primary")
    replication.sql("m1", "INSERT INTO app.t VALUES (42)")
    operator.kill()
    for statement in ("STOP SLAVE", "RESET SLAVE ALL"):  # m0 replicates from nobody, read-only and behind nobody
        replication.sql("m0", statement)
    replication.custom.patch_namespaced_custom_object(  # no operator runs to release it, as after a restore
        GROUP, VERSION, replication.namespace, "mysqlreplications", "db", {"metadata": {"finalizers": None}}
    )
    replication.custom.delete_namespaced_custom_object(GROUP, VERSION, replication.namespace, "mysqlreplications", "db")
    wait_for(
        lambda: (
            not replication.custom.list_namespaced_custom_object(
                GROUP, VERSION, replication.namespace, "mysqlreplications"
            )["items"]
        ),
        10,
        "the object gone",
    )
    replication.core.delete_namespaced_secret("db-admin", replication.namespace)
    replication.core.delete_namespaced_secret("db-repl", replication.namespace)
    replication.create()
    start(replication, kube_api, operator_process)
    status = replication.wait(lambda s: s.get("currentPrimary") and s.get("phase") == "Healthy", 30, "Healthy")
    assert status["currentPrimary"] == "m1", status
    assert replication.variable("m1", "read_only") == 0 and 42 in replication.ids("m1")
    assert replication.replicates_from("m0", "m1") and 42 in replication.ids("m0")


def test_a_promotion_past_its_point_of_no_return_is_never_abandoned(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    """What an operator killed just after opening m2 leaves, and then m2 removed from spec.members: the old
    primary m0 must stay fenced while the record names m2 (abandoning would open it beside a writable m2)."""
    replication.create()
    first = start(replication, kube_api, operator_process)
    replication.healthy()
    first.kill()
    replication.left_promoting("m0", "m2")
    replication.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        replication.namespace,
        "mysqlreplications",
        replication.name,
        {"spec": {"members": replication.members()[:2]}},
    )
    operator = start(replication, kube_api, operator_process)
    status = replication.wait(lambda s: "removed from spec.members" in s.get("reason", ""), 15, "the reason")
    wait_inspections(operator, 3)
    status = replication.status()
    assert status["promotion"]["to"] == "m2" and status["currentPrimary"] == "m0"
    assert replication.variable("m0", "read_only") == 1, "the old primary stays fenced"
    assert sampler.stop() == [], "never two writable members"
    replication.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        replication.namespace,
        "mysqlreplications",
        replication.name,
        {"spec": {"members": replication.members()}},
    )
    replication.wait(lambda s: s.get("currentPrimary") == "m2" and s.get("phase") == "Healthy", 30, "m2 primary")


class Swamped:
    """A member every connection slot of which is taken (max_connections 10, plus the one kept for SUPER), as
    when applications exhaust it: it accepts TCP connections and answers each login with error 1040."""

    def __init__(self, server: LocalMariaDB) -> None:
        self.server = server
        first = server.connect()
        with first.cursor() as cur:
            cur.execute("SET GLOBAL max_connections = 10")
        self.held = [first]
        while True:
            try:
                self.held.append(server.connect(connect_timeout=2))
            except pymysql.MySQLError as exc:
                assert exc.args[0] == 1040, exc
                return

    def release(self) -> None:
        for conn in self.held:
            conn.close()
        self.held.clear()


def test_a_swamped_replica_known_read_only_does_not_hold_a_failover_up(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, sampler: WritableSampler
) -> None:
    """m2 answers every login with 'Too many connections' after the operator saw it read-only: the promotion of
    m1 skips it instead of retrying forever with no writable primary."""
    replication.create()
    start(replication, kube_api, operator_process)
    replication.healthy()
    swamped = Swamped(replication.servers[2])
    killed = time.monotonic()
    replication.servers[0].kill()
    status = replication.wait(lambda s: s.get("currentPrimary") == "m1", 15, "m1 promoted")
    print(f"kill -9 to promotion with a swamped replica: {time.monotonic() - killed:.2f}s")
    assert replication.variable("m1", "read_only") == 0
    assert status["promotionHistory"][0]["unfenced"] == ["m0"], "m2 was known read-only: not tried"
    swamped.release()
    replication.wait(lambda s: replication.roles(s).get("m2") == "Replica", 20, "m2 rejoins")
    assert replication.replicates_from("m2", "m1")


def test_a_promotion_held_up_by_a_member_not_known_read_only_says_so_then_finishes(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """A restarted operator that never saw m2 answer cannot skip it: the promotion waits (m1 writable, status
    still naming m0), posts one PromotionStalled Event naming the error, and finishes once m2 answers."""
    replication.create()
    first = start(replication, kube_api, operator_process)
    replication.healthy()
    first.kill()
    replication.left_promoting("m0", "m1")
    swamped = Swamped(replication.servers[2])
    start(replication, kube_api, operator_process)
    stalled = wait_for(lambda: replication.events("PromotionStalled"), 20, "a PromotionStalled Event")
    assert "Too many connections" in stalled[0] and "m1" in stalled[0], stalled
    status = replication.status()
    assert status["currentPrimary"] == "m0" and status["promotion"]["to"] == "m1"
    assert "Too many connections" in status["reason"]
    swamped.release()
    replication.wait(lambda s: s.get("currentPrimary") == "m1" and s.get("phase") == "Healthy", 30, "m1 primary")
    assert len(replication.events("PromotionStalled")) == 1


def test_the_worker_thread_of_a_superseded_decision_changes_no_role(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision's worker thread outlives it (kopf stops a daemon at a peering hand-over; the thread goes on).
    Here a controller decides to fence a writable m2 and reopen m0; m2's fence waits on a table lock; meanwhile
    another process promotes m1. Once the lock is released the thread must neither touch m1 nor open m0."""
    replication.create(periodSeconds=2)  # a 6 s reply timeout: the lock is held well within it
    first = start(replication, kube_api, operator_process)
    replication.healthy()
    first.kill()
    replication.sql("m0", "SET GLOBAL read_only = ON")  # as a switchover abandoned leaves it
    replication.sql("m2", "SET GLOBAL read_only = OFF")
    holder = replication.servers[2].connect()
    with holder.cursor() as cur:
        for statement in ("CREATE DATABASE held", "CREATE TABLE held.t (i INT)", "LOCK TABLES held.t WRITE"):
            cur.execute(statement)
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))

    async def one_step() -> None:
        async with KubeClient() as kube:
            controller = ReplicationController(kube, replication.namespace, replication.name)
            controller.deciding = True  # as its loop sets it
            await controller.step(inspect=True)

    stepping = threading.Thread(target=asyncio.run, args=(one_step(),), daemon=True)
    stepping.start()
    waiting = "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'SET GLOBAL read_only%'"
    wait_for(lambda: replication.sql("m2", waiting)[0][0] == 1, 15, "m2's fence waiting on the lock")
    for statement in ("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = OFF"):
        replication.sql("m1", statement)  # the other process's promotion of m1
    version = replication.get()["metadata"]["resourceVersion"]
    replication.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        replication.namespace,
        "mysqlreplications",
        replication.name,
        {"metadata": {"resourceVersion": version}, "status": {"currentPrimary": "m1"}},
    )
    holder.close()  # the lock goes with the session
    stepping.join(30)
    assert not stepping.is_alive()
    assert replication.variable("m0", "read_only") == 1, "the superseded thread opened the old primary"
    assert replication.variable("m1", "read_only") == 0, "the superseded thread fenced the new primary"


def test_fifty_replications_whose_members_never_answer_do_not_delay_a_failover(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """Each inspection of a member that accepts connections but never answers waits its full timeout in a
    worker thread. With 150 of them every period, the primary of a healthy replication is killed: its failover
    keeps the bound of a lone one, because each replication has its own threads."""
    silent = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind((replication.host, 0))
        sock.listen(4096)  # never accepted: the handshake completes, the server greeting never comes
        silent.append(sock)
    replication.create()
    start(replication, kube_api, operator_process)
    replication.healthy()
    members = [{"name": f"s{i}", "host": replication.host, "port": s.getsockname()[1]} for i, s in enumerate(silent)]
    try:
        for index in range(50):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "MySQLReplication",
                "metadata": {"name": f"idle-{index:02d}"},
                "spec": {
                    "primary": "s0",
                    "members": members,
                    "credentialsSecret": {"name": "db-admin"},
                    "replicationSecret": {"name": "db-repl"},
                    **FAST,
                },
            }
            replication.custom.create_namespaced_custom_object(
                GROUP, VERSION, replication.namespace, "mysqlreplications", body
            )
        waiting = ("idle-00", "idle-49")
        for name in waiting:  # their loops run: each has written why it cannot choose a primary
            wait_for(
                lambda n=name: (
                    "choosing the first primary"
                    in str(
                        replication.custom.get_namespaced_custom_object(
                            GROUP, VERSION, replication.namespace, "mysqlreplications", n
                        )
                        .get("status", {})
                        .get("reason", "")
                    )
                ),
                30,
                f"{name} inspecting",
            )
        killed = time.monotonic()
        replication.servers[0].kill()
        replication.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a new primary")
        elapsed = time.monotonic() - killed
        print(f"kill -9 to new primary with 150 silent members elsewhere: {elapsed:.2f}s")
        assert elapsed < 10, f"the other replications' silent members delayed the failover: {elapsed:.1f}s"
    finally:
        for sock in silent:
            sock.close()


def test_a_member_replicating_from_elsewhere_stops_before_the_set_that_decides_its_rejoin_is_read(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """m2 replicates from m1 instead of the primary m0. Its executed GTIDs decide whether it may rejoin: read
    while it still receives from m1, the set could miss what arrives next. The operator's statements on m2, in
    order, from m2's general log: the set is read after STOP SLAVE and before m2 is pointed at m0."""
    replication.create()
    first = start(replication, kube_api, operator_process)
    replication.healthy()
    first.kill()
    for statement in (
        "STOP SLAVE",
        f"CHANGE MASTER TO MASTER_PORT = {replication.port('m1')}",
        "START SLAVE",
        "SET GLOBAL log_output = 'TABLE'",
        "SET GLOBAL general_log = ON",
    ):
        replication.sql("m2", statement)
    start(replication, kube_api, operator_process)
    wait_for(lambda: replication.replicates_from("m2", "m0"), 20, "m2 back on m0")
    replication.sql("m2", "SET GLOBAL general_log = OFF")
    log = [str(r[0]) for r in replication.sql("m2", "SELECT argument FROM mysql.general_log ORDER BY event_time")]
    repoint = next(i for i, s in enumerate(log) if s.startswith("CHANGE MASTER") and "MASTER_HOST" in s)
    stop = log.index("STOP SLAVE")
    reads = [i for i, s in enumerate(log) if s == "SELECT @@GLOBAL.gtid_binlog_state"]
    assert any(stop < i < repoint for i in reads), f"no read of the set between STOP SLAVE and CHANGE MASTER: {log}"


def test_tls_without_a_usable_ca_secret_is_pending_and_says_why(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator
) -> None:
    """With ``spec.tls`` on, the operator connects to no member until the CA Secret holds a certificate: status
    names the Secret and what is wrong with it."""
    replication.create(tls={"enabled": True, "caSecret": {"name": "db-ca"}, "caFile": "tls/ca.pem"})
    start(replication, kube_api, operator_process)
    replication.wait(lambda s: "db-ca (tls.caSecret) not found" in (s.get("reason") or ""), 20, "the Secret missing")
    secret = {"metadata": {"name": "db-ca"}, "stringData": {"ca.crt": "not a certificate"}}
    replication.core.create_namespaced_secret(replication.namespace, secret)
    status = replication.wait(lambda s: "key ca.crt holds no PEM certificate" in (s.get("reason") or ""), 40, "why")
    assert status["phase"] == "Pending" and not status.get("currentPrimary"), status
