"""A replication's scheduled backups and their retention: at each time of ``spec.backup.schedule`` the operator
creates a MySQLBackup (named after the time, so that it is created once whoever creates it), owned by the
replication; retention deletes the expired scheduled backups, their stored data first. The backup metrics (the
newest complete backup, whether it is older than ``spec.backup.maxAge``) are set here, from the MySQLBackups. With
Jobs (``--backup-runner=job``) the replication's archiver Deployment is kept here too (`archiver_deployment`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..crd.backup import ReplicationBackupSpec, duration_seconds
from ..crd.common import API_VERSION
from ..crd.mysqlreplication import MySQLReplicationSpec
from ..kube.client import MYSQLBACKUPS, MYSQLREPLICATIONS, ApiError, KubeClient
from . import metrics
from .archiver_deployment import ArchiverDeployments
from .manifest import delete_backup
from .policy import ScheduledBackup, due_time, expired, next_time, scheduled_name, stale
from .runner import Misconfigured, store_access
from .storage import StorageError

log = logging.getLogger(__name__)
Obj = dict[str, Any]

REPLICATION_LABEL = "ha.whm.io/replication"
SCHEDULED_LABEL = "ha.whm.io/scheduled"
SCHEDULED_FOR = "ha.whm.io/scheduled-for"
CHECK_SECONDS = 60.0
"""The longest the scheduler sleeps: how soon it sees a changed spec, a finished backup for retention, and the age
of the newest backup."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@dataclass
class BackupSchedule:
    """The scheduler of one MySQLReplication's backups."""

    kube: KubeClient
    namespace: str
    name: str
    reported: str | None = None
    """The last problem posted as an Event, so that each is posted once."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int | None = None
    """The replication's generation last noticed."""
    archiver: ArchiverDeployments | None = None
    """Set with ``--backup-runner=job``: the archiver Deployment follows ``spec.backup.archive.enabled``."""

    def notice(self) -> None:
        """The replication or one of its backups changed: step now rather than at the next scheduled check."""
        self.wake.set()

    async def run(self, stopped: Any) -> None:
        try:
            while not stopped:
                self.wake.clear()
                try:
                    delay = await self.step(datetime.now(UTC))
                except (ApiError, OSError, StorageError, Misconfigured) as exc:
                    log.warning("backups of %s/%s: %s", self.namespace, self.name, exc)
                    delay = CHECK_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
        finally:
            metrics.forget(self.namespace, self.name)

    async def step(self, now: datetime) -> float:
        """Create the backup due now, apply retention, set the metrics; the seconds until the next step."""
        obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, self.name)
        spec = MySQLReplicationSpec.model_validate(obj["spec"])
        if self.archiver is not None:
            done = await self.archiver.reconcile(obj, spec)
            if done is not None:
                await self._report(obj, "BinlogArchiver", done, warning=False)
        settings = spec.backup
        if settings is None:
            metrics.forget(self.namespace, self.name)
            return CHECK_SECONDS
        since = _time(obj["metadata"].get("creationTimestamp")) or now
        listed = await self.kube.list(MYSQLBACKUPS, self.namespace)
        backups = [b for b in listed.get("items") or [] if b.get("spec", {}).get("replication") == self.name]
        self._measure(backups, settings, since, now)
        delay = CHECK_SECONDS
        if settings.schedule is not None and not settings.suspend:
            try:
                taken = [_time(b["metadata"].get("annotations", {}).get(SCHEDULED_FOR)) for b in backups]
                last = max((t for t in taken if t is not None), default=None)
                due = due_time(settings.schedule, now, last, since)
                delay = min(delay, max(1.0, (next_time(settings.schedule, now) - now).total_seconds()))
            except ValueError as exc:
                await self._report(obj, "ScheduleInvalid", str(exc))
                due = None
            if due is not None:
                await self._create(obj, due)
        await self._retain(obj, settings, backups, now)
        return delay

    def _measure(self, backups: list[Obj], settings: ReplicationBackupSpec, since: datetime, now: datetime) -> None:
        completed = [b for b in backups if (b.get("status") or {}).get("phase") == "Completed"]
        newest = max(completed, key=lambda b: b["status"].get("completedAt") or "", default=None)
        finished = _time(newest["status"].get("completedAt")) if newest is not None else None
        metrics.newest(
            self.namespace,
            self.name,
            finished.timestamp() if finished is not None else None,
            newest["status"].get("sizeBytes") if newest is not None else None,
            stale(finished, since, timedelta(seconds=duration_seconds(settings.max_age)), now),
        )

    async def _create(self, replication: Obj, due: datetime) -> None:
        meta = replication["metadata"]
        name = scheduled_name(self.name, due)
        body = {
            "apiVersion": API_VERSION,
            "kind": "MySQLBackup",
            "metadata": {
                "name": name,
                "labels": {REPLICATION_LABEL: self.name, SCHEDULED_LABEL: "true"},
                "annotations": {SCHEDULED_FOR: due.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "ownerReferences": [
                    {"apiVersion": API_VERSION, "kind": "MySQLReplication", "name": self.name, "uid": meta["uid"]}
                ],
            },
            "spec": {"replication": self.name},
        }
        try:
            await self.kube.create(MYSQLBACKUPS, self.namespace, body)
        except ApiError as exc:
            if exc.status != 409:  # created already, by this operator before a restart or by another
                raise
            return
        log.info("backups of %s/%s: created %s for %s", self.namespace, self.name, name, due.isoformat())

    async def _retain(
        self, replication: Obj, settings: ReplicationBackupSpec, backups: list[Obj], now: datetime
    ) -> None:
        """Delete the expired scheduled backups: the stored data first, so that no object names a deleted backup
        while its data would stay forever."""
        finished = []
        for b in backups:
            status = b.get("status") or {}
            if (b["metadata"].get("labels") or {}).get(SCHEDULED_LABEL) != "true":
                continue
            name, created = b["metadata"]["name"], _time(b["metadata"].get("creationTimestamp")) or now
            due = _time((b["metadata"].get("annotations") or {}).get(SCHEDULED_FOR)) or created
            if status.get("phase") == "Completed":
                finished.append(ScheduledBackup(name, _time(status.get("completedAt")) or created, due))
            elif status.get("phase") == "Failed":
                finished.append(ScheduledBackup(name, None, due))
        max_age = settings.retention.max_age
        gone = expired(
            finished, settings.retention.keep, timedelta(seconds=duration_seconds(max_age)) if max_age else None, now
        )
        if not gone:
            return
        with_data = {b.name for b in finished if b.completed_at is not None}
        if with_data & set(gone):
            access = await store_access(self.kube, self.namespace, settings.storage)

            def delete_data() -> None:
                with access.opened() as store:
                    for name in sorted(with_data & set(gone)):
                        delete_backup(store, name)

            await asyncio.to_thread(delete_data)
        for name in gone:
            try:
                await self.kube.delete(MYSQLBACKUPS, self.namespace, name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        await self._report(replication, "BackupsExpired", f"retention deleted {', '.join(sorted(gone))}", warning=False)

    async def _report(self, obj: Obj, reason: str, message: str, *, warning: bool = True) -> None:
        if self.reported == message:
            return
        self.reported = message
        level = logging.WARNING if warning else logging.INFO
        log.log(level, "backups of %s/%s: %s", self.namespace, self.name, message)
        try:
            await self.kube.event(obj, "MySQLReplication", reason, message, warning=warning)
        except (ApiError, OSError) as exc:
            log.warning("cannot post an Event about %s/%s: %s", self.namespace, self.name, exc)
