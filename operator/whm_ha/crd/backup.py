"""Where backups go: the storage part of ``MySQLReplication.spec.backup`` and of a ``MySQLBackup`` (both to come;
`whm_ha.backup.storage` is what these settings open)."""

from __future__ import annotations

from pydantic import Field

from .common import CRDModel, LocalObjectReference, SecretKeySelector, cel

BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*/)*$"
"""Empty, or ``/``-terminated segments; no ``.``/``..`` segments."""


class S3StorageSpec(CRDModel):
    """An S3-compatible object store (AWS S3, SeaweedFS, Ceph RGW, ...)."""

    endpoint: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^/?#\s]+/?$")
    """``https://host[:port]``; ``http://`` only for a store reached over a trusted network."""
    bucket: str = Field(pattern=BUCKET_NAME)
    """The bucket, which must exist."""
    prefix: str = Field(default="", max_length=512, pattern=PREFIX)
    """Keys of this replication's backups start with it, e.g. ``prod/db/``."""
    region: str = Field(default="us-east-1", min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")
    """The region requests are signed for."""
    credentials_secret: LocalObjectReference
    """Secret with the keys ``accessKeyId`` and ``secretAccessKey``."""
    ca_secret: SecretKeySelector | None = None
    """CA certificate (PEM) the endpoint's certificate is verified with; default: the system's CAs."""


class FilesystemStorageSpec(CRDModel):
    """A directory, e.g. a PersistentVolumeClaim mounted into the pods that take and restore backups."""

    path: str = Field(min_length=2, max_length=4096, pattern=r"^/")
    """Absolute path of the directory."""


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
