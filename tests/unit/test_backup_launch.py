"""The pure parts of running backup tries as Jobs: names, the Job and its task Secret, how a Job ended."""

from __future__ import annotations

import base64
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from whm_ha.backup.launch import RunnerSettings, job_outcome, pod_message, task_job, task_secret, try_name
from whm_ha.backup.task import BackupTask

DNS_LABELS = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,6}", fullmatch=True
)
NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


@given(DNS_LABELS.filter(lambda n: len(n) <= 128), st.integers(1, 1000), st.integers(1, 1000))
def test_try_names_fit_a_label_and_differ_per_try(backup: str, first: int, second: int) -> None:
    name = try_name(backup, first)
    assert len(name) <= 63 and NAME.fullmatch(name), name
    assert name.endswith(f"-try-{first}")
    assert (try_name(backup, second) == name) == (first == second)
    if len(backup) + len(f"-try-{first}") <= 63:
        assert name == f"{backup}-try-{first}"


def test_long_names_that_share_a_head_get_different_try_names() -> None:
    head = "a" * 70
    assert try_name(head + "x", 1) != try_name(head + "y", 1)


BACKUP = {
    "apiVersion": "ha.whm.io/v1alpha1",
    "kind": "MySQLBackup",
    "metadata": {"name": "nightly", "namespace": "db", "uid": "u-1"},
}
TASK = BackupTask.model_validate(
    {
        "name": "nightly",
        "store": {
            "storage": {"s3": {"endpoint": "http://s3:8333", "bucket": "backups", "credentialsSecret": {"name": "s3"}}},
            "access_key_id": "AKID",
            "secret_access_key": "s3-secret-key",
        },
        "member": {
            "name": "m1",
            "host": "db-1",
            "port": 3306,
            "username": "admin",
            "password": "db-password",
            "flavor": "mariadb",
        },
    }
)


def test_the_job_runs_once_from_the_mounted_task_and_holds_no_credential() -> None:
    job = task_job(BACKUP, 2, RunnerSettings(runner="job", image="whm-ha:1"))
    text = json.dumps(job)
    assert "db-password" not in text and "s3-secret-key" not in text
    assert job["metadata"]["name"] == "nightly-try-2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 24 * 3600
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["image"] == "whm-ha:1"
    assert container["args"] == ["backup-task", "--task-file=/etc/whm-ha/task/task.json"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "task", "secret": {"secretName": "nightly-try-2", "defaultMode": 0o440}} in pod["volumes"]


def test_the_task_secret_holds_the_task_and_goes_with_the_backup() -> None:
    secret = task_secret(BACKUP, 2, TASK)
    assert secret["metadata"]["name"] == "nightly-try-2"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert BackupTask.model_validate_json(base64.b64decode(secret["data"]["task.json"])) == TASK


def test_job_outcomes() -> None:
    job = {"metadata": {"name": "j"}}
    assert job_outcome(job) is None
    assert job_outcome({**job, "status": {"active": 1}}) is None
    assert job_outcome({**job, "status": {"succeeded": 1}}) == (True, "")
    done = [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]
    assert job_outcome({**job, "status": {"conditions": done}}) == (True, "")
    failed = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}]
    assert job_outcome({**job, "status": {"conditions": failed}}) == (False, "Job j failed: too long")
    assert job_outcome({**job, "status": {"failed": 1}}) == (False, "Job j failed: its pod failed")


def test_the_pod_message_is_the_failed_tasks_last_line() -> None:
    def pod(code: int, message: str) -> dict[str, object]:
        state = {"terminated": {"exitCode": code, "message": message}}
        return {"status": {"containerStatuses": [{"state": state}]}}

    assert pod_message([]) is None
    assert pod_message([pod(0, "done")]) is None
    assert pod_message([pod(1, "log line\nm1: mariadb-dump failed (2): access denied\n")]) == (
        "m1: mariadb-dump failed (2): access denied"
    )
