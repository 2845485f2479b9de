"""``whm-ha operator`` for MySQLReplication on every supported server: MariaDB 10.11 (the host's), MariaDB 11.8
and MySQL 9.7 (chrooted roots, ``--databases``). A real operator process, three real servers of the flavour and
the sandbox API: setup, a primary killed under writes, a switchover, errant transactions, and a promotion left
past its point of no return by a killed operator.

Every server starts read-only (MySQL also ``super_read_only``), so that only the operator opens a member.
MariaDB also starts with ``--init-rpl-role=SLAVE``: a crashed semi-sync primary then drops at recovery the
commits no replica acknowledged. MySQL has no such setting: its old primary may come back holding commits
nobody acknowledged, and is then quarantined, named, rather than rejoined.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.fixtures.database_tls import PERFORMANCE_SCHEMA, TestCA, dump_ciphers
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartFlavourServers
from tests.fixtures.operator_process import OperatorProcess, StartOperator
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, TLS_CA_FILE, LocalServer, ServerTLS
from whm_ha.demo.checkers import Direct, Writers, fenced, missing
from whm_ha.mysql.dialect import Dialect, dialect_for

# The whole file is the flavour matrix's (make test-databases), the host's MariaDB 10.11 too: it keeps make test
# within its 15 minutes; test_operator_replication and test_mysql_actions cover 10.11 there.
pytestmark = [pytest.mark.mariadb, pytest.mark.databases]

FAST = {"periodSeconds": 1, "failureThreshold": 2, "minIntervalSeconds": 0}


class World:
    """MySQLReplication ``db`` over m0..m2 of one flavour (m0 the bootstrap primary), and helpers."""

    def __init__(self, api: client.ApiClient, namespace: str, servers: list[LocalServer], dialect: Dialect) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.servers = servers
        self.dialect = dialect
        self.operator: OperatorProcess | None = None

    def create(self, **spec: Any) -> None:
        for name, user, password in (("db-admin", ADMIN_USER, ADMIN_PASSWORD), ("db-repl", "repl", "repl-pw")):
            self.core.create_namespaced_secret(
                self.namespace, {"metadata": {"name": name}, "stringData": {"username": user, "password": password}}
            )
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLReplication",
            "metadata": {"name": "db"},
            "spec": {
                "flavor": self.dialect.flavor,
                "primary": "m0",
                "members": [{"name": f"m{i}", "host": s.host, "port": s.port} for i, s in enumerate(self.servers)],
                "credentialsSecret": {"name": "db-admin"},
                "replicationSecret": {"name": "db-repl"},
                "applicationAccount": {"schemas": ["whm_ha", "app"]},
                **FAST,
                **spec,
            },
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "mysqlreplications", body)

    def request_promotion(self, member: str, request_id: str) -> None:
        """Ask the operator to switch over to ``member`` (the ``ha.whm.io/promote`` annotation)."""
        annotations = {"ha.whm.io/promote": member, "ha.whm.io/request-id": request_id}
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mysqlreplications", "db", {"metadata": {"annotations": annotations}}
        )

    def patch_spec(self, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mysqlreplications", "db", {"spec": spec}
        )

    def status(self) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "mysqlreplications", "db")
        return obj.get("status") or {}  # type: ignore[no-any-return]

    def wait(self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> dict[str, Any]:
        status: dict[str, Any] = wait_for(lambda: (s := self.status()) and predicate(s) and s, timeout, what)
        return status

    def healthy_on(self, member: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(
            lambda s: s.get("currentPrimary") == member and s.get("phase") == "Healthy" and s.get("readyReplicas") == 2,
            timeout,
            f"Healthy on {member}",
        )

    def roles(self, status: dict[str, Any] | None = None) -> dict[str, str]:
        """The members' roles in ``status`` (a wait's predicate passes the one it was given: read again, the roles
        could come from a later status than the one the wait returns), else in the status read now."""
        return {m["name"]: m["role"] for m in (status or self.status()).get("members", [])}

    def sql(self, member: str, statement: str) -> list[tuple[Any, ...]]:
        return self.servers[int(member[1:])].query(statement)

    def fenced(self, member: str) -> bool:
        """Fenced as the product fences: MySQL's super_read_only, not read_only alone."""
        conn = self.servers[int(member[1:])].connect()
        try:
            return fenced(conn, self.dialect.flavor)
        finally:
            conn.close()

    def writable(self, member: str) -> bool:
        return bool(self.sql(member, "SELECT @@GLOBAL.read_only")[0][0] == 0)

    def ids(self, member: str) -> set[int]:
        return {int(r[0]) for r in self.sql(member, "SELECT id FROM app.t")}

    def application(self) -> tuple[str, str]:
        data = self.core.read_namespaced_secret("db-app", self.namespace).data or {}
        return base64.b64decode(data["username"]).decode(), base64.b64decode(data["password"]).decode()


