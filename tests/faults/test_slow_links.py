"""Slow links, staged in user space (this kernel has no netem): a toxiproxy inside a member's namespace delays,
with jitter, or limits what the member sends to chosen clients (`tests.fixtures.slow_links`), while every
address stays the same. Each scenario checks that slowness within the timeouts promotes nothing, that the lag
in MySQLReplication status is as far behind as the replica is (also when a slow link hides it from the
replica's own report), that slowness beyond the timeouts on the primary's link is failed over within the bound,
that no acknowledged write is lost and that writers go on.

Where toxiproxy sits: in the namespace of the member whose link is slow, on the server's side of each
connection, so that the redirect (nftables in that namespace) can pick clients by source address and the
proxy's own connection to the server (the namespace's loopback) is never redirected again. A replica's link is
its connection to the primary; the primary's link is every client's connection to it; the operator's link needs
the operator at an address of its own, so that scenario runs it in a namespace of its own (the writers stay in
the root namespace, on fast links).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql
import pytest

from tests.faults.report import Recorder
from tests.faults.test_database_faults import _converged, _judge, _promoted, _promotions
from tests.faults.test_vanished_primary import DB_BOUND, NET_TIMEOUT, PERIOD, THRESHOLD, Databases, start_databases
from tests.faults.workload import BESIDE_IDS, Workload
from tests.fixtures.netns import MARIADB_PORT, TestNetwork
from tests.fixtures.slow_links import Link, SlowLinks
from tests.kube_helpers import wait_for
from whm_ha.demo.stack import DEMO_SCHEMA

pytestmark = pytest.mark.mariadb
__all__ = ["start_databases"]  # a fixture

TIMEOUT = min(PERIOD, 5)
"""The operator's connect and inspection timeout (`whm_ha.replication.plan.member_timeout`)."""
WAITING_TIMEOUT = TIMEOUT + NET_TIMEOUT
"""Its timeout for a reply that may wait on a replication thread (`plan.waiting_timeout`): a fence's."""
SLOW_SECONDS = 8
"""How long slowness within the timeouts lasts."""
STALL = 3.0
"""Writers go on: never longer than this without an acknowledged write while they should."""
LAG_TOLERANCE = 2 * PERIOD + 1.5
"""How far below the lag measured from the writes the status's may be: the operator knows the primary's set only
as of each inspection (a period) and whole seconds rounded down (one); the status read is up to a period old,
plus the time it takes to write it."""


def _toxiproxy(world: Databases, index: int, binary: Path, folder: Path) -> SlowLinks:
    """A toxiproxy in front of db-<index>'s server, in its namespace (its log in ``folder``)."""
    host = world.hosts[index]
    return SlowLinks.start(host, binary, folder / f"toxiproxy-{host.name}.log", MARIADB_PORT)


def _reported_lag(world: Databases, index: int) -> int | None:
    """Seconds_Behind_Master as the replica's own server reports it now."""
    with world.servers[index].connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
    lag = row["Seconds_Behind_Master"] if row else None
    return None if lag is None else int(lag)


def _status_lag(world: Databases, member: str) -> int | None:
    return next((m.get("lagSeconds") for m in world.status().get("members", []) if m["name"] == member), None)


History = list[tuple[float, int, int]]
"""(time, writes acknowledged, highest id acknowledged) as a watch went (`_watch`)."""


def _lag_samples(
    world: Databases, index: int, into: list[tuple[int | None, int | None, int | None]]
) -> Callable[[History], None]:
    """A sampler: the replica's own lag, the status's, its own again (the status lies between the two reads)."""
    name = world.hosts[index].name

    def sample(_: History) -> None:
        into.append((_reported_lag(world, index), _status_lag(world, name), _reported_lag(world, index)))

    return sample


def _measured_lag_samples(
    world: Databases, index: int, before: History, into: list[tuple[int | None, int | None, float]]
) -> Callable[[History], None]:
    """A sampler: the replica's own lag, the status's, then the lag measured from the writes (`_behind`, over
    ``before`` and the watch so far)."""
    name = world.hosts[index].name

    def sample(history: History) -> None:
        own, status = _reported_lag(world, index), _status_lag(world, name)
        into.append((own, status, _behind(world, index, before + history)))

    return sample


def _truthful(sample: tuple[int | None, int | None, int | None]) -> bool:
    """The status's lag is what the server reported, give or take the second its inspection may be old."""
    before, status, after = sample
    if status is None or before is None or after is None:
        return status is None and (before is None or after is None)
    return min(before, after) - 1 <= status <= max(before, after) + 1


