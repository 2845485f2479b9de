"""MySQLBackup and MySQLReplication.spec.backup, end to end: a real operator process, three real ``mariadbd``, a real
SeaweedFS, and the Kubernetes API of either tier.

* A one-off backup is taken from the healthiest replica (never the primary's writers' server), reported in its
  status, Events and metrics, listed in the store with the same checksum, and restores to the primary's rows.
* With the store down, a backup with one try fails with a clear message and lists nothing; a backup with more
  tries fails its first try, then completes once the store is back.
* A schedule creates one backup per scheduled time; retention deletes the expired scheduled backups and their data,
  never a one-off backup.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.fixtures.kube import KubeAPI
from tests.fixtures.mariadb import StartFlavourServers, StartServers
from tests.fixtures.object_store import ACCESS_KEY, BUCKET, SECRET_KEY, ObjectStore
from tests.fixtures.operator_process import OperatorProcess, StartOperator
from tests.integration.test_kubectl_plugin import whm
from tests.integration.test_operator_replication import SERVER_ARGS, Replication, member_host
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.backup.dump import Member
from whm_ha.backup.manifest import usable_backups
from whm_ha.backup.policy import scheduled_name
from whm_ha.backup.restore import restore_backup
from whm_ha.backup.schedule import REPLICATION_LABEL, SCHEDULED_FOR, SCHEDULED_LABEL
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER
from whm_ha.mysql.dialect import dialect_for
from whm_ha.mysql.member import Credentials

pytestmark = pytest.mark.mariadb

PREFIX = "db/"


class Backups:
    """The MySQLBackups of the replication ``db``."""

    def __init__(self, replication: Replication) -> None:
        self.replication = replication
        self.custom = replication.custom

    def create(self, name: str, metadata: dict[str, Any] | None = None, **spec: Any) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MySQLBackup",
            "metadata": {"name": name, **(metadata or {})},
            "spec": {"replication": "db", **spec},
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.replication.namespace, "mysqlbackups", body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.replication.namespace, "mysqlbackups", name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def names(self) -> set[str]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.replication.namespace, "mysqlbackups")
        return {item["metadata"]["name"] for item in listed["items"]}

    def finished(self, name: str, timeout: float = 90) -> dict[str, Any]:
        seen: list[dict[str, Any]] = [{}]

        def check() -> dict[str, Any] | None:
            seen[0] = (self.get(name) or {}).get("status") or {}
            return seen[0] if seen[0].get("phase") in ("Completed", "Failed") else None

        try:
            status: dict[str, Any] = wait_for(check, timeout, f"{name} finished")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the last status: {json.dumps(seen[0])}") from None
        return status


def metrics(operator: OperatorProcess) -> dict[str, float]:
    """The operator's samples by name and labels, as exposed."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] not in "#"}


def fill(replication: Replication, rows: int = 320, row_bytes: int = 128 * 1024) -> None:
    """``rows`` rows of random bytes in app.bulk on the primary m0 (by default 40 MiB: a dump that takes a while and
    an upload of several parts), replicated to m1 and m2."""
    conn = replication.servers[0].connect()
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE app.bulk (id INT PRIMARY KEY, payload LONGBLOB)")
        for first in range(0, rows, 16):
            batch = [(i, os.urandom(row_bytes)) for i in range(first, min(rows, first + 16))]
            cur.executemany("INSERT INTO app.bulk VALUES (%s, %s)", batch)
    conn.close()

    def replicated() -> bool:
        return all(len(replication.sql(m, "SELECT id FROM app.bulk")) == rows for m in ("m1", "m2"))

    wait_for(replicated, 60, "the rows replicated")


def task_processes(subcommand: str) -> list[int]:
    """The pids of the running ``whm-ha SUBCOMMAND`` task processes."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if entry.name.isdigit() and b"whm_ha" in argv and subcommand.encode() in argv:
                found.append(int(entry.name))
    return found


def s3_storage(store: ObjectStore) -> dict[str, Any]:
    return {"s3": {"endpoint": store.endpoint, "bucket": BUCKET, "prefix": PREFIX, "credentialsSecret": {"name": "s3"}}}


@pytest.fixture
def replication(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    mariadb_servers: StartServers,
    object_store: ObjectStore,
) -> Replication:
    host = member_host(kube_api.tier)
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    replication = Replication(kube_client, kube_namespace, mariadb_servers(3, extra_args=SERVER_ARGS + bind), host)
    store_secret(replication)
    return replication


def store_secret(replication: Replication) -> None:
    """The Secret ``s3``: the store's credentials."""
    replication.core.create_namespaced_secret(
        replication.namespace,
        {
            "metadata": {"name": "s3"},
            "data": {
                "accessKeyId": base64.b64encode(ACCESS_KEY.encode()).decode(),
                "secretAccessKey": base64.b64encode(SECRET_KEY.encode()).decode(),
            },
        },
    )


