"""The replication actions against three real servers of each flavour (MariaDB 10.11 on the host; MariaDB 11.8 and
MySQL 9.7 with ``--databases``): setup, inspection, failover, rejoin, semi-sync."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pymysql
import pytest

from tests.fixtures.mariadb import StartFlavourServers
from tests.fixtures.netns import freeze, thaw
from whm_ha.crd.mysqlreplication import Member, MySQLReplicationSpec, PromotionProgress
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalServer
from whm_ha.mysql import actions
from whm_ha.mysql.actions import PromotionError
from whm_ha.mysql.dialect import SEMI_SYNC_KILL_SECONDS, SQL, Dialect, Source, dialect_for
from whm_ha.mysql.gtid import MariaDBGtidSet, MySQLGtidSet
from whm_ha.mysql.member import Credentials, MemberState, Session, connect, inspect, read_state
from whm_ha.mysql.topology import can_rejoin, choose_candidate, errant_transactions, primary_confirmed_dead
from whm_ha.replication import plan, procedures
from whm_ha.replication.authority import Superseded

pytestmark = pytest.mark.mariadb

ADMIN = Credentials(ADMIN_USER, ADMIN_PASSWORD)
REPL_USER = "repl"
REPL_PASSWORD = "repl-'secret"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds. Driver errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except pymysql.MySQLError:
            pass
        time.sleep(0.05)
    pytest.fail(f"not within {timeout}s: {what}")


@dataclass
class Cluster:
    """Three members m0..m2 with their servers and admin sessions; m0 starts as the primary."""

    servers: list[LocalServer]
    sessions: list[Session] = field(default_factory=list)
    repl_password: str = REPL_PASSWORD

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.servers[0].flavour.product)

    @property
    def mariadb(self) -> bool:
        return self.dialect.flavor == "mariadb"

    def server_uuid(self, index: int) -> str:
        """MySQL's GTID source id of a member."""
        row = self.sessions[index].row(SQL("SELECT @@GLOBAL.server_uuid"))
        assert row is not None
        return str(row[0])

    def __post_init__(self) -> None:
        self.sessions = [self.connect(i) for i in range(len(self.servers))]

    def connect(self, index: int) -> Session:
        server = self.servers[index]
        return connect(f"m{index}", server.host, server.port, ADMIN, self.dialect)

    def reconnect(self, index: int) -> Session:
        self.sessions[index].close()
        self.sessions[index] = self.connect(index)
        return self.sessions[index]

    def source(self, index: int) -> Source:
        return Source(self.servers[index].host, self.servers[index].port, REPL_USER, self.repl_password)

    def members(self) -> list[Member]:
        return [Member(name=f"m{i}", host=s.host, port=s.port) for i, s in enumerate(self.servers)]

    def inspect(self, index: int) -> MemberState:
        server = self.servers[index]
        return inspect(f"m{index}", server.host, server.port, ADMIN, self.dialect)

    def insert(self, index: int, *ids: int) -> None:
        for row_id in ids:
            self.sessions[index].execute(SQL("INSERT INTO app.t (id) VALUES (%s)", (row_id,)))

    def ids(self, index: int) -> set[int]:
        return {row[0] for row in self.sessions[index].rows(SQL("SELECT id FROM app.t"))}

    def wait_rows(self, index: int, ids: set[int]) -> None:
        wait_until(lambda: ids <= self.ids(index), f"rows {sorted(ids)} on m{index}")

    def close(self) -> None:
        for session in self.sessions:
            session.close()


def set_up(cluster: Cluster) -> None:
    primary, *replicas = cluster.sessions
    actions.ensure_replication_user(primary, REPL_USER, REPL_PASSWORD)
    for replica in replicas:
        actions.ensure_replica(replica, cluster.source(0))
    primary.execute(SQL("CREATE DATABASE app"))
    primary.execute(SQL("CREATE TABLE app.t (id INT PRIMARY KEY)"))
    cluster.insert(0, 1)
    for index in range(1, len(cluster.servers)):
        cluster.wait_rows(index, {1})


