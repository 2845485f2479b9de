"""Point-in-time recovery on real servers: a backup and the continuous binary log archive (a real archiver, to a
directory store), replayed into empty servers with the flavour's binlog tool and client.

The correctness checker: writers record every acknowledged insert with the time it was sent and acknowledged; a
"mistake" (a mass DELETE) is committed after a target ``T``, a whole second. Restored to ``T``, the member holds
every insert acknowledged before ``T``, none sent at or after ``T`` (binary log timestamps are whole seconds of a
transaction's start: one sent before ``T`` and acknowledged after it may be either way), and nothing that was not
acknowledged. The checker is shown to catch a replay skipped (a member holding the backup only) and a replay run
past the target (a member restored to the end of the archive, mistake included). Restored to the end of the
archive, a member holds exactly the source's rows; a member holding the backup only replicates from the restored
one to the same rows (the replayed transactions are in its binary log with their original GTIDs). Restored to a
GTID, a member holds exactly the transactions up to it. A target the archive cannot reach fails the restore task
before the member is touched.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.backups.test_backups import ids, member, replicate_from
from tests.backups.test_binlog_archive import TABLE, archive_holds, archiving, segments, writers_on
from tests.faults.report import Recorder
from tests.fixtures.mariadb import StartFlavourServers
from tests.kube_helpers import wait_for
from tests.unit.test_replay import segment
from whm_ha.backup.archive import data_key, lines_of
from whm_ha.backup.dump import Member, open_session, take_backup
from whm_ha.backup.manifest import BackupManifest
from whm_ha.backup.recovery import NotRestorable, RestoreTask, run
from whm_ha.backup.replay import Plan, StreamPlan, plan, replay
from whm_ha.backup.restore import restore_backup
from whm_ha.backup.storage import FilesystemStore, Store
from whm_ha.backup.task import StoreAccess, TaskMember
from whm_ha.crd.backup import BackupStorageSpec, FilesystemStorageSpec, RecoveryTarget
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalMariaDB, LocalServer
from whm_ha.demo.checkers import Acks, Direct, Writers, create_table
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL

pytestmark = pytest.mark.mariadb


@dataclass(frozen=True)
class PointInTime:
    """What the checker found of a member restored to ``target`` (Unix seconds, a whole second)."""

    before: int
    """Inserts acknowledged before the target."""
    after: int
    """Inserts sent at or after the target."""
    restored: int
    missing: list[int]
    """Acknowledged before the target, absent."""
    extra: list[int]
    """Sent at or after the target, present."""
    unknown: list[int]
    """Present, never acknowledged."""

    @property
    def problems(self) -> list[str]:
        found = [("missing", self.missing), ("past the target", self.extra), ("never acknowledged", self.unknown)]
        return [f"{len(rows)} rows {what} (e.g. {sorted(rows)[:5]})" for what, rows in found if rows]


def check_point_in_time(acks: Acks, target: float, restored: set[int]) -> PointInTime:
    everything = acks.all()
    before = {a.id for a in everything if a.acked < target}
    after = {a.id for a in everything if a.sent >= target}
    return PointInTime(
        before=len(before),
        after=len(after),
        restored=len(restored),
        missing=sorted(before - restored),
        extra=sorted(after & restored),
        unknown=sorted(restored - {a.id for a in everything}),
    )


def restore_to(store: Store, manifest: BackupManifest, m: Member, target: RecoveryTarget) -> None:
    """What a restore task does with a target: plan (nothing touched when unreachable), load, replay."""
    planned = plan(m.dialect.flavor, manifest.gtid, segments(store), target)
    restore_backup(store, manifest, m)
    replay(store, m, planned)


@contextmanager
def backup_and_writes(
    store: Store, source: Member, server: LocalServer, tmp_path: Path
) -> Iterator[tuple[BackupManifest, Writers]]:
    """The archiver on ``source``, writers, and a backup taken while they write; on exit, once the writers stopped
    without an error, the archive holds every write."""
    create_table(Direct(server.host, server.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    with archiving(store, [source], tmp_path / "spool"):
        writers = writers_on(server, first=1, count=4)
        try:
            yield take_backup(store, "base", source), writers
        finally:
            writers.stop()
        assert not writers.errors
        wait_for(lambda: archive_holds(store, source), 30, "the archive to hold every write")


def source_and_empty(
    database_servers: StartFlavourServers, tmp_path: Path
) -> tuple[LocalServer, Member, Member, FilesystemStore]:
    """A source server and its member, an empty member, and a directory store."""
    s0, s1 = database_servers(2)
    return s0, member("m0", s0), member("m1", s1), FilesystemStore(tmp_path / "store")


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_restore_to_a_time_before_a_mistake_holds_every_write_acknowledged_before_it_and_none_after(
    database_servers: StartFlavourServers, tmp_path: Path, resilience: Recorder
) -> None:
    s0, s1, s2, s3 = database_servers(4)
    row = resilience.scenario(f"point-in-time restore before a mass DELETE ({s0.flavour.name})", "backups")
    source, pitr, follower, whole = (member(n, s) for n, s in (("m0", s0), ("m1", s1), ("m2", s2), ("m3", s3)))
    store = FilesystemStore(tmp_path / "store")
    with backup_and_writes(store, source, s0, tmp_path) as (manifest, writers):
        # The target: a whole second with writes acknowledged on both sides of it, the mistake after it.
        target = math.ceil(time.time()) + 2
        wait_for(lambda: time.time() >= target + 1, 10, "writes on both sides of the target")
        with open_session(source) as s:
            s.execute(SQL(f"DELETE FROM {TABLE}"))
        mistake = time.time()
        wait_for(writers.acks.progressed(), 10, "writes after the mistake")
    assert manifest.finished.timestamp() < target < mistake

    restore_to(store, manifest, pitr, RecoveryTarget(time=utc(target)))
    found = check_point_in_time(writers.acks, target, ids(pitr))
    print(f"\n{s0.flavour.name}: target {utc(target)}: {found}")
    row.acked, row.lost = len(writers.acks.all()), len(found.missing)
    row.outcome = (
        f"restored to a second before the mistake: {found.before} writes acknowledged before it present,"
        f" {len(found.extra)} of {found.after} sent after it"
    )
    assert found.problems == []
    assert found.before > 0 and found.after > 0, "writes acknowledged on both sides of the target"

    # The checker catches a replay skipped: the backup alone lacks what was acknowledged after it.
    restore_backup(store, manifest, follower)
    assert check_point_in_time(writers.acks, target, ids(follower)).missing
    # The replayed transactions are in the restored member's binary log: a replica of it from the backup's
    # position gets them.
    replicate_from(follower, pitr, s1)
    with open_session(pitr) as p, open_session(follower) as f:
        assert actions.wait_applied(f, p.executed(), 30), f.replica_status()
    assert ids(follower) == ids(pitr)

    # The end of the archive: the source's rows exactly (the mistake too); the checker catches a replay run past
    # the target.
    restore_to(store, manifest, whole, RecoveryTarget(end_of_archive=True))
    assert ids(whole) == ids(source)
    after_mistake = {a.id for a in writers.acks.all() if a.sent > mistake}
    assert after_mistake and after_mistake <= ids(whole)
    past = check_point_in_time(writers.acks, target, ids(whole))
    assert past.missing and past.extra


def test_restore_to_a_gtid_holds_exactly_the_transactions_up_to_it(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    s0, source, restored, store = source_and_empty(database_servers, tmp_path)
    with backup_and_writes(store, source, s0, tmp_path) as (manifest, writers):
        wait_for(writers.acks.progressed(), 10, "writes after the backup")
        with open_session(source) as s:
            at = s.executed()
        wait_for(writers.acks.progressed(), 10, "writes after the target")
    dialect = source.dialect
    backup = dialect.parse_gtid(manifest.gtid)
    ((line, seq),) = lines_of(at.difference(backup)).items()
    target = f"{line}:{seq}" if dialect.flavor == "mysql" else at.position()  # type: ignore[attr-defined]
    restore_to(store, manifest, restored, RecoveryTarget(gtid=target))
    with open_session(restored) as r:
        held = r.executed()
    assert lines_of(held) == lines_of(at), f"restored to {target}: {held}, the source had {at}"
    acked = {a.id for a in writers.acks.all()}
    assert ids(restored) < ids(source) and ids(restored) <= acked


def test_a_target_the_archive_cannot_reach_fails_the_restore_task_before_the_member_is_touched(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    s0, source, empty, store = source_and_empty(database_servers, tmp_path)
    with backup_and_writes(store, source, s0, tmp_path) as (manifest, writers):
        wait_for(writers.acks.progressed(), 10, "writes after the backup")
    flavor = source.dialect.flavor
    beyond = "0-1-999999999" if flavor == "mariadb" else f"{segments(store)[-1].server_uuid}:999999999"
    task = RestoreTask(
        store=StoreAccess(storage=BackupStorageSpec(filesystem=FilesystemStorageSpec(path=str(tmp_path / "store")))),
        backup="latest",
        member=TaskMember(
            name="m1", host=empty.host, port=empty.port, username=ADMIN_USER, password=ADMIN_PASSWORD, flavor=flavor
        ),
    )
    for target, message in [
        (RecoveryTarget(time=utc(time.time() + 3600)), f"^{manifest.name} to time .*: the archive ends at"),
        (RecoveryTarget(gtid=beyond), f"the archive does not hold {beyond}"),
        # "latest" for a time is the newest backup finished by then: none here.
        (RecoveryTarget(time=utc(manifest.started.timestamp() - 1)), "^no complete backup finished by"),
    ]:
        with pytest.raises(NotRestorable, match=message):
            run(task.model_copy(update={"target": target}))
    with open_session(empty) as e:
        assert e.executed().count == 0, "nothing was loaded"


def test_the_end_of_the_archive_leaves_out_what_a_failover_superseded(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    """The old primary's last transactions, archived but never received by the replica promoted in its place
    (superseded), are not replayed: the restore holds the new primary's rows."""
    s0, s1, s2 = database_servers(3)
    m0, m1, empty = member("m0", s0), member("m1", s1), member("m2", s2)
    create_table(Direct(s0.host, s0.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    store = FilesystemStore(tmp_path / "store")
    replicate_from(m1, m0, s0)
    with open_session(m0) as p:
        p.execute(SQL(f"INSERT INTO {TABLE} VALUES (1), (2)"))
    manifest = take_backup(store, "base", m0)
    primary = [m0]
    with archiving(store, primary, tmp_path / "spool"):
        with open_session(m0) as p, open_session(m1) as r:
            p.execute(SQL(f"INSERT INTO {TABLE} VALUES (3)"))
            assert actions.wait_applied(r, p.executed(), 30)
            r.execute(m1.dialect.stop_replica("io"))
            for row in range(4, 8):
                p.execute(SQL(f"INSERT INTO {TABLE} VALUES (%s)", (row,)))
        wait_for(lambda: archive_holds(store, m0), 30, "the old primary's last transactions archived")
        with open_session(m1) as r:
            actions.promote(r)
            primary[0] = m1
            r.execute(SQL(f"INSERT INTO {TABLE} VALUES (100), (101)"))
        wait_for(lambda: segments(store)[-1].member == "m1" and archive_holds(store, m1), 30, "m1's writes archived")
    assert any(s.superseded for s in segments(store))
    restore_to(store, manifest, empty, RecoveryTarget(end_of_archive=True))
    assert ids(empty) == ids(m1) == {1, 2, 3, 100, 101}


class ClosedBeforeSecond(FilesystemStore):
    """A store whose second segment is read only once the tool has closed its input (the tool touches
    ``closed`` then): the first segment's bytes are still in the writer's buffer when the pipe breaks."""

    def __init__(self, folder: Path, closed: Path, second: str) -> None:
        super().__init__(folder)
        self.closed, self.second = closed, second

    def get(self, key: str) -> bytes:
        if key == self.second:
            wait_for(self.closed.exists, 10, "the tool to close its input")
        return super().get(key)


def test_a_binlog_tool_that_stops_reading_early_leaves_the_outcome_to_the_exit_statuses(
    mariadb: LocalMariaDB, tmp_path: Path
) -> None:
    """A binlog tool may stop reading its input before the end (MySQL's, past the target time): the bytes left
    unwritten are no error, the tool's and the client's exit statuses decide (a replay once failed on the pipe)."""
    closed = tmp_path / "closed"
    store = ClosedBeforeSecond(tmp_path / "store", closed, data_key(1))
    entries = []
    for n, data in enumerate((os.urandom(100), os.urandom(1 << 20))):
        offset = sum(e.size for e in entries)
        entry = segment(n, f"0-1-{n + 1}", f"0-1-{n + 1}", offset=offset).model_copy(
            update={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        store.put(entry.data, data)
        entries.append(entry)
    target = member("m0", mariadb)
    binlog_program = target.dialect.binlog_program
    tool = f"exec 0<&-; touch {closed}; sleep 0.2"  # its input closed, it exits 0 a moment later

    def programs(name: str) -> list[str]:
        return ["sh", "-c", tool] if name == binlog_program else [name]

    stream = StreamPlan(entries[0].stream, tuple(entries), target.dialect.parse_gtid(""), ())
    replay(store, replace(target, programs=programs), Plan((stream,), target.dialect.parse_gtid(""), None))