def _watch(
    load: Workload, seconds: float, sample: Callable[[History], object] = lambda _: None
) -> tuple[float, History]:
    """Watch for ``seconds``, every 0.1 s (calling ``sample`` with the history so far too): the longest time the
    pool's writers went without an acknowledged write, and (time, writes acknowledged, highest id acknowledged)
    as they went."""
    history: History = []
    started = last_change = time.monotonic()
    stall, count, highest = 0.0, len(load.writers.acks), 0
    while (now := time.monotonic()) < started + seconds:
        acked = load.writers.acks.all()
        if len(acked) != count:
            count, last_change = len(acked), now
            highest = max(ack.id for ack in acked)
        stall = max(stall, now - last_change)
        history.append((now, count, highest))
        sample(history)
        time.sleep(0.1)
    return stall, history


def _received(session: pymysql.connections.Connection[Any]) -> int:
    """The sequence number of the last transaction a replica's IO thread received (its ``Gtid_IO_Pos``, one
    domain), whether or not it is applied yet."""
    with session.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
    positions = str(row["Gtid_IO_Pos"] or "") if row else ""
    return max((int(gtid.rsplit("-", 1)[1]) for gtid in positions.split(",") if gtid.strip()), default=0)


def _arrival(world: Databases, replicas: tuple[int, ...], mark: int) -> dict[int, float]:
    """Seconds from sending a commit to db-0 (as the administrator, beside the writers) until each replica
    received it, every replica polled from the moment it is sent (the commit returns only once one acknowledged
    it). Received, not applied: under the writers a replica's applier may trail by more than a slow link
    delays."""
    conn = world.servers[0].connect()
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {DEMO_SCHEMA}.marks (id INT PRIMARY KEY)")
    sessions = {index: world.servers[index].connect() for index in replicas}
    commit = threading.Thread(target=conn.query, args=(f"INSERT INTO {DEMO_SCHEMA}.marks (id) VALUES ({mark})",))
    polled: dict[int, list[tuple[float, int]]] = {index: [] for index in replicas}
    target: int | None = None
    sent = time.monotonic()
    commit.start()
    try:
        while time.monotonic() < sent + 10:
            for index, session in sessions.items():
                polled[index].append((time.monotonic() - sent, _received(session)))
            if target is None and not commit.is_alive():
                with conn.cursor() as cur:
                    cur.execute("SELECT @@last_gtid")
                    target = int(str(cur.fetchone()[0]).rsplit("-", 1)[1])
            if target is not None and all(polled[i][-1][1] >= target for i in replicas):
                break
            time.sleep(0.005)
    finally:
        commit.join(10)
        for session in [conn, *sessions.values()]:
            session.close()
    first = {i: next((at for at, seq in polled[i] if target is not None and seq >= target), None) for i in replicas}
    arrived = {i: at for i, at in first.items() if at is not None}
    assert len(arrived) == len(replicas), f"mark {mark} reached only {sorted(arrived)} within 10 s"
    return arrived


def _behind(world: Databases, index: int, history: History) -> float:
    """Seconds since the primary acknowledged the oldest write the replica does not hold yet (0 when it holds
    every write acknowledged so far): the replica's lag, measured apart from what any server reports."""
    conn = world.servers[index].connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COALESCE(MAX(id), 0) FROM {DEMO_SCHEMA}.writes WHERE id < {BESIDE_IDS}")
            row = cur.fetchone()
    finally:
        conn.close()
    held = int(row[0]) if row else 0
    now = time.monotonic()
    return next((now - at for at, _, last in history if last > held), 0.0)


def _near(status: int | None, measured: float) -> bool:
    """The status's lag is the measured one within `LAG_TOLERANCE` below it, and a second above (the measure
    counts from acknowledgements, a little after the commits)."""
    return status is not None and measured - LAG_TOLERANCE <= status <= measured + 1


def _rate(history: History) -> float:
    """Acknowledged writes a second over a watched stretch (the pool's)."""
    (first, low, _), (last, high, _) = history[0], history[-1]
    return (high - low) / (last - first) if last > first else 0.0


