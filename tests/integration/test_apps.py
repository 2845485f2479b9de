"""The application library: the read/write-splitting pool across a real promotion, the shared session store
and cache, on three real servers of each flavour (MariaDB 10.11 on the host; MariaDB 11.8 and MySQL 9.7 with
``--databases``) and a MySQLReplication status in the sandbox API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.fixtures.mariadb import StartFlavourServers
from tests.kube_helpers import GROUP, VERSION, create_replication, wait_for
from whm_ha.apps.cache import CacheError, SharedCache
from whm_ha.apps.pool import PoolError, ReadWritePool
from whm_ha.apps.sessions import MAX_PAYLOAD_BYTES, SessionError, SessionStore
from whm_ha.apps.topology import KubernetesTopology
from whm_ha.db.dsn import DSN
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalServer
from whm_ha.db.migrate import migrate
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL, Dialect, Source, dialect_for
from whm_ha.mysql.member import Credentials, Session, connect

pytestmark = pytest.mark.mariadb
APP_USER, APP_PASSWORD = "app", "app-password"
ADMIN = Credentials(ADMIN_USER, ADMIN_PASSWORD)


@dataclass
class Replicated:
    """db-0 primary, db-1 and db-2 replicas, the legacy schema, an application account without SUPER."""

    servers: list[LocalServer]
    custom: client.CustomObjectsApi
    namespace: str

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.servers[0].flavour.product)

    def session(self, index: int) -> Session:
        return connect(f"db-{index}", self.servers[index].host, self.servers[index].port, ADMIN, self.dialect)

    def publish(self, primary: int, lags: dict[int, int]) -> None:
        """Write the status as the operator would: who is primary, which replicas replicate with what lag."""
        members = []
        for index in range(3):
            if index == primary:
                members.append({"name": f"db-{index}", "role": "Primary", "reachable": True, "readOnly": False})
            else:
                members.append(
                    {
                        "name": f"db-{index}",
                        "role": "Replica",
                        "reachable": True,
                        "readOnly": True,
                        "ioRunning": True,
                        "sqlRunning": True,
                        "lagSeconds": lags.get(index, 0),
                    }
                )
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.namespace,
            "mysqlreplications",
            "db",
            {"status": {"currentPrimary": f"db-{primary}", "members": members}},
        )

    def pool(self, **options: Any) -> ReadWritePool:
        topology = KubernetesTopology(self.custom.api_client, self.namespace, "db", max_lag_seconds=5, refresh=0.2)
        return ReadWritePool(topology, user=APP_USER, password=APP_PASSWORD, database="whm_ha", **options)


@pytest.fixture
def replicated(
    database_servers: StartFlavourServers, sandbox_client: client.ApiClient, namespace: str
) -> Iterator[Replicated]:
    servers = database_servers(3)
    custom = client.CustomObjectsApi(sandbox_client)
    world = Replicated(servers, custom, namespace)
    with world.session(0) as primary:
        actions.ensure_replication_user(primary, "repl", "repl-pw")
    for index in (1, 2):
        with world.session(index) as replica:
            actions.ensure_replica(replica, Source(servers[0].host, servers[0].port, "repl", "repl-pw"))
    migrate(DSN(servers[0].host, servers[0].port, ADMIN_USER, "whm_ha", ADMIN_PASSWORD))
    conn = servers[0].connect()
    with conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (APP_USER, APP_PASSWORD))
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON whm_ha.* TO {APP_USER}@'%'")
        cur.execute("CREATE TABLE whm_ha.writes (id INT PRIMARY KEY, server_id INT NOT NULL)")
    conn.close()
    members = [{"name": f"db-{i}", "host": s.host, "port": s.port} for i, s in enumerate(servers)]
    flavor = database_servers.flavour.product
    create_replication(custom, namespace, members, credentials="admin", replication="repl", flavor=flavor)
    world.publish(0, {})

    def replicated_everywhere() -> bool:
        for server in servers:
            c = server.connect()
            with c.cursor() as cur:
                cur.execute(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'whm_ha'"
                    " AND TABLE_NAME = 'writes'"
                )
                found = cur.fetchone() == (1,)
            c.close()
            if not found:
                return False
        return True

    wait_for(replicated_everywhere, 15, "the schema on every replica")
    yield world


def server_id(conn: pymysql.Connection[Any]) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_writes_go_to_the_primary_and_reads_spread_over_replicas(replicated: Replicated) -> None:
    pool = replicated.pool()
    with pool.writer() as conn:
        assert server_id(conn) == 1
    readers = set()
    for _ in range(6):
        with pool.reader() as conn:
            readers.add(server_id(conn))
    assert readers == {2, 3}
    replicated.publish(0, {1: 60, 2: 60})
    wait_for(lambda: pool._topology.current().replicas == (), 5, "the lagging replicas to be dropped")
    with pool.reader() as conn:
        assert server_id(conn) == 1, "no replica within the lag limit: the primary serves reads"
    pool.close()


def test_pool_refuses_an_account_that_fencing_does_not_bind(replicated: Replicated) -> None:
    """MariaDB's read_only lets ALL PRIVILEGES write; MySQL's offline_mode, with which fencing releases the commits
    a former primary holds waiting for an acknowledgement, leaves SUPER and CONNECTION_ADMIN connected (issue 28,
    item 5). The admin account holds both: refused on every flavour, before any statement of the application."""
    topology = KubernetesTopology(replicated.custom.api_client, replicated.namespace, "db", refresh=0.2)
    pool = ReadWritePool(topology, user=ADMIN_USER, password=ADMIN_PASSWORD, acquire_timeout=2)
    why = "read_only does not bind it" if replicated.dialect.flavor == "mariadb" else "offline_mode does not"
    with pytest.raises(PoolError, match=f"holds (ALL PRIVILEGES|SUPER) \\({why}"), pool.writer():
        pass
    pool.close()


def test_pool_is_bounded_and_reuses_connections(replicated: Replicated) -> None:
    pool = replicated.pool(max_per_member=2, acquire_timeout=0.5)
    with pool.writer() as first, pool.writer() as second:
        assert first is not second
        with pytest.raises(PoolError, match="no free connection"), pool.writer():
            pass
    with pool.writer() as again:
        assert again in (first, second), "a returned connection is reused"
    pool.close()


def test_pool_follows_a_real_promotion_and_never_writes_to_a_read_only_member(replicated: Replicated) -> None:
    pool = replicated.pool(acquire_timeout=20)
    acknowledged: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        next_id = 0
        while not stop.is_set():
            next_id += 1
            try:
                with pool.writer() as conn, conn.cursor() as cur:
                    cur.execute("INSERT INTO writes (id, server_id) VALUES (%s, @@server_id)", (next_id,))
                acknowledged.append(next_id)
            except pymysql.MySQLError as exc:
                errors.append(str(exc))
            time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) > 50, 20, "writes on db-0")
        # A planned switchover to db-1, as the operator performs it: fence, catch up, promote, repoint.
        with replicated.session(0) as old, replicated.session(1) as new, replicated.session(2) as other:
            fenced = actions.fence(old)
            assert actions.wait_applied(new, fenced.gtid, 10)
            actions.promote(new)
            source = Source(replicated.servers[1].host, replicated.servers[1].port, "repl", "repl-pw")
            actions.ensure_replication_user(new, "repl", "repl-pw")
            actions.ensure_replica(other, source)
            actions.ensure_replica(old, source)
        replicated.publish(1, {})
        before = len(acknowledged)
        wait_for(lambda: len(acknowledged) > before + 50, 20, "writes on db-1")
    finally:
        stop.set()
        thread.join()
    pool.close()
    # A write the fence catches between the pool's check and the statement is refused by the server (1290), never
    # applied: the application sees that error. Nothing else may go wrong. (Seen once, under load, on MySQL 9.7.)
    assert all(error.startswith("(1290,") for error in errors) and len(errors) <= 3, errors[:3]
    conn = replicated.servers[1].connect(database="whm_ha")
    with conn.cursor() as cur:
        cur.execute("SELECT id, server_id FROM writes")
        rows = dict(cur.fetchall())
    conn.close()
    assert set(acknowledged) <= set(rows), "every acknowledged write is on the new primary"
    assert set(rows.values()) == {1, 2}, "writes went to db-0, then db-1, never to a replica"


def test_sessions(replicated: Replicated) -> None:
    pool = replicated.pool()
    store = SessionStore(pool, ttl_seconds=2)
    sid = store.create("alice", {"cart": [1, 2]}, node="n1", ip_address="10.0.0.5", user_agent="curl")
    other = store.create("alice", {})
    store.create("bob", {})
    session = store.get(sid)
    assert session is not None and session.data == {"cart": [1, 2]} and session.node == "n1"
    conn = replicated.servers[0].connect(database="whm_ha")
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM ha_sessions WHERE session_hash = %s", (sid,))
        assert cur.fetchone() == (0,), "the id itself is never stored"
    conn.close()
    assert store.touch(sid, data={"cart": [3]}, node="n2")
    assert store.get(sid).data == {"cart": [3]}  # type: ignore[union-attr]
    assert len(store.for_user("alice")) == 2
    assert store.stats() == {"total": 3, "active": 3, "expired": 0, "activeUsers": 2}
    assert store.delete(other) and not store.delete(other)
    wait_for(lambda: store.get(sid) is None, 10, "the session to expire")
    assert not store.touch(sid), "an expired session cannot be revived"
    assert store.stats()["expired"] == 2
    assert store.cleanup() == 2
    with pytest.raises(SessionError, match="limit"):
        store.create("alice", {"blob": "x" * MAX_PAYLOAD_BYTES})
    with pytest.raises(SessionError, match="JSON object"):
        store.create("alice", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(SessionError, match="session id"):
        store.get("short")
    pool.close()


def test_sessions_from_concurrent_app_nodes(replicated: Replicated) -> None:
    pools = [replicated.pool() for _ in range(4)]
    stores = [SessionStore(p) for p in pools]
    created: list[str] = []
    failures: list[str] = []

    def node(store: SessionStore, index: int) -> None:
        try:
            for i in range(25):
                sid = store.create(f"user-{i % 5}", {"node": index, "i": i})
                assert store.touch(sid, node=f"n{index}")
                created.append(sid)
        except Exception as exc:  # collected and asserted below
            failures.append(repr(exc))

    threads = [threading.Thread(target=node, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(created)) == 100
    wait_for(lambda: stores[0].stats()["active"] == 100, 10, "the replicas (stats read there) to catch up")
    assert all(stores[3].get(sid) is not None for sid in created[:10]), "written on one node, read on another"
    for pool in pools:
        pool.close()


def test_cache(replicated: Replicated) -> None:
    pool = replicated.pool()
    cache = SharedCache(pool)
    cache.set("k", "v1")
    assert cache.get("k") == b"v1"
    cache.set("k", b"v2", ttl_seconds=1)
    assert cache.get("k") == b"v2"
    wait_for(lambda: cache.get("k") is None, 10, "the entry to expire")
    assert cache.cleanup() == 1
    cache.set("forever", "x")
    assert cache.delete("forever") and cache.get("forever") is None
    with pytest.raises(CacheError, match="key"):
        cache.set("", "x")
    with pytest.raises(CacheError, match="limit"):
        cache.set("big", b"x" * (1024 * 1024 + 1))

    def setter(value: str) -> None:
        for _ in range(20):
            cache.set("shared", value)

    threads = [threading.Thread(target=setter, args=(v,)) for v in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("shared") in (b"a", b"b", b"c")
    pool.close()


def test_a_write_running_on_a_demoted_primary_is_interrupted_at_once(replicated: Replicated) -> None:
    """A write blocked on the primary (here by a table lock; in production, a primary cut off from its replicas
    waits for a semi-sync acknowledgement) when the status names another primary: the writer gets an error
    within the watch interval instead of waiting its 30 s read timeout, and its next write goes to the new one."""
    pool = replicated.pool(watch=0.2)
    holder = replicated.servers[0].connect()
    with holder.cursor() as cur:
        cur.execute("LOCK TABLES whm_ha.writes WRITE")
    outcome: list[str] = []

    def write() -> None:
        try:
            with pool.writer() as conn, conn.cursor() as cur:
                cur.execute("INSERT INTO whm_ha.writes VALUES (1, @@server_id)")
            outcome.append("acknowledged")
        except pymysql.MySQLError as exc:
            outcome.append(f"error {exc.args[0]}")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    waiting = SQL("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'INSERT INTO whm_ha.%'")

    def blocked() -> bool:
        with replicated.session(0) as session:
            return bool(session.rows(waiting)[0][0] == 1)

    wait_for(blocked, 10, "the write waiting on the lock")
    with replicated.session(1) as replica:
        replica.execute(replicated.dialect.stop_replica())
        for statement in replicated.dialect.set_read_only(False):
            replica.execute(statement)
    demoted = time.monotonic()
    replicated.publish(1, {})
    thread.join(10)
    took = time.monotonic() - demoted
    holder.close()
    assert outcome == ["error 2013"], outcome
    assert took < 3, f"the write waited {took:.1f}s"
    with pool.writer() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        assert cur.fetchone() == (replicated.servers[1].server_id,)
    pool.close()