def fenced_args(product: str) -> tuple[str, ...]:
    """Options that start a server fenced, as the product's members are: read-only, on MySQL super_read_only."""
    return SERVER_ARGS if product == "mariadb" else ("--super-read-only=ON",)


@pytest.fixture
def flavour_replication(
    kube_api: KubeAPI,
    kube_client: client.ApiClient,
    kube_namespace: str,
    database_servers: StartFlavourServers,
    object_store: ObjectStore,
) -> Replication:
    """Like ``replication``, on three servers of the test's flavour (one test per flavour)."""
    product = database_servers.flavour.product
    host = member_host(kube_api.tier)
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    servers = database_servers(3, fenced_args(product) + bind)
    replication = Replication(kube_client, kube_namespace, servers, host, product)
    store_secret(replication)
    return replication


def start(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, path: str = "", **backup: Any
) -> OperatorProcess:
    """The replication created with ``backup`` (``store``: its storage), its operator (``path``: first on its
    PATH) started, Healthy."""
    replication.create(backup={"storage": s3_storage(backup.pop("store")), **backup})
    operator = operator_process(kube_api.kubeconfig, replication.namespace, path=path)
    replication.healthy()
    return operator


def test_a_one_off_backup_is_taken_from_a_replica_reported_and_restores(
    replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    mariadb_servers: StartServers,
) -> None:
    operator = start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    wait_for(lambda: all(replication.ids(m) == {1, 2, 3} for m in ("m1", "m2")), 30, "rows on the replicas")
    backups = Backups(replication)

    backups.create("first")
    status = backups.finished("first")

    assert status["phase"] == "Completed", status
    assert status["member"] in ("m1", "m2"), "taken from a replica, not the primary"
    assert status["attempts"] == 1 and status["sizeBytes"] > 0 and status["gtid"]
    assert status["location"] == f"{object_store.endpoint}/{BUCKET}/{PREFIX}first/"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True"}
    listed = {m.name: m for m in usable_backups(object_store.store(PREFIX))}
    assert listed["first"].sha256 == status["sha256"] and listed["first"].gtid == status["gtid"]
    events = [e for e in replication.core.list_namespaced_event(replication.namespace).items if e.reason]
    assert {"Started", "Completed"} <= {e.reason for e in events if e.involved_object.name == "first"}
    labels = f'namespace="{replication.namespace}",replication="db"'
    samples = metrics(operator)
    assert samples[f'whm_ha_backups_total{{{labels},result="completed"}}'] == 1
    wait_for(lambda: metrics(operator).get(f"whm_ha_backup_stale{{{labels}}}") == 0, 30, "the backup is recent")
    assert metrics(operator)[f"whm_ha_backup_last_size_bytes{{{labels}}}"] == status["sizeBytes"]

    # The same through kubectl whm: a backup of the primary, waited for, then the list.
    taken = whm(kube_api.kubeconfig, "backup", "db", "--target", "Primary", namespace=replication.namespace)
    assert taken.returncode == 0 and ": Completed: " in taken.stdout, (taken.stdout, taken.stderr)
    listed_json = whm(kube_api.kubeconfig, "backups", "db", "-o", "json", namespace=replication.namespace)
    rows = json.loads(listed_json.stdout)
    assert [(r["phase"], r["member"]) for r in rows] == [("Completed", "m0"), ("Completed", status["member"])]
    table = whm(kube_api.kubeconfig, "backups", namespace=replication.namespace).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "REPLICATION", "PHASE", "MEMBER"] and len(table) == 3
    missing = whm(kube_api.kubeconfig, "backup", "nope", namespace=replication.namespace)
    assert missing.returncode == 1 and missing.stderr.startswith("kubectl whm: mysqlreplications/nope:"), missing

    empty = mariadb_servers(1)[0]
    target = Member("empty", empty.host, empty.port, Credentials(ADMIN_USER, ADMIN_PASSWORD), dialect_for("mariadb"))
    restore_backup(object_store.store(PREFIX), listed["first"], target)
    with empty.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM app.t ORDER BY id")
        assert [row[0] for row in cur.fetchall()] == [1, 2, 3]