@pytest.fixture
def cluster(database_servers: StartFlavourServers) -> Iterator[Cluster]:
    cluster = Cluster(database_servers(3))
    yield cluster
    cluster.close()


@pytest.fixture
def replicating(cluster: Cluster) -> Cluster:
    set_up(cluster)
    return cluster


def fail_over(cluster: Cluster) -> None:
    """m2 stops receiving, m0 writes rows 2-3 (only m1 gets them) and is killed; m1 is promoted, m2 follows it."""
    _, m1, m2 = cluster.sessions
    origin = "0-1-" if cluster.mariadb else f"{cluster.server_uuid(0)}:"
    m2.execute(cluster.dialect.stop_replica("io"))
    cluster.insert(0, 2, 3)
    cluster.wait_rows(1, {2, 3})
    cluster.servers[0].kill()

    failures = 0
    for _ in range(3):
        primary = cluster.inspect(0)
        failures = 0 if primary.reachable else failures + 1
    assert failures == 3 and primary.error is not None and "(2003)" in primary.error
    wait_until(lambda: read_state(m1).io_connecting, "m1 notices the primary is gone")
    states = [primary, read_state(m1), read_state(m2)]
    assert not primary_confirmed_dead(primary, 2, 3, states[1:]).dead
    verdict = primary_confirmed_dead(primary, failures, 3, states[1:])
    assert verdict.dead, verdict.reason
    assert "replicas m1 lost it too" in verdict.reason

    choice = choose_candidate(states, cluster.members(), 30, exclude={"m0": "the failed primary"})
    assert choice.candidate == "m1", choice.refusals
    assert choice.refusals["m2"].startswith(f"lacks transactions that others received: m1 (2: {origin}")

    assert actions.stop_io_threads([m1, m2]) == {}
    promoted = actions.promote(m1)
    assert promoted.changed
    assert promoted.gtid == read_state(m1).gtid_executed
    assert actions.promote(m1).changed is False
    state = read_state(m1)
    assert state.read_only is False and not state.is_replica

    assert actions.ensure_replication_user(m1, REPL_USER, REPL_PASSWORD) is False, "replicated from m0"
    assert actions.ensure_replica(m2, cluster.source(1))
    cluster.insert(1, 4)
    cluster.wait_rows(2, {1, 2, 3, 4})
    assert actions.ensure_replica(m2, cluster.source(1)) is False


def test_setup_from_scratch_replicates_and_a_second_pass_writes_nothing(cluster: Cluster) -> None:
    primary, *replicas = cluster.sessions
    assert actions.ensure_replication_user(primary, REPL_USER, REPL_PASSWORD)
    assert all(actions.ensure_replica(r, cluster.source(0)) for r in replicas)
    primary.execute(SQL("CREATE DATABASE app"))
    primary.execute(SQL("CREATE TABLE app.t (id INT PRIMARY KEY)"))
    cluster.insert(0, 1, 2, 3)
    cluster.wait_rows(1, {1, 2, 3})
    cluster.wait_rows(2, {1, 2, 3})
    assert all(read_state(r).read_only for r in replicas)
    assert read_state(primary).read_only is False

    assert actions.ensure_replication_user(primary, REPL_USER, REPL_PASSWORD) is False
    assert not any(actions.ensure_replica(r, cluster.source(0)) for r in replicas)


