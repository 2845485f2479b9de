"""A primary whose host vanishes from the network: its packets are dropped (nftables in its namespace), so every
connect and read waits for its timeout, as with a dead host or a cut link, and nobody gets a reset.

Each database member runs in its own network namespace on a test bridge; the operator and the API stay in the
root namespace (test_node_faults.py stages it for WHM nodes). Writers follow the recorded primary (the
applications library, as the application account)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.faults.report import Outcome, Recorder
from tests.fixtures.kube import KubeAPI
from tests.fixtures.netns import Host, StartNetnsServers, TestNetwork
from tests.fixtures.operator_process import OperatorProcess, StartOperator
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.apps.pool import ReadWritePool
from whm_ha.apps.topology import KubernetesTopology
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB
from whm_ha.demo.stack import DEMO_SCHEMA
from whm_ha.demo.tour import Writer

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

    def writable(self, index: int) -> bool:
        """Read on the server (1 s to answer): read-only off."""
        try:
            conn = self.servers[index].connect(connect_timeout=1)
        except pymysql.MySQLError:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.read_only")
                row = cur.fetchone()
            return bool(row and int(row[0]) == 0)
        finally:
            conn.close()

    def pool(self) -> ReadWritePool:
        secret = client.CoreV1Api(self.api).read_namespaced_secret("db-app", self.namespace)
        data = secret.data or {}
        user, password = (base64.b64decode(data[k]).decode() for k in ("username", "password"))
        topology = KubernetesTopology(self.api, self.namespace, "db", refresh=0.2)
        return ReadWritePool(topology, user=user, password=password, acquire_timeout=60, connect_timeout=1)

    def ids(self, index: int) -> set[int]:
        conn = self.servers[index].connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT id FROM {DEMO_SCHEMA}.writes")
                return {row[0] for row in cur.fetchall()}
        finally:
            conn.close()


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
def writer(databases: Databases) -> Iterator[Writer]:
    pool = databases.pool()
    work = Writer(pool)
    work.create_table()
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    wait_for(lambda: len(work.acknowledged) >= 50, 30, "50 acknowledged writes")
    yield work
    work.stop.set()
    thread.join(90)
    pool.close()


def progressed(writer: Writer) -> Callable[[], bool]:
    """A condition: the writer had an acknowledged write after this call."""
    count = len(writer.acknowledged)
    return lambda: len(writer.acknowledged) > count


def blackhole_primary(databases: Databases, writer: Writer) -> tuple[str, float]:
    """Blackhole db-0 under the writer; the new primary and the seconds until it was writable."""
    databases.hosts[0].blackhole()
    started = time.monotonic()
    wait_for(lambda: databases.writable(1) or databases.writable(2), DB_BOUND + 20, "a writable new primary")
    took = time.monotonic() - started
    status = wait_for(lambda: (s := databases.status()).get("currentPrimary") not in (None, "db-0") and s, 10, "status")
    print(f"blackhole to a writable new primary: {took:.2f}s (bound {DB_BOUND}s)")
    return str(status["currentPrimary"]), took


def test_a_blackholed_primary_is_replaced_within_the_bound_and_no_acknowledged_write_is_lost(
    databases: Databases, writer: Writer, resilience: Recorder
) -> None:
    started = time.monotonic()
    new, took = blackhole_primary(databases, writer)
    wait_for(progressed(writer), 30, "the writer to go on on the new primary")
    recover = time.monotonic() - started
    record = databases.status()["promotionHistory"][0]
    acknowledged = list(writer.acknowledged)  # before reading the primary
    lost = sorted(set(acknowledged) - databases.ids(int(new[-1])))
    resilience.record(
        Outcome(
            scenario="primary blackholed (every packet dropped)",
            component="database",
            outcome=f"{new} promoted within the bound ({DB_BOUND} s)",
            detect=took,
            recover=recover,
            acked=len(acknowledged),
            lost=len(lost),
            promotions=len(databases.status().get("promotionHistory", [])),
        )
    )
    assert took <= DB_BOUND, f"{took:.1f}s to a writable new primary; bound {DB_BOUND}s"
    assert (record["from"], record["to"], record["type"]) == ("db-0", new, "automatic")
    assert record["unfenced"] == ["db-0"], record
    assert lost == [], f"{len(lost)} of {len(acknowledged)} acknowledged writes lost"


def test_a_blackholed_primary_comes_back_read_only_and_rejoins(databases: Databases, writer: Writer) -> None:
    new, _ = blackhole_primary(databases, writer)
    wait_for(progressed(writer), 30, "the writer to go on on the new primary")
    databases.hosts[0].heal()
    wait_for(lambda: not databases.writable(0) and databases.servers[0].running, 10, "db-0 fenced once it answers")
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
    acknowledged = list(writer.acknowledged)
    assert sorted(set(acknowledged) - databases.ids(int(new[-1]))) == []
    assert not databases.writable(0)


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
    assert status["currentPrimary"] == "db-0" and not world.writable(2) and "promotion" not in status
