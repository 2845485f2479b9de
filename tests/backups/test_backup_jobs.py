"""Backup tries as Kubernetes Jobs (``whm-ha operator --backup-runner=job``), against an API without a kubelet: the
test plays the kubelet's part. It runs the Job's container command itself (``whm-ha backup-task --task-file`` on
the mounted Secret's task: a real dump of real ``mariadbd`` to a real SeaweedFS) and sets the Job's status.

* One Job per try, named after the backup and its try, owned by the backup, its task (credentials included) in a
  Secret owned by the backup, never in the Job; a failed Job is a failed try, retried with the next try's Job, its
  pod's termination message in the backup's Event.
* An operator killed while a try's Job runs finds that Job when it starts again and waits for it: no second try.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.backups import test_operator_backups
from tests.backups.test_operator_backups import PREFIX, Backups, s3_storage
from tests.fixtures.kube import KubeAPI
from tests.fixtures.kubelet import IMAGE, Kubelet
from tests.fixtures.object_store import ObjectStore
from tests.fixtures.operator_process import StartOperator
from tests.integration.test_operator_replication import Replication
from tests.kube_helpers import GROUP, VERSION, wait_for
from whm_ha.backup.manifest import usable_backups
from whm_ha.db.local_server import ADMIN_PASSWORD

pytestmark = pytest.mark.mariadb
replication = test_operator_backups.replication


def test_each_try_is_a_job_a_failed_job_is_retried_and_a_restarted_operator_waits_for_the_running_one(
    replication: Replication,
    kube_api: KubeAPI,
    operator_process: StartOperator,
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    replication.create(backup={"storage": s3_storage(object_store)})
    args = ("--backup-runner=job", f"--backup-image={IMAGE}")
    operator = operator_process(kube_api.kubeconfig, replication.namespace, args=args)
    replication.healthy()
    replication.create_app()
    replication.sql("m0", "INSERT INTO app.t VALUES (1), (2), (3)")
    backups = Backups(replication)
    kubelet = Kubelet(replication.core.api_client, replication.namespace)

    backups.create("jobbed", attempts=2)
    first = kubelet.job("jobbed-try-1")
    backup = backups.get("jobbed")
    assert backup is not None
    secret = kubelet.core.read_namespaced_secret("jobbed-try-1", replication.namespace)
    for owned in (first, kubelet.core.api_client.sanitize_for_serialization(secret)):
        (owner,) = owned["metadata"]["ownerReferences"]
        assert owner["uid"] == backup["metadata"]["uid"] and owner["kind"] == "MySQLBackup"
    spec_text = json.dumps(first["spec"])
    assert ADMIN_PASSWORD not in spec_text and object_store.endpoint not in spec_text, "no task in the Job's spec"
    assert first["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE

    # Try 1's pod fails: the try fails with the pod's message, its Secret goes, try 2's Job starts.
    kubelet.fail("jobbed-try-1", "starting\nm1: mariadb-dump failed (2): the disk is full\n")
    second = kubelet.job("jobbed-try-2")
    events = kubelet.core.list_namespaced_event(replication.namespace).items
    (failed,) = [e.message for e in events if e.involved_object.name == "jobbed" and e.reason == "TryFailed"]
    assert failed == "try 1 of 2 failed: m1: mariadb-dump failed (2): the disk is full"

    def secret_gone() -> bool:
        names = {s.metadata.name for s in kubelet.core.list_namespaced_secret(replication.namespace).items}
        return "jobbed-try-1" not in names and "jobbed-try-2" in names

    wait_for(secret_gone, 30, "try 1's Secret deleted, try 2's there")

    # The operator dies while try 2 runs; a new one adopts try 2's Job instead of starting another try.
    operator.kill()
    operator_process(kube_api.kubeconfig, replication.namespace, args=args)
    ran = kubelet.run(second, tmp_path)
    assert ran.returncode == 0, ran.stderr
    kubelet.succeed("jobbed-try-2")
    status = backups.finished("jobbed")
    assert status["phase"] == "Completed" and status["attempts"] == 2, status
    assert set(kubelet.jobs()) == {"jobbed-try-1", "jobbed-try-2"}, "never a third try"
    listed = {m.name: m for m in usable_backups(object_store.store(PREFIX))}
    assert listed["jobbed"].sha256 == status["sha256"] and status["member"] in ("m1", "m2")


def test_the_archiver_is_a_deployment_while_the_archive_is_enabled(
    replication: Replication, kube_api: KubeAPI, operator_process: StartOperator, object_store: ObjectStore
) -> None:
    backup = {"storage": s3_storage(object_store), "archive": {"enabled": True}}
    replication.create(backup=backup)
    args = ("--backup-runner=job", f"--backup-image={IMAGE}", "--archiver-service-account=whm-ha-binlog-archive")
    operator_process(kube_api.kubeconfig, replication.namespace, args=args)
    apps = client.AppsV1Api(replication.core.api_client)

    def deployments() -> dict[str, Any]:
        listed = apps.list_namespaced_deployment(replication.namespace).items
        return {d.metadata.name: apps.api_client.sanitize_for_serialization(d) for d in listed}

    archiver = wait_for(lambda: deployments().get("db-binlog-archive"), 60, "the archiver Deployment")
    (owner,) = archiver["metadata"]["ownerReferences"]
    assert owner["kind"] == "MySQLReplication" and owner["uid"] == replication.get()["metadata"]["uid"]
    assert archiver["spec"]["replicas"] == 1 and archiver["spec"]["strategy"]["type"] == "Recreate"
    pod = archiver["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "whm-ha-binlog-archive"
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"][:3] == ["binlog-archive", f"--namespace={replication.namespace}", "--replication=db"]

    # Disabled: deleted; enabled again: back (a spec change wakes the scheduler at once).
    for enabled in (False, True):
        patch = {"spec": {"backup": {"archive": {"enabled": enabled}}}}
        replication.custom.patch_namespaced_custom_object(
            GROUP, VERSION, replication.namespace, "mysqlreplications", "db", patch
        )
        wait_for(
            lambda on=enabled: ("db-binlog-archive" in deployments()) == on, 30, f"the archiver, enabled={enabled}"
        )