def test_a_store_that_is_down_fails_a_single_try_and_a_retried_backup_completes_when_it_is_back(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, object_store: ObjectStore
) -> None:
    start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    backups = Backups(replication)
    object_store.kill()

    backups.create("once", attempts=1)
    status = backups.finished("once")
    assert status["phase"] == "Failed" and status["attempts"] == 1
    assert (
        status["message"].startswith("try 1 of 1 failed: ")
        and object_store.endpoint.split("//")[1] in status["message"]
    )

    backups.create("retried", attempts=3)

    def first_try_failed() -> bool:
        return "try 1 of 3 failed" in ((backups.get("retried") or {}).get("status") or {}).get("message", "")

    wait_for(first_try_failed, 60, "the first try failed")
    object_store.start()
    status = backups.finished("retried")
    assert status["phase"] == "Completed" and status["attempts"] == 2, status
    assert {m.name for m in usable_backups(object_store.store(PREFIX))} == {"retried"}, "the failed one lists nothing"


def test_a_schedule_takes_one_backup_per_time_and_retention_deletes_expired_scheduled_backups_only(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, object_store: ObjectStore
) -> None:
    start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    backups = Backups(replication)
    # Three earlier scheduled backups, and a one-off one, all complete before retention is asked for.
    earlier = [f"db-2026120{day}031500" for day in (1, 2, 3)]
    for day, name in zip((1, 2, 3), earlier, strict=True):
        labels = {REPLICATION_LABEL: "db", SCHEDULED_LABEL: "true"}
        backups.create(name, {"labels": labels, "annotations": {SCHEDULED_FOR: f"2026-12-0{day}T03:15:00Z"}})
    backups.create("manual")
    for name in [*earlier, "manual"]:
        assert backups.finished(name)["phase"] == "Completed"

    schedule = {"schedule": "* * * * *", "retention": {"keep": 2}}
    replication.custom.patch_namespaced_custom_object(
        GROUP, VERSION, replication.namespace, "mysqlreplications", "db", {"spec": {"backup": schedule}}
    )

    # The backup of this minute (the schedule was just set within it) or of the next, then retention down to the
    # newest two scheduled backups, and the one-off backup.
    def new_scheduled() -> set[str] | None:
        return {n for n in backups.names() if n.startswith("db-") and n not in earlier} or None

    (name,) = wait_for(new_scheduled, 75, "a scheduled backup")
    obj = backups.get(name)
    assert obj is not None
    at = datetime.fromisoformat(obj["metadata"]["annotations"][SCHEDULED_FOR].replace("Z", "+00:00"))
    assert at.second == 0 and name == scheduled_name("db", at)
    assert backups.finished(name)["phase"] == "Completed"
    kept = {name, earlier[-1], "manual"}
    wait_for(lambda: backups.names() == kept or None, 30, "retention down to the newest two and the one-off")
    assert {m.name for m in usable_backups(object_store.store(PREFIX))} == kept, "the expired backups' data is gone"
    assert new_scheduled() == {name}, "one backup per scheduled time"


def new_replication(
    replication: Replication, start_servers: StartServers | StartFlavourServers, recovery: dict[str, Any]
) -> Replication:
    """MySQLReplication ``restored`` over three new servers of the same flavour, bootstrapped by ``recovery``."""
    host = replication.host
    bind = () if host == "127.0.0.1" else (f"--bind-address=127.0.0.1,{host}",)
    servers = start_servers(3, extra_args=fenced_args(replication.flavor) + bind)
    restored = Replication(replication.custom.api_client, replication.namespace, servers, host, replication.flavor)
    restored.name = "restored"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MySQLReplication",
        "metadata": {"name": "restored"},
        "spec": {
            "flavor": replication.flavor,
            "primary": "m0",
            "members": restored.members(),
            "credentialsSecret": {"name": "db-admin"},
            "replicationSecret": {"name": "db-repl"},
            "periodSeconds": 1,
            "failureThreshold": 2,
            "bootstrap": {"recovery": recovery},
        },
    }
    restored.custom.create_namespaced_custom_object(GROUP, VERSION, replication.namespace, "mysqlreplications", body)
    return restored


