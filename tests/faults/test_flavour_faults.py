"""Database faults on every flavour: MariaDB 10.11 (the host's), MariaDB 11.8 and MySQL 9.7 (chrooted roots,
``--databases``), each member in its own network namespace, written to by the one workload
(tests/faults/workload.py). A blackholed primary must be replaced within the bound with no acknowledged write
lost, and come back fenced when its packets flow again; on MySQL, a primary isolated while a privileged client
writes beside it must acknowledge nothing that is then lost."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pymysql
import pytest
from kubernetes import client

from tests.faults.report import Recorder
from tests.faults.test_vanished_primary import DB_BOUND, PERIOD, THRESHOLD
from tests.faults.workload import Workload, judge
from tests.fixtures.kube import KubeAPI
from tests.fixtures.netns import Host, StartNetnsFlavourServers, TestNetwork
from tests.fixtures.operator_process import StartOperator
from tests.integration.test_database_flavours import PRIVILEGED
from tests.integration.test_operator_flavours import World
from tests.kube_helpers import wait_for
from whm_ha.apps.pool import ReadWritePool
from whm_ha.apps.topology import KubernetesTopology
from whm_ha.db.local_server import Flavour
from whm_ha.demo import checkers
from whm_ha.demo.stack import DEMO_SCHEMA
from whm_ha.mysql.dialect import dialect_for

pytestmark = pytest.mark.mariadb


def is_fenced(world: World, member: str) -> bool:
    """Fenced as the product fences (MySQL: super_read_only), as a fresh client sees it; a connection that fails
    (CI once saw MySQL 9.7 drop a TLS handshake just after the link healed) counts as not yet."""
    try:
        return world.fenced(member)
    except pymysql.MySQLError:
        return False


@dataclass
class Staged:
    """Three members of the test's flavour in their namespaces, Healthy on m0 with semi-sync, the application
    account granted the demo schema the writers write to."""

    world: World
    hosts: list[Host]
    flavour: Flavour
    root_address: str
    """The root namespace's address on the test bridge (the operator's and the API's side)."""
    api: client.ApiClient

    def workload(self, folder: Path) -> Workload:
        """The scenario's writers (`Workload`): through the applications pool and beside each member."""
        user, password = self.world.application()
        topology = KubernetesTopology(self.api, self.world.namespace, "db", refresh=0.2)
        pool = ReadWritePool(topology, user=user, password=password, acquire_timeout=60, connect_timeout=1)
        ports = [server.port for server in self.world.servers]
        return Workload.start(pool, self.hosts, ports, user, password, folder)


@pytest.fixture
def staged(
    test_network: TestNetwork,
    netns_database_servers: StartNetnsFlavourServers,
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    operator_process: StartOperator,
) -> Staged:
    if kube_api.tier != "sandbox":
        pytest.skip("the fault tier runs on the sandbox API")
    flavour = netns_database_servers.flavour
    hosts = [test_network.host(f"db-{i}") for i in range(3)]
    fenced = ("--read-only=ON", "--init-rpl-role=SLAVE") if flavour.product == "mariadb" else ("--super-read-only=ON",)
    world = World(kube_client, kube_namespace, netns_database_servers(hosts, fenced), dialect_for(flavour.product))
    schemas = {"schemas": ["whm_ha", "app", DEMO_SCHEMA]}  # the writers' table is the demo's
    world.create(semiSync=True, periodSeconds=PERIOD, failureThreshold=THRESHOLD, applicationAccount=schemas)
    operator_process(kube_api.kubeconfig, kube_namespace)
    world.healthy_on("m0")
    return Staged(world, hosts, flavour, test_network.root_address, kube_client)


