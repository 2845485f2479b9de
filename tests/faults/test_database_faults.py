"""Database faults as production has them, each checked for lost acknowledged writes, two writers and progress.

Three members in network namespaces (tests/faults/test_vanished_primary.py starts them); the operator, the API
and the writer that follows the recorded primary (the applications library) run in the root namespace. Where a
scenario needs a client on the old primary's side of a partition, it runs in that member's namespace and writes
to it over loopback, which no cut reaches. Each scenario records its figures (tests/faults/report.py).
"""

from __future__ import annotations

import base64
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.faults.report import Outcome, Recorder
from tests.faults.test_vanished_primary import (
    DB_BOUND,
    PERIOD,
    THRESHOLD,
    Databases,
    progressed,
    start_databases,
)
from tests.fixtures.netns import Host, freeze, thaw
from tests.kube_helpers import wait_for
from whm_ha.demo.stack import DEMO_SCHEMA
from whm_ha.demo.tour import Writer

pytestmark = pytest.mark.mariadb
__all__ = ["start_databases"]  # a fixture

SIDE_CLIENT = """
import sys, threading, time, pymysql
port, user, password, table, connections, out = sys.argv[1:7]
port, connections = int(port), int(connections)
lock = threading.Lock()

def write(next_id):
    conn = None
    while True:
        try:
            if conn is None:
                conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password, autocommit=True,
                                       connect_timeout=2, read_timeout=60, write_timeout=60)
            with conn.cursor() as cur:
                cur.execute(f"INSERT INTO {table} (id) VALUES (%s)", (next_id,))
            with lock:
                acks.write(f"{next_id} {time.time():.3f}\\n")
        except pymysql.MySQLError:
            conn = None
            time.sleep(0.2)
        next_id += connections
        time.sleep(0.01)

with open(out, "a", buffering=1) as acks:
    threads = [threading.Thread(target=write, args=(first,)) for first in range(1, connections + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""
"""Inserts ids into ``table`` on a member over loopback on each of ``connections`` connections (ids 1, 1 + n,
1 + 2n, ... on the first), as the account given; appends "id time" for each acknowledged one."""


@dataclass
class SideClient:
    """A client beside one member, in its namespace: what the member acknowledged to it, and when."""

    host: Host
    acks: Path

    @classmethod
    def start(cls, world: Databases, index: int, folder: Path) -> SideClient:
        """One connection as the application account (which a fenced member refuses), into demo.side_acks."""
        conn = world.servers[index].connect()
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {DEMO_SCHEMA}.side_acks (id INT PRIMARY KEY)")
        conn.close()
        secret = client.CoreV1Api(world.api).read_namespaced_secret("db-app", world.namespace).data or {}
        user, password = (base64.b64decode(secret[k]).decode() for k in ("username", "password"))
        table = f"{DEMO_SCHEMA}.side_acks"
        return cls.launch(
            world.hosts[index], world.servers[index].port, (user, password), table, folder / f"side-{index}.acks"
        )

    @classmethod
    def launch(
        cls, host: Host, port: int, account: tuple[str, str], table: str, acks: Path, connections: int = 1
    ) -> SideClient:
        """Start it in ``host``'s namespace, writing to the member on ``port``; returns after 20 acknowledgements."""
        side = cls(host, acks)
        side.acks.touch()
        host.popen([sys.executable, "-c", SIDE_CLIENT, str(port), *account, table, str(connections), str(acks)])
        wait_for(lambda: len(side.acked()) >= 20, 20, "the side client's first acknowledged writes")
        return side

    def acked(self) -> dict[int, float]:
        """Acknowledged id -> wall-clock time."""
        lines = [line.split() for line in self.acks.read_text().splitlines()]
        return {int(parts[0]): float(parts[1]) for parts in lines if len(parts) == 2}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _rows(world: Databases, index: int, statement: str) -> set[int]:
    conn = world.servers[index].connect()
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return {int(row[0]) for row in cur.fetchall()}
    finally:
        conn.close()


def _primary_index(world: Databases) -> int:
    primary = world.status()["currentPrimary"]
    return int(primary.rsplit("-", 1)[1])


