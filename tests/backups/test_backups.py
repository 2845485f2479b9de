"""Logical backups on real servers, stored in a real SeaweedFS (S3 on loopback) or a directory.

* A backup taken while writers write restores into an empty server to exactly its recorded GTID position: the
  restored member, replicating from the source from there, applies every later transaction without a duplicate
  key (nothing after the position was in the dump) and ends with every row of the source (nothing before it was
  missing). Writes are acknowledged while the backup is in progress (the upload waits for one).
* A backup whose store dies mid-upload is never listed as usable, and nothing of it is visible in the bucket.
* The directory store: the same round trip, and a dump that fails leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.mariadb import StartFlavourServers, StartServers
from tests.fixtures.object_store import ObjectStore
from tests.kube_helpers import wait_for
from whm_ha.backup.dump import BackupError, Member, open_session, take_backup
from whm_ha.backup.manifest import BackupManifest, usable_backups
from whm_ha.backup.recovery import NotRestorable, make_empty
from whm_ha.backup.restore import restore_backup
from whm_ha.backup.storage import FilesystemStore, StorageError
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalServer
from whm_ha.demo.checkers import Direct, Writers, create_table
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL, Source, dialect_for
from whm_ha.mysql.member import Credentials

pytestmark = pytest.mark.mariadb

TABLE = "app.writes"
REPL_USER = "repl"
REPL_PASSWORD = "repl-secret"
BACKUP_PASSWORD = " b'ck\"up #\\s x"
"""What an option file must quote and escape: a leading space, a comment sign, an escape sequence, quotes."""


def member(name: str, server: LocalServer) -> Member:
    flavour = server.flavour
    return Member(
        name,
        server.host,
        server.port,
        Credentials(ADMIN_USER, ADMIN_PASSWORD),
        dialect_for(flavour.product),
        programs=flavour.client_command,
    )


def ids(m: Member, table: str = TABLE) -> set[int]:
    with open_session(m) as s:
        return {int(row[0]) for row in s.rows(SQL(f"SELECT id FROM {table}"))}


def fill(m: Member, rows: int, row_bytes: int, table: str = "app.bulk") -> None:
    """``rows`` rows of random (incompressible) bytes, so that a dump takes a while and compresses little."""
    with open_session(m) as s:
        s.execute(SQL("CREATE DATABASE IF NOT EXISTS app"))
        s.execute(SQL(f"CREATE TABLE IF NOT EXISTS {table} (id INT PRIMARY KEY, payload LONGBLOB)"))
        batch = max(1, (4 << 20) // row_bytes)
        for first in range(0, rows, batch):
            values = [(i, os.urandom(row_bytes)) for i in range(first, min(rows, first + batch))]
            with s.conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", values)


def replicate_from(replica: Member, source: Member, source_server: LocalServer) -> None:
    with open_session(source) as s:
        actions.ensure_replication_user(s, REPL_USER, REPL_PASSWORD)
    with open_session(replica) as r:
        actions.ensure_replica(r, Source(source_server.host, source_server.port, REPL_USER, REPL_PASSWORD))


def test_a_backup_taken_during_writes_restores_to_exactly_its_gtid_position(
    database_servers: StartFlavourServers, object_store: ObjectStore
) -> None:
    source_server, empty_server = database_servers(2)
    source, restored = member("m0", source_server), member("m1", empty_server)
    fill(source, rows=3000, row_bytes=2048)
    writes = Direct(source_server.host, source_server.port, ADMIN_USER, ADMIN_PASSWORD)
    create_table(writes, TABLE)
    writers = Writers(writes, table=TABLE, count=4).start(warm_up=50)
    store = object_store.store(prefix="prod/")
    try:
        with open_session(source) as s:
            before = s.executed()
            # Conditions, not timing: a loaded machine may give the writers no turn in a short window.
            wait_for(lambda: not before.contains(s.executed()), 10, "a write after the position read before")
        waited: list[bool] = []

        def a_write_meanwhile(_: int) -> None:
            """The upload waits (after its first part) until a write was acknowledged: inside the backup's window."""
            if not waited:
                waited.append(True)
                wait_for(writers.acks.progressed(), 10, "a write acknowledged while the backup runs")

        manifest = take_backup(store, "during-writes", source, progress=a_write_meanwhile)
        during = writers.acks.between(manifest.started.timestamp(), manifest.finished.timestamp())
        wait_for(writers.acks.progressed(), 10, "writes after the backup")
    finally:
        writers.stop()
    assert not writers.errors
    with open_session(source) as s:
        after = s.executed()
    position = source.dialect.parse_gtid(manifest.gtid)
    assert position.contains(before) and not before.contains(position), "the snapshot is taken after `before`"
    assert after.contains(position) and not position.contains(after), "writes went on after the snapshot"
    assert during, "writers were acknowledged while the backup was in progress"
    assert usable_backups(store) == [manifest]
    assert manifest.flavor == source.dialect.flavor and manifest.member == "m0"
    assert manifest.databases == ["app"]
    assert manifest.size == sum(len(chunk) for chunk in store.read(manifest.data))

    restore_backup(store, manifest, restored)
    restored_ids = ids(restored)
    assert restored_ids < ids(source), "the backup is older than the source's end"
    replicate_from(restored, source, source_server)

    def caught_up() -> bool:
        with open_session(restored) as r:
            status = r.replica_status()
            assert status is not None
            assert status.last_sql_errno == 0, f"replication from the backup's position broke: {status.last_sql_error}"
            return r.executed().contains(after)

    wait_for(caught_up, 60, "the restored member to replicate up to the source's end")
    assert ids(restored) == ids(source) == writers.acks.ids() | restored_ids
    assert writers.acks.ids() <= ids(restored), "every acknowledged write, none missing"