def test_inspect_reports_threads_lag_and_gtids(replicating: Cluster) -> None:
    primary, m1, m2 = replicating.sessions
    replicating.insert(0, 2)
    replicating.wait_rows(1, {2})
    replicating.wait_rows(2, {2})
    wait_until(lambda: read_state(m1).gtid_executed == read_state(primary).gtid_executed, "m1 caught up")
    # MySQL may report 1 s behind for a moment after it applied the last transaction, also after it has
    # reported 0 once: the states checked are those of the one inspection that saw no lag.
    states = []

    def settled() -> bool:
        states[:] = [replicating.inspect(i) for i in range(3)]
        return all(state.seconds_behind == 0 for state in states[1:])

    wait_until(settled, "replicas report no lag")
    assert [(s.reachable, s.server_id, s.read_only, s.is_replica) for s in states] == [
        (True, 1, False, False),
        (True, 2, True, True),
        (True, 3, True, True),
    ]
    for state in states[1:]:
        assert (state.io_running, state.sql_running, state.seconds_behind) == (True, True, 0)
        assert (state.source_host, state.source_port) == ("127.0.0.1", replicating.servers[0].port)
        assert state.last_io_error is None and state.last_sql_error is None
    executed = states[0].gtid_executed
    expected = "0-1-6" if replicating.mariadb else f"{replicating.server_uuid(0)}:1-6"
    assert str(executed) == expected, "user, grant, database, table, two rows"
    assert states[1].gtid_executed == states[1].gtid_retrieved == executed

    m2.execute(replicating.dialect.stop_replica("sql"))
    stopped = read_state(m2)
    assert (stopped.io_running, stopped.sql_running) == (True, False)


def test_inspect_never_raises_and_never_shows_the_password(replicating: Cluster) -> None:
    server = replicating.servers[0]
    wrong = Credentials(ADMIN_USER, "not-the-password-42")
    assert "not-the-password-42" not in repr(wrong)
    denied = inspect("m0", server.host, server.port, wrong, replicating.dialect)
    assert not denied.reachable and denied.error is not None
    assert "Access denied" in denied.error and "not-the-password-42" not in denied.error
    replicating.servers[2].kill()
    gone = replicating.inspect(2)
    assert gone == MemberState.unreachable("m2", "127.0.0.1", replicating.servers[2].port, gone.error or "")
    assert gone.error is not None and "(2003)" in gone.error


def test_a_member_that_accepts_connections_but_does_not_answer_is_unreachable_within_the_connect_timeout(
    database_servers: StartFlavourServers,
) -> None:
    """A frozen server (SIGSTOP: its kernel still accepts connections, nothing answers), as one behind a slow link:
    connecting fails within the connect timeout, also when replies may take longer (a fence's waiting timeout),
    so that a fence never finds a member answering that no inspection reaches. pymysql alone reads the handshake
    with the reply timeout."""
    (server,) = database_servers(1)
    assert server.process is not None
    dialect = dialect_for(server.flavour.product)
    freeze(server.process)
    try:
        started = time.monotonic()
        with pytest.raises(pymysql.OperationalError) as refused:
            connect("m0", server.host, server.port, ADMIN, dialect, timeout=0.5, read_timeout=6)
        took = time.monotonic() - started
    finally:
        thaw(server.process)
    assert refused.value.args[0] == 2013 and took < 3, f"{took:.1f}s: {refused.value}"
    with connect("m0", server.host, server.port, ADMIN, dialect, timeout=5, read_timeout=6) as session:
        assert session.timeout == 6


def test_wait_applied(replicating: Cluster) -> None:
    primary, m1, m2 = replicating.sessions
    m2.execute(replicating.dialect.stop_replica("io"))
    replicating.insert(0, 2)
    target = primary.executed()
    assert actions.wait_applied(m1, target, 5)
    started = time.monotonic()
    assert actions.wait_applied(m2, target, 0.5) is False
    assert time.monotonic() - started < 3
    started = time.monotonic()
    if replicating.mariadb:
        assert actions.wait_applied(m1, MariaDBGtidSet.parse("0-9-1"), 5) is False, "another server's GTID"
        assert time.monotonic() - started < 3, "the server reports 0-9-1 reached by seq: no point waiting"
    else:
        other = MySQLGtidSet.parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1")
        assert actions.wait_applied(m1, other, 1) is False, "another server's GTID"
        assert time.monotonic() - started < 3


