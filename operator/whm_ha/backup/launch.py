"""How one backup try runs, chosen by the operator's ``--backup-runner``: as a ``whm-ha backup-task`` process of the
operator (`ProcessLauncher`: the sandbox, the demo and the tests, which have no kubelet) or as a Kubernetes Job
(`JobLauncher`: in a cluster). The runner (`runner.BackupRunner`) makes every decision, which try, its task, its
retries; a launcher only runs the try it is given and says how it ended: the manifest, or TaskFailed.

A Job is named after its backup and try (`try_name`), owned by the MySQLBackup, and run once (no retry of its own:
the runner retries with the next try's Job). Its task, which holds credentials, is a Secret of the same name owned
by the backup, mounted into the pod, never in the Job's spec; it is deleted once the Job has finished. The Job
outlives the operator: a restarted operator finds the try's Job and waits for it, so two tries never run at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..kube.client import JOBS, PODS, SECRETS, ApiError, KubeClient
from .manifest import BackupManifest, manifest_key, read_manifest
from .process import TaskFailed, run_task
from .task import BackupTask

Obj = dict[str, Any]

RunnerKind = Literal["process", "job"]
JOB_POLL_SECONDS = 2.0
"""How often a running Job is read."""
JOB_DEADLINE_SECONDS = 24 * 3600
"""A try's Job still running after this long fails (a pod that never starts, an image never pulled): the try is
then retried, never waited for forever."""
TASK_KEY = "task.json"
TASK_DIR = "/etc/whm-ha/task"
BACKUP_LABEL = "ha.whm.io/backup"
TRY_LABEL = "ha.whm.io/try"
COMPONENT_LABEL = "app.kubernetes.io/component"
MAX_NAME = 63
"""A Job's name is also its pods' job-name label value: at most 63 characters."""


@dataclass(frozen=True)
class RunnerSettings:
    """Where the operator's tasks run (``--backup-runner``) and, for Jobs and the archiver, with what."""

    runner: RunnerKind = "process"
    image: str = ""
    """The image of the Jobs and the archiver: the operator's own (it has the dump and binlog tools)."""
    image_pull_policy: str = "IfNotPresent"
    archiver_service_account: str = ""
    archiver_metrics_port: int = 9090


class Launcher(Protocol):
    adopts: bool
    """True: a try still running when the operator restarted is found and waited for, not started again."""

    async def run(self, backup: Obj, attempt: int, task: BackupTask) -> BackupManifest:
        """Run try ``attempt`` of ``backup`` on ``task``: its manifest, or TaskFailed."""
        ...


class ProcessLauncher:
    """Each try as a ``whm-ha backup-task`` process of the operator, stopped with it."""

    adopts = False

    async def run(self, backup: Obj, attempt: int, task: BackupTask) -> BackupManifest:
        return BackupManifest.model_validate_json(await run_task("backup-task", task))


def _fit(name: str, suffix: str = "") -> str:
    """``name + suffix``, the name cut and followed by a hash of it when that would be longer than 63 characters."""
    if len(name) + len(suffix) <= MAX_NAME:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: MAX_NAME - len(suffix) - len(digest) - 1].rstrip(".-")
    return f"{head}-{digest}{suffix}"


def try_name(backup: str, attempt: int) -> str:
    """The name of the Job (and task Secret) of try ``attempt`` of ``backup``: ``<backup>-try-<n>``, at most 63
    characters, distinct per backup and try."""
    return _fit(backup, f"-try-{attempt}")


