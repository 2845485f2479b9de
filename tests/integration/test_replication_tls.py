"""Replication and the operator's sessions over TLS, on every supported server: MariaDB 10.11 (the host's), MariaDB
11.8 and MySQL 9.7 (``--databases``). Real servers started with certificates of a test CA; each test reads back
from the servers what was encrypted and verified: the replica's status, the cipher of the session its source
serves it (performance_schema on the source), the administrative session's own cipher."""

from __future__ import annotations

from collections.abc import Iterator

import pymysql
import pytest

from tests.fixtures.database_tls import PERFORMANCE_SCHEMA, TestCA, dump_ciphers
from tests.fixtures.mariadb import StartFlavourServers
from tests.kube_helpers import wait_for
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, TLS_CA_FILE, LocalServer, ServerTLS
from whm_ha.demo.checkers import TABLE, Direct, Writers, create_table, missing
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL, ReplicaStatus, Source, dialect_for
from whm_ha.mysql.member import Credentials, Session, connect, inspect, tls_context
from whm_ha.replication.controller import CERTIFICATE_REFUSED

# The whole file is the flavour matrix's (make test-databases), the host's MariaDB 10.11 too: it keeps make test
# within its 15 minutes; test_operator_replication and test_mysql_actions cover 10.11 there.
pytestmark = [pytest.mark.mariadb, pytest.mark.databases]

ADMIN = Credentials(ADMIN_USER, ADMIN_PASSWORD)
REPLICATION = Credentials("repl", "repl-pw")


def session(server: LocalServer, ca: TestCA, name: str = "m") -> Session:
    """An administrative session as the operator opens one with TLS on: the member's certificate verified against
    ``ca``, its host name too."""
    return connect(name, server.host, server.port, ADMIN, dialect_for(server.flavour.product), tls=ca.client_context())


def source(server: LocalServer) -> Source:
    return Source(server.host, server.port, REPLICATION.username, REPLICATION.password, tls=True, tls_ca=TLS_CA_FILE)


def io_settled(replica: Session, timeout: float = 30) -> ReplicaStatus:
    """The replica's status once its IO thread is connected or has failed."""

    def settled() -> ReplicaStatus | None:
        status = replica.replica_status()
        return status if status is not None and (status.io_running or status.last_io_errno) else None

    found: ReplicaStatus = wait_for(settled, timeout, f"{replica.name}'s IO thread connected or failed")
    return found


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def pair(database_servers: StartFlavourServers, ca: TestCA) -> Iterator[tuple[list[LocalServer], Session, Session]]:
    """Two servers with certificates of ``ca`` (m0 the source, with its replication account) and a verified TLS
    administrative session to each."""
    servers = database_servers(2, PERFORMANCE_SCHEMA, tls=ca.server_tls())
    with session(servers[0], ca, "m0") as primary, session(servers[1], ca, "m1") as replica:
        actions.ensure_replication_user(primary, REPLICATION.username, REPLICATION.password)
        yield servers, primary, replica


def test_a_replica_replicates_over_tls_verifying_its_source(
    pair: tuple[list[LocalServer], Session, Session],
) -> None:
    servers, primary, replica = pair
    for one in (primary, replica):
        (_, cipher) = one.row(SQL("SHOW SESSION STATUS LIKE 'Ssl_cipher'")) or ("", "")
        assert cipher, f"{one.name}: the administrative session is not encrypted"
    assert actions.ensure_replica(replica, source(servers[0]))
    primary.execute(SQL("CREATE DATABASE over_tls"))
    wait_for(lambda: servers[1].query("SHOW DATABASES LIKE 'over_tls'"), 30, "the database replicated")
    status = io_settled(replica)
    assert (status.io_running, status.tls, status.tls_verify, status.tls_ca) == (True, True, True, TLS_CA_FILE)
    assert status.matches(source(servers[0])), "reconciling again changes nothing"
    ((user, command, cipher),) = dump_ciphers(servers[0])
    assert (user, command.startswith("Binlog Dump")) == (REPLICATION.username, True)
    assert cipher, "the source serves its replica a plaintext session"
    print(f"{servers[0].flavour.name}: replication session cipher {cipher}")


def test_a_replica_refuses_a_source_whose_certificate_its_bundle_does_not_sign(
    pair: tuple[list[LocalServer], Session, Session],
) -> None:
    """The replica verifies the certificate (not only encrypts): with a bundle of another CA its IO thread fails
    on the certificate and nothing reaches it; once its bundle holds the source's CA, it connects."""
    servers, _, replica = pair
    own = servers[1].tls
    assert own is not None
    servers[1].install_tls(ServerTLS(ca=TestCA().pem, cert=own.cert, key=own.key))
    actions.ensure_replica(replica, source(servers[0]))
    status = io_settled(replica)
    assert not status.io_running and status.last_io_errno, status
    print(f"{servers[1].flavour.name}: {status.last_io_errno} {status.last_io_error}")
    assert dump_ciphers(servers[0]) == []
    servers[1].install_tls(own)
    wait_for(lambda: (s := replica.replica_status()) and s.io_running, 30, "the replica connected with its bundle")


NAME_UNCHECKED = {"mariadb-11.8"}
"""Flavours whose replicas, told to verify their source's certificate (MASTER_SSL_VERIFY_SERVER_CERT=1, with a CA),
check its CA but accept a certificate naming another host when the source is reached by IP address (measured
here; MariaDB 10.11 and MySQL 9.7 refuse it)."""