def test_failover_after_the_primary_is_killed(replicating: Cluster) -> None:
    fail_over(replicating)


def test_old_primary_is_fenced_and_rejoins(replicating: Cluster) -> None:
    fail_over(replicating)
    replicating.servers[0].start()
    old = replicating.reconnect(0)
    new = replicating.sessions[1]
    fenced = actions.fence(old)
    assert fenced.changed and old.read_only()
    assert actions.fence(old).changed is False
    verdict = can_rejoin(fenced.gtid, new.executed())
    assert verdict.ok, verdict.reason
    assert actions.ensure_replica(old, replicating.source(1))
    replicating.insert(1, 5)
    replicating.wait_rows(0, {1, 2, 3, 4, 5})
    wait_until(lambda: read_state(old).gtid_executed == new.executed(), "the old primary caught up")
    assert actions.ensure_replica(old, replicating.source(1)) is False


def test_errant_transactions_keep_the_old_primary_out(replicating: Cluster) -> None:
    fail_over(replicating)
    replicating.servers[0].start()
    old = replicating.reconnect(0)
    before = old.executed()
    if replicating.mariadb:
        assert isinstance(before, MariaDBGtidSet)
        top = before.domains[0].top
        expected = f"0-1-{top + 1}..{top + 2}"
    else:
        assert isinstance(before, MySQLGtidSet)
        top = before.count  # all its own, from 1
        expected = f"{replicating.server_uuid(0)}:{top + 1}-{top + 2}"
    replicating.insert(0, 100, 101)
    fenced = actions.fence(old)
    errant = errant_transactions(fenced.gtid, replicating.sessions[1].executed())
    assert errant == replicating.dialect.parse_gtid(expected)
    assert errant.count == 2
    verdict = can_rejoin(fenced.gtid, replicating.sessions[1].executed())
    assert not verdict.ok
    assert verdict.reason.startswith(f"2 errant transaction(s) the primary lacks: {expected}")


def test_rotated_replication_password_is_applied_on_both_sides(replicating: Cluster) -> None:
    primary, m1, _ = replicating.sessions
    replicating.repl_password = "rotated-secret"
    assert actions.ensure_replication_user(primary, REPL_USER, replicating.repl_password)
    # The IO thread is cut only once the ALTER USER has arrived: MySQL's STOP REPLICA waits up to 60 s for a
    # transaction cut in half whose rest cannot come (the source now refuses the old password).
    assert actions.wait_applied(m1, primary.executed(), 5)
    m1.execute(replicating.dialect.stop_replica("io"))
    m1.execute(replicating.dialect.start_replica("io"))
    wait_until(lambda: getattr(m1.replica_status(), "last_io_errno", None) == 1045, "m1 is refused")
    assert actions.ensure_replica(m1, replicating.source(0))
    replicating.insert(0, 7)
    replicating.wait_rows(1, {7})
    assert actions.ensure_replica(m1, replicating.source(0)) is False


def test_semi_sync_on_and_off(replicating: Cluster) -> None:
    primary, *replicas = replicating.sessions
    assert actions.enable_semi_sync(primary, replicas, 2000)
    wait_until(lambda: primary.semi_sync_status().source_clients == 2, "both replicas acknowledge")
    assert primary.semi_sync_status().source_active
    assert all(r.semi_sync_status().replica_active for r in replicas)
    assert actions.enable_semi_sync(primary, replicas, 2000) is False
    started = time.monotonic()
    replicating.insert(0, 10)
    assert time.monotonic() - started < 1, "acknowledged, not timed out"
    assert read_state(primary).semi_sync == primary.semi_sync_status()

    assert actions.disable_semi_sync(replicating.sessions)
    wait_until(lambda: primary.semi_sync_status().source_clients == 0, "replicas reconnect without semi-sync")
    assert not primary.semi_sync_status().source_active
    assert not any(r.semi_sync_status().replica_active for r in replicas)
    assert actions.disable_semi_sync(replicating.sessions) is False