def _owner(backup: Obj) -> Obj:
    meta = backup["metadata"]
    return {
        "apiVersion": backup["apiVersion"],
        "kind": backup["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def _labels(backup: Obj, attempt: int) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "whm-ha",
        COMPONENT_LABEL: "backup",
        BACKUP_LABEL: _fit(backup["metadata"]["name"]),
        TRY_LABEL: str(attempt),
    }


def task_secret(backup: Obj, attempt: int, task: BackupTask) -> Obj:
    """The Secret that hands try ``attempt`` its task (credentials included), owned by the backup."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": try_name(backup["metadata"]["name"], attempt),
            "labels": _labels(backup, attempt),
            "ownerReferences": [_owner(backup)],
        },
        "type": "Opaque",
        "data": {TASK_KEY: base64.b64encode(task.model_dump_json().encode()).decode()},
    }


def task_job(backup: Obj, attempt: int, settings: RunnerSettings) -> Obj:
    """The Job of try ``attempt``: one pod, run once, of the operator's image, without API credentials (the task
    has all it needs), reading its task from the mounted Secret; on failure the pod's last log line is its
    termination message, which the runner reports."""
    name = try_name(backup["metadata"]["name"], attempt)
    labels = _labels(backup, attempt)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels, "ownerReferences": [_owner(backup)]},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,  # the task's files are the group's: readable by the task, nobody else
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "backup",
                            "image": settings.image,
                            "imagePullPolicy": settings.image_pull_policy,
                            "args": ["backup-task", f"--task-file={TASK_DIR}/{TASK_KEY}"],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "task", "mountPath": TASK_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "task", "secret": {"secretName": name, "defaultMode": 0o440}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def job_outcome(job: Obj) -> tuple[bool, str] | None:
    """How a Job ended: (True, "") when it succeeded, (False, why) when it failed, None while it runs."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions or int(status.get("succeeded") or 0) > 0:
        return True, ""
    failed = conditions.get("Failed")
    if failed is not None or int(status.get("failed") or 0) > 0:
        why = (failed or {}).get("message") or (failed or {}).get("reason") or "its pod failed"
        return False, f"Job {job['metadata']['name']} failed: {why}"
    return None


def pod_message(pods: list[Obj]) -> str | None:
    """The last line of the termination message of a failed backup container among ``pods`` (the task's error)."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            lines = str(terminated.get("message") or "").strip().splitlines()
            if terminated.get("exitCode") not in (None, 0) and lines:
                return lines[-1]
    return None


@dataclass
class JobLauncher:
    """Each try as a Kubernetes Job in the backup's namespace."""

    kube: KubeClient
    settings: RunnerSettings
    adopts = True

    async def run(self, backup: Obj, attempt: int, task: BackupTask) -> BackupManifest:
        namespace, name = backup["metadata"]["namespace"], try_name(backup["metadata"]["name"], attempt)
        try:
            await self.kube.get(JOBS, namespace, name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self._start(backup, attempt, task)
        outcome = None
        while outcome is None:
            outcome = job_outcome(await self.kube.get(JOBS, namespace, name))
            if outcome is None:
                await asyncio.sleep(JOB_POLL_SECONDS)
        with contextlib.suppress(ApiError):  # the credentials go with the try; the backup's deletion takes it too
            await self.kube.delete(SECRETS, namespace, name)
        succeeded, why = outcome
        if not succeeded:
            pods = await self.kube.list(PODS, namespace, label_selector=f"job-name={name}")
            raise TaskFailed(pod_message(pods.get("items") or []) or why, 1)
        return await asyncio.to_thread(_stored_manifest, task)

    async def _start(self, backup: Obj, attempt: int, task: BackupTask) -> None:
        namespace = backup["metadata"]["namespace"]
        secret = task_secret(backup, attempt, task)
        try:
            await self.kube.create(SECRETS, namespace, secret)
        except ApiError as exc:
            if exc.status != 409:  # left by a start the operator did not finish: this try's task replaces it
                raise
            await self.kube.patch(SECRETS, namespace, secret["metadata"]["name"], {"data": secret["data"]})
        await self.kube.create(JOBS, namespace, task_job(backup, attempt, self.settings))


def _stored_manifest(task: BackupTask) -> BackupManifest:
    """The manifest the Job stored last (it is written only once the backup is complete)."""
    with task.store.opened() as store:
        if manifest_key(task.name) not in store.list(f"{task.name}/"):
            raise TaskFailed(f"the Job succeeded but {manifest_key(task.name)} is not in the store", 1)
        return read_manifest(store, task.name)


def launcher(kube: KubeClient, settings: RunnerSettings) -> Launcher:
    """The launcher ``settings.runner`` names."""
    return JobLauncher(kube, settings) if settings.runner == "job" else ProcessLauncher()
