"""kopf registrations for backups: thin, the work lives in `runner` and `schedule`."""

from __future__ import annotations

from typing import Any

import kopf

from ..kube.client import KubeClient
from .archiver_deployment import ArchiverDeployments
from .launch import RunnerSettings, launcher
from .runner import FINISHED, BackupRunner
from .schedule import BackupSchedule

BACKUPS = ("ha.whm.io", "v1alpha1", "mysqlbackups")
REPLICATIONS = ("ha.whm.io", "v1alpha1", "mysqlreplications")
SCHEDULES: dict[tuple[str, str], BackupSchedule] = {}


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in FINISHED


@kopf.daemon(*BACKUPS, when=_unfinished, cancellation_timeout=15.0)
async def backup(*, namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Any, **_: Any) -> None:
    """Take one MySQLBackup to Completed or Failed."""
    kube: KubeClient = memo["kube"]
    settings: RunnerSettings = memo.get("backups") or RunnerSettings()
    await BackupRunner(kube, namespace or "", name, launcher(kube, settings)).run(stopped)


@kopf.daemon(*REPLICATIONS, cancellation_timeout=5.0)
async def backup_schedule(
    *, namespace: str | None, name: str, stopped: kopf.DaemonStopped, memo: Any, **_: Any
) -> None:
    """Scheduled backups, retention and backup metrics of one MySQLReplication."""
    kube: KubeClient = memo["kube"]
    settings: RunnerSettings = memo.get("backups") or RunnerSettings()
    archiver = ArchiverDeployments(kube, settings) if settings.runner == "job" else None
    schedule = SCHEDULES[(namespace or "", name)] = BackupSchedule(kube, namespace or "", name, archiver=archiver)
    try:
        await schedule.run(stopped)
    finally:
        SCHEDULES.pop((namespace or "", name), None)


@kopf.on.event(*REPLICATIONS)
def replication_changed(*, namespace: str | None, name: str, meta: kopf.Meta, **_: Any) -> None:
    """A new generation may change the backup settings: the scheduler looks again now (status changes, frequent,
    do not wake it)."""
    schedule = SCHEDULES.get((namespace or "", name))
    if schedule is not None and schedule.generation != meta.get("generation"):
        schedule.generation = meta.get("generation")
        schedule.notice()


@kopf.on.event(*BACKUPS)
def backup_changed(*, namespace: str | None, spec: kopf.Spec, **_: Any) -> None:
    """A backup finished or went: retention and the metrics follow at once."""
    schedule = SCHEDULES.get((namespace or "", str(spec.get("replication", ""))))
    if schedule is not None:
        schedule.notice()