def test_a_semi_sync_replica_of_a_vanished_source_stops_receiving_within_seconds(replicating: Cluster) -> None:
    """A failover first stops every replica receiving. On STOP a MariaDB semi-sync replica connects to its source
    to end its dump thread there; a source that no longer answers (frozen: its sockets open, nothing answers)
    held that STOP 5 s on 11.8 (the default wait), and a blackholed primary was replaced in 9.6 s against 7 s."""
    primary, *replicas = replicating.sessions
    assert actions.enable_semi_sync(primary, replicas, 2000)
    wait_until(lambda: primary.semi_sync_status().source_clients == 2, "both replicas acknowledge")
    source, server = replicating.servers[0].process, replicating.servers[1]
    assert source is not None
    with connect("m1", server.host, server.port, ADMIN, replicating.dialect, read_timeout=15) as m1:
        freeze(source)
        try:
            started = time.monotonic()
            assert actions.stop_io_threads([m1]) == {}
            took = time.monotonic() - started
        finally:
            thaw(source)
    assert took < SEMI_SYNC_KILL_SECONDS + 1.5, f"{took:.1f}s to stop receiving from a vanished source"


def test_semi_sync_turned_on_under_writes_strands_no_commit(replicating: Cluster) -> None:
    """A client commits without pause while semi-sync is turned on: no commit waits for an acknowledgement that
    never comes (a replica already holding it when it reconnects announcing semi-sync never acknowledges it, and
    there is no fallback), so the client goes on."""
    primary, *replicas = replicating.sessions
    server = replicating.servers[0]
    committed: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        conn = pymysql.connect(
            host=server.host,
            port=server.port,
            user=ADMIN_USER,
            password=ADMIN_PASSWORD,
            autocommit=True,
            read_timeout=5,
        )
        row_id = 1000
        try:
            while not stop.is_set():
                row_id += 1
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO app.t (id) VALUES (%s)", (row_id,))
                committed.append(time.monotonic())
        except pymysql.MySQLError as exc:
            errors.append(str(exc))
        finally:
            conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_until(lambda: len(committed) > 20, "the writer commits")
    assert actions.enable_semi_sync(primary, replicas, 3_600_000)
    enabled = time.monotonic()
    wait_until(lambda: len([t for t in committed if t > enabled]) > 20, "commits acknowledged after semi-sync", 8)
    stop.set()
    thread.join(10)
    assert errors == [], errors
    assert primary.semi_sync_status().source_active


def access_to(cluster: Cluster) -> procedures.Access:
    """How the replication controller reaches the three members (1 s period, 2 failures)."""
    return procedures.Access(
        members={m.name: m for m in cluster.members()},
        admin=ADMIN,
        replication=Credentials(REPL_USER, REPL_PASSWORD),
        application=Credentials("app", "app-pw"),
        schemas=("whm_ha",),
        dialect=cluster.dialect,
        timeout=1.0,
        waiting_timeout=3.0,
        net_timeout=2,
    )


def spec_of(cluster: Cluster) -> MySQLReplicationSpec:
    members = [{"name": m.name, "host": m.host, "port": m.port} for m in cluster.members()]
    return MySQLReplicationSpec.model_validate(
        {
            "primary": "m0",
            "members": members,
            "credentialsSecret": {"name": "admin"},
            "replicationSecret": {"name": "repl"},
            "semiSync": False,
        }
    )