def test_a_blackholed_primary_is_replaced_on_every_flavour(
    staged: Staged, resilience: Recorder, tmp_path: Path
) -> None:
    world, hosts, flavour = staged.world, staged.hosts, staged.flavour
    row = resilience.scenario(f"primary blackholed, {flavour.name}", "database")
    load = staged.workload(tmp_path)
    fault = time.time()
    hosts[0].blackhole()
    status = world.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), DB_BOUND + 20, "a new primary")
    promoted = time.time() - fault  # the bound is to a new primary in status; detect adds the writers' first ack
    wait_for(lambda: load.first_elsewhere(0, fault) is not None, 30, "a write acknowledged by the new primary")
    row.detect = (load.first_elsewhere(0, fault) or fault) - fault
    wait_for(load.progressed(), 30, "the pool's writes on the new primary")
    row.recover = time.time() - fault
    new = status["currentPrimary"]
    hosts[0].heal()
    healed = time.time()
    wait_for(lambda: is_fenced(world, "m0"), 30, "m0 fenced once its packets flow again")
    row.outcome = f"{new} promoted after {promoted:.1f} s (bound {DB_BOUND} s); m0 fenced after healing"
    row.promotions = len(world.status().get("promotionHistory", []))
    judge(load, world.servers[int(new[1:])].connect(), row, fault, healed, world.status(), writes_during=True)
    assert promoted <= DB_BOUND, f"{promoted:.1f}s to a new primary; bound {DB_BOUND}s"


def test_a_primary_isolated_with_a_privileged_client_beside_it_acknowledges_nothing_that_is_then_lost(
    staged: Staged, resilience: Recorder, tmp_path: Path
) -> None:
    """A client beside m0 that is not ours, on 8 connections, as an account with global privileges
    (PRIVILEGED: on MySQL SUPER and CONNECTION_ADMIN, which offline_mode does not disconnect; on MariaDB SUPER,
    which read_only binds, unlike READ ONLY ADMIN, which no fence can bind there). m0 is cut off from the operator
    and both replicas; the replicas elect another; when the partition heals, fencing m0 ends the commits waiting
    there for an acknowledgement: none may reach the client as acknowledged (issue 28, item 5)."""
    world, hosts = staged.world, staged.hosts
    row = resilience.scenario(
        f"primary isolated, a privileged client beside it writing, {staged.flavour.name}", "database"
    )
    for statement in (
        "CREATE USER 'ops'@'%' IDENTIFIED BY 'ops-pw'",
        f"GRANT {PRIVILEGED[staged.flavour.product]} ON *.* TO 'ops'@'%'",
    ):
        world.sql("m0", statement)
    load = staged.workload(tmp_path)
    side = load.add_beside(0, hosts[0], world.servers[0].port, ("ops", "ops-pw"), 8, tmp_path)
    fault = time.time()
    for peer in (staged.root_address, hosts[1].address, hosts[2].address):
        hosts[0].cut_from(peer)
    status = world.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), DB_BOUND + 20, "a new primary")
    promoted_at = datetime.fromisoformat(status["lastPromotionTime"].replace("Z", "+00:00")).timestamp()
    wait_for(lambda: load.first_elsewhere(0, fault) is not None, 30, "a write acknowledged by the new primary")
    row.detect = (load.first_elsewhere(0, fault) or fault) - fault
    wait_for(load.progressed(), 30, "the pool's writes on the new primary")
    row.recover = time.time() - fault
    wait_for(lambda: time.time() > fault + 10, 20, "10 s of partition")
    hosts[0].heal()
    healed = time.time()
    wait_for(lambda: is_fenced(world, "m0"), 30, "m0 fenced once the partition heals")
    fenced = time.time() - healed
    settled = world.wait(
        lambda s: not s.get("promotion") and world.roles(s).get("m0") in ("Replica", "Quarantined"),
        30,
        "m0 a replica again, or quarantined",
    )
    final = settled["currentPrimary"]
    conn = world.servers[int(final[1:])].connect()
    try:
        late = checkers.missing(side.acks().between(promoted_at), checkers.present_ids(conn))
    finally:
        conn.close()
    row.outcome = f"{final} promoted; m0 fenced {fenced:.1f} s after healing, {world.roles(settled)['m0'].lower()}"
    row.promotions = len(settled.get("promotionHistory", []))
    if late:
        row.limit = f"{len(late)} writes of the privileged client acknowledged by m0 after the promotion, lost"
    judge(load, world.servers[int(final[1:])].connect(), row, fault, healed, world.status(), writes_during=True)
    assert late == [], f"m0 acknowledged {len(late)} writes of the privileged client after {final} was promoted"
