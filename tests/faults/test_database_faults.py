"""Database faults as production has them, each checked for lost acknowledged writes, two writers and progress.

Three members in network namespaces (tests/faults/test_vanished_primary.py starts them); the operator, the API
and the writers that follow the recorded primary (the applications library) run in the root namespace; writers
beside every member, in its namespace, write to it over loopback, which no cut reaches (tests/faults/workload.py).
Each scenario records its figures (tests/faults/report.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.report import Outcome, Recorder
from tests.faults.test_vanished_primary import (
    DB_BOUND,
    PERIOD,
    THRESHOLD,
    Databases,
    start_databases,
)
from tests.faults.workload import Workload, judge
from tests.fixtures.netns import Host, freeze, thaw
from tests.kube_helpers import wait_for

pytestmark = pytest.mark.mariadb
__all__ = ["start_databases"]  # a fixture


def _judge(world: Databases, load: Workload, row: Outcome, fault: float, healed: float, writes_during: bool) -> None:
    final = world.servers[world.primary()].connect()
    judge(load, final, row, fault, healed, world.status(), writes_during=writes_during)


def _promoted(world: Databases, load: Workload, row: Outcome, fault: float) -> dict[str, object]:
    """Wait for a member other than db-0 to be recorded primary; ``row.detect`` is the fault to its first
    acknowledged write (client clocks)."""
    status: dict[str, object] = wait_for(
        lambda: (s := world.status()).get("currentPrimary") not in (None, "db-0") and not s.get("promotion") and s,
        DB_BOUND + 30,
        "a promotion",
    )
    wait_for(lambda: load.first_elsewhere(0, fault) is not None, 30, "a write acknowledged by the new primary")
    row.detect = (load.first_elsewhere(0, fault) or fault) - fault
    return status


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


def test_a_primary_isolated_with_a_client_beside_it_acknowledges_nothing_that_is_then_lost(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 cut off from the operator and both replicas while the writers beside it keep writing. The replicas
    elect db-1 or db-2; db-0, still up, must not acknowledge a write meanwhile (semi-sync without fallback: its
    writers block), and when the partition heals it is fenced and its unacknowledged commits are named."""
    row = resilience.scenario("primary isolated, a client beside it writing", "database")
    world = start_databases()
    load = world.workload(tmp_path)
    old = world.hosts[0]
    root = f"10.213.{old.address.split('.')[2]}.1"
    fault = time.time()
    for peer in (root, world.hosts[1].address, world.hosts[2].address):
        old.cut_from(peer)
    status = _promoted(world, load, row, fault)
    wait_for(load.progressed(), 30, "the pool's writers on the new primary")
    row.recover = time.time() - fault
    hold = fault + 15  # past the 10 s semi-sync fallback the server would otherwise take
    wait_for(lambda: time.time() > hold, 20, "15 s of partition")
    old.heal()
    healed = time.time()
    wait_for(_converged(world, frozenset({"db-0"})), 30, "one primary, db-0 replicating again or quarantined")
    wait_for(load.progressed(), 30, "writes after healing")
    settled = time.time() - healed
    roles = {m["name"]: m["role"] for m in world.status()["members"]}
    row.outcome = f"{status['currentPrimary']} promoted; db-0 {roles['db-0'].lower()} {settled:.1f} s after healing"
    row.promotions = _promotions(world)
    _judge(world, load, row, fault, healed, writes_during=True)
    assert row.promotions == 1


def _alive_primary_cut(
    world: Databases, hosts: list[Host], peer: Host | str, row: Outcome, folder: Path, writes_during: bool
) -> tuple[Workload, float, float]:
    """Cut ``hosts`` from ``peer`` for several failure windows while db-0 stays alive, heal, and judge. No
    promotion may happen meanwhile. The writers, when every cut was in place and when it healed."""
    load = world.workload(folder)
    fault = time.time()
    for host in hosts:
        host.cut_from(peer)
    cut = time.time()
    window = PERIOD * (THRESHOLD + 2) + DB_BOUND
    wait_for(lambda: time.time() > fault + window, window + 5, "several failure windows")
    row.promotions = _promotions(world)
    reason = str(world.status().get("reason", ""))
    for host in hosts:
        host.heal()
    healed = time.time()
    wait_for(lambda: world.healthy_on("db-0"), 30, "Healthy on db-0 again")
    wait_for(load.progressed(), 30, "writes after healing")
    row.recover = time.time() - healed
    row.outcome = "no promotion" if row.promotions == 0 else f"{row.promotions} promotion(s)"
    _judge(world, load, row, fault, healed, writes_during=writes_during)
    assert row.promotions == 0, f"promoted while db-0 was alive: {reason}"
    return load, cut, healed