def test_a_failover_is_abandoned_when_the_old_primary_answers_again(replicating: Cluster) -> None:
    """Confirmed dead, then it answers at the last moment: its last commits may be on no replica, so promoting
    a replica would drop them. The failover is abandoned; the primary, fenced meanwhile, keeps its data."""
    _, m1, m2 = replicating.sessions
    m1.execute(replicating.dialect.stop_replica("io"))
    m2.execute(replicating.dialect.stop_replica("io"))
    replicating.insert(0, 7)  # on no replica
    record = PromotionProgress(from_="m0", to="m1", type="automatic", reason="test", detected_at=datetime.now(UTC))
    with pytest.raises(PromotionError, match="the primary m0 answers again: it is not dead"):
        procedures.prepare(access_to(replicating), record, spec_of(replicating), {}, confirm=lambda _: None)
    assert replicating.sessions[1].read_only() and replicating.sessions[2].read_only(), "nobody was promoted"


def test_an_abandoned_failover_leaves_the_replicas_receiving_so_that_it_can_be_tried_again(
    replicating: Cluster,
) -> None:
    """m0 dies; a failover to m2 is abandoned once the replicas were stopped (m1, as up to date, ranks first by
    name: the rule that abandoned one in the fault tier). Left stopped, the replicas would confirm nothing, and no
    later attempt could start: they must be receiving again (reconnecting to m0), confirming its death."""
    replicating.servers[0].kill()
    wait_until(lambda: all(replicating.inspect(i).io_connecting for i in (1, 2)), "the replicas notice m0 is gone")
    record = PromotionProgress(from_="m0", to="m2", type="automatic", reason="test", detected_at=datetime.now(UTC))
    with pytest.raises(PromotionError, match="m2 is no longer the member to promote: as up to date as m1"):
        procedures.prepare(access_to(replicating), record, spec_of(replicating), {}, confirm=lambda _: None)
    states = [replicating.inspect(i) for i in range(3)]
    assert all(s.io_running or s.io_connecting for s in states[1:]), [(s.name, s.io_running) for s in states[1:]]
    verdict = primary_confirmed_dead(states[0], 3, 3, states[1:])
    assert verdict.dead, verdict.reason


def test_a_switchover_and_a_failover_by_the_operators_procedures(replicating: Cluster) -> None:
    """The controller's own steps on each flavour: a switchover m0 -> m1 (fence, catch up, promote, repoint), then
    m1 is killed and m2 promoted (replicas stopped, candidate checked, the rest fenced); no row is lost."""
    access, spec = access_to(replicating), spec_of(replicating)
    now = datetime.now(UTC)
    switch = PromotionProgress(from_="m0", to="m1", type="manual", planned=True, reason="test", detected_at=now)
    prepared = procedures.prepare(access, switch, spec, {}, confirm=lambda _: None)
    assert procedures.finish(access, switch, lambda _: None, prepared.unreachable, prepared.fenced).unfenced == ()
    states = {f"m{i}": replicating.inspect(i) for i in range(3)}
    assert (states["m0"].read_only, states["m0"].fenced) == (True, True), "the old primary is fenced"
    assert (states["m1"].read_only, states["m1"].fenced, states["m1"].is_replica) == (False, False, False)
    steps = plan.converge_plan("m1", states, semi_sync=False, full=True)
    outcome = procedures.reconcile(access, "m1", steps, lambda _: None)
    assert not outcome.errors, outcome.errors
    replicating.insert(1, 20)
    replicating.wait_rows(0, {1, 20})
    replicating.wait_rows(2, {1, 20})

    replicating.sessions[2].execute(replicating.dialect.stop_replica("io"))
    replicating.insert(1, 21)  # m0 gets it, m2 does not
    replicating.wait_rows(0, {21})
    replicating.servers[1].kill()
    wait_until(lambda: replicating.inspect(0).io_connecting, "m0 notices the primary is gone")
    failover = PromotionProgress(from_="m1", to="m0", type="automatic", reason="test", detected_at=now)
    spec = spec.model_copy(update={"primary": "m1"})
    prepared = procedures.prepare(access, failover, spec, {}, confirm=lambda _: None)
    assert prepared.unreachable == ("m1",)
    finished = procedures.finish(access, failover, lambda _: None, prepared.unreachable, prepared.fenced)
    assert finished.unfenced == ("m1",)
    replicating.reconnect(0)
    state = replicating.inspect(0)
    assert (state.read_only, state.is_replica) == (False, False), "m0 is the writable primary"
    assert replicating.inspect(2).fenced is True
    assert {1, 20, 21} <= replicating.ids(0)


