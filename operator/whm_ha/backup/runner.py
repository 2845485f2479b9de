"""Taking one MySQLBackup to Completed or Failed: resolve its replication, store and member, run each try with the
operator's launcher (a ``whm-ha backup-task`` process, or a Job in a cluster: `launch`), record every step in its
status and Events.

A try that fails leaves nothing usable (the manifest is written last) and is retried after a growing pause, up to
``spec.attempts``; a configuration that cannot work (no storage, a missing Secret or replication) fails the backup
at once. A backup found Running when its daemon starts was interrupted (the operator stopped): that try counts as
failed and the next one starts, which also adopts a backup the interrupted try had completed; with Jobs, whose
tries outlive the operator, the interrupted try's Job is waited for instead (started, if it never was).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from ..crd.backup import BackupStorageSpec
from ..crd.conditions import now_iso, set_condition
from ..crd.mysqlbackup import MySQLBackupSpec
from ..crd.mysqlreplication import MemberStatus, MySQLReplicationSpec
from ..db.cluster_database import DatabaseUnavailable, secret_credentials
from ..kube.client import MYSQLBACKUPS, MYSQLREPLICATIONS, SECRETS, ApiError, KubeClient
from ..mysql.member import Credentials
from ..node_tls import ca_from_secret
from . import metrics
from .launch import Launcher, ProcessLauncher
from .manifest import BackupManifest
from .policy import NoMember, choose_member
from .process import TaskFailed
from .task import BackupTask, StoreAccess, TaskMember

log = logging.getLogger(__name__)
Obj = dict[str, Any]

FIRST_RETRY_SECONDS = 5.0
LAST_RETRY_SECONDS = 300.0
FINISHED = ("Completed", "Failed")


class Misconfigured(ValueError):
    """The backup cannot work as specified; retrying would not help."""


def retry_delay(failed_tries: int) -> float:
    """Seconds to wait after the ``failed_tries``-th failed try: 5 s, doubling, at most 5 min."""
    return float(min(LAST_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, failed_tries - 1)))


def _secret_value(secret: Obj, key: str, where: str) -> str:
    try:
        return base64.b64decode((secret.get("data") or {})[key]).decode()
    except (KeyError, ValueError) as exc:
        raise Misconfigured(f"{where} has no key {key}") from exc


async def store_access(kube: KubeClient, namespace: str, storage: BackupStorageSpec) -> StoreAccess:
    """The store a storage spec names, with the credentials and CA its Secrets hold; Misconfigured when one is
    missing or lacks its key."""
    access = StoreAccess(storage=storage)
    if storage.s3 is None:
        return access
    where = f"Secret {namespace}/{storage.s3.credentials_secret.name} (storage credentials)"
    secret = await _secret(kube, namespace, storage.s3.credentials_secret.name, where)
    access.access_key_id = _secret_value(secret, "accessKeyId", where)
    access.secret_access_key = _secret_value(secret, "secretAccessKey", where)
    if storage.s3.ca_secret is not None:
        where = f"Secret {namespace}/{storage.s3.ca_secret.name} (storage CA)"
        ca = await _secret(kube, namespace, storage.s3.ca_secret.name, where)
        access.ca_pem = _secret_value(ca, storage.s3.ca_secret.key, where)
    return access


async def members_ca(kube: KubeClient, namespace: str, replication: MySQLReplicationSpec) -> str | None:
    """The CA bundle the members are verified with (the replication's ``spec.tls.caSecret``), None when its TLS is
    off; Misconfigured when the Secret or its key is missing or holds no usable certificate."""
    ref = replication.tls.ca_secret
    if not replication.tls.enabled or ref is None:
        return None
    where = f"Secret {namespace}/{ref.name} (tls.caSecret)"
    secret = await _secret(kube, namespace, ref.name, where)
    try:
        return ca_from_secret(secret, ref.key)
    except ValueError as exc:  # binascii.Error too
        raise Misconfigured(f"{where} {exc}") from exc


async def _secret(kube: KubeClient, namespace: str, name: str, where: str) -> Obj:
    try:
        return await kube.get(SECRETS, namespace, name)
    except ApiError as exc:
        if exc.status == 404:
            raise Misconfigured(f"{where} not found") from exc
        raise


@dataclass
class BackupRunner:
    """The daemon of one MySQLBackup."""

    kube: KubeClient
    namespace: str
    name: str
    launcher: Launcher = field(default_factory=ProcessLauncher)

    async def run(self, stopped: Any) -> None:
        obj = await self.kube.get(MYSQLBACKUPS, self.namespace, self.name)
        status = obj.get("status") or {}
        if status.get("phase") in FINISHED:
            return
        spec = MySQLBackupSpec.model_validate(obj["spec"])
        tries = int(status.get("attempts") or 0)
        if status.get("phase") == "Running" and self.launcher.adopts:
            tries = max(0, tries - 1)  # the interrupted try again, under its number: its Job if it has one
        elif status.get("phase") == "Running":
            message = f"try {tries} of {spec.attempts} was interrupted (the operator stopped)"
            await self._event(obj, "TryInterrupted", message, True)
            if tries >= spec.attempts:
                await self._fail(obj, spec.replication, tries, message)
                return
        while tries < spec.attempts and not stopped:
            tries += 1
            started = time.time()
            try:
                task, replication = await self._resolve(spec)
                await self._status(
                    phase="Running",
                    attempts=tries,
                    member=task.member.name,
                    location=self._location(task),
                    startedAt=now_iso(),
                    message=f"try {tries} of {spec.attempts}: dumping {task.member.name}",
                )
                await self._event(obj, "Started", f"try {tries}: dumping {task.member.name} to {self._location(task)}")
                manifest = await self.launcher.run(obj, tries, task)
            except Misconfigured as exc:
                await self._fail(obj, spec.replication, tries, str(exc))
                return
            except (TaskFailed, NoMember, DatabaseUnavailable, ApiError, OSError) as exc:
                message = f"try {tries} of {spec.attempts} failed: {exc}"
                log.warning("MySQLBackup %s/%s: %s", self.namespace, self.name, message)
                if tries >= spec.attempts:
                    await self._fail(obj, spec.replication, tries, message)
                    return
                delay = retry_delay(tries)
                await self._status(phase="Pending", attempts=tries, message=f"{message}; retrying in {delay:.0f} s")
                await self._event(obj, "TryFailed", message, True)
                await stopped.wait(delay)
                continue
            await self._complete(obj, replication, manifest, time.time() - started)
            return

    async def _resolve(self, spec: MySQLBackupSpec) -> tuple[BackupTask, str]:
        """The task of one try: the storage (the backup's, else its replication's), its credentials, and the member
        chosen now from the replication's status."""
        if len(self.name) > 128:
            raise Misconfigured(f"the name {self.name} is longer than 128 characters, the longest a backup may have")
        try:
            obj = await self.kube.get(MYSQLREPLICATIONS, self.namespace, spec.replication)
        except ApiError as exc:
            if exc.status == 404:
                raise Misconfigured(f"MySQLReplication {self.namespace}/{spec.replication} not found") from exc
            raise
        replication = MySQLReplicationSpec.model_validate(obj["spec"])
        storage = spec.storage or (replication.backup.storage if replication.backup is not None else None)
        if storage is None:
            raise Misconfigured(f"no storage: set spec.storage, or spec.backup.storage of {spec.replication}")
        status = obj.get("status") or {}
        if spec.member is not None:
            if spec.member not in {m.name for m in replication.members}:
                raise Misconfigured(f"{spec.replication} has no member {spec.member}")
            chosen = spec.member
        else:
            target = spec.target or (replication.backup.target if replication.backup is not None else "PreferReplica")
            members = [MemberStatus.model_validate(m) for m in status.get("members") or []]
            chosen = choose_member(
                target, status.get("currentPrimary"), members, max_lag_seconds=replication.max_lag_seconds
            )
        member = next((m for m in replication.members if m.name == chosen), None)
        if member is None:
            raise NoMember(f"{chosen} is no longer a member of {spec.replication}")
        username, password = await self._credentials(replication.credentials_secret.name)
        task = BackupTask(
            name=self.name,
            store=await store_access(self.kube, self.namespace, storage),
            member=TaskMember.of(
                member,
                replication,
                Credentials(username, password),
                await members_ca(self.kube, self.namespace, replication),
            ),
        )
        return task, spec.replication

    async def _credentials(self, name: str) -> tuple[str, str]:
        try:
            return await secret_credentials(self.kube, self.namespace, name)
        except ApiError as exc:
            if exc.status == 404:
                raise Misconfigured(f"Secret {self.namespace}/{name} (credentialsSecret) not found") from exc
            raise

    def _location(self, task: BackupTask) -> str:
        storage = task.store.storage
        if storage.s3 is not None:
            return f"{storage.s3.endpoint.rstrip('/')}/{storage.s3.bucket}/{storage.s3.prefix}{self.name}/"
        assert storage.filesystem is not None
        return f"{storage.filesystem.path.rstrip('/')}/{self.name}/"

    async def _complete(self, obj: Obj, replication: str, manifest: BackupManifest, seconds: float) -> None:
        conditions = set_condition([], "Ready", True, "Completed", "the backup is complete and usable")
        await self._event(obj, "Completed", f"{manifest.size} bytes from {manifest.member} in {seconds:.1f} s")
        metrics.completed(self.namespace, replication, seconds)
        # Last: once Completed, kopf stops this daemon.
        await self._status(
            phase="Completed",
            message=f"{manifest.size} bytes from {manifest.member} at GTID {manifest.gtid or '(none)'}",
            completedAt=manifest.finished.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            gtid=manifest.gtid,
            binlogFile=manifest.binlog_file,
            binlogPosition=manifest.binlog_position,
            sizeBytes=manifest.size,
            uncompressedBytes=manifest.uncompressed_size,
            sha256=manifest.sha256,
            serverVersion=manifest.server_version,
            conditions=conditions,
        )

    async def _fail(self, obj: Obj, replication: str, tries: int, message: str) -> None:
        await self._event(obj, "Failed", message, True)
        metrics.failed(self.namespace, replication)
        conditions = set_condition([], "Ready", False, "Failed", message)
        await self._status(phase="Failed", attempts=tries, message=message, conditions=conditions)

    async def _status(self, **fields: Any) -> None:
        await self.kube.patch(MYSQLBACKUPS, self.namespace, self.name, {"status": fields}, subresource="status")

    async def _event(self, obj: Obj, reason: str, message: str, warning: bool = False) -> None:
        with contextlib.suppress(ApiError, OSError):
            await self.kube.event(obj, "MySQLBackup", reason, message, warning=warning)
