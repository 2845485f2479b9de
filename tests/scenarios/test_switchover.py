"""Switchovers and a failover with the whole system running, as `whm-ha demo` starts it: the operator (with
``spec.database``, so it writes the legacy tables), the shim (which requests the switchovers, as legacy tools do),
the proxy under GET traffic, and two applications writing through `whm_ha.apps`: a ReadWritePool writer and a
session store. Every check reads the servers themselves: binary logs, GTID sets, replication sources."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest
from kubernetes import client

from tests.fixtures.kube import TIERS
from tests.kube_helpers import wait_for
from tests.scenarios.system import running_system
from whm_ha.apps.pool import PoolError
from whm_ha.apps.sessions import SessionStore, session_hash
from whm_ha.control_plane import find_bin_dir
from whm_ha.db.server_checks import binlog_point, errant, transactions_after
from whm_ha.demo import checkers
from whm_ha.demo.stack import Stack
from whm_ha.demo.tour import Traffic, application_pool, promote_through_shim, settled_on
from whm_ha.demo.view import Observer

pytestmark = pytest.mark.mariadb
SWITCHOVER_BOUND = 10.0
"""Seconds from the shim's request to a Healthy replication with every replica on the new primary."""


@dataclass
class System:
    stack: Stack
    api: client.ApiClient
    observer: Observer

    def index(self, member: str) -> int:
        return int(member.rsplit("-", 1)[1])

    def primary(self) -> str:
        return str(self.observer.replication()["status"]["currentPrimary"])

    def sql(self, member: str, statement: str) -> list[tuple[Any, ...]]:
        return self.stack.databases[self.index(member)].query(statement)

    def promote(self, member: str) -> dict[str, Any]:
        """A promotion through the shim, as a legacy tool requests it."""
        try:
            body = promote_through_shim(self.stack, member)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"promote {member}: {exc.code} {exc.read().decode()}") from exc
        assert body["success"] is True and body["masterMember"] == member, body
        return body

    def settled_on(self, member: str) -> bool:
        return settled_on(self.stack, self.observer, member)

    def health_rows(self, member: str) -> int:
        return int(self.sql(member, "SELECT COUNT(*) FROM whm_ha.ha_health_checks")[0][0])


@dataclass
class Sessions:
    """Creates sessions through the session store; remembers each acknowledged one."""

    store: SessionStore
    acknowledged: list[str] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.acknowledged.append(self.store.create("alice", {"n": len(self.acknowledged)}, node="whm-node-1"))
            except (pymysql.MySQLError, PoolError):
                self.errors += 1
            time.sleep(0.02)


@dataclass
class Workload:
    """Everything that writes or reads while the database changes primary."""

    traffic: Traffic
    writers: checkers.Writers
    sessions: Sessions
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.writers.start(warm_up=0)
        for part in (self.traffic, self.sessions):
            self.threads.append(threading.Thread(target=part.run, daemon=True))
            self.threads[-1].start()

    def progressed(self) -> Callable[[], bool]:
        """A condition: the writers and the sessions had an acknowledged write after this call."""
        writes, sessions = self.writers.acks.progressed(), len(self.sessions.acknowledged)
        return lambda: writes() and len(self.sessions.acknowledged) > sessions

    def stop(self) -> None:
        for part in (self.traffic, self.sessions):
            part.stop.set()
        self.writers.stop(30)
        for thread in self.threads:
            thread.join(30)


@pytest.fixture(params=TIERS)
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    if request.param == "real" and find_bin_dir() is None:
        pytest.skip("the real control plane is not built (hack/build-control-plane)")
    with running_system(tmp_path, api=request.param) as (stack, api, observer):
        yield System(stack, api, observer)


@pytest.fixture
def workload(system: System) -> Iterator[Workload]:
    pool = application_pool(system.api)
    checkers.create_table(pool.writer)
    work = Workload(
        Traffic(f"http://127.0.0.1:{system.stack.proxy_port}/"),
        checkers.Writers(pool.writer),
        Sessions(SessionStore(application_pool(system.api, database="whm_ha"))),
    )
    work.start()
    wait_for(work.progressed(), 20, "both writers to write")
    yield work
    work.stop()


