"""A store that vanishes: SeaweedFS in a network namespace of the test's own, every packet into and out of it
dropped (nftables).

* In the middle of a backup's upload: the try fails within the S3 client's timeouts with the store's address in
  the backup's status, nothing of it is ever listed as usable, and a later try completes once the store answers
  again; the backup restores to the source's rows.
* Under the binlog archiver: it retries and resumes where it stopped, and the archive stays one chain without a
  gap or a repeat, holding every acknowledged write."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.backups.test_backups import ids, member
from tests.backups.test_binlog_archive import TABLE, archive_holds, archiving, replay, writers_on
from tests.backups.test_operator_backups import Backups, s3_storage
from tests.faults.report import Recorder
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartServers
from tests.fixtures.netns import TestNetwork
from tests.fixtures.object_store import ACCESS_KEY, BUCKET, SECRET_KEY, ObjectStore
from tests.fixtures.operator_process import StartOperator
from tests.integration.test_operator_replication import SERVER_ARGS, Replication
from tests.kube_helpers import wait_for
from whm_ha.backup.archive import INDEX
from whm_ha.backup.dump import Member
from whm_ha.backup.manifest import usable_backups
from whm_ha.backup.restore import restore_backup
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER
from whm_ha.demo.checkers import Direct, create_table
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials

pytestmark = pytest.mark.mariadb

PREFIX = "db/"
ROWS, ROW_BYTES = 320, 128 * 1024
"""40 MiB of random bytes: five 8 MiB parts, so that the upload is in progress when the store vanishes."""


@pytest.fixture
def netns_store(seaweedfs_binary: Path, test_network: TestNetwork, tmp_path: Path) -> ObjectStore:
    store = ObjectStore(seaweedfs_binary, tmp_path / "seaweedfs", host=test_network.host("s3"))
    store.start()
    return store


def test_a_store_blackholed_mid_upload_fails_the_try_lists_nothing_and_a_later_try_completes(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    mariadb_servers: StartServers,
    operator_process: StartOperator,
    netns_store: ObjectStore,
    resilience: Recorder,
) -> None:
    if kube_api.tier != "sandbox":
        pytest.skip("the store's fault is the point; one API tier is enough")
    row = resilience.scenario("backup store blackholed mid-upload (every packet dropped)", "backups")
    replication = Replication(kube_client, kube_namespace, mariadb_servers(3, extra_args=SERVER_ARGS), "127.0.0.1")
    replication.core.create_namespaced_secret(
        kube_namespace,
        {"metadata": {"name": "s3"}, "stringData": {"accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY}},
    )
    replication.create(backup={"storage": s3_storage(netns_store)})
    operator_process(kube_api.kubeconfig, kube_namespace)
    replication.healthy()
    replication.create_app()
    conn = replication.servers[0].connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE app.bulk (id INT PRIMARY KEY, payload LONGBLOB)")
        for first in range(0, ROWS, 16):
            cur.executemany(
                "INSERT INTO app.bulk VALUES (%s, %s)", [(i, os.urandom(ROW_BYTES)) for i in range(first, first + 16)]
            )
    conn.close()
    wait_for(
        lambda: all(len(replication.sql(m, "SELECT id FROM app.bulk")) == ROWS for m in ("m1", "m2")), 60, "replicated"
    )

    s3 = netns_store.client()
    backups = Backups(replication)
    backups.create("big", attempts=3)
    wait_for(lambda: s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), 60, "the upload in progress")
    netns_store.host.blackhole()  # type: ignore[union-attr]
    fault = time.time()

    def first_try_failed() -> str | None:
        message = ((backups.get("big") or {}).get("status") or {}).get("message", "")
        return message if "try 1 of 3 failed" in message else None

    message = wait_for(first_try_failed, 240, "the first try to fail")
    row.detect = time.time() - fault
    assert netns_store.address in message, message
    netns_store.host.heal()  # type: ignore[union-attr]
    healed = time.time()
    status = backups.finished("big", timeout=240)
    row.recover = time.time() - fault
    row.outcome = f"try 1 failed after {row.detect:.0f} s; completed at try {status.get('attempts')}, {time.time() - healed:.0f} s after the heal"
    assert status["phase"] == "Completed" and status["attempts"] >= 2, status
    listed = usable_backups(netns_store.store(PREFIX))
    assert [m.name for m in listed] == ["big"] and listed[0].sha256 == status["sha256"]
    assert {u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])} <= {
        f"{PREFIX}big/dump.sql.zst"
    }, "no other upload"

    empty = mariadb_servers(1)[0]
    target = Member("empty", empty.host, empty.port, Credentials(ADMIN_USER, ADMIN_PASSWORD), dialect_for("mariadb"))
    restore_backup(netns_store.store(PREFIX), listed[0], target)
    with empty.connect() as restored, restored.cursor() as cur:
        cur.execute("SELECT COUNT(*), SUM(LENGTH(payload)) FROM app.bulk")
        assert cur.fetchone() == (ROWS, ROWS * ROW_BYTES)
    row.lost = 0


def test_an_archive_whose_store_is_blackholed_resumes_where_it_stopped_without_gap_or_duplicate(
    mariadb_servers: StartServers, netns_store: ObjectStore, tmp_path: Path, resilience: Recorder
) -> None:
    """The binlog archiver (in a thread of this test) under 8 writers; its store's packets dropped for 20 s, then
    healed: it retries from the same bytes, catches up, and the archive is one unbroken chain that replays to
    exactly the primary's rows, every acknowledged write in it."""
    row = resilience.scenario("binlog archive store blackholed (every packet dropped) for 20 s", "backups")
    primary_server, empty_server = mariadb_servers(2)
    primary, empty = member("m0", primary_server), member("m1", empty_server)
    create_table(Direct(primary_server.host, primary_server.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    store = netns_store.store(prefix="prod/")
    host = netns_store.host
    assert host is not None
    with archiving(store, [primary], tmp_path / "spool"):
        wait_for(lambda: archive_holds(store, primary), 30, "the archive to catch up with the primary")
        writers = writers_on(primary_server, first=1)
        try:
            wait_for(lambda: len(store.list(INDEX)) >= 3, 30, "segments before the fault")
            host.blackhole()
            fault = time.time()
            wait_for(lambda: time.time() - fault > 20, 30, "20 s of writes with the store gone")
            during = len(writers.acks.between(fault))
            host.heal()
            healed = time.time()
            wait_for(writers.acks.progressed(), 10, "writes after the heal")
        finally:
            writers.stop()
        wait_for(lambda: archive_holds(store, primary), 120, "the archive to hold every write after the heal")
        caught_up = time.time() - healed
    assert not writers.errors
    chain = replay(store, empty, tmp_path / "replay")
    row.acked, row.during, row.lost = len(writers.acks), during, len(writers.acks.ids() - ids(empty))
    row.recover = healed + caught_up - fault
    row.outcome = f"caught up {caught_up:.1f} s after the heal; {len(chain)} segments, one chain, no gap or repeat"
    print(f"\narchive store blackholed: {during} writes during the fault, caught up {caught_up:.1f} s after the heal")
    assert during > 0, "writes went on while the store was gone"
    assert len({s.run for s in chain}) == 1, "the run went on: nothing was fetched again"
    assert ids(empty) == ids(primary)
    assert writers.acks.ids() <= ids(empty), "every acknowledged write is in the archive"
