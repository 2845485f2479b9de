"""Bootstrapping a new MySQLReplication from a backup (``spec.bootstrap.recovery``): before the first primary is
chosen, the backup is loaded into every member, one at a time, ``spec.primary`` first, each load a ``whm-ha
restore-task`` process of its own; ``status.recovery`` records the backup and each member that holds it, so that a
restarted operator goes on where it stopped. With a target (``recovery.target``), ``spec.primary``'s task then
replays the binary log archive up to it (`replay`), with binary logging on. Afterwards every member holds the
backup's data and GTIDs, ``spec.primary`` the replayed transactions too, none writable: the first primary is
``spec.primary`` and the others replicate from it, as for any new replication. The store is only read: the
replication the backup came from is never touched.

A member must be empty: no schema and no GTID of its own. One that holds only part of this backup (a load cut
short) is emptied and loaded again; any other is refused (``Failed``: a human must empty or replace it).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pymysql
from pydantic import BaseModel

from ..crd.backup import RecoveryTarget
from ..crd.mysqlreplication import MySQLReplicationSpec, RecoveryStatus
from ..kube.client import MYSQLREPLICATIONS, KubeClient
from ..mysql.dialect import SQL
from ..mysql.gtid import GtidSet
from ..mysql.member import Credentials
from .dump import Member, data_schemas, open_session
from .manifest import BackupManifest, manifest_key, read_manifest, usable_backups
from .process import INVALID_TASK, TaskFailed, read_task, run_task
from .replay import ReplayError, Unreachable, index, plan, replay
from .restore import RestoreError, restore_backup
from .runner import Misconfigured, members_ca, store_access
from .storage import StorageError
from .task import StoreAccess, TaskMember

log = logging.getLogger(__name__)
Obj = dict[str, Any]

RECORD_TRIES = 3
NOT_RESTORABLE = 3
"""Exit status of a restore task that trying again would not help."""


class NotRestorable(RuntimeError):
    """The backup cannot be loaded into this member as things are; the message says what a human must do."""


class RestoreTask(BaseModel):
    """One member's load, resolved by the operator."""

    store: StoreAccess
    backup: str
    """A backup's name, or ``latest``."""
    member: TaskMember
    target: RecoveryTarget | None = None
    """Replay the binary log archive after loading the backup, to this target."""


class RestoreOutcome(BaseModel):
    """What a restore task did: the backup loaded, and the GTIDs replayed after it (with a target)."""

    manifest: BackupManifest
    replayed: str | None = None


def _manifest(task: RestoreTask, store: Any) -> BackupManifest:
    """The backup named, or the newest complete one; with a time target, one finished by then (its snapshot holds
    no transaction of the target's second or later)."""
    target = task.target.time if task.target is not None else None
    before = task.target.stop_time() if task.target is not None else None
    if task.backup == "latest":
        usable = [m for m in usable_backups(store) if before is None or m.finished <= before]
        if not usable:
            by = f" finished by {target}" if target is not None else ""
            raise NotRestorable(f"no complete backup{by} in {store.describe()}")
        return usable[-1]
    if manifest_key(task.backup) not in store.list(f"{task.backup}/"):
        raise NotRestorable(f"no complete backup {task.backup} in {store.describe()}")
    manifest = read_manifest(store, task.backup)
    if before is not None and manifest.finished > before:
        raise NotRestorable(f"{task.backup} finished after the target {target}: restore an older backup")
    return manifest


def make_empty(member: Member, manifest: BackupManifest, archived: GtidSet | None = None) -> None:
    """Leave ``member`` empty for the load: as it is when it holds nothing; emptied when it holds only part of this
    backup (its schemas among the backup's, its GTIDs among the backup's or, when replaying, the ``archived``
    ones: a replay cut short); NotRestorable otherwise."""
    dialect = member.dialect
    with open_session(member) as session:
        schemas = data_schemas(session)  # not the empty ones: MariaDB lists its data dir's directories as schemas
        row = session.row(dialect.executed())
        executed = dialect.parse_gtid(str(row[0]) if row and row[0] else "")
        foreign = [name for name in schemas if name not in manifest.databases]
        ours = dialect.parse_gtid(manifest.gtid).contains(executed) or (
            archived is not None and archived.contains(executed)
        )
        if foreign or not ours:
            held = ", ".join(foreign) or f"GTIDs {executed} the backup lacks"
            raise NotRestorable(f"{member.name} is not empty ({held}): empty it or give the replication a new member")
        if not schemas and executed.count == 0:
            return
        log.info("%s holds part of %s: emptying it before loading it again", member.name, manifest.name)
        for name in schemas:
            session.execute(SQL(f"DROP DATABASE `{name}`"))
        for statement in dialect.forget_gtids():
            session.execute(statement)


def run(task: RestoreTask) -> RestoreOutcome:
    """Load the backup into the member (emptied first when a load was cut short) and, with a target, replay the
    archive to it (planned before the member is touched: NotRestorable when the archive cannot reach it)."""
    with task.store.opened() as store:
        manifest = _manifest(task, store)
        member = task.member.member()
        dialect = member.dialect
        if dialect.flavor != manifest.flavor:
            flavors = f"a {manifest.flavor} backup; the replication is {dialect.flavor}"
            raise NotRestorable(f"{manifest.name} is {flavors}")
        if task.target is None or task.target.describe() is None:
            with admin_writes(member):
                make_empty(member, manifest)
                restore_backup(store, manifest, member)
            return RestoreOutcome(manifest=manifest)
        segments = index(store)
        try:
            planned = plan(dialect.flavor, manifest.gtid, segments, task.target)
        except Unreachable as exc:
            raise NotRestorable(f"{manifest.name} to {task.target.describe()}: {exc}") from exc
        archived = dialect.parse_gtid(max(segments, key=lambda s: s.sequence).covered)
        with admin_writes(member):
            make_empty(member, manifest, archived)
            restore_backup(store, manifest, member)
            replay(store, member, planned)
        with open_session(member) as session:
            replayed = session.executed().difference(planned.backup)
        return RestoreOutcome(manifest=manifest, replayed=str(replayed))