def test_a_replica_behind_a_slow_link_is_reported_as_far_behind_as_it_is_and_promotes_nothing(
    start_databases: Callable[..., Databases], toxiproxy_server: Path, resilience: Recorder, tmp_path: Path
) -> None:
    """db-1's replication link delayed 200 ± 50 ms: the status's lag is what db-1 itself reports, nothing is
    promoted, the writers (acknowledged by db-2 meanwhile) do not stall, nothing is lost. Then limited to
    2 KB/s, so that db-1 falls seconds behind while it reports 0 s (Seconds_Behind_Master counts only what it
    received): the status's lag stays within `LAG_TOLERANCE` of the lag measured from the writes."""
    links: dict[str, Link] = {}

    def prepare(world: Databases) -> None:
        links["db-1"] = _toxiproxy(world, 0, toxiproxy_server, tmp_path).route("db-1", [world.hosts[1].address])

    row = resilience.scenario("replica's link 200 ± 50 ms slow, then limited to 2 KB/s", "database")
    world = start_databases(prepare=prepare)
    load = world.workload(tmp_path)
    _, calm = _watch(load, 2)
    link = links["db-1"]
    fault = time.time()
    link.delay(200, 50)
    arrivals = [_arrival(world, (1, 2), mark) for mark in range(1, 6)]
    later = sorted(arrival[1] - arrival[2] for arrival in arrivals)
    delayed: list[tuple[int | None, int | None, int | None]] = []
    stall, history = _watch(load, SLOW_SECONDS, _lag_samples(world, 1, delayed))
    link.limit(2)
    limited: list[tuple[int | None, int | None, float]] = []
    stall_limited, history_limited = _watch(load, 6, _measured_lag_samples(world, 1, history, limited))
    behind = _behind(world, 1, history + history_limited)
    link.clear()
    healed = time.time()
    row.promotions = _promotions(world)
    wait_for(_converged(world), 30, "one primary, every other member replicating once the link is fast again")
    wait_for(load.progressed(), 30, "writes after healing")
    status_lag = max((s[1] or 0) for s in delayed)
    status_limited = max((s[1] or 0) for s in limited)
    reported = max((s[0] or 0) for s in limited)
    untrue = [s for s in delayed if not _truthful(s)]
    unlike = [(s[1], round(s[2], 1)) for s in limited if not _near(s[1], s[2])]
    row.outcome = (
        f"no promotion; db-1 received {later[len(later) // 2] * 1000:.0f} ms after db-2 (median of 5); "
        f"lag in status up to {status_lag} s, as db-1 reported; at 2 KB/s db-1 fell {behind:.0f} s behind "
        f"(measured from the writes), status showed up to {status_limited} s while db-1 reported at most "
        f"{reported} s; writes {_rate(calm):.0f}/s before, {_rate(history):.0f}/s slow, "
        f"{_rate(history_limited):.0f}/s limited"
    )
    if unlike:
        row.limit = f"status lag unlike the measured lag (status, measured): {unlike}"
    _judge(world, load, row, fault, healed, writes_during=True)
    assert later[len(later) // 2] >= 0.15, f"db-1 received only {later} s after db-2: the link is not slow"
    assert behind > 2, f"db-1 only {behind:.1f} s behind at 2 KB/s: the limit did not hold it back"
    assert untrue == [], f"status lag unlike db-1's own (before, status, after): {untrue}"
    assert unlike == [], f"at 2 KB/s the status lag was not db-1's measured lag (status, measured): {unlike}"
    assert stall < STALL and stall_limited < STALL, f"writers stalled {stall:.1f} s, {stall_limited:.1f} s"
    assert row.promotions == 0 and world.status()["currentPrimary"] == "db-0"


def test_a_primary_link_at_50_ms_promotes_nothing_and_one_beyond_the_timeouts_fails_over_within_the_bound(
    start_databases: Callable[..., Databases], toxiproxy_server: Path, resilience: Recorder, tmp_path: Path
) -> None:
    """What db-0 sends to every client (replicas, operator, writers) delayed 50 ms: slower writes, nothing
    promoted. Then 2.5 s, beyond the operator's inspection timeout and the replicas' net timeout though within
    the waiting timeout a fence is given: a promotion within the bound for a vanished primary, while a client
    beside db-0 (over its loopback, not slowed) gets no write acknowledged after it, and nothing is lost."""
    links: dict[str, Link] = {}

    def prepare(world: Databases) -> None:
        links["clients"] = _toxiproxy(world, 0, toxiproxy_server, tmp_path).route("clients")

    slow = resilience.scenario("primary's link 50 ms slow (every client)", "database")
    latency = 2.5
    scenario = f"primary's link {latency:g} s slow (beyond the {TIMEOUT} s inspection timeout), a client beside it"
    row = resilience.scenario(scenario, "database")
    world = start_databases(prepare=prepare)
    load = world.workload(tmp_path)
    _, calm = _watch(load, 2)
    link = links["clients"]
    link.delay(50)
    slowed = time.time()
    stall, history = _watch(load, SLOW_SECONDS)
    slow.during = len(load.writers.acks.between(slowed))
    slow.promotions = _promotions(world)
    healthy = world.healthy_on("db-0")
    slow.outcome = (
        f"no promotion; writes {_rate(calm):.0f}/s before, {_rate(history):.0f}/s slow "
        f"({slow.during} in {SLOW_SECONDS} s), longest wait {stall:.1f} s"
    )
    assert slow.promotions == 0 and healthy, world.status().get("reason")
    assert slow.during > 0 and stall < STALL, f"writers stalled {stall:.1f} s"

    assert TIMEOUT < NET_TIMEOUT < latency < WAITING_TIMEOUT
    fault = time.time()
    link.delay(int(latency * 1000))
    status = _promoted(world, load, row, fault)
    wait_for(load.progressed(), 30, "the pool's writers on the new primary")
    row.recover = time.time() - fault
    link.clear()
    healed = time.time()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, db-0 replicating again or quarantined")
    settled = time.time() - healed
    roles = {m["name"]: m["role"] for m in world.status()["members"]}
    row.outcome = (
        f"{status['currentPrimary']} promoted within {DB_BOUND} s; db-0 {roles['db-0'].lower()} {settled:.1f} s "
        f"after healing"
    )
    row.promotions = _promotions(world)
    _judge(world, load, row, fault, healed, writes_during=True)
    assert row.detect is not None and row.detect <= DB_BOUND, f"{row.detect} s to a promotion; bound {DB_BOUND} s"
    assert row.promotions == 1


def test_a_slow_operator_link_promotes_nothing_and_the_writers_go_on(
    namespace_kubeconfig: Path,  # first: the API must outlive the operator at teardown
    start_databases: Callable[..., Databases],
    toxiproxy_server: Path,
    test_network: TestNetwork,
    resilience: Recorder,
    tmp_path: Path,
) -> None:
    """The operator, in a namespace of its own, reaches every member through a link delayed 500 ± 100 ms (within
    its 1 s timeout), then 1.5 s (beyond it); the writers, in the root namespace, do not go through it. Within
    the timeout the operator still sees everything; beyond it, it sees no member and, the replicas not having
    lost the primary, promotes nothing. Either way the writers go on and nothing is lost."""
    operator = test_network.host("operator")
    links: list[Link] = []

    def prepare(world: Databases) -> None:
        links.extend(
            _toxiproxy(world, i, toxiproxy_server, tmp_path).route("operator", [operator.address]) for i in range(3)
        )

    within = resilience.scenario("operator's link 500 ± 100 ms slow (within its 1 s timeout)", "database")
    scenario = "operator's link 1.5 s slow (beyond its 1 s timeout) for several failure windows"
    row = resilience.scenario(scenario, "database")
    world = start_databases(prepare=prepare, operator_in=(operator, namespace_kubeconfig))
    load = world.workload(tmp_path)
    for link in links:
        link.delay(500, 100)
    stall, _ = _watch(load, SLOW_SECONDS)
    seen = wait_for(
        lambda: world.healthy_on("db-0") and all(m.get("reachable") for m in world.status()["members"]),
        10,
        "every member reachable, Healthy on db-0, through the slow link",
    )
    within.promotions = _promotions(world)
    within.outcome = f"no promotion; every member inspected; writers' longest wait {stall:.1f} s"
    assert seen and within.promotions == 0
    assert stall < STALL, f"writers stalled {stall:.1f} s"

    fault = time.time()
    for link in links:
        link.delay(1500)
    wait_for(lambda: "cannot reach the primary" in str(world.status().get("reason")), 10, "db-0 reported unreachable")
    row.detect = time.time() - fault
    window = PERIOD * (THRESHOLD + 2) + DB_BOUND
    stall_beyond, _ = _watch(load, window)
    row.promotions = _promotions(world)
    reason = str(world.status().get("reason"))
    for link in links:
        link.clear()
    healed = time.time()
    wait_for(lambda: world.healthy_on("db-0"), 30, "Healthy on db-0 once the link is fast again")
    row.recover = time.time() - healed
    row.outcome = f"no promotion; longest wait {stall_beyond:.1f} s; Healthy {row.recover:.1f} s after healing"
    wait_for(load.progressed(), 30, "writes after healing")
    _judge(world, load, row, fault, healed, writes_during=True)
    assert row.promotions == 0, f"promoted while the replicas still received from db-0: {reason}"
    assert stall_beyond < STALL, f"writers stalled {stall_beyond:.1f} s"
