"""``whm-ha binlog-archive`` with a real operator, three real ``mariadbd``, a real SeaweedFS and the Kubernetes API of
either tier.

The archiver follows status.currentPrimary through a switchover the operator makes (the promote annotation),
reports in status.archive (Streaming, the member, the lag, Lagging False) and in its metrics, and the operator's own
status patches, before, during and after the promotion, never remove status.archive. The archive has no gap and
replays into an empty server to exactly the new primary's rows.

A new replication bootstrapped from a backup with ``recovery.target.time`` a second before a mistake, on every
flavour, its members fenced as the product asks: its primary replays the archive to there (status.recovery says
so), its replicas follow it, the source is untouched.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backups import test_operator_backups
from tests.backups.test_binlog_archive import archive_holds, replay
from tests.backups.test_operator_backups import PREFIX, start
from tests.backups.test_pitr import utc
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartFlavourServers, StartServers
from tests.fixtures.object_store import ObjectStore
from tests.fixtures.operator_process import StartOperator
from tests.integration.test_operator_replication import APP_PASSWORD, APP_USER, Replication
from tests.kube_helpers import wait_for
from whm_ha.backup.dump import Member, open_session
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, Flavour, free_port
from whm_ha.demo.checkers import Direct, Writers
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials

pytestmark = pytest.mark.mariadb
replication = test_operator_backups.replication
"""The fixture: MySQLReplication ``db`` over three servers, a Secret with the store's credentials."""
flavour_replication = test_operator_backups.flavour_replication


def as_member(replication: Replication, name: str) -> Member:
    server = replication.servers[replication.index(name)]
    credentials = Credentials(ADMIN_USER, ADMIN_PASSWORD)
    return Member(name, server.host, server.port, credentials, dialect_for(replication.flavor))


def programs(flavour: Flavour, tmp_path: Path) -> str:
    """The PATH entry of the flavour's dump, client and binlog programs (the archiver's and the operator's)."""
    dialect = dialect_for(flavour.product)
    names = [dialect.dump_program, dialect.client_program, dialect.binlog_program]
    return flavour.client_programs(tmp_path / "bin", names)


