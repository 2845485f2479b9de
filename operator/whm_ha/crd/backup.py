"""Backup settings: where backups go (`whm_ha.backup.storage` opens them), and ``MySQLReplication.spec.backup``:
the schedule, its retention, the member backed up, and the binary log archive."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from .common import Condition, CRDModel, LocalObjectReference, SecretKeySelector, cel, conditions_field

BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*/)*$"
"""Empty, or ``/``-terminated segments; no ``.``/``..`` segments."""


class S3StorageSpec(CRDModel):
    """An S3-compatible object store (AWS S3, SeaweedFS, Ceph RGW, ...)."""

    endpoint: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^/?#\s]+/?$")
    """``https://host[:port]``; ``http://`` only for a store reached over a trusted network."""
    bucket: str = Field(max_length=63, pattern=BUCKET_NAME)
    """The bucket, which must exist."""
    prefix: str = Field(default="", max_length=512, pattern=PREFIX)
    """Keys of this replication's backups start with it, e.g. ``prod/db/``. Give each replication a prefix of its
    own: backups are named by their MySQLBackup, and retention deletes by name under it."""
    region: str = Field(default="us-east-1", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    """The region requests are signed for."""
    credentials_secret: LocalObjectReference
    """Secret with the keys ``accessKeyId`` and ``secretAccessKey``."""
    ca_secret: SecretKeySelector | None = None
    """CA certificate (PEM) the endpoint's certificate is verified with; default: the system's CAs."""


class FilesystemStorageSpec(CRDModel):
    """A directory, e.g. a PersistentVolumeClaim mounted into the pods that take and restore backups."""

    path: str = Field(min_length=2, max_length=4096, pattern=r"^/")
    """Absolute path of the directory; one of its own per replication, as for an S3 prefix."""


class BackupStorageSpec(CRDModel):
    """Where backups are written: exactly one of s3 and filesystem."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("has(self.s3) != has(self.filesystem)", "set exactly one of s3 and filesystem"),
            ]
        }
    }

    s3: S3StorageSpec | None = None
    """An S3-compatible object store."""
    filesystem: FilesystemStorageSpec | None = None
    """A directory."""


DURATION = r"^[1-9][0-9]{0,5}[mhd]$"
"""Minutes, hours or days: ``30m``, ``26h``, ``7d``."""
CRON = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|(\S+\s+){4}\S+)$"
"""Five cron fields (minute hour day-of-month month day-of-week, UTC) or a macro such as ``@daily``; the operator
reports a schedule it cannot parse in an Event and takes no scheduled backup."""

BackupTarget = Literal["PreferReplica", "Primary"]
"""PreferReplica: the healthy replica with the least lag (the primary only when no replica is healthy);
Primary: the current primary."""


def duration_seconds(duration: str) -> int:
    """The seconds of a `DURATION`."""
    return int(duration[:-1]) * {"m": 60, "h": 3600, "d": 86400}[duration[-1]]


class BackupRetention(CRDModel):
    """Which scheduled backups are kept; the newest complete one always is. One-off backups are never deleted."""

    keep: int = Field(default=7, ge=1, le=1000)
    """The newest complete scheduled backups kept."""
    max_age: str | None = Field(default=None, max_length=8, pattern=DURATION)
    """Complete scheduled backups older than this are deleted, even among the newest ``keep``."""


class BinlogArchiveSpec(CRDModel):
    """The continuous archive of the primary's binary logs, for point-in-time recovery."""

    enabled: bool = False
    """Run ``whm-ha binlog-archive`` for this replication (the chart's archiver Deployment)."""
    max_lag_seconds: int = Field(default=30, ge=1, le=86400)
    """Beyond this many seconds behind the primary, status.archive's Lagging condition is True (and the alert
    "binlog archive lagging" fires)."""


ArchiveState = Literal["Starting", "Streaming", "StorageUnavailable", "PrimaryUnavailable", "Disabled"]


class BinlogArchiveStatus(CRDModel):
    """What the binary log archiver reports (``MySQLReplication.status.archive``: only the archiver writes it)."""

    state: ArchiveState
    """Streaming: archiving the primary; StorageUnavailable / PrimaryUnavailable: retrying; Disabled: nothing to
    do (spec.backup.archive.enabled is false)."""
    member: str | None = Field(default=None, max_length=63)
    """The primary being archived."""
    lag_seconds: float | None = Field(default=None, ge=0)
    """How far the archive is behind the primary: every transaction the primary had committed this many seconds
    ago is in the store."""
    archived_gtids: str | None = Field(default=None, max_length=65536)
    """The GTIDs the archive holds."""
    last_segment: int | None = Field(default=None, ge=0)
    """The sequence number of the newest segment in the store."""
    last_upload_time: datetime | None = None
    """When the newest segment was stored."""
    message: str | None = Field(default=None, max_length=4096)
    """Why archiving is not streaming, in plain words."""
    updated_at: datetime
    """When the archiver wrote this (an old time: the archiver is not running)."""
    conditions: list[Condition] = conditions_field()
    """Lagging: True beyond spec.backup.archive.maxLagSeconds, or while the archive cannot advance."""


class ReplicationBackupSpec(CRDModel):
    """Scheduled backups of a replication, and the defaults of its one-off ``MySQLBackup``s."""

    storage: BackupStorageSpec
    """Where the backups and the binary log archive go."""
    schedule: str | None = Field(default=None, max_length=256, pattern=CRON)
    """When to take a backup, in cron syntax (UTC); none: only one-off backups."""
    suspend: bool = False
    """Take no scheduled backup for now."""
    target: BackupTarget = "PreferReplica"
    """The member backed up."""
    retention: BackupRetention = Field(default_factory=BackupRetention)
    """Which scheduled backups are kept."""
    max_age: str = Field(default="26h", max_length=8, pattern=DURATION)
    """The alert "no successful backup" fires when the newest complete backup is older than this."""
    archive: BinlogArchiveSpec = Field(default_factory=BinlogArchiveSpec)
    """The continuous binary log archive."""


TARGET_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
"""A whole second in UTC (RFC 3339): binary log timestamps are whole seconds."""
TARGET_GTID = r"^([0-9]{1,10}-[0-9]{1,10}-[0-9]{1,20}|[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}:[0-9]{1,19})$"
"""One GTID: MariaDB ``domain-server-seq``, MySQL ``uuid:n``."""


class RecoveryTarget(CRDModel):
    """How far past the backup the restore goes, by replaying the binary log archive: at most one of time, gtid and
    endOfArchive; none: the backup's own position."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "(has(self.time) ? 1 : 0) + (has(self.gtid) ? 1 : 0)"
                    " + (has(self.endOfArchive) && self.endOfArchive ? 1 : 0) <= 1",
                    "set at most one of time, gtid and endOfArchive",
                ),
            ]
        }
    }

    time: str | None = Field(default=None, max_length=20, pattern=TARGET_TIME)
    """``2026-12-07T19:30:00Z``: every transaction the archive holds whose binary log timestamp (the second its
    statement started) is before this second, none from it on."""
    gtid: str | None = Field(default=None, max_length=64, pattern=TARGET_GTID)
    """Every transaction up to and including this one (which the archive must hold)."""
    end_of_archive: bool = False
    """Every transaction the archive holds."""

    def stop_time(self) -> datetime | None:
        """The time target as a datetime."""
        return None if self.time is None else datetime.strptime(self.time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    def describe(self) -> str | None:
        """The target in words; None for the backup's own position."""
        if self.time is not None:
            return f"time {self.time}"
        if self.gtid is not None:
            return f"GTID {self.gtid}"
        return "the end of the archive" if self.end_of_archive else None


class RecoverySpec(CRDModel):
    """Where the data of a new replication comes from: a backup, loaded into every member (which must be empty),
    and replayed on spec.primary to a target."""

    backup: str = Field(default="latest", max_length=128, pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")
    """The backup's name in the store, or ``latest``: the newest complete backup there."""
    storage: BackupStorageSpec | None = None
    """Where the backup and the binary log archive are (only ever read); default: spec.backup.storage."""
    target: RecoveryTarget | None = None
    """Replay the binary log archive on spec.primary after the backup, to this target; none: the backup's own
    position."""


class BootstrapSpec(CRDModel):
    """How a new replication gets its data; immutable."""

    recovery: RecoverySpec | None = None
    """Restore a backup into the members before the first primary is chosen."""
