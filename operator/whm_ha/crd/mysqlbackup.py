"""MySQLBackup: one consistent logical backup of a MySQLReplication's member, streamed to storage."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .backup import BackupStorageSpec, BackupTarget
from .common import Condition, CRDModel, Name, cel, conditions_field

BackupPhase = Literal["Pending", "Running", "Completed", "Failed"]


class MySQLBackupSpec(CRDModel):
    """What to back up; immutable once created."""

    model_config = {"json_schema_extra": {"x-kubernetes-validations": [cel("self == oldSelf", "spec is immutable")]}}

    replication: Name
    """The MySQLReplication (same namespace) backed up."""
    target: BackupTarget | None = None
    """The member backed up; default: the replication's spec.backup.target, else PreferReplica."""
    member: Name | None = None
    """This member, whatever its role (overrides target)."""
    storage: BackupStorageSpec | None = None
    """Where the backup goes; default: the replication's spec.backup.storage."""
    attempts: int = Field(default=3, ge=1, le=10)
    """Tries before the backup is Failed; a failed try leaves nothing usable behind."""


class MySQLBackupStatus(CRDModel):
    """Where the backup stands and, once Completed, what it holds (the manifest's essentials)."""

    phase: BackupPhase | None = None
    """Pending, Running, Completed or Failed."""
    message: str | None = Field(default=None, max_length=4096)
    """The outcome in plain words; for a failed try, why."""
    attempts: int | None = Field(default=None, ge=0)
    """Tries started so far."""
    member: str | None = Field(default=None, max_length=63)
    """The member being (or that was) backed up."""
    location: str | None = Field(default=None, max_length=4096)
    """The store and the backup's name in it."""
    started_at: datetime | None = None
    """When the last try started."""
    completed_at: datetime | None = None
    """When the backup became usable."""
    gtid: str | None = Field(default=None, max_length=65536)
    """The snapshot's executed GTIDs (MariaDB: its GTID position)."""
    binlog_file: str | None = Field(default=None, max_length=512)
    """The snapshot's binary log file on the member."""
    binlog_position: int | None = Field(default=None, ge=0)
    """The snapshot's position in that file."""
    size_bytes: int | None = Field(default=None, ge=0)
    """Bytes stored (compressed)."""
    uncompressed_bytes: int | None = Field(default=None, ge=0)
    """Bytes of the dump."""
    sha256: str | None = Field(default=None, max_length=64)
    """Of the stored data."""
    server_version: str | None = Field(default=None, max_length=256)
    """The member's server version."""
    conditions: list[Condition] = conditions_field()
    """Standard conditions (Ready: the backup is usable)."""