def test_the_operator_cut_off_from_a_live_primary_does_not_promote(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """Only the operator loses db-0 (a cut between the root namespace and db-0, where the pool's writers run
    too): the replicas still receive from it, so it is not dead: no promotion, and the writers beside db-0 go on
    writing through the cut."""
    row = resilience.scenario("operator cut off from the primary only", "database")
    world = start_databases()
    root = f"10.213.{world.hosts[0].address.split('.')[2]}.1"
    _alive_primary_cut(world, [world.hosts[0]], root, row, tmp_path, writes_during=True)


def test_replicas_cut_off_from_the_primary_but_not_from_the_operator_do_not_cause_a_promotion(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-1 and db-2 lose db-0, the operator does not: the primary is alive, nothing is promoted; with semi-sync
    the primary's writers wait (no replica acknowledges: no write sent during the cut is acknowledged before it
    heals) and resume when the replicas reconnect."""
    row = resilience.scenario("replicas cut off from the primary, not from the operator", "database")
    world = start_databases()
    load, cut, healed = _alive_primary_cut(world, world.hosts[1:], world.hosts[0], row, tmp_path, False)
    unreplicated = [ack for ack in load.acks() if cut < ack.sent and ack.acked < healed]
    assert not unreplicated, f"{len(unreplicated)} writes acknowledged with no replica receiving: {unreplicated[:3]}"


def test_a_primary_frozen_past_the_failure_window_comes_back_fenced(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 frozen (SIGSTOP, a VM stall) for twice the failure window, with writers beside it: the replicas
    elect another; when db-0 thaws it must not acknowledge writes (semi-sync without fallback) and is fenced."""
    row = resilience.scenario("primary frozen for twice the failure window, then thawed", "database")
    world = start_databases()
    load = world.workload(tmp_path)
    process = world.servers[0].process
    assert process is not None
    fault = time.time()
    freeze(process)
    try:
        status = _promoted(world, load, row, fault)
        wait_for(load.progressed(), 30, "the pool's writers on the new primary")
        row.recover = time.time() - fault
        window = 2 * PERIOD * THRESHOLD + DB_BOUND
        wait_for(lambda: time.time() > fault + window, window + 5, "twice the failure window")
    finally:
        thaw(process)
    healed = time.time()
    wait_for(lambda: world.fenced(0), 20, "db-0 fenced after thawing")
    fenced = time.time() - healed
    wait_for(_converged(world, frozenset({"db-0"})), 30, "one primary; db-0 a replica or quarantined")
    row.outcome = f"{status['currentPrimary']} promoted; db-0 fenced {fenced:.1f} s after thawing"
    row.promotions = _promotions(world)
    _judge(world, load, row, fault, healed, writes_during=True)
    assert row.promotions == 1


def test_a_flapping_primary_link_causes_at_most_one_promotion_per_interval(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0's link goes down and up every 3 s for 24 s, with minIntervalSeconds 30: at most one promotion, no
    acknowledged write lost, and the topology settles once the link stays up."""
    row = resilience.scenario("primary link flapping every 3 s for 24 s (minIntervalSeconds 30)", "database")
    world = start_databases(minIntervalSeconds=30)
    load = world.workload(tmp_path)
    fault = time.time()
    flapping = world.hosts[0].flap(3, 24)
    flapping.join(40)
    row.outcome = f"{_promotions(world)} promotion(s)"
    # The link is up half the time: whether writes are acknowledged then depends on the replicas reconnecting.
    _heal_and_judge(world, load, row, fault, world.hosts[0].heal, writes_during=False)


def _heal_and_judge(
    world: Databases, load: Workload, row: Outcome, fault: float, heal: Callable[[], None], writes_during: bool
) -> None:
    """``heal``, wait for one primary with the others replicating (db-0 may be quarantined) and writes through
    the pool (``row.recover``: from the healing), judge; at most one promotion."""
    heal()
    healed = time.time()
    wait_for(_converged(world, frozenset({"db-0"})), 60, "one primary, the others replicating or quarantined")
    wait_for(load.progressed(), 40, "writes after the healing")
    row.recover = time.time() - healed
    row.promotions = _promotions(world)
    _judge(world, load, row, fault, healed, writes_during=writes_during)
    assert row.promotions <= 1


def _promotion_interrupted(
    world: Databases, load: Workload, row: Outcome, interrupt: Callable[[], None]
) -> dict[str, object]:
    """Blackhole db-0; once a promotion is recorded and under way, ``interrupt`` (which returns when the
    operator may go on); wait for the promotion to finish, for the writers on the new primary, heal db-0 and
    judge. The final status."""
    fault = time.time()
    world.hosts[0].blackhole()
    wait_for(lambda: world.status().get("promotion"), DB_BOUND + 20, "a promotion under way")
    interrupt()
    status = _promoted(world, load, row, fault)
    wait_for(load.progressed(), 40, "writes on the new primary")
    row.recover = time.time() - fault
    world.hosts[0].heal()
    healed = time.time()
    wait_for(_converged(world, frozenset({"db-0"})), 40, "one primary, db-0 a replica or quarantined")
    row.promotions = _promotions(world)
    _judge(world, load, row, fault, healed, writes_during=True)
    assert row.promotions == 1
    return status


def test_the_operator_killed_mid_promotion_during_a_partition_finishes_it_once(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 blackholed; the operator is killed (SIGKILL) while the promotion is recorded and under way, and
    started again: the new process finishes the recorded promotion, once, and no acknowledged write is lost."""
    row = resilience.scenario("operator killed mid-promotion during a partition", "database")
    world = start_databases()
    operator = world.operator
    assert operator is not None
    load = world.workload(tmp_path)
    steps = []

    def kill_and_restart() -> None:
        operator.kill()
        steps.append(world.status()["promotion"].get("step", ""))
        operator.start()

    status = _promotion_interrupted(world, load, row, kill_and_restart)
    row.outcome = f"killed at step {steps[0]}; {status['currentPrimary']} promoted by the restarted operator"


def test_a_lossy_primary_link_loses_no_acknowledged_write(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """30 % of db-0's packets dropped each way for 30 s: whatever the operator decides, every acknowledged write
    is on the final primary, writes go on, and the topology converges once the link is clean."""
    row = resilience.scenario("30 % packet loss on the primary's link for 30 s", "database")
    world = start_databases()
    load = world.workload(tmp_path)
    fault = time.time()
    world.hosts[0].lose(30)
    wait_for(lambda: time.time() > fault + 30, 35, "30 s of loss")
    row.outcome = f"{_promotions(world)} promotion(s) during the loss"
    _heal_and_judge(world, load, row, fault, world.hosts[0].heal, writes_during=True)


def test_the_api_server_frozen_during_a_promotion_delays_it_and_loses_nothing(
    start_databases: Callable[..., Databases], resilience: Recorder, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """db-0 blackholed; once the promotion is recorded the API server stops answering (SIGSTOP) for 10 s: the
    operator finishes the promotion when it answers again, once, with no acknowledged write lost."""
    row = resilience.scenario("API server frozen for 10 s during a promotion", "database")
    world = start_databases()
    sandbox = request.getfixturevalue("sandbox_api")
    load = world.workload(tmp_path)

    def freeze_the_api() -> None:
        freeze(sandbox.process)
        try:
            frozen_at = time.monotonic()
            wait_for(lambda: time.monotonic() > frozen_at + 10, 15, "10 s without an API server")
        finally:
            thaw(sandbox.process)

    status = _promotion_interrupted(world, load, row, freeze_the_api)
    row.outcome = f"{status['currentPrimary']} promoted once the API answered"


def test_a_stalling_primary_slower_than_the_probe_timeout_loses_no_acknowledged_write(
    start_databases: Callable[..., Databases], resilience: Recorder, tmp_path: Path
) -> None:
    """db-0 stalls 1.5 s of every 1.7 s for 20 s (SIGSTOP/SIGCONT: every reply comes later than the operator's
    1 s probe timeout, as from an overloaded host; this kernel has no netem to delay packets instead). Whatever
    the operator decides, every acknowledged write is on the final primary, writes go on between the stalls, and
    the topology converges."""
    row = resilience.scenario(
        "primary stalling 1.5 s of every 1.7 s for 20 s (slower than the probe timeout)", "database"
    )
    world = start_databases()
    load = world.workload(tmp_path)
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
    fault = time.time()
    staller.start()
    try:
        wait_for(lambda: time.time() > fault + 20, 25, "20 s of stalls")
    finally:
        stop.set()
        staller.join(5)
        thaw(process)
    row.outcome = f"{_promotions(world)} promotion(s)"
    _heal_and_judge(world, load, row, fault, lambda: None, writes_during=True)
