"""The continuous binary log archive on real servers, to a real SeaweedFS (S3 on loopback).

* Under concurrent writers, the archive stays within ~2 s of the primary, its index is one unbroken chain (no
  missing segment, no hole or repeat in any GTID line), it covers every acknowledged write, and its segments,
  concatenated per stream and replayed by the flavour's binlog tool into an empty server, give exactly the
  primary's rows.
* Across a switchover and a failover (a replica promoted with `actions`, the archiver told the new primary): the
  same, with no gap.
* The archiver process killed with SIGKILL and started again, and the store killed mid-archive and started again:
  the archiver resumes where the store says it stopped, with no gap and no duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.backups.test_backups import REPL_PASSWORD, REPL_USER, ids, member
from tests.faults.report import Recorder
from tests.fixtures.mariadb import StartFlavourServers
from tests.fixtures.object_store import ObjectStore
from tests.kube_helpers import wait_for
from whm_ha.backup.archive import INDEX, Segment, check_chain, holds, lines_of
from whm_ha.backup.binlog_stream import ArchiveReport, ArchiverSettings, BinlogArchiver
from whm_ha.backup.dump import Member, client_command, open_session
from whm_ha.backup.replay import index
from whm_ha.backup.storage import Store
from whm_ha.db.local_server import ADMIN_PASSWORD, ADMIN_USER, LocalServer
from whm_ha.demo.checkers import Direct, Writers, create_table
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import SQL, Source
from whm_ha.mysql.gtid import GtidSet

pytestmark = pytest.mark.mariadb

TABLE = "app.writes"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Lags:
    """The lag the archiver reported, with when."""

    values: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, report: ArchiveReport) -> None:
        self.values.append((time.monotonic(), report.lag_seconds))

    def worst(self, since: float, until: float) -> float:
        return max((lag for at, lag in self.values if since <= at <= until), default=0.0)


@contextmanager
def archiving(store: Store, primary: list[Member], spool: Path, lags: Lags | None = None) -> Iterator[BinlogArchiver]:
    """An archiver in a thread of this process, archiving whatever ``primary[0]`` is; stopped on exit."""
    archiver = BinlogArchiver(store, lambda: primary[0], ArchiverSettings(spool=spool, poll=0.05), lags)
    stop = threading.Event()
    thread = threading.Thread(target=archiver.serve, args=(stop,), name="archiver", daemon=True)
    thread.start()
    try:
        yield archiver
    finally:
        stop.set()
        thread.join(30)


def writers_on(server: LocalServer, first: int, count: int = 8) -> Writers:
    source = Direct(server.host, server.port, ADMIN_USER, ADMIN_PASSWORD)
    return Writers(source, table=TABLE, count=count, first=first, pause=0).start(warm_up=20)


segments = index
"""The archive's index entries."""


def archive_holds(store: Store, m: Member, executed: GtidSet | None = None) -> bool:
    """The newest segment covers ``executed`` (default: what the member has executed now)."""
    entries = store.list(INDEX)
    if not entries:
        return False
    newest = Segment.model_validate_json(store.get(entries[-1]))
    if executed is None:
        with open_session(m) as s:
            executed = s.executed()
    return holds(lines_of(m.dialect.parse_gtid(newest.covered)), lines_of(executed))


def replay(store: Store, target: Member, folder: Path) -> list[Segment]:
    """Check the chain, concatenate each stream's segments into a file, replay them all in order into
    ``target`` with the flavour's binlog tool; the segments."""
    chain = segments(store)
    assert chain, "segments were archived"
    assert check_chain(target.dialect.flavor, chain) == [], "the archive's chain has no gap"
    files: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for segment in chain:
        path = files.setdefault(segment.stream, folder / f"{len(files):04d}-{segment.file}")
        data = store.get(segment.data)
        assert len(data) == segment.size and hashlib.sha256(data).hexdigest() == segment.sha256, "whole segments"
        with path.open("ab") as out:
            assert out.tell() == segment.offset
            out.write(data)
    dialect = target.dialect
    with client_command(target, dialect.client_program) as client:
        tool = subprocess.Popen(
            [*target.programs(dialect.binlog_program), *map(str, files.values())], stdout=subprocess.PIPE
        )
        loaded = subprocess.run([*client, "--binary-mode"], stdin=tool.stdout, capture_output=True, check=False)
        assert tool.stdout is not None
        tool.stdout.close()
        assert tool.wait() == 0
    assert loaded.returncode == 0, loaded.stderr.decode(errors="replace")
    return chain