@pytest.fixture
def archiver(
    kube_api: KubeAPI, kube_namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``whm-ha binlog-archive`` for the replication ``db``, and its metrics port; in a test of a flavour
    (``database_servers``), with that flavour's binlog program."""
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kube_api.kubeconfig)}
    if "database_servers" in request.fixturenames:
        env["PATH"] = f"{programs(request.getfixturevalue('database_servers').flavour, tmp_path)}:{env['PATH']}"
    log = (tmp_path / "archiver.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "whm_ha",
            "binlog-archive",
            f"--namespace={kube_namespace}",
            "--replication=db",
            f"--metrics-port={port}",
            f"--spool={tmp_path / 'spool'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        yield process, port
    finally:
        process.kill()
        process.wait()
        log.close()


def test_the_archiver_follows_the_operators_switchover_and_status_archive_survives_its_status_patches(
    replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    mariadb_servers: StartServers,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    start(replication, kube_api, operator_process, store=object_store, archive={"enabled": True, "maxLagSeconds": 5})
    replication.create_app()
    process, metrics_port = request.getfixturevalue("archiver")
    seen: list[dict[str, Any]] = []

    def recorded(predicate: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
        """The predicate, every status it is shown kept in ``seen``."""

        def check(status: dict[str, Any]) -> bool:
            seen.append(status)
            return predicate(status)

        return check

    def archive_is(**wanted: Any) -> Callable[[dict[str, Any]], bool]:
        def check(status: dict[str, Any]) -> bool:
            archive = status.get("archive") or {}
            lagging = {c["type"]: c["status"] for c in archive.get("conditions", [])}.get("Lagging")
            return all(archive.get(k) == v for k, v in wanted.items()) and lagging == "False"

        return recorded(check)

    replication.wait(archive_is(state="Streaming", member="m0"), 60, "the archiver streaming m0")
    m0 = replication.servers[0]
    # The application's account: fenced m0 refuses its writes (an administrator's would pass read_only).
    writers = Writers(Direct(m0.host, m0.port, APP_USER, APP_PASSWORD), table="app.t", count=4, first=1)
    writers.start(warm_up=20)
    try:
        # Writes go on: the archive reaches what m0 had executed at a moment, soon after it.
        m0_member = as_member(replication, "m0")
        with open_session(m0_member) as s:
            executed = s.executed()
        wait_for(lambda: archive_holds(object_store.store(PREFIX), m0_member, executed), 10, "m0's writes archived")
        status = replication.wait(archive_is(state="Streaming", member="m0"), 30, "status.archive under writes")
        assert status["archive"]["lagSeconds"] <= 2 and status["archive"]["archivedGtids"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert f'whm_ha_binlog_archive_lag_seconds{{namespace="{replication.namespace}",replication="db"}}' in text
        assert "whm_ha_binlog_archive_segments_total" in text

        replication.annotate({"ha.whm.io/promote": "m1", "ha.whm.io/request-id": "switch-1"})
        promoted = recorded(lambda s: s.get("currentPrimary") == "m1" and not s.get("promotion"))
        replication.wait(promoted, 60, "m1 promoted")
    finally:
        writers.stop()
    replication.wait(recorded(lambda s: s.get("phase") == "Healthy" and s.get("readyReplicas") == 2), 30, "Healthy")
    replication.wait(archive_is(state="Streaming", member="m1"), 60, "the archiver streaming m1")
    # Inserted once the archiver streams m1 (before, m0, m1's replica by then, may carry them into the archive).
    replication.sql("m1", "INSERT INTO app.t VALUES (-1), (-2)")
    new_primary = as_member(replication, "m1")
    wait_for(lambda: archive_holds(object_store.store(PREFIX), new_primary), 30, "m1's writes archived")
    assert process.poll() is None

    after_first = seen[next(i for i, s in enumerate(seen) if s.get("archive")) :]
    assert all(s.get("archive") for s in after_first), "no status patch of the operator removed status.archive"
    assert len({s.get("phase") for s in after_first} | {str(s.get("promotion")) for s in after_first}) > 2, (
        "the operator patched its status meanwhile"
    )
    empty = mariadb_servers(1)[0]
    target = Member("empty", empty.host, empty.port, Credentials(ADMIN_USER, ADMIN_PASSWORD), dialect_for("mariadb"))
    chain = replay(object_store.store(PREFIX), target, tmp_path / "replay")
    assert {s.member for s in chain} == {"m0", "m1"}, [(s.member, s.run, s.gtids, s.resumed_from) for s in chain]
    assert replication.ids("m1") == {r[0] for r in empty.query("SELECT id FROM app.t")}
    assert writers.acks.ids() <= replication.ids("m1")


def test_a_new_replication_restored_to_a_time_before_a_mistake_replays_the_archive_on_its_primary(
    flavour_replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    database_servers: StartFlavourServers,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """On each flavour: the dump loaded into the new primary, the archive replayed on it to the target, the others
    made its replicas."""
    replication = flavour_replication
    path = programs(database_servers.flavour, tmp_path)
    start(replication, kube_api, operator_process, path, store=object_store, archive={"enabled": True})
    replication.create_app()
    request.getfixturevalue("archiver")
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    backups = test_operator_backups.Backups(replication)
    backups.create("base")
    assert backups.finished("base")["phase"] == "Completed"
    replication.sql("m0", "INSERT INTO app.t VALUES (4), (5)")
    target = math.ceil(time.time()) + 1  # a whole second after the inserts, before the mistake
    wait_for(lambda: time.time() >= target, 5, "the target second")
    replication.sql("m0", "DELETE FROM app.t")
    replication.sql("m0", "INSERT INTO app.t VALUES (6)")
    wait_for(
        lambda: archive_holds(object_store.store(PREFIX), as_member(replication, "m0")), 30, "the mistake archived"
    )

    restored = test_operator_backups.new_replication(
        replication,
        database_servers,
        {
            "backup": "latest",
            "storage": test_operator_backups.s3_storage(object_store),
            "target": {"time": utc(target)},
        },
    )
    status = restored.healthy(timeout=90)
    recovery = status["recovery"]
    assert recovery["phase"] == "Completed" and recovery["target"] == f"time {utc(target)}", recovery
    assert recovery["restored"][0] == "m0" and status["currentPrimary"] == "m0"
    assert recovery["replayedGtids"], recovery
    wait_for(lambda: all(restored.ids(m) == {1, 2, 3, 4, 5} for m in ("m0", "m1", "m2")), 30, "the replicas caught up")
    restored.sql("m0", "INSERT INTO app.t VALUES (7)")
    wait_for(lambda: all(7 in restored.ids(m) for m in ("m1", "m2")), 30, "the restored primary's write replicated")
    assert replication.ids("m0") == {6}, "the source untouched"