def app_writers(server: LocalServer, user: str, password: str, first: int = 1) -> Writers:
    """8 writers inserting into app.t on one member as the application account from id ``first`` on, each until
    an insert fails."""
    source = Direct(server.host, server.port, user, password, read_timeout=30)
    return Writers(source, first=first, table="app.t", until_error=True).start(warm_up=50)


class SemiSyncSampler(threading.Thread):
    """Reads ``@@read_only`` and then the semi-sync source side on every member, over and over as fast as one
    session each allows, and records every sample showing a member writable with its source side off: a commit
    made there is acknowledged at once, on no replica."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True)
        self.servers = world.servers
        self.query = f"SELECT @@GLOBAL.read_only, @@GLOBAL.{world.dialect.semi_sync_variables['source_enabled']}"
        self.samples = 0
        self.violations: list[str] = []
        self.phase = "bootstrap"
        """What the test is doing, named in each violation."""
        self._halt = threading.Event()

    def run(self) -> None:
        sessions: dict[int, Any] = {}
        while not self._halt.is_set():
            for index, server in enumerate(self.servers):
                try:
                    if index not in sessions:
                        sessions[index] = server.connect(connect_timeout=1)
                    with sessions[index].cursor() as cur:
                        cur.execute(self.query)
                        read_only, source_side = cur.fetchone()
                except pymysql.MySQLError:
                    sessions.pop(index, None)  # down or restarting: nothing to sample
                    continue
                self.samples += 1
                if int(read_only) == 0 and int(source_side) == 0:
                    self.violations.append(f"{self.phase}: m{index} writable without semi-sync")
        for conn in sessions.values():
            conn.close()

    def stop(self) -> list[str]:
        self._halt.set()
        self.join(10)
        return self.violations


@pytest.fixture
def world(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    database_servers: StartFlavourServers,
    operator_process: StartOperator,
) -> Callable[..., World]:
    """``world(watch=None, ca=None, **spec)``: three servers of the flavour, the replication created, the operator
    started, Healthy. With ``ca``, the servers serve certificates of it and the replication has TLS on, members
    refusing plaintext clients."""
    if kube_api.tier != "sandbox":
        pytest.skip("the flavour matrix runs on the sandbox API")
    flavour = database_servers.flavour
    fenced = ("--read-only=ON", "--init-rpl-role=SLAVE") if flavour.product == "mariadb" else ("--super-read-only=ON",)

    def start(watch: Callable[[World], object] | None = None, ca: TestCA | None = None, **spec: Any) -> World:
        """``watch``, if given, is called with the servers up and the replication created, before the operator."""
        if ca is None:
            servers = database_servers(3, fenced)
        else:
            servers = database_servers(3, fenced + PERFORMANCE_SCHEMA, tls=ca.server_tls())
            secret = {"metadata": {"name": "db-ca"}, "stringData": {"ca.crt": ca.pem}}
            client.CoreV1Api(kube_client).create_namespaced_secret(kube_namespace, secret)
            spec["tls"] = {"enabled": True, "caSecret": {"name": "db-ca"}, "caFile": TLS_CA_FILE}
            spec["tls"]["requireSecureTransport"] = True
        created = World(kube_client, kube_namespace, servers, dialect_for(flavour.product))
        created.create(**spec)
        if watch is not None:
            watch(created)
        created.operator = operator_process(kube_api.kubeconfig, kube_namespace)
        created.healthy_on("m0")
        created.sql("m0", "CREATE DATABASE IF NOT EXISTS app")
        created.sql("m0", "CREATE TABLE IF NOT EXISTS app.t (id INT PRIMARY KEY)")
        return created

    return start


def test_setup_then_a_primary_killed_under_writes_loses_no_acknowledged_row(world: Callable[..., World]) -> None:
    db = world(semiSync=True)
    assert db.roles() == {"m0": "Primary", "m1": "Replica", "m2": "Replica"}
    assert db.fenced("m1") and db.fenced("m2")
    writers = app_writers(db.servers[0], *db.application())
    wait_for(lambda: len(writers.acks) >= 200, 30, "200 acknowledged inserts")
    killed = time.monotonic()
    db.servers[0].kill()
    assert writers.join(30), "writers still writing to a killed primary"
    status = db.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a new primary")
    took = time.monotonic() - killed
    new = status["currentPrimary"]
    print(f"{db.dialect.flavor}: kill -9 to new primary recorded {took:.2f}s; {len(writers.acks)} rows acknowledged")
    assert took < 10
    assert missing(writers.acks.all(), db.ids(new)) == [], "every acknowledged insert survived"
    db.servers[0].start()
    assert db.fenced("m0"), "the old primary comes back fenced"
    settled = db.wait(
        lambda s: s.get("phase") in ("Healthy", "Degraded") and db.roles(s).get("m0") in ("Replica", "Quarantined"),
        40,
        "m0 back as a replica, or quarantined if it kept commits nobody acknowledged",
    )
    m0 = next(m for m in settled["members"] if m["name"] == "m0")
    if m0["role"] == "Quarantined":
        assert db.dialect.flavor == "mysql", f"MariaDB drops unacknowledged commits at recovery: {m0}"
        assert "errant" in m0.get("lastError", ""), m0


def test_a_switchover_loses_no_acknowledged_row(world: Callable[..., World]) -> None:
    db = world(semiSync=True)
    writers = app_writers(db.servers[0], *db.application())
    wait_for(lambda: len(writers.acks) >= 100, 30, "100 acknowledged inserts")
    db.request_promotion("m2", "flavour-1")
    db.healthy_on("m2", timeout=30)
    assert writers.join(30), "writers still writing to the fenced primary"
    assert missing(writers.acks.all(), db.ids("m2")) == []
    assert db.status()["lastRequest"]["result"] == "Succeeded"
    assert db.writable("m2") and db.fenced("m0") and db.fenced("m1")


def test_errant_transactions_on_a_replica_are_quarantined(world: Callable[..., World]) -> None:
    db = world()
    for statement in (*db_open(db.dialect), "CREATE DATABASE errant_here", *db_fence(db.dialect)):
        db.sql("m1", statement)
    status = db.wait(lambda s: db.roles(s).get("m1") == "Quarantined", 20, "m1 quarantined")
    m1 = next(m for m in status["members"] if m["name"] == "m1")
    assert "errant" in m1.get("lastError", ""), m1


def test_a_promotion_left_past_its_point_of_no_return_is_finished(world: Callable[..., World]) -> None:
    db = world()
    assert db.operator is not None
    db.operator.kill()
    dialect = db.dialect
    for sql in dialect.set_read_only(True):
        db.sql("m0", sql.text)
    for statement in (dialect.stop_replica().text, dialect.reset_replica_all().text, *db_open(dialect)):
        db.sql("m1", statement)
    obj = db.custom.get_namespaced_custom_object(GROUP, VERSION, db.namespace, "mysqlreplications", "db")
    record = {"from": "m0", "to": "m1", "type": "manual", "step": "Promoting", "reason": "test"}
    db.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        db.namespace,
        "mysqlreplications",
        "db",
        {
            "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
            "status": {"promotion": {**record, "detectedAt": "2026-01-01T00:00:00Z"}},
        },
    )
    db.operator.start()
    db.healthy_on("m1", timeout=40)
    assert db.writable("m1") and db.fenced("m0") and db.fenced("m2")


def test_no_member_accepts_writes_before_its_semi_sync_source_side_is_on(world: Callable[..., World]) -> None:
    """With semiSync a commit is acknowledged only once a replica has it, so no member may be writable while its
    source side is off. Sampled on every member from before the bootstrap, through a kill -9 failover, the old
    primary's return, a switchover, and a primary found read-only with its source side off (as after a restart)
    and reopened."""
    samplers: list[SemiSyncSampler] = []

    def watch(created: World) -> None:
        samplers.append(SemiSyncSampler(created))
        samplers[0].start()

    db = world(watch, semiSync=True)
    (sampler,) = samplers
    try:
        sampler.phase = "failover"
        db.servers[0].kill()
        status = db.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a new primary")
        new = status["currentPrimary"]
        db.servers[0].start()
        db.wait(lambda s: db.roles().get("m0") in ("Replica", "Quarantined"), 40, "m0 back")
        other = ({"m1", "m2"} - {new}).pop()
        sampler.phase = "switchover"
        db.request_promotion(other, "semi-1")
        db.wait(lambda s: s.get("currentPrimary") == other and db.writable(other), 30, f"{other} primary")
        sampler.phase = "reopen"
        # One statement: an operator inspecting between a fence and a source side turned off in two would reopen the
        # member in between, and the test itself would leave it writable with the source side off.
        (fence,) = db_fence(db.dialect)
        db.sql(other, f"{fence}, GLOBAL {db.dialect.semi_sync_variables['source_enabled']} = OFF")
        wait_for(lambda: db.writable(other), 30, f"{other} reopened")
    finally:
        violations = sampler.stop()
    print(f"{db.dialect.flavor}: {sampler.samples} samples of read_only and the semi-sync source side")
    assert sampler.samples > 1000
    counts = {phase: violations.count(phase) for phase in dict.fromkeys(violations)}
    assert violations == [], f"samples writable without semi-sync: {counts}"


def db_open(dialect: Dialect) -> list[str]:
    return [sql.text for sql in dialect.set_read_only(False)]


def db_fence(dialect: Dialect) -> list[str]:
    return [sql.text for sql in dialect.set_read_only(True)]


def test_with_tls_a_failover_a_rejoin_and_a_switchover_keep_every_channel_encrypted(
    world: Callable[..., World],
) -> None:
    """The core of this suite with ``spec.tls`` on: the operator's sessions verify the members' certificates and
    host names, every replication channel is TLS and verified (the replica's status, and the cipher of the session
    the primary serves each replica), every member refuses plaintext clients (again once the killed primary is
    back), and no acknowledged row is lost through a CA rotation, a kill -9 failover and a switchover. The CA is
    rotated under writes before the failover (the README's three steps): nothing fails or changes role meanwhile,
    and the failover and switchover then run on the new CA alone."""
    old = TestCA()
    db = world(ca=old, semiSync=True)
    assert_encrypted(db, "m0")
    writers = app_writers(db.servers[0], *db.application())
    wait_for(lambda: len(writers.acks) >= 200, 30, "200 acknowledged inserts")
    rotate_ca(db, old, TestCA(), writers)
    assert writers.errors == [] and db.status()["currentPrimary"] == "m0"
    assert not db.status().get("promotionHistory"), "the rotation caused a promotion"
    db.servers[0].kill()
    assert writers.join(30), "writers still writing to a killed primary"
    new = db.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a new primary")["currentPrimary"]
    assert missing(writers.acks.all(), db.ids(new)) == [], "every acknowledged insert survived the failover"
    db.servers[0].start()  # require_secure_transport is off again: the operator sets it
    other = ({"m1", "m2"} - {new}).pop()
    settled = ("Healthy", "Degraded")  # Degraded: a MySQL m0 back with unacknowledged commits, quarantined
    db.wait(lambda s: s.get("phase") in settled and db.roles(s).get("m0") in ("Replica", "Quarantined"), 40, "m0 back")
    assert_encrypted(db, new)
    writers = app_writers(db.servers[int(new[1:])], *db.application(), first=1_000_000)
    wait_for(lambda: len(writers.acks) >= 100, 30, "100 acknowledged inserts")
    db.request_promotion(other, "tls-1")
    db.wait(lambda s: s.get("currentPrimary") == other and s.get("phase") in settled, 40, f"{other} primary")
    assert writers.join(30), "writers still writing to the fenced primary"
    assert missing(writers.acks.all(), db.ids(other)) == [], "every acknowledged insert survived the switchover"
    assert db.status()["lastRequest"]["result"] == "Succeeded"
    assert_encrypted(db, other)


def rotate_ca(db: World, old: TestCA, new: TestCA, writers: Writers) -> None:
    """The CA Secret and every member's files changed, then every member reloads them, in three steps: both CAs
    trusted, certificates of the new CA, the new CA alone; each step waits for a write acknowledged after it and
    for the operator to find every member."""
    bundle = old.pem + new.pem
    steps: list[tuple[str, Callable[[ServerTLS], ServerTLS]]] = [
        (bundle, lambda served: ServerTLS(ca=bundle, cert=served.cert, key=served.key)),
        (bundle, lambda _: new.server_tls(trusted=bundle)),
        (new.pem, lambda _: new.server_tls()),
    ]
    for trusted, files in steps:
        encoded = base64.b64encode(trusted.encode()).decode()
        db.core.patch_namespaced_secret("db-ca", db.namespace, {"data": {"ca.crt": encoded}})
        for server in db.servers:
            assert server.tls is not None
            server.install_tls(files(server.tls))
            server.query(db.dialect.reload_tls().text)
        wait_for(writers.acks.progressed(), 30, "a write acknowledged after the step")
        db.wait(lambda s: s.get("phase") == "Healthy" and all(m.get("reachable") for m in s["members"]), 30, "Healthy")


def test_secure_transport_turned_off_before_tls_leaves_the_operator_every_member(
    world: Callable[..., World],
) -> None:
    """The README's two steps to turn TLS off: requireSecureTransport false, and the operator sets
    require_secure_transport OFF on every member (TLS still on, it reaches them); then TLS off, and its plaintext
    sessions still reach every member: a failover works. Left ON, every member would refuse the operator (3159)."""
    db = world(ca=TestCA())
    for index, server in enumerate(db.servers):
        wait_for(lambda server=server: refuses_plaintext(server), 20, f"m{index} refusing plaintext clients")
    db.patch_spec({"tls": {"requireSecureTransport": False}})
    for index, server in enumerate(db.servers):
        wait_for(lambda server=server: not refuses_plaintext(server), 20, f"m{index} accepting plaintext again")
    db.patch_spec({"tls": {"enabled": False}})
    db.servers[0].kill()
    db.wait(lambda s: s.get("currentPrimary") not in (None, "m0"), 30, "a failover over plaintext sessions")


def assert_encrypted(db: World, primary: str) -> None:
    """Every member refuses plaintext clients; once status shows ``primary`` primary, every replica replicates from
    it over TLS verifying it, and ``primary`` serves each one a TLS session."""
    for index, server in enumerate(db.servers):
        wait_for(lambda server=server: refuses_plaintext(server), 20, f"m{index} refusing plaintext clients")
    source = db.servers[int(primary[1:])]

    def channels() -> list[tuple[str, str, str | None]] | None:
        roles = db.roles()
        replicas = [name for name, role in roles.items() if role == "Replica"]
        if roles.get(primary) != "Primary" or not all(verified_channel(db, name, source) for name in replicas):
            return None
        sessions = dump_ciphers(source)
        return sessions if len(sessions) == len(replicas) else None

    sessions = wait_for(channels, 30, f"every replica replicating from {primary} over a verified TLS channel")
    assert all(cipher for _, _, cipher in sessions), f"plaintext replication sessions on {primary}: {sessions}"
    print(f"{db.dialect.flavor}: {primary} serves {len(sessions)} replicas over {sorted({c for *_, c in sessions})}")


def verified_channel(db: World, replica: str, source: LocalServer) -> bool:
    """``replica`` replicates from ``source`` over TLS, verifying it against the members' CA bundle."""
    conn = db.servers[int(replica[1:])].connect()
    with conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(db.dialect.replica_status().text)
        found = db.dialect.normalize_replica_status(cur.fetchone())
    return (
        found is not None
        and (found.source_port, found.io_running, found.tls, found.tls_verify) == (source.port, True, True, True)
        and found.tls_ca == TLS_CA_FILE
    )


def refuses_plaintext(server: LocalServer) -> bool:
    try:
        pymysql.connect(
            host=server.host, port=server.port, user=ADMIN_USER, password=ADMIN_PASSWORD, ssl_disabled=True
        ).close()
    except pymysql.OperationalError:
        return True
    return False