def _lost(world: Databases, writer: Writer, side: SideClient | None = None) -> tuple[int, int]:
    """Acknowledged writes, and those missing from the final primary (the pool's writer and the side client's)."""
    final = _primary_index(world)
    acked = list(writer.acknowledged)
    missing = set(acked) - world.ids(final)
    side_acked: dict[int, float] = side.acked() if side else {}
    if side_acked:
        missing |= {-i for i in set(side_acked) - _rows(world, final, f"SELECT id FROM {DEMO_SCHEMA}.side_acks")}
    if missing:
        print(f"missing from db-{final} (side client's negated): {sorted(missing)[:20]}")
    return len(acked) + len(side_acked), len(missing)


def _late(world: Databases, side: SideClient, promoted_at: float) -> list[int]:
    """The old primary acting as a second writer: writes it acknowledged after the promotion that the final
    primary lacks. (A write acknowledged late but present is one the old primary committed and replicated
    before the fault, whose answer reached the client after it.)"""
    final = _rows(world, _primary_index(world), f"SELECT id FROM {DEMO_SCHEMA}.side_acks")
    return sorted(i for i, at in side.acked().items() if at > promoted_at and i not in final)


def _promotions(world: Databases) -> int:
    return len(world.status().get("promotionHistory", []))


def _converged(world: Databases, quarantined: frozenset[str] = frozenset()) -> Callable[[], bool]:
    """One primary, the recorded one; every other member a replica of it, or quarantined (reported) if named.
    (Right after a promotion the members' roles are those of the inspection before it.)"""

    def check() -> bool:
        status = world.status()
        roles = {m["name"]: m["role"] for m in status.get("members", [])}
        if status.get("promotion") or list(roles.values()).count("Primary") != 1:
            return False
        if roles.get(status.get("currentPrimary", "")) != "Primary":
            return False
        return all(r in ("Primary", "Replica") or (n in quarantined and r == "Quarantined") for n, r in roles.items())

    return check


@dataclass
class Replaced:
    """A primary failed over under the pool's writer and a client beside it, the fault healed, the topology
    settled. Times in seconds from the fault."""

    primary: str
    detect: float
    """To the promotion, as status showed it."""
    recover: float
    """To the pool's writer acknowledged on the new primary."""
    settled: float
    """From healing to one primary, db-0 a replica or quarantined."""
    acked: int
    lost: int
    late: list[int]
    """Writes db-0 acknowledged to the client beside it after the promotion that the final primary lacks."""
    promotions: int
    old_role: str
    """db-0's role in the end."""

    def outcome(self, scenario: str, outcome: str) -> Outcome:
        """The report's row."""
        late = f"{len(self.late)} writes acknowledged by db-0 after the promotion"
        return Outcome(
            scenario,
            "database",
            outcome,
            detect=self.detect,
            recover=self.recover,
            acked=self.acked,
            lost=self.lost,
            promotions=self.promotions,
            limit="" if not self.late and not self.lost else late,
        )

    def check(self) -> None:
        """db-0 acknowledged nothing after the promotion, nothing acknowledged was lost, one promotion."""
        assert self.late == [], f"db-0 acknowledged {len(self.late)} writes after {self.primary} was promoted"
        assert self.lost == 0 and self.promotions == 1


def _replaced(
    world: Databases, writer: RunningWriter, side: SideClient, faulted: float, heal: Callable[[], None], hold: float = 0
) -> Replaced:
    """Wait for a new primary and the writer on it, keep the fault ``hold`` seconds from ``faulted`` (time.time()),
    heal it, wait until the topology settles, stop the writer and count."""
    status = wait_for(
        lambda: (s := world.status()).get("currentPrimary") not in (None, "db-0") and s, DB_BOUND + 20, "promotion"
    )
    detect = time.time() - faulted
    promoted_at = _epoch(status["lastPromotionTime"])  # whole seconds, rounded down: counts more as late
    wait_for(progressed(writer.work), 30, "the pool's writer on the new primary")
    recover = time.time() - faulted
    wait_for(lambda: time.time() > faulted + hold, hold + 5, f"{hold} s of the fault")
    heal()
    healed = time.time()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, db-0 replicating again or quarantined")
    settled = time.time() - healed
    writer.stop()
    acked, lost = _lost(world, writer.work, side)
    roles = {m["name"]: m["role"] for m in world.status()["members"]}
    return Replaced(
        status["currentPrimary"],
        detect,
        recover,
        settled,
        acked,
        lost,
        _late(world, side, promoted_at),
        _promotions(world),
        roles["db-0"].lower(),
    )