@contextlib.contextmanager
def admin_writes(member: Member) -> Iterator[None]:
    """The member open to the administrative account alone while it is emptied and loaded (a fenced MySQL member's
    super_read_only stops that account too), and fenced again afterwards, loaded or not."""
    with open_session(member) as session:
        for statement in member.dialect.admin_writes():
            session.execute(statement)
    try:
        yield
    finally:
        try:
            with open_session(member) as session:
                for statement in member.dialect.set_read_only(True):
                    session.execute(statement)
        except pymysql.MySQLError as exc:  # the load's own error, if any, says more
            log.warning("%s: could not fence it again after the load: %s", member.name, exc)


def main() -> int:
    """Run the RestoreTask on standard input (`process.read_task`), print its RestoreOutcome; exit NOT_RESTORABLE
    when trying again would not help, 1 when it might."""
    task = read_task(RestoreTask)
    if task is None:
        return INVALID_TASK
    try:
        outcome = run(task)
    except NotRestorable as exc:
        print(exc, file=sys.stderr)
        return NOT_RESTORABLE
    except (RestoreError, ReplayError, StorageError, OSError, pymysql.MySQLError) as exc:
        print(" ".join(str(exc).split()) or type(exc).__name__, file=sys.stderr)
        return 1
    print(outcome.model_dump_json())
    return 0


PatchStatus = Callable[[Obj, Obj], Awaitable[Obj | None]]
PostEvent = Callable[..., Awaitable[None]]


async def recover(
    kube: KubeClient,
    obj: Obj,
    spec: MySQLReplicationSpec,
    *,
    admin: Credentials,
    patch_status: PatchStatus,
    event: PostEvent,
) -> str | None:
    """One step of the recovery: load the backup into the next member that lacks it (spec.primary first, which
    also replays the archive to the target), recording each step in status.recovery; None once every member holds
    it, else what the replication waits for."""
    recovery = spec.bootstrap.recovery if spec.bootstrap is not None else None
    assert recovery is not None
    namespace = obj["metadata"]["namespace"]
    current = (obj.get("status") or {}).get("recovery")
    target = recovery.target.describe() if recovery.target is not None else None
    state = RecoveryStatus.model_validate(current) if current else RecoveryStatus(phase="Restoring", target=target)
    if state.phase == "Completed":
        return None
    if state.phase == "Failed":
        return f"the restore of {state.backup or recovery.backup} failed: {state.message}"
    storage = recovery.storage or (spec.backup.storage if spec.backup is not None else None)
    try:
        if storage is None:
            raise Misconfigured("bootstrap.recovery needs its storage, or spec.backup.storage")
        access = await store_access(kube, namespace, storage)
        ca = await members_ca(kube, namespace, spec)
    except Misconfigured as exc:
        await _record(kube, obj, state.model_copy(update={"phase": "Failed", "message": str(exc)}), patch_status)
        await event(obj, "RestoreFailed", str(exc), warning=True)
        return f"the restore failed: {exc}"
    first = sorted(spec.members, key=lambda m: m.name != spec.primary)
    for member in [m for m in first if m.name not in state.restored]:
        replays = member.name == spec.primary and target is not None
        task = RestoreTask(
            store=access,
            backup=state.backup or recovery.backup,
            member=TaskMember.of(member, spec, admin, ca),
            target=recovery.target if replays else None,
        )
        try:
            outcome = RestoreOutcome.model_validate_json(await run_task("restore-task", task))
        except TaskFailed as exc:
            failed = exc.code == NOT_RESTORABLE
            message = f"{member.name}: {exc}"
            state = state.model_copy(update={"phase": "Failed" if failed else "Restoring", "message": message})
            await _record(kube, obj, state, patch_status)
            await event(obj, "RestoreFailed" if failed else "RestoreRetrying", message, warning=True)
            return f"restoring {task.backup}: {message}" + ("" if failed else "; trying again")
        manifest = outcome.manifest
        replayed = f", replayed to {target}: {outcome.replayed or 'nothing'}" if replays else ""
        state = state.model_copy(
            update={
                "backup": manifest.name,
                "gtid": manifest.gtid,
                "restored": [*state.restored, member.name],
                "message": f"{member.name} holds {manifest.name}{replayed}",
                **({"replayed_gtids": outcome.replayed or ""} if replays else {}),
            }
        )
        written = await _record(kube, obj, state, patch_status)
        if written is None:
            return "restoring: the replication changed meanwhile"
        obj = written
        await event(
            obj, "Restored", f"{member.name} holds backup {manifest.name} (GTIDs {manifest.gtid or 'none'}){replayed}"
        )
    done = state.model_copy(
        update={"phase": "Completed", "completed_at": datetime.now(UTC), "message": "every member holds the backup"}
    )
    await _record(kube, obj, done, patch_status)
    return None


async def _record(kube: KubeClient, obj: Obj, state: RecoveryStatus, patch_status: PatchStatus) -> Obj | None:
    """status.recovery written; on a conflict (the object changed while a member was loaded: a label, an
    annotation), again on the object read afresh, as this loop alone writes status.recovery: a member's load is
    never thrown away for it."""
    for _ in range(RECORD_TRIES):
        written = await patch_status(obj, {"recovery": state.to_k8s()})
        if written is not None:
            return written
        obj = await kube.get(MYSQLREPLICATIONS, obj["metadata"]["namespace"], obj["metadata"]["name"])
    return None