def test_archive_under_writers_covers_every_acknowledged_write_and_replays_to_the_primary(
    database_servers: StartFlavourServers, object_store: ObjectStore, tmp_path: Path
) -> None:
    primary_server, empty_server = database_servers(2)
    primary, empty = member("m0", primary_server), member("m1", empty_server)
    create_table(Direct(primary_server.host, primary_server.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    store = object_store.store(prefix="prod/")
    lags = Lags()
    with archiving(store, [primary], tmp_path / "spool", lags):
        wait_for(lambda: archive_holds(store, primary), 30, "the archive to catch up with the primary")
        writers = writers_on(primary_server, first=1)
        started = time.monotonic()
        try:
            wait_for(lambda: time.monotonic() - started > 4, 20, "four seconds of writes")
            # A new binary log file mid-run: the file before ends its stream, the next one begins another.
            with open_session(primary) as s:
                s.execute(SQL("FLUSH BINARY LOGS"))
            wait_for(lambda: time.monotonic() - started > 8, 20, "eight seconds of writes")
        finally:
            writers.stop()
        ended = time.monotonic()
        rate = len(writers.acks) / (ended - started)
        wait_for(lambda: archive_holds(store, primary), 30, "the archive to hold every write")
    assert not writers.errors
    worst = lags.worst(started + 1, ended)
    print(f"\n{primary_server.flavour.name}: {rate:.0f} writes/s, worst archive lag {worst:.2f} s")
    assert worst <= 2.5, f"the archive lagged {worst:.2f} s at {rate:.0f} writes/s"
    chain = replay(store, empty, tmp_path / "replay")
    assert len(chain) >= 8, "segments every second or so while writes flow"
    assert len({s.run for s in chain}) == 1 and len({s.file for s in chain}) == 2, "one run, two files"
    assert ids(empty) == ids(primary)
    assert writers.acks.ids() <= ids(empty), "every acknowledged write is in the archive"


def test_archive_follows_a_switchover_and_a_failover_without_a_gap(
    database_servers: StartFlavourServers, object_store: ObjectStore, tmp_path: Path, resilience: Recorder
) -> None:
    s0, s1, empty_server = database_servers(3)
    row = resilience.scenario(f"binlog archive across a switchover and a failover ({s0.flavour.name})", "backups")
    m0, m1, empty = member("m0", s0), member("m1", s1), member("m2", empty_server)
    create_table(Direct(s0.host, s0.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    with open_session(m0) as p, open_session(m1) as r:
        actions.ensure_replication_user(p, REPL_USER, REPL_PASSWORD)
        actions.ensure_replica(r, Source(s0.host, s0.port, REPL_USER, REPL_PASSWORD))
    store = object_store.store()
    primary = [m0]
    acked: set[int] = set()
    with archiving(store, primary, tmp_path / "spool"):
        writers = writers_on(s0, first=1)
        wait_for(lambda: len(store.list(INDEX)) >= 3, 30, "segments from the first primary")
        # Switchover: m0 fenced, m1 caught up and promoted, m0 its replica.
        with open_session(m0) as old, open_session(m1) as new:
            fenced = actions.fence(old).gtid
            writers.stop()
            assert actions.wait_applied(new, fenced, 30)
            actions.promote(new)
            actions.ensure_replica(old, Source(s1.host, s1.port, REPL_USER, REPL_PASSWORD))
        acked |= writers.acks.ids()
        primary[0] = m1
        writers = writers_on(s1, first=10_000_001)
        wait_for(lambda: segments(store)[-1].member == "m1", 30, "segments from the new primary")
        wait_for(writers.acks.progressed(), 10, "writes on the new primary")
        # Failover: m1 killed once m0 has every acknowledged write (what semi-sync guarantees), m0 promoted.
        writers.stop()
        acked |= writers.acks.ids()
        with open_session(m1) as old, open_session(m0) as survivor:
            assert actions.wait_applied(survivor, old.executed(), 30), survivor.replica_status()
        s1.kill()
        with open_session(m0) as survivor:
            actions.promote(survivor)
        primary[0] = m0
        writers = writers_on(s0, first=20_000_001)
        wait_for(lambda: segments(store)[-1].member == "m0", 30, "segments after the failover")
        writers.stop()
        acked |= writers.acks.ids()
        wait_for(lambda: archive_holds(store, m0), 30, "the archive to hold every write")
    chain = replay(store, empty, tmp_path / "replay")
    assert [s.member for s in chain if s.member != chain[0].member][:1] == ["m1"], "both primaries archived"
    assert len({s.run for s in chain}) >= 3, "a run per primary"
    assert all(not s.superseded for s in chain)
    row.acked, row.lost = len(acked), len(acked - ids(empty))
    row.outcome = f"{len({s.run for s in chain})} runs, {len(chain)} segments, no gap; the replay equals the primary"
    assert ids(empty) == ids(m0)
    assert acked <= ids(empty), "every acknowledged write is in the archive"


def archiver_process(store: ObjectStore, m: Member, server: LocalServer, spool: Path) -> subprocess.Popen[bytes]:
    """The archiver in a process of its own (tests/backups/archiver_process.py), which the test can SIGKILL."""
    settings = {
        "endpoint": store.endpoint,
        "host": server.host,
        "port": server.port,
        "flavour": server.flavour.name,
        "spool": str(spool),
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "backups" / "archiver_process.py"), json.dumps(settings)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'operator'}"},
    )


def test_archive_resumes_without_gap_or_duplicate_after_kill_9_and_after_the_store_died(
    database_servers: StartFlavourServers, object_store: ObjectStore, tmp_path: Path
) -> None:
    primary_server, empty_server = database_servers(2)
    primary, empty = member("m0", primary_server), member("m1", empty_server)
    create_table(Direct(primary_server.host, primary_server.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    store = object_store.store()
    writers = writers_on(primary_server, first=1, count=4)
    process = archiver_process(object_store, primary, primary_server, tmp_path / "spool")
    try:
        for _ in range(2):
            count = len(store.list(INDEX))
            wait_for(lambda c=count: len(store.list(INDEX)) >= c + 3, 30, "segments archived")
            process.send_signal(signal.SIGKILL)
            process.wait()
            wait_for(writers.acks.progressed(), 10, "writes while no archiver runs")
            process = archiver_process(object_store, primary, primary_server, tmp_path / "spool")
        count = len(store.list(INDEX))
        wait_for(lambda: len(store.list(INDEX)) >= count + 2, 30, "segments after the restarts")
        object_store.kill()
        wait_for(writers.acks.progressed(), 10, "writes while the store is down")
        wait_for(lambda: process.poll() is None, 1, "the archiver to keep running")
        object_store.start()
        count = len(store.list(INDEX))
        wait_for(lambda: len(store.list(INDEX)) >= count + 2, 60, "segments after the store came back")
    finally:
        writers.stop()
    try:
        wait_for(lambda: archive_holds(store, primary), 60, "the archive to hold every write")
        spooled = list((tmp_path / "spool").iterdir())
        assert len(spooled) == 1 and spooled[0].is_dir(), "the killed processes' spool went, the live run's is left"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not writers.errors
    chain = replay(store, empty, tmp_path / "replay")
    assert len({s.run for s in chain}) >= 3, "three runs of the archiver"
    assert ids(empty) == ids(primary), "no duplicate (the replay would fail on one) and no missing row"
    assert writers.acks.ids() <= ids(empty)


def test_transactions_a_new_primary_lacks_are_superseded_and_archiving_goes_on_after_what_it_has(
    database_servers: StartFlavourServers, object_store: ObjectStore, tmp_path: Path
) -> None:
    """What an unacknowledged commit leaves: the old primary binlogged (and the archive took) transactions its
    replica never received; that replica promoted, the archive goes on right after what it has, and records the
    rest as superseded."""
    s0, s1 = database_servers(2)
    m0, m1 = member("m0", s0), member("m1", s1)
    create_table(Direct(s0.host, s0.port, ADMIN_USER, ADMIN_PASSWORD), TABLE)
    with open_session(m0) as p, open_session(m1) as r:
        actions.ensure_replication_user(p, REPL_USER, REPL_PASSWORD)
        actions.ensure_replica(r, Source(s0.host, s0.port, REPL_USER, REPL_PASSWORD))
        p.execute(SQL(f"INSERT INTO {TABLE} VALUES (1), (2)"))
        assert actions.wait_applied(r, p.executed(), 30)
        r.execute(m1.dialect.stop_replica("io"))
    store = object_store.store()
    primary = [m0]
    with archiving(store, primary, tmp_path / "spool"):
        with open_session(m0) as p:
            before = p.executed()
            for row in range(3, 8):
                p.execute(SQL(f"INSERT INTO {TABLE} VALUES (%s)", (row,)))
            lost = p.executed().difference(before)
        wait_for(lambda: archive_holds(store, m0), 30, "the old primary's last transactions archived")
        with open_session(m1) as r:
            actions.promote(r)
        primary[0] = m1
        with open_session(m1) as r:
            r.execute(SQL(f"INSERT INTO {TABLE} VALUES (100), (101)"))
        wait_for(lambda: segments(store)[-1].member == "m1" and archive_holds(store, m1), 30, "m1's writes archived")
    chain = segments(store)
    assert check_chain(m0.dialect.flavor, chain) == [], "no gap: the new run resumed after what m1 has"
    first_on_m1 = next(s for s in chain if s.member == "m1")
    superseded = m0.dialect.parse_gtid(first_on_m1.superseded)
    assert superseded.contains(lost) and lost.contains(superseded), "exactly the transactions m1 never received"
    resumed = lines_of(m1.dialect.parse_gtid(first_on_m1.resumed_from))
    assert resumed == lines_of(before), "resumed right after what m1 had, which is what m0 had before"
    assert lines_of(m1.dialect.parse_gtid(chain[-1].covered)) == lines_of(_executed(m1))


def _executed(m: Member) -> GtidSet:
    with open_session(m) as s:
        return s.executed()
