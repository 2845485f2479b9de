"""The catalogue of backups in a store: each backup is ``NAME/dump.sql.zst`` and ``NAME/manifest.json``.

The manifest is written last, after the data object is complete, so a backup is usable exactly when its manifest
exists: `usable_backups` lists manifests only, and a backup interrupted at any point (the dump failing, the store
failing, the process killed) never shows.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..mysql.gtid import Flavor
from .storage import StorageError, Store

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DATA = "dump.sql.zst"
BACKUP_NAME = r"^[a-z0-9][a-z0-9._-]{0,127}$"


class BackupManifest(BaseModel):
    """What a complete backup holds and where its snapshot stands."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int = FORMAT
    name: str = Field(pattern=BACKUP_NAME)
    flavor: Flavor
    server_version: str
    """``SELECT VERSION()`` of the member backed up."""
    member: str
    """The member the dump was taken from."""
    gtid: str
    """The snapshot's executed GTIDs (MariaDB: its GTID position): a member loaded from the dump replicates from
    the transaction after it."""
    binlog_file: str
    binlog_position: int = Field(ge=0)
    """The snapshot's coordinates in the member's binary log."""
    databases: list[str]
    tool: str
    """The dump tool and its options' essentials, e.g. ``mariadb-dump --single-transaction``."""
    data: str
    """Key of the data object (relative to the store's prefix)."""
    compression: Literal["zstd"] = "zstd"
    size: int = Field(ge=0)
    """Bytes of the data object."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Of the data object."""
    uncompressed_size: int = Field(ge=0)
    started: datetime
    finished: datetime


def data_key(name: str) -> str:
    return f"{name}/{DATA}"


def manifest_key(name: str) -> str:
    return f"{name}/{MANIFEST}"


def publish(store: Store, manifest: BackupManifest) -> None:
    """Make a backup usable; only after its data object is complete."""
    store.put(manifest_key(manifest.name), manifest.model_dump_json(indent=2).encode())


def read_manifest(store: Store, name: str) -> BackupManifest:
    """The manifest of a backup; StorageError when it is missing or unreadable."""
    try:
        return BackupManifest.model_validate_json(store.get(manifest_key(name)))
    except ValidationError as exc:
        raise StorageError(f"{store.describe()}: the manifest of {name} is not valid: {exc}") from exc


def usable_backups(store: Store) -> list[BackupManifest]:
    """The complete backups in the store, oldest first; manifests that cannot be read are logged and left out."""
    found = []
    for key in store.list():
        name, _, leaf = key.rpartition("/")
        if leaf != MANIFEST or not name:
            continue
        try:
            found.append(read_manifest(store, name))
        except StorageError as exc:
            log.warning("%s", exc)
    return sorted(found, key=lambda manifest: (manifest.finished, manifest.name))


def delete_backup(store: Store, name: str) -> None:
    """Remove a backup: its manifest first, so that it is never listed with its data gone."""
    store.delete(manifest_key(name))
    store.delete(data_key(name))