def test_a_new_replication_bootstraps_from_a_backup_and_replicates_leaving_the_source_untouched(
    replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    mariadb_servers: StartServers,
) -> None:
    start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    backups = Backups(replication)
    backups.create("base")
    assert backups.finished("base")["phase"] == "Completed"
    source_gtids = {m: replication.variable(m, "gtid_binlog_pos") for m in ("m0", "m1", "m2")}

    restored = new_replication(replication, mariadb_servers, {"backup": "latest", "storage": s3_storage(object_store)})
    status = restored.healthy(timeout=90)
    recovery = status["recovery"]
    assert recovery["phase"] == "Completed" and recovery["backup"] == "base", recovery
    assert recovery["restored"] == ["m0", "m1", "m2"] and status["currentPrimary"] == "m0"
    assert all(restored.ids(m) == {1, 2, 3} for m in ("m0", "m1", "m2"))
    # Every member's binary log goes on from the backup's GTIDs (what a promotion compares, and what the replicas
    # of a primary ask it from), not from nothing.
    dialect = dialect_for("mariadb")
    backup_gtids = dialect.parse_gtid(recovery["gtid"])
    assert backup_gtids.count > 0
    assert all(
        dialect.parse_gtid(restored.variable(m, "gtid_binlog_state")).contains(backup_gtids) for m in ("m0", "m1", "m2")
    )
    restored.sql("m0", "INSERT INTO app.t VALUES (4)")
    wait_for(
        lambda: all(restored.ids(m) == {1, 2, 3, 4} for m in ("m1", "m2")), 30, "the new primary's write replicated"
    )
    assert {m: replication.variable(m, "gtid_binlog_pos") for m in ("m0", "m1", "m2")} == source_gtids, "untouched"
    assert replication.ids("m0") == {1, 2, 3}


def test_a_backup_whose_operator_is_killed_stops_with_it_and_is_taken_by_the_next_one(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, object_store: ObjectStore
) -> None:
    operator = start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    fill(replication)
    backups = Backups(replication)
    s3 = object_store.client()
    backups.create("interrupted")
    wait_for(lambda: s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads"), 60, "the upload in progress")
    assert task_processes("backup-task")

    operator.kill()
    wait_for(lambda: not task_processes("backup-task"), 3, "the task to stop with its operator")
    assert ((backups.get("interrupted") or {}).get("status") or {}).get("phase") == "Running"
    assert usable_backups(object_store.store(PREFIX)) == [], "nothing of the interrupted try is listed"

    operator_process(kube_api.kubeconfig, replication.namespace)
    status = backups.finished("interrupted")
    assert status["phase"] == "Completed" and status["attempts"] == 2, status
    reasons = [
        e.reason
        for e in replication.core.list_namespaced_event(replication.namespace).items
        if e.involved_object.name == "interrupted"
    ]
    assert "TryInterrupted" in reasons
    (listed,) = usable_backups(object_store.store(PREFIX))
    assert listed.name == "interrupted" and listed.sha256 == status["sha256"]


def test_a_member_loaded_while_the_replication_changed_is_recorded_not_loaded_again(
    replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    mariadb_servers: StartServers,
) -> None:
    """A label set on the restored replication while its first member loads the backup changes its
    resourceVersion: the load is recorded all the same (status.recovery is the operator's alone), never emptied
    and done again (which would show as a DROP DATABASE on that member)."""
    start(replication, kube_api, operator_process, store=object_store)
    replication.create_app()
    fill(replication)
    backups = Backups(replication)
    backups.create("base")
    assert backups.finished("base")["phase"] == "Completed"

    restored = new_replication(replication, mariadb_servers, {"backup": "base", "storage": s3_storage(object_store)})
    wait_for(lambda: task_processes("restore-task"), 60, "the first member's load")
    restored.custom.patch_namespaced_custom_object(
        GROUP, VERSION, restored.namespace, "mysqlreplications", "restored", {"metadata": {"labels": {"team": "db"}}}
    )
    assert task_processes("restore-task"), "the label came while the load ran"
    status = restored.healthy(timeout=120)
    assert status["recovery"]["restored"] == ["m0", "m1", "m2"]
    drops = restored.sql("m0", "SHOW GLOBAL STATUS LIKE 'Com_drop_db'")
    assert int(drops[0][1]) == 0, "m0 was emptied and loaded again"
