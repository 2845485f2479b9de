"""Every database flavour for real: the server is the version it claims, and two of them replicate when set up by
the project's own dialect and actions (``make test-databases`` runs the flavours with a built root)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pymysql
import pytest

from tests.fixtures.mariadb import StartFlavourServers
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalServer
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL, Source, dialect_for
from whm_ha.mysql.member import Credentials, Session, connect, read_state
from whm_ha.replication import procedures
from whm_ha.replication.procedures import SEMI_SYNC_TIMEOUT_MS

# The whole file is the flavour matrix's (make test-databases), the host's MariaDB 10.11 too: it keeps make test
# within its 15 minutes; test_operator_replication and test_mysql_actions cover 10.11 there.
pytestmark = [pytest.mark.mariadb, pytest.mark.databases]

VERSIONS = {"mariadb-10.11": "10.11.", "mariadb-11.8": "11.8.", "mysql-9.7": "9.7."}


def test_two_servers_replicate_with_the_flavours_dialect(database_servers: StartFlavourServers) -> None:
    flavour = database_servers.flavour
    dialect = dialect_for(flavour.product)
    servers = database_servers(2)
    admin = Credentials(ADMIN_USER, ADMIN_PASSWORD)
    primary, replica = (connect(f"m{i}", s.host, s.port, admin, dialect) for i, s in enumerate(servers))
    with primary, replica:
        version = str(primary.row(SQL("SELECT VERSION()"))[0])  # type: ignore[index]
        assert version.startswith(VERSIONS[flavour.name]), version
        assert ("mariadb" in version.lower()) == (flavour.product == "mariadb"), version

        assert actions.ensure_replication_user(primary, "repl", "repl-'secret")
        source = Source(servers[0].host, servers[0].port, "repl", "repl-'secret")
        assert actions.ensure_replica(replica, source)
        primary.execute(SQL("CREATE DATABASE app"))
        primary.execute(SQL("CREATE TABLE app.t (id INT PRIMARY KEY)"))
        primary.execute(SQL("INSERT INTO app.t (id) VALUES (1), (2)"))
        target = primary.executed()
        assert actions.wait_applied(replica, target, 20), f"{replica.replica_status()}"
        assert replica.rows(SQL("SELECT id FROM app.t ORDER BY id")) == ((1,), (2,))

        state = read_state(replica)
        assert state.is_replica and state.io_running and state.sql_running and state.read_only is True
        assert read_state(primary).read_only is False
        assert actions.ensure_replica(replica, source) is False, "a second pass writes nothing"

    servers[1].kill()
    started = time.monotonic()
    servers[1].start()
    assert time.monotonic() - started < 30
    with connect("m1", servers[1].host, servers[1].port, admin, dialect) as again:
        assert again.rows(SQL("SELECT id FROM app.t ORDER BY id")) == ((1,), (2,))


def test_a_server_started_read_only_is_not_writable_until_opened(database_servers: StartFlavourServers) -> None:
    """Issue 16, item 1: a member configured ``read_only=ON`` (as the README asks) is not writable, so a primary
    that starts so is opened; on MySQL it is not fenced either until ``super_read_only`` binds every account."""
    flavour = database_servers.flavour
    (server,) = database_servers(1, extra_args=("--read-only=ON",))
    admin = Credentials(ADMIN_USER, ADMIN_PASSWORD)
    with connect("m0", server.host, server.port, admin, dialect_for(flavour.product)) as session:
        state = read_state(session)
        assert state.read_only is True, "read_only=ON: applications cannot write"
        assert state.fenced is (flavour.product == "mariadb"), "MySQL: super_read_only is still off"

        fenced = actions.fence(session)
        assert fenced.changed is (flavour.product == "mysql")
        assert read_state(session).fenced is True
        assert actions.fence(session).changed is False

        opened = actions.promote(session)
        assert opened.changed
        state = read_state(session)
        assert (state.read_only, state.fenced) == (False, False)
        variables = "@@GLOBAL.read_only" + (", @@GLOBAL.super_read_only" if flavour.product == "mysql" else "")
        assert set(session.row(SQL(f"SELECT {variables}")) or ()) == {0}


PRIVILEGED = {"mariadb": "SUPER, INSERT", "mysql": "ALL PRIVILEGES"}
"""Global privileges beyond the application account's: on MySQL SUPER and CONNECTION_ADMIN, which offline_mode
does not disconnect; on MariaDB 10.11+ SUPER, which (unlike READ ONLY ADMIN) read_only binds."""


@contextlib.contextmanager
def _primary_no_replica_acknowledges(database_servers: StartFlavourServers) -> Iterator[tuple[LocalServer, Session]]:
    """A server with table app.t, the application account ``app`` and an account ``ops`` with global privileges
    (`PRIVILEGED`), and semi-sync's source side on (no replica is connected: a commit waits for good); an
    administrative session to it."""
    (server,) = database_servers(1)
    admin = Credentials(ADMIN_USER, ADMIN_PASSWORD)
    dialect = dialect_for(database_servers.flavour.product)
    with connect("m0", server.host, server.port, admin, dialect, read_timeout=3) as session:
        for statement in (
            "CREATE DATABASE app",
            "CREATE TABLE app.t (id INT PRIMARY KEY)",
            "CREATE USER 'ops'@'%' IDENTIFIED BY 'ops-pw'",
            f"GRANT {PRIVILEGED[dialect.flavor]} ON *.* TO 'ops'@'%'",
        ):
            session.execute(SQL(statement))
        actions.ensure_application_user(session, "app", "app-pw", ("app",))
        _semi_sync_source_on(session)
        yield server, session


def _semi_sync_source_on(session: Session) -> None:
    for variable, value in session.dialect.semi_sync_settings("source", True, SEMI_SYNC_TIMEOUT_MS).items():
        session.execute(session.dialect.set_global(variable, value))


def _commit(conn: pymysql.Connection[pymysql.cursors.Cursor], row_id: int, told: dict[int, str]) -> None:
    """Insert ``row_id`` into app.t; what the client was told goes into ``told``."""
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO app.t (id) VALUES (%s)", (row_id,))
        told[row_id] = "committed"
    except pymysql.MySQLError as exc:
        told[row_id] = f"error {exc.args[0]}"


def test_fencing_a_primary_whose_commits_wait_for_an_acknowledgement_tells_no_client_of_them(
    database_servers: StartFlavourServers,
) -> None:
    """Issue 28, item 5: a former primary that no replica acknowledges (none is connected here) holds commits of six
    clients, three as the application account and three as an account with a global privilege, each waiting for an
    acknowledgement (MySQL shows one per group commit in that state, the others 'waiting for handler commit').
    Fencing it ends those waits (`procedures.fence`): no client may be told that its commit succeeded, as no
    replica has it and a promotion elsewhere discards it."""
    with _primary_no_replica_acknowledges(database_servers) as (server, session):
        told: dict[int, str] = {}

        def commit(row_id: int, user: str, password: str) -> None:
            conn = pymysql.connect(
                host=server.host, port=server.port, user=user, password=password, autocommit=True, read_timeout=30
            )
            try:
                _commit(conn, row_id, told)
            finally:
                conn.close()

        clients = [("app", "app-pw"), ("ops", "ops-pw")] * 3
        threads = [threading.Thread(target=commit, args=(i, *c), daemon=True) for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        inserting = SQL("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.t%'")
        deadline = time.monotonic() + 20
        while (session.row(inserting) or (0,))[0] < len(clients):
            assert time.monotonic() < deadline, f"the six commits waiting: {told}"
            time.sleep(0.05)

        assert procedures.fence(session).changed
        for thread in threads:
            thread.join(30)
        assert session.fenced()
    assert len(told) == len(clients) and "committed" not in told.values(), told


FENCES = 8
"""How many times the primary is fenced and reopened: each a chance for the race of the kills with the commits."""


def test_fencing_a_primary_while_clients_keep_reconnecting_and_committing_tells_none_of_a_commit(
    database_servers: StartFlavourServers,
) -> None:
    """A primary with semi-sync on and no replica can acknowledge nothing. 24 connections of an account with a
    global privilege (and 6 of the application account) commit again and again, reconnecting at once after each
    kill, while the primary is fenced. On MariaDB the AFTER_SYNC wait is the group commit leader's: a killed leader
    commits its whole group, so a commit that joined the group of a killed leader on a connection not (yet) killed
    was told it succeeded. No client may be told so, in any of several fences."""
    with _primary_no_replica_acknowledges(database_servers) as (server, session):
        told: list[int] = []
        attempts = iter(range(10**9))
        stop = threading.Event()

        def writer(user: str, password: str) -> None:
            while not stop.is_set():
                try:
                    conn = pymysql.connect(
                        host=server.host,
                        port=server.port,
                        user=user,
                        password=password,
                        autocommit=True,
                        read_timeout=30,
                    )
                except pymysql.MySQLError:
                    continue
                try:
                    with conn.cursor() as cur:
                        while not stop.is_set():
                            row_id = next(attempts)
                            cur.execute("INSERT INTO app.t (id) VALUES (%s)", (row_id,))
                            told.append(row_id)
                except pymysql.MySQLError:
                    pass
                finally:
                    conn.close()

        clients = [("ops", "ops-pw")] * 24 + [("app", "app-pw")] * 6
        threads = [threading.Thread(target=writer, args=c, daemon=True) for c in clients]
        for thread in threads:
            thread.start()
        waiting = SQL("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'INSERT INTO app.t%'")
        try:
            for _ in range(FENCES):
                deadline = time.monotonic() + 20
                while (session.row(waiting) or (0,))[0] < len(clients):
                    assert time.monotonic() < deadline, "the clients' commits waiting"
                    time.sleep(0.05)
                assert procedures.fence(session).changed
                assert session.fenced()
                # MySQL's release turned semi-sync off: on again before it opens (as `procedures.finish` does), else
                # the clients' commits in between are acknowledged at once.
                _semi_sync_source_on(session)
                for sql in session.dialect.set_read_only(False):
                    session.execute(sql)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert told == [], f"{len(told)} commits told they succeeded: {told[:10]}"


GROUP_COMMIT = {
    "mariadb": {"binlog_commit_wait_count": 4, "binlog_commit_wait_usec": 5_000_000},
    "mysql": {"binlog_group_commit_sync_no_delay_count": 4, "binlog_group_commit_sync_delay": 1_000_000},
}
"""A binlog group commit waits (up to its delay) for 4 commits."""


def test_fencing_kills_the_clients_of_a_group_commit_before_its_leader(database_servers: StartFlavourServers) -> None:
    """Four commits form one group commit, whose leader (on MariaDB) waits for the acknowledgement of the whole
    group: killing it ends the commits of the group, and tells every client of the group whose connection is not
    killed yet that its commit succeeded. The leader holds the newest connection, the others the oldest, with 100
    idle connections between; the fence kills them all, and none may be told that its commit succeeded."""
    with _primary_no_replica_acknowledges(database_servers) as (server, session):
        for variable, value in GROUP_COMMIT[session.dialect.flavor].items():
            session.execute(SQL(f"SET GLOBAL {variable} = {value}"))

        def client() -> pymysql.Connection[pymysql.cursors.Cursor]:
            return pymysql.connect(
                host=server.host, port=server.port, user="app", password="app-pw", autocommit=True, read_timeout=30
            )

        followers = [client() for _ in range(3)]
        idle = [client() for _ in range(100)]
        leader = client()
        told: dict[int, str] = {}

        threads = [
            threading.Thread(target=_commit, args=(c, i, told), daemon=True) for i, c in enumerate((leader, *followers))
        ]

        def until(condition: str, count: int) -> None:
            query = SQL(f"SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE 'INSERT%' {condition}")
            deadline = time.monotonic() + 20
            while (session.row(query) or (0,))[0] < count:
                assert time.monotonic() < deadline, f"{count} commits {condition}: {told}"
                time.sleep(0.02)

        threads[0].start()
        until("", 1)  # the first to commit leads the group
        for thread in threads[1:]:
            thread.start()
        until("AND state LIKE 'Waiting for semi-sync ACK%'", 1)
        try:
            assert procedures.fence(session).changed
            for thread in threads:
                thread.join(30)
        finally:
            for conn in (leader, *followers, *idle):
                with contextlib.suppress(pymysql.MySQLError):
                    conn.close()
    assert len(told) == len(threads) and "committed" not in told.values(), told