def test_a_promoted_replica_acknowledges_its_first_commit_without_another_pass(replicating: Cluster) -> None:
    """With semi-sync, ``finish`` makes the other answering members replicas of the candidate (replica side on)
    before the candidate opens with its source side on: its first commit is acknowledged by one of them at once,
    with no reconcile pass in between (it never falls back to asynchronous, so a commit that returned was
    acknowledged)."""
    access, spec = access_to(replicating), spec_of(replicating).model_copy(update={"semi_sync": True})
    primary, *replicas = replicating.sessions
    assert actions.enable_semi_sync(primary, replicas, procedures.SEMI_SYNC_TIMEOUT_MS)
    replicating.servers[0].kill()
    wait_until(lambda: all(replicating.inspect(i).io_connecting for i in (1, 2)), "the replicas lose m0")
    failover = PromotionProgress(from_="m0", to="m1", type="automatic", reason="test", detected_at=datetime.now(UTC))
    prepared = procedures.prepare(access, failover, spec, {}, confirm=lambda _: None)
    finished = procedures.finish(
        access, failover, lambda _: None, prepared.unreachable, prepared.fenced, semi_sync=True
    )
    assert finished.unfenced == ("m0",)
    assert (finished.joins.joined, finished.joins.errors) == (["m2"], [])
    server = replicating.servers[1]
    with connect("m1", server.host, server.port, ADMIN, replicating.dialect, read_timeout=5) as m1:
        assert m1.semi_sync_status().source_active, "m1 opened with its source side on"
        m1.execute(SQL("INSERT INTO app.t (id) VALUES (30)"))  # waits for m2's acknowledgement
    replicating.wait_rows(2, {30})
    assert replicating.inspect(2).fenced is True


def test_a_superseded_reconcile_changes_no_replication_setting(replicating: Cluster) -> None:
    """Three steps of a pass change how members replicate without changing a role: the net timeout (restarts the
    IO thread), semi-sync enabled, the source side turned off (kills the connections waiting for an
    acknowledgement). A worker whose decision was superseded (``confirm`` refuses) does none of them."""
    access, dialect = access_to(replicating), replicating.dialect
    names = dialect.semi_sync_variables
    replicating.sessions[1].execute(dialect.set_global(names["source_enabled"], "ON"))  # as on a former primary
    replicating.sessions[2].execute(dialect.set_global(dialect.net_timeout_variable, 7))
    watched = [(0, names["source_enabled"]), (1, names["source_enabled"]), (2, dialect.net_timeout_variable)]
    watched += [(i, names["replica_enabled"]) for i in (1, 2)]

    def settings() -> list[str]:
        return [str(replicating.sessions[i].row(SQL(f"SELECT @@GLOBAL.{name}"))) for i, name in watched]

    before = settings()
    asked: list[str] = []

    def refuse(what: str) -> None:
        asked.append(what)
        raise Superseded(f"not done ({what}): decided on an older state")

    for steps in (
        plan.Plan(net_timeout=("m2",)),
        plan.Plan(semi_sync=True, replicas=("m1", "m2")),
        plan.Plan(source_off=("m1",)),
    ):
        with pytest.raises(Superseded):
            procedures.reconcile(access, "m0", steps, refuse)
        assert settings() == before, f"{steps} changed a member although superseded"
    assert asked == ["net timeout on m2", "enable semi-sync", "semi-sync on m1"]
