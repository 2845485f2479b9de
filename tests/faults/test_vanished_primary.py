"""A primary whose host vanishes from the network: its packets are dropped (nftables in its namespace), so every
connect and read waits for its timeout, as with a dead host or a cut link, and nobody gets a reset.

Each database member runs in its own network namespace on a test bridge; the operator and the API stay in the
root namespace (test_node_faults.py stages it for WHM nodes). Writers follow the recorded primary (the
applications library, as the application account)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.faults.report import Outcome, Recorder
from tests.faults.workload import Workload, judge
from tests.fixtures.kube import KubeAPI
from tests.fixtures.netns import Host, StartNetnsServers, TestNetwork
from tests.fixtures.operator_process import OperatorProcess, StartOperator
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.apps.pool import ReadWritePool
from whm_ha.apps.topology import KubernetesTopology
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB
from whm_ha.demo import checkers
from whm_ha.demo.stack import DEMO_SCHEMA

pytestmark = pytest.mark.mariadb

SERVER_ARGS = ("--read-only=ON", "--init-rpl-role=SLAVE")
PERIOD, THRESHOLD, NET_TIMEOUT = 1, 2, 2
DB_BOUND = PERIOD * (THRESHOLD + 1) + NET_TIMEOUT + 2
"""Blackhole to a writable new primary (README): the replicas give the source up after their net timeout
(min(4, periodSeconds x failureThreshold), at least 2 s) and the operator after failureThreshold failed
inspections, confirmed at the next one; stopping the replicas, which wait on the vanished source, takes up to
the net timeout; fencing and opening the candidate, as for a killed primary, up to 2 s."""


@dataclass
class Databases:
    api: client.ApiClient
    namespace: str
    hosts: list[Host]
    servers: list[LocalMariaDB]
    operator: OperatorProcess | None = None

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create(self, **overrides: Any) -> None:
        core = client.CoreV1Api(self.api)
        for name, user, password in (("db-admin", ADMIN_USER, ADMIN_PASSWORD), ("db-repl", "repl", "repl-pw")):
            core.create_namespaced_secret(
                self.namespace, {"metadata": {"name": name}, "stringData": {"username": user, "password": password}}
            )
        spec = {
            "primary": "db-0",
            "members": [
                {"name": h.name, "host": h.address, "port": s.port}
                for h, s in zip(self.hosts, self.servers, strict=True)
            ],
            "credentialsSecret": {"name": "db-admin"},
            "replicationSecret": {"name": "db-repl"},
            "applicationAccount": {"schemas": ["whm_ha", DEMO_SCHEMA]},
            "semiSync": True,
            "periodSeconds": PERIOD,
            "failureThreshold": THRESHOLD,
            "minIntervalSeconds": 0,
            **overrides,
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLReplication",
            "metadata": {"name": "db"},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "mysqlreplications", body)

    def status(self) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "mysqlreplications", "db")
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def healthy_on(self, member: str) -> bool:
        status = self.status()
        return bool(
            status.get("currentPrimary") == member
            and status.get("phase") == "Healthy"
            and status.get("readyReplicas") == 2
        )

    def _ask(self, index: int, check: Callable[[checkers.Connection], bool]) -> bool:
        """``check`` on a fresh connection to the server (1 s to connect; a failure to connect is False)."""
        try:
            conn = self.servers[index].connect(connect_timeout=1)
        except pymysql.MySQLError:
            return False
        try:
            return check(conn)
        finally:
            conn.close()

    def writable(self, index: int) -> bool:
        """Read-only off on the server."""
        return self._ask(index, lambda conn: not checkers.fenced(conn, "mariadb"))

    def fenced(self, index: int) -> bool:
        """Fenced as the product fences (a server that does not answer is not, yet)."""
        return self._ask(index, lambda conn: checkers.fenced(conn, "mariadb"))

    def application(self) -> tuple[str, str]:
        data = client.CoreV1Api(self.api).read_namespaced_secret("db-app", self.namespace).data or {}
        user, password = (base64.b64decode(data[k]).decode() for k in ("username", "password"))
        return user, password

    def pool(self) -> ReadWritePool:
        user, password = self.application()
        topology = KubernetesTopology(self.api, self.namespace, "db", refresh=0.2)
        return ReadWritePool(topology, user=user, password=password, acquire_timeout=60, connect_timeout=1)

    def workload(self, folder: Path) -> Workload:
        """The scenario's writers (tests/faults/workload.py), started on the primary db-0."""
        ports = [server.port for server in self.servers]
        return Workload.start(self.pool(), self.hosts, ports, *self.application(), folder)

    def primary(self) -> int:
        """The index of the member the status names primary."""
        return int(self.status()["currentPrimary"].rsplit("-", 1)[1])


@pytest.fixture
def start_databases(
    test_network: TestNetwork,
    netns_mariadb: StartNetnsServers,
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    operator_process: StartOperator,
) -> Callable[..., Databases]:
    """``start_databases(**spec)``: three members in their namespaces, the replication Healthy on db-0.
    ``prepare(world)`` runs once the servers answer, before the replication is created (slow links, which carry
    only connections opened after them, go in there); with ``operator_in`` (a host, and a kubeconfig that reaches
    the API from its namespace: `tests.fixtures.slow_links.namespace_kubeconfig`) the operator runs in that
    host's namespace, not the root one."""

    def start(
        *,
        prepare: Callable[[Databases], object] | None = None,
        operator_in: tuple[Host, Path] | None = None,
        **overrides: Any,
    ) -> Databases:
        hosts = [test_network.host(f"db-{i}") for i in range(3)]
        world = Databases(kube_client, kube_namespace, hosts, netns_mariadb(hosts, SERVER_ARGS))
        if prepare is not None:
            prepare(world)
        world.create(**overrides)
        if operator_in is None:
            world.operator = operator_process(kube_api.kubeconfig, kube_namespace)
        else:
            host, kubeconfig = operator_in
            world.operator = operator_process(kubeconfig, kube_namespace, netns=host.namespace)
        wait_for(lambda: world.healthy_on("db-0"), 60, "a Healthy replication on db-0")
        return world

    return start


