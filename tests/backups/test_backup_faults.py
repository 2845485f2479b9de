"""A store that vanishes in the middle of a backup: SeaweedFS in a network namespace of the test's own, every
packet into and out of it dropped (nftables) while the operator's backup uploads its parts.

The try fails within the S3 client's timeouts with the store's address in the backup's status, nothing of it is
ever listed as usable, and a later try completes once the store answers again; the backup restores to the
source's rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.backups.test_operator_backups import Backups, s3_storage
from tests.faults.report import Recorder
from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartServers
from tests.fixtures.netns import TestNetwork
from tests.fixtures.object_store import ACCESS_KEY, BUCKET, SECRET_KEY, ObjectStore
from tests.fixtures.operator_process import StartOperator
from tests.integration.test_operator_replication import SERVER_ARGS, Replication
from tests.kube_helpers import wait_for
from whm_ha.backup.dump import Member
from whm_ha.backup.manifest import usable_backups
from whm_ha.backup.restore import restore_backup
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER
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
