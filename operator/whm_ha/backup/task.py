"""One try of a backup, in a process of its own (``whm-ha backup-task``).

The operator resolves everything (the store and its credentials, the member and its account) and hands it over as
JSON on standard input, never on a command line. The process streams the dump to the store and prints the manifest
as JSON on standard output; on failure it prints one line on standard error and exits 1. A process of its own keeps
the compression and checksums off the operator's interpreter (its failure detection never waits on them) and can be
killed, with the dump tool in its process group, when the operator gives up on it.

A backup whose manifest is already in the store is complete (an earlier try finished, then the operator stopped
before it recorded that): the try reports that manifest instead of dumping again.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated

import pymysql
from pydantic import BaseModel, Field

from ..crd.backup import BackupStorageSpec
from ..crd.mysqlreplication import Member as ReplicationMember
from ..crd.mysqlreplication import MySQLReplicationSpec
from ..mysql.dialect import dialect_for
from ..mysql.gtid import Flavor
from ..mysql.member import Credentials
from .dump import BackupError, Member, take_backup
from .manifest import BACKUP_NAME, BackupManifest, manifest_key, read_manifest
from .process import INVALID_TASK, read_task
from .storage import StorageError, Store, open_store


class TaskMember(BaseModel):
    """The member backed up and the account the dump connects with."""

    name: str
    host: str
    port: int
    username: str
    password: str = Field(repr=False)
    flavor: Flavor
    tls_ca: str | None = None
    """The CA bundle (PEM) of the replication's ``spec.tls`` the member is verified with; None: TLS is off."""
    verify_server_name: bool = True

    @classmethod
    def of(
        cls, member: ReplicationMember, spec: MySQLReplicationSpec, credentials: Credentials, tls_ca: str | None
    ) -> TaskMember:
        """A member of the replication ``spec``, reached with ``credentials`` and, with its TLS on, ``tls_ca``."""
        return cls(
            name=member.name,
            host=member.host,
            port=member.port,
            username=credentials.username,
            password=credentials.password,
            flavor=spec.flavor,
            tls_ca=tls_ca,
            verify_server_name=spec.tls.verify_server_name,
        )

    def member(self) -> Member:
        return Member(
            self.name,
            self.host,
            self.port,
            Credentials(self.username, self.password),
            dialect_for(self.flavor),
            tls_ca=self.tls_ca,
            verify_server_name=self.verify_server_name,
        )


class StoreAccess(BaseModel):
    """A store and what opens it."""

    storage: BackupStorageSpec
    access_key_id: str = Field(default="", repr=False)
    secret_access_key: str = Field(default="", repr=False)
    ca_pem: str | None = None
    """The CA the store's endpoint is verified with (PEM); None: the system's."""

    @contextmanager
    def opened(self) -> Iterator[Store]:
        """The store, its CA in a temporary file for as long as it is used."""
        with ExitStack() as stack:
            ca_file = None
            if self.ca_pem is not None:
                ca = stack.enter_context(tempfile.NamedTemporaryFile("w", prefix="whm-ha-store-ca-", suffix=".pem"))
                ca.write(self.ca_pem)
                ca.flush()
                ca_file = ca.name
            yield open_store(
                self.storage,
                access_key_id=self.access_key_id,
                secret_access_key=self.secret_access_key,
                ca_file=ca_file,
            )


class BackupTask(BaseModel):
    """Everything one try needs, resolved by the operator."""

    name: Annotated[str, Field(pattern=BACKUP_NAME)]
    store: StoreAccess
    member: TaskMember


def run(task: BackupTask) -> BackupManifest:
    """Take the backup (or find it complete already) and return its manifest; BackupError or StorageError when it
    did not complete, and then nothing of it is listed as usable."""
    with task.store.opened() as store:
        if manifest_key(task.name) in store.list(f"{task.name}/"):
            return read_manifest(store, task.name)
        return take_backup(store, task.name, task.member.member())


def main(task_file: Path | None = None) -> int:
    """Run the BackupTask on standard input, or in ``task_file`` (`process.read_task`), print its manifest."""
    task = read_task(BackupTask, task_file)
    if task is None:
        return INVALID_TASK
    try:
        manifest = run(task)
    except (BackupError, StorageError, OSError, pymysql.MySQLError) as exc:
        print(" ".join(str(exc).split()) or type(exc).__name__, file=sys.stderr)
        return 1
    print(manifest.model_dump_json())
    return 0