@pytest.fixture
def databases(start_databases: Callable[..., Databases]) -> Databases:
    return start_databases()


@pytest.fixture
def workload(databases: Databases, tmp_path: Path) -> Iterator[Workload]:
    load = databases.workload(tmp_path)
    yield load
    load.stop()


def blackhole_primary(databases: Databases) -> tuple[str, float, float]:
    """Blackhole db-0; the new primary, when the fault began (wall clock) and the seconds until a member was
    writable again."""
    fault = time.time()
    databases.hosts[0].blackhole()
    wait_for(lambda: databases.writable(1) or databases.writable(2), DB_BOUND + 20, "a writable new primary")
    took = time.time() - fault
    status = wait_for(lambda: (s := databases.status()).get("currentPrimary") not in (None, "db-0") and s, 10, "status")
    print(f"blackhole to a writable new primary: {took:.2f}s (bound {DB_BOUND}s)")
    return str(status["currentPrimary"]), fault, took


def test_a_blackholed_primary_is_replaced_within_the_bound_and_no_acknowledged_write_is_lost(
    databases: Databases, workload: Workload, resilience: Recorder
) -> None:
    row = resilience.scenario("primary blackholed (every packet dropped)", "database")
    new, fault, took = blackhole_primary(databases)
    wait_for(workload.progressed(), 30, "the writers to go on on the new primary")
    row.recover = time.time() - fault
    row.detect = (workload.first_elsewhere(0, fault) or float("nan")) - fault
    record = databases.status()["promotionHistory"][0]
    row.outcome = f"{new} promoted within the bound ({DB_BOUND} s)"
    row.promotions = len(databases.status().get("promotionHistory", []))
    final = databases.servers[databases.primary()].connect()
    judge(workload, final, row, fault, None, databases.status(), writes_during=True)
    assert took <= DB_BOUND, f"{took:.1f}s to a writable new primary; bound {DB_BOUND}s"
    assert (record["from"], record["to"], record["type"]) == ("db-0", new, "automatic")
    assert record["unfenced"] == ["db-0"], record


def test_a_blackholed_primary_comes_back_read_only_and_rejoins(databases: Databases, workload: Workload) -> None:
    new, fault, _ = blackhole_primary(databases)
    wait_for(workload.progressed(), 30, "the writers to go on on the new primary")
    databases.hosts[0].heal()
    wait_for(lambda: databases.fenced(0) and databases.servers[0].running, 10, "db-0 fenced once it answers")
    status = wait_for(
        lambda: (
            (s := databases.status())
            and {m["name"]: m["role"] for m in s.get("members", [])}.get("db-0") in ("Replica", "Quarantined")
            and s
        ),
        30,
        "db-0 to rejoin, or to be quarantined",
    )
    roles = {m["name"]: m["role"] for m in status["members"]}
    print(f"db-0 after the heal: {roles['db-0']}")
    if roles["db-0"] == "Quarantined":
        # It may hold a commit that was in flight when the packets stopped: never acknowledged to the writer.
        errant = next(c for c in status["conditions"] if c["type"] == "ErrantTransactions")
        assert errant["status"] == "True" and "db-0" in errant["message"]
    else:
        wait_for(lambda: databases.healthy_on(new), 30, f"Healthy on {new} with db-0 replicating")
    final = databases.servers[int(new[-1])].connect()
    judge(workload, final, Outcome(new, "database"), fault, None, databases.status(), writes_during=True)
    assert databases.fenced(0)


def test_a_replica_cut_off_from_the_primary_long_before_is_not_promoted(
    start_databases: Callable[..., Databases],
) -> None:
    """Asynchronous replication; db-2 cannot reach db-0 (a one-sided cut) while the operator can, and misses
    every commit since. Then db-1 and db-0 die: db-2 "lost the primary" too, but long ago. Promoting it would
    drop everything since the cut: the failover is blocked and says why."""
    world = start_databases(semiSync=False)
    world.hosts[2].cut_from(world.hosts[0])
    wait_for(
        lambda: any(m["name"] == "db-2" and not m.get("ioRunning") for m in world.status().get("members", [])),
        20,
        "db-2 reported not receiving",
    )
    reported = time.monotonic()
    conn = world.servers[0].connect()
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS cut")  # a commit db-2 never gets
    conn.close()
    world.servers[1].kill()
    window = PERIOD * THRESHOLD + 1
    wait_for(lambda: time.monotonic() > reported + window, window + 5, "the cut to be older than the window")
    world.servers[0].kill()
    stale = "db-2 left out, stale: not receiving from db-0 since"
    status = wait_for(
        lambda: (s := world.status()) and stale in s.get("reason", "") and s, 30, "the failover refused as stale"
    )
    assert status["currentPrimary"] == "db-0" and world.fenced(2) and "promotion" not in status