def test_a_primary_isolated_with_a_client_beside_it_acknowledges_nothing_that_is_then_lost(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 cut off from the operator and both replicas while a client on its side keeps writing. The replicas
    elect db-1 or db-2; db-0, still up, must not acknowledge a write meanwhile (semi-sync without fallback: its
    writers block), and when the partition heals it is fenced and its unacknowledged commits are named."""
    world = start_databases()
    pool_writer = _start_writer(world)
    side = SideClient.start(world, 0, tmp_path)
    old = world.hosts[0]
    root = f"10.213.{old.address.split('.')[2]}.1"
    cut_at = time.time()
    for peer in (root, world.hosts[1].address, world.hosts[2].address):
        old.cut_from(peer)
    # held past the 10 s semi-sync fallback the server would otherwise take
    done = _replaced(world, pool_writer, side, cut_at, old.heal, hold=15)
    outcome = f"{done.primary} promoted; db-0 {done.old_role} {done.settled:.1f} s after healing"
    resilience.record(done.outcome("primary isolated, a client beside it writing", outcome))
    done.check()


@dataclass
class RunningWriter:
    work: Writer
    thread: Any

    def stop(self) -> None:
        self.work.stop.set()
        self.thread.join(90)
        self.work.pool.close()


def _start_writer(world: Databases) -> RunningWriter:
    pool = world.pool()
    work = Writer(pool)
    work.create_table()
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    wait_for(lambda: len(work.acknowledged) >= 50, 30, "50 acknowledged writes")
    return RunningWriter(work, thread)


def _alive_primary_cut(
    world: Databases, hosts: list[Host], peer: Host | str, scenario: str, resilience: Recorder
) -> tuple[int, str]:
    """Cut ``hosts`` from ``peer`` for several failure windows while db-0 stays alive, heal, and record: the
    promotions made meanwhile (there must be none) and the status reason at the end of the cut."""
    pool_writer = _start_writer(world)
    for host in hosts:
        host.cut_from(peer)
    cut_at = time.monotonic()
    window = PERIOD * (THRESHOLD + 2) + DB_BOUND
    wait_for(lambda: time.monotonic() > cut_at + window, window + 5, "several failure windows")
    promotions = _promotions(world)
    reason = str(world.status().get("reason", ""))
    for host in hosts:
        host.heal()
    healed = time.monotonic()
    wait_for(lambda: world.healthy_on("db-0"), 30, "Healthy on db-0 again")
    wait_for(progressed(pool_writer.work), 30, "writes after healing")
    recover = time.monotonic() - healed
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    outcome = "no promotion" if promotions == 0 else f"{promotions} promotion(s)"
    resilience.record(
        Outcome(scenario, "database", outcome, recover=recover, acked=acked, lost=lost, promotions=promotions)
    )
    assert lost == 0
    return promotions, reason


def test_the_operator_cut_off_from_a_live_primary_does_not_promote(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """Only the operator loses db-0 (a cut between the root namespace and db-0): the replicas still receive from
    it, so it is not dead: no promotion, writers unaffected once the cut heals."""
    world = start_databases()
    root = f"10.213.{world.hosts[0].address.split('.')[2]}.1"
    scenario = "operator cut off from the primary only"
    promotions, reason = _alive_primary_cut(world, [world.hosts[0]], root, scenario, resilience)
    assert promotions == 0, f"promoted while the replicas still received from db-0: {reason}"


def test_replicas_cut_off_from_the_primary_but_not_from_the_operator_do_not_cause_a_promotion(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """db-1 and db-2 lose db-0, the operator does not: the primary is alive, nothing is promoted; with semi-sync
    the primary's writers wait (no replica acknowledges) and resume when the replicas reconnect."""
    world = start_databases()
    scenario = "replicas cut off from the primary, not from the operator"
    promotions, reason = _alive_primary_cut(world, world.hosts[1:], world.hosts[0], scenario, resilience)
    assert promotions == 0, f"promoted while the operator reached db-0: {reason}"


def test_a_primary_frozen_past_the_failure_window_comes_back_fenced(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 frozen (SIGSTOP, a VM stall) for twice the failure window, with a client beside it: the replicas
    elect another; when db-0 thaws it must not acknowledge writes (semi-sync without fallback) and is fenced."""
    world = start_databases()
    pool_writer = _start_writer(world)
    side = SideClient.start(world, 0, tmp_path)
    process = world.servers[0].process
    assert process is not None
    frozen_at = time.time()
    freeze(process)
    status = wait_for(
        lambda: (s := world.status()).get("currentPrimary") not in (None, "db-0") and s, DB_BOUND + 20, "promotion"
    )
    promoted_at = _epoch(status["lastPromotionTime"])
    window = 2 * PERIOD * THRESHOLD + DB_BOUND
    wait_for(lambda: time.time() > frozen_at + window, window + 5, "twice the failure window")
    thaw(process)
    thawed = time.time()
    wait_for(lambda: not world.writable(0), 20, "db-0 fenced after thawing")
    fenced = time.time() - thawed
    wait_for(_converged(world, frozenset({"db-0"})), 30, "one primary; db-0 a replica or quarantined")
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work, side)
    late = _late(world, side, promoted_at)
    promotions = _promotions(world)
    resilience.record(
        Outcome(
            scenario="primary frozen for twice the failure window, then thawed",
            component="database",
            outcome=f"{status['currentPrimary']} promoted; db-0 fenced {fenced:.1f} s after thawing",
            detect=promoted_at - frozen_at,
            recover=None,
            acked=acked,
            lost=lost,
            promotions=promotions,
            limit="" if not late and not lost else f"{len(late)} writes acknowledged by db-0 after the promotion",
        )
    )
    assert late == [] and lost == 0 and promotions == 1


def test_a_flapping_primary_link_causes_at_most_one_promotion_per_interval(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """db-0's link goes down and up every 3 s for 24 s, with minIntervalSeconds 30: at most one promotion, no
    acknowledged write lost, and the topology settles once the link stays up."""
    world = start_databases(minIntervalSeconds=30)
    pool_writer = _start_writer(world)
    started = time.monotonic()
    flapping = world.hosts[0].flap(3, 24)
    flapping.join(40)
    promotions = _promotions(world)
    world.hosts[0].heal()
    healed = time.monotonic()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, the others replicating or quarantined")
    wait_for(progressed(pool_writer.work), 30, "writes after the flapping")
    recover = time.monotonic() - healed
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    resilience.record(
        Outcome(
            scenario="primary link flapping every 3 s for 24 s (minIntervalSeconds 30)",
            component="database",
            outcome=f"{promotions} promotion(s)",
            detect=None,
            recover=recover,
            acked=acked,
            lost=lost,
            promotions=_promotions(world),
        )
    )
    assert _promotions(world) <= 1 and lost == 0, f"{time.monotonic() - started:.0f}s"


def test_the_operator_killed_mid_promotion_during_a_partition_finishes_it_once(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """db-0 blackholed; the operator is killed (SIGKILL) while the promotion is recorded and under way, and
    started again: the new process finishes the recorded promotion, once, and no acknowledged write is lost."""
    world = start_databases()
    assert world.operator is not None
    pool_writer = _start_writer(world)
    world.hosts[0].blackhole()
    cut_at = time.time()
    wait_for(lambda: world.status().get("promotion"), DB_BOUND + 20, "a promotion under way")
    world.operator.kill()
    killed_in = world.status()["promotion"].get("step", "")
    world.operator.start()
    status = wait_for(
        lambda: (s := world.status()).get("currentPrimary") not in (None, "db-0") and not s.get("promotion") and s,
        DB_BOUND + 30,
        "the promotion finished by the new process",
    )
    promoted_at = _epoch(status["lastPromotionTime"])
    wait_for(progressed(pool_writer.work), 40, "writes on the new primary")
    recover = time.time() - cut_at
    world.hosts[0].heal()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, db-0 a replica or quarantined")
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    promotions = _promotions(world)
    resilience.record(
        Outcome(
            scenario="operator killed mid-promotion during a partition",
            component="database",
            outcome=f"killed at step {killed_in}; {status['currentPrimary']} promoted by the restarted operator",
            detect=promoted_at - cut_at,
            recover=recover,
            acked=acked,
            lost=lost,
            promotions=promotions,
        )
    )
    assert promotions == 1 and lost == 0


def test_a_lossy_primary_link_loses_no_acknowledged_write(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """30 % of db-0's packets dropped each way for 30 s: whatever the operator decides, every acknowledged write
    is on the final primary and the topology converges once the link is clean."""
    world = start_databases()
    pool_writer = _start_writer(world)
    world.hosts[0].lose(30)
    started = time.monotonic()
    wait_for(lambda: time.monotonic() > started + 30, 35, "30 s of loss")
    promotions = _promotions(world)
    world.hosts[0].heal()
    healed = time.monotonic()
    wait_for(_converged(world, frozenset({"db-0"})), 60, "one primary, the others replicating or quarantined")
    wait_for(progressed(pool_writer.work), 40, "writes after the loss")
    recover = time.monotonic() - healed
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    resilience.record(
        Outcome(
            scenario="30 % packet loss on the primary's link for 30 s",
            component="database",
            outcome=f"{promotions} promotion(s) during the loss",
            recover=recover,
            acked=acked,
            lost=lost,
            promotions=_promotions(world),
        )
    )
    assert lost == 0 and _promotions(world) <= 1


def test_the_api_server_frozen_during_a_promotion_delays_it_and_loses_nothing(
    start_databases: Callable[..., Databases], resilience: Recorder, request: pytest.FixtureRequest
) -> None:
    """db-0 blackholed; once the promotion is recorded the API server stops answering (SIGSTOP) for 10 s: the
    operator finishes the promotion when it answers again, once, with no acknowledged write lost."""
    world = start_databases()
    sandbox = request.getfixturevalue("sandbox_api")
    pool_writer = _start_writer(world)
    world.hosts[0].blackhole()
    cut_at = time.time()
    wait_for(lambda: world.status().get("promotion"), DB_BOUND + 20, "a promotion under way")
    freeze(sandbox.process)
    try:
        frozen_at = time.monotonic()
        wait_for(lambda: time.monotonic() > frozen_at + 10, 15, "10 s without an API server")
    finally:
        thaw(sandbox.process)
    status = wait_for(
        lambda: (s := world.status()).get("currentPrimary") not in (None, "db-0") and not s.get("promotion") and s,
        60,
        "the promotion finished after the API came back",
    )
    promoted_at = _epoch(status["lastPromotionTime"])
    wait_for(progressed(pool_writer.work), 40, "writes on the new primary")
    recover = time.time() - cut_at
    world.hosts[0].heal()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, db-0 a replica or quarantined")
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    promotions = _promotions(world)
    resilience.record(
        Outcome(
            scenario="API server frozen for 10 s during a promotion",
            component="database",
            outcome=f"{status['currentPrimary']} promoted once the API answered",
            detect=promoted_at - cut_at,
            recover=recover,
            acked=acked,
            lost=lost,
            promotions=promotions,
        )
    )
    assert promotions == 1 and lost == 0


def test_a_stalling_primary_slower_than_the_probe_timeout_loses_no_acknowledged_write(
    start_databases: Callable[..., Databases], resilience: Recorder
) -> None:
    """db-0 stalls 1.5 s of every 1.7 s for 20 s (SIGSTOP/SIGCONT: every reply comes later than the operator's
    1 s probe timeout, as from an overloaded host; this kernel has no netem to delay packets instead). Whatever
    the operator decides, every acknowledged write is on the final primary and the topology converges."""
    world = start_databases()
    pool_writer = _start_writer(world)
    process = world.servers[0].process
    assert process is not None
    stop = threading.Event()

    def stall() -> None:
        while not stop.is_set():
            freeze(process)
            stop.wait(1.5)
            thaw(process)
            stop.wait(0.2)

    staller = threading.Thread(target=stall, daemon=True)
    started = time.monotonic()
    staller.start()
    try:
        wait_for(lambda: time.monotonic() > started + 20, 25, "20 s of stalls")
    finally:
        stop.set()
        staller.join(5)
        thaw(process)
    promotions = _promotions(world)
    healed = time.monotonic()
    wait_for(_converged(world, frozenset({"db-0"})), 60, "one primary, the others replicating or quarantined")
    wait_for(progressed(pool_writer.work), 40, "writes after the stalls")
    recover = time.monotonic() - healed
    pool_writer.stop()
    acked, lost = _lost(world, pool_writer.work)
    resilience.record(
        Outcome(
            scenario="primary stalling 1.5 s of every 1.7 s for 20 s (slower than the probe timeout)",
            component="database",
            outcome=f"{promotions} promotion(s)",
            recover=recover,
            acked=acked,
            lost=lost,
            promotions=_promotions(world),
        )
    )
    assert lost == 0 and _promotions(world) <= 1