def test_a_backup_whose_store_dies_mid_upload_is_never_listed(
    mariadb_servers: StartServers, object_store: ObjectStore
) -> None:
    (server,) = mariadb_servers(1)
    source = member("m0", server)
    fill(source, rows=8000, row_bytes=2048)
    part = 5 * 1024 * 1024
    store = object_store.store(part_size=part)
    parts: list[int] = []

    def kill_after_the_first_part(stored: int) -> None:
        parts.append(stored)
        if len(parts) == 1:
            object_store.kill()

    with pytest.raises(StorageError):
        take_backup(store, "interrupted", source, progress=kill_after_the_first_part)
    # Parts go several at once: the first stored may be the last, short one.
    assert 0 < parts[0] <= part, "a part was stored before the store died"
    object_store.start()
    assert usable_backups(store) == []
    assert store.list() == [], "no data object either: the multipart upload never completed"

    manifest = take_backup(store, "after", source, progress=lambda _: None)
    assert [b.name for b in usable_backups(store)] == ["after"]
    assert manifest.size > part


def test_parts_sent_at_once_make_the_object_in_order_and_a_failure_among_them_leaves_nothing(
    object_store: ObjectStore,
) -> None:
    part = 5 * 1024 * 1024
    store = object_store.store(part_size=part)
    assert store.parts_in_flight > 1
    data = os.urandom(7 * part + 123)
    reported: list[int] = []
    chunks = [data[i : i + 777_777] for i in range(0, len(data), 777_777)]
    assert store.upload("b/data", chunks, reported.append) == len(data)
    assert store.get("b/data") == data, "eight parts, sent several at once, in their order"
    assert reported == sorted(reported) and reported[-1] == len(data)

    def failing() -> Iterator[bytes]:
        yield from chunks[:40]
        raise RuntimeError("the dump failed")

    with pytest.raises(RuntimeError, match="the dump failed"):
        store.upload("c/data", failing())
    assert store.list() == ["b/data"], "parts were in flight; none of them made an object"


def test_filesystem_store_round_trip_and_a_failed_dump_leaves_nothing(
    mariadb_servers: StartServers, tmp_path: Path
) -> None:
    source_server, empty_server = mariadb_servers(2)
    source, restored = member("m0", source_server), member("m1", empty_server)
    fill(source, rows=200, row_bytes=512)
    # An account of its own whose password has what an option file must escape: the tools get it from one.
    with open_session(source) as s:
        s.execute(s.dialect.create_user("backup", "%", BACKUP_PASSWORD))
        s.execute(
            SQL("GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, RELOAD, REPLICATION CLIENT ON *.* TO %s@%s", ("backup", "%"))
        )
    source = replace(source, credentials=Credentials("backup", BACKUP_PASSWORD))
    store = FilesystemStore(tmp_path / "backups")

    with pytest.raises(BackupError, match="mariadb-dump failed"):
        take_backup(store, "broken", source, databases=["no_such_schema"])
    assert usable_backups(store) == []
    assert not [p for p in (tmp_path / "backups").rglob("*") if p.is_file()], "no partial file left"

    manifest = take_backup(store, "fs", source)
    assert sorted(store.list()) == ["fs/dump.sql.zst", "fs/manifest.json"]
    assert usable_backups(FilesystemStore(tmp_path / "backups")) == [manifest]
    assert isinstance(manifest, BackupManifest)
    restore_backup(store, manifest, restored)
    assert ids(restored, "app.bulk") == set(range(200))
    with open_session(restored) as r:
        assert r.row(SQL("SELECT @@GLOBAL.gtid_slave_pos")) == (manifest.gtid,), "seeded at the backup's position"
    assert time.time() >= manifest.finished.timestamp() >= manifest.started.timestamp()


def test_a_load_cut_short_is_emptied_and_loaded_again_and_a_member_with_data_of_its_own_is_refused(
    database_servers: StartFlavourServers, tmp_path: Path
) -> None:
    source_server, target_server, other_server = database_servers(3)
    source, target, other = member("m0", source_server), member("m1", target_server), member("m2", other_server)
    fill(source, rows=20, row_bytes=64)
    store = FilesystemStore(tmp_path / "store")
    manifest = take_backup(store, "base", source)

    restore_backup(store, manifest, target)
    make_empty(target, manifest)  # what a restarted operator finds after a load cut short: only the backup's
    with open_session(target) as t:
        assert t.executed().count == 0 and not t.rows(SQL("SHOW DATABASES LIKE 'app'"))
    make_empty(target, manifest)  # empty: nothing to do
    restore_backup(store, manifest, target)
    assert ids(target, "app.bulk") == ids(source, "app.bulk")
    with open_session(target) as t:
        assert t.executed() == source.dialect.parse_gtid(manifest.gtid)

    with open_session(other) as o:
        o.execute(SQL("CREATE DATABASE app"))  # binlogged: a transaction of its own, in a schema of the backup's
    with pytest.raises(NotRestorable, match="m2 is not empty"):
        make_empty(other, manifest)
    with open_session(other) as o:
        assert o.rows(SQL("SHOW DATABASES LIKE 'app'")), "a refused member is left as it was"