def check_nothing_lost(system: System, work: Workload) -> None:
    """Every acknowledged write and session is on the primary; nobody holds what the primary lacks."""
    writes, sessions = work.writers.acks.all(), list(work.sessions.acknowledged)  # before reading the primary
    primary = system.primary()
    ids = {int(r[0]) for r in system.sql(primary, f"SELECT id FROM {checkers.TABLE}")}
    assert checkers.missing(writes, ids) == [], f"acknowledged writes lost on {primary}"
    labels = {f"db-{i}": f"{server.host}:{server.port}" for i, server in enumerate(system.stack.databases)}
    status = system.observer.replication()["status"]
    primaries = checkers.primaries_from(status, labels, "db-0")
    assert checkers.two_acknowledging(writes, primaries) == [], "two members acknowledging writes"
    hashes = {r[0] for r in system.sql(primary, "SELECT session_hash FROM whm_ha.ha_sessions")}
    assert [s for s in sessions if session_hash(s) not in hashes] == [], f"acknowledged sessions lost on {primary}"
    assert errant(system.stack.databases, system.index(primary)) == {}, "errant transactions"


def switch_to(system: System, work: Workload, target: str) -> float:
    """A planned switchover through the shim; checks that nothing writes to the old primary afterwards. Returns
    the seconds from the request to a settled topology."""
    old = system.primary()
    old_server = system.stack.databases[system.index(old)]
    started = time.monotonic()
    system.promote(target)
    wait_for(lambda: system.settled_on(target), SWITCHOVER_BOUND + 5, f"{target} primary with both replicas on it")
    took = time.monotonic() - started
    # The fence point lies before this: from here on, the old primary may log only what it replicates.
    point = binlog_point(old_server)
    rows = system.health_rows(target)
    wait_for(lambda: system.health_rows(target) >= rows + 9, 15, "three more rounds of legacy writes")
    wait_for(work.progressed(), 15, "both writers to write on the new primary")
    own = [t.gtid for t in transactions_after(old_server, point) if t.server_id == old_server.server_id]
    assert own == [], f"written to the fenced primary {old} after the switchover: {own}"
    check_nothing_lost(system, work)
    assert took <= SWITCHOVER_BOUND, f"switchover to {target} took {took:.1f}s"
    return took


def test_switchovers_through_the_shim_under_every_writer(system: System, workload: Workload) -> None:
    assert system.primary() == "db-0"
    with pytest.raises(AssertionError, match=r"promote 127\.0\.0\.1: 409") as refused:
        system.promote("127.0.0.1")  # the demo's members share one host: which one is meant?
    assert all(f"db-{i} (127.0.0.1:" in str(refused.value) for i in range(3))
    switch_to(system, workload, "db-1")
    switch_to(system, workload, "db-0")
    times = [switch_to(system, workload, target) for target in ("db-2", "db-1", "db-0", "db-2", "db-1")]
    workload.stop()
    check_nothing_lost(system, workload)
    assert workload.traffic.failed == 0 and workload.traffic.ok > 0
    print(
        json.dumps(
            {
                "switchovers": len(times),
                "median_s": round(statistics.median(times), 2),
                "max_s": round(max(times), 2),
                "writes": len(workload.writers.acks),
                "sessions": len(workload.sessions.acknowledged),
                "errant": 0,
            }
        )
    )


def test_an_old_primary_back_after_a_failover_rejoins_as_a_replica(system: System, workload: Workload) -> None:
    old = system.primary()
    old_server = system.stack.databases[system.index(old)]
    old_server.kill()
    wait_for(lambda: system.primary() != old, 30, "a promotion")
    new = system.primary()
    wait_for(workload.progressed(), 30, "both writers to write on the new primary")
    old_server.start()
    point = binlog_point(old_server)
    wait_for(lambda: system.settled_on(new), 30, f"{old} to rejoin {new} as a replica")
    roles = {m["name"]: m["role"] for m in system.observer.replication()["status"]["members"]}
    assert roles[old] == "Replica", roles
    rows = system.health_rows(new)
    wait_for(lambda: system.health_rows(new) >= rows + 9, 15, "three more rounds of legacy writes")
    wait_for(workload.progressed(), 15, "both writers to write")
    # Crash recovery may log again, in the binlog it opens, a commit made just before the kill that a replica
    # had already acknowledged (same GTID, its original time): that one the new primary holds too.
    held = {t.gtid for t in transactions_after(system.stack.databases[system.index(new)])}
    own = [
        t.gtid
        for t in transactions_after(old_server, point)
        if t.server_id == old_server.server_id and t.gtid not in held
    ]
    assert own == [], f"written to the old primary {old} after it came back: {own}"
    workload.stop()
    check_nothing_lost(system, workload)