def test_a_replica_checks_the_source_host_name_where_its_server_does(
    database_servers: StartFlavourServers, ca: TestCA
) -> None:
    """A certificate of the right CA for another name: refused on the replication channel, except by the
    flavours of `NAME_UNCHECKED`."""
    servers = database_servers(2, tls=ca.server_tls("db.elsewhere.example"))
    dialect = dialect_for(servers[0].flavour.product)
    context = ca.client_context(check_hostname=False)
    with connect("m0", servers[0].host, servers[0].port, ADMIN, dialect, tls=context) as primary:
        actions.ensure_replication_user(primary, REPLICATION.username, REPLICATION.password)
    with connect("m1", servers[1].host, servers[1].port, ADMIN, dialect, tls=context) as replica:
        actions.ensure_replica(replica, source(servers[0]))
        status = io_settled(replica)
    print(f"{servers[1].flavour.name}: {status.io_running=} {status.last_io_errno} {status.last_io_error}")
    assert status.io_running == (servers[1].flavour.name in NAME_UNCHECKED), status


def test_a_member_requiring_secure_transport_refuses_plaintext_clients(
    database_servers: StartFlavourServers, ca: TestCA
) -> None:
    (server,) = database_servers(1, tls=ca.server_tls(), require_secure_transport=True)
    with pytest.raises(pymysql.OperationalError) as refused:
        pymysql.connect(host=server.host, port=server.port, user=ADMIN_USER, password=ADMIN_PASSWORD, ssl_disabled=True)
    print(f"{server.flavour.name}: plaintext refused: {refused.value.args}")
    with session(server, ca) as encrypted:
        assert encrypted.row(SQL("SELECT @@GLOBAL.require_secure_transport")) == (1,)
        encrypted.execute(SQL("SET GLOBAL require_secure_transport = OFF"))
    plaintext = pymysql.connect(
        host=server.host, port=server.port, user=ADMIN_USER, password=ADMIN_PASSWORD, ssl_disabled=True
    )
    plaintext.close()  # the same client once plaintext is allowed: it was refused for its transport


def test_ca_and_certificates_rotate_under_writes_without_breaking_replication(
    pair: tuple[list[LocalServer], Session, Session], ca: TestCA
) -> None:
    """The rotation users follow (docs/architecture.md): every member's CA bundle holds the old and the new CA,
    then each member gets a certificate of the new CA, then the bundle holds the new CA only; each step is a file
    change and a TLS reload. Writes are acknowledged all along, none fails, the replica reconnects after each step
    over a verified TLS session and ends with every acknowledged row."""
    servers, primary, replica = pair
    actions.ensure_replica(replica, source(servers[0]))
    wait_for(lambda: (s := replica.replica_status()) and s.io_running, 30, "replicating")
    writes = Direct(servers[0].host, servers[0].port, ADMIN_USER, ADMIN_PASSWORD)
    create_table(writes)
    writers = Writers(writes).start()
    new = TestCA()
    bundle = ca.pem + new.pem
    certificates = [server.tls for server in servers]
    steps = {
        "both CAs trusted": [ServerTLS(ca=bundle, cert=c.cert, key=c.key) for c in certificates if c is not None],
        "certificates of the new CA": [new.server_tls(trusted=bundle) for _ in servers],
        "the new CA only": [new.server_tls() for _ in servers],
    }
    try:
        for step, files in steps.items():
            for server, tls, one in zip(servers, files, (primary, replica), strict=True):
                server.install_tls(tls)
                actions.reload_tls(one)
            reconnect(replica)
            wait_for(writers.acks.progressed(), 30, f"writes acknowledged after {step}")
            ((_, _, cipher),) = dump_ciphers(servers[0])
            assert cipher, f"after {step}: the replica's new session is plaintext"
    finally:
        writers.stop()
    assert writers.errors == []
    with pytest.raises(pymysql.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
        session(servers[0], ca)  # the old CA no longer signs what the members serve
    with session(servers[0], new) as verified:
        executed = verified.executed()
    assert actions.wait_applied(replica, executed, 30), replica.replica_status()
    assert executed.contains(replica.executed()), "reloading TLS wrote nothing of the replica's own"
    rows = {int(row_id) for (row_id,) in servers[1].query(f"SELECT id FROM {TABLE}")}
    assert missing(writers.acks.all(), rows) == []
    print(f"{servers[0].flavour.name}: {len(writers.acks)} writes acknowledged through the rotation, none failed")


def reconnect(replica: Session) -> None:
    """Restart the replica's IO thread, which reads its CA bundle again as it connects, and wait until it is
    connected (it fails, and retries each second, when it cannot verify its source)."""
    replica.execute(replica.dialect.stop_replica("io"))
    replica.execute(replica.dialect.start_replica("io"))
    status = io_settled(replica)
    assert status.io_running, f"{replica.name} could not reconnect: {status.last_io_error}"
    assert status.sql_running, f"{replica.name} stopped applying: {status.last_sql_error}"


def test_the_operator_finds_a_member_it_cannot_verify_unreachable_and_says_why(
    database_servers: StartFlavourServers, ca: TestCA
) -> None:
    """A member whose certificate another CA signed, or that names another host, is not inspected: its state says
    the certificate failed to verify (the controller reads the CA Secret again on that error). Without the host
    name check (``verifyServerName: false``) the second one is inspected."""
    (server,) = database_servers(1, tls=ca.server_tls("db.elsewhere.example"))
    dialect = dialect_for(server.flavour.product)
    for bundle, check_hostname in ((TestCA().pem, False), (ca.pem, True)):
        state = inspect(
            "m", server.host, server.port, ADMIN, dialect, tls=tls_context(bundle, check_hostname=check_hostname)
        )
        assert not state.reachable and state.error and CERTIFICATE_REFUSED in state.error, state
    state = inspect("m", server.host, server.port, ADMIN, dialect, tls=tls_context(ca.pem, check_hostname=False))
    assert state.reachable, state
