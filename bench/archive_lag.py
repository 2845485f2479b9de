"""Benchmark of the continuous binary log archive's lag under a constant write rate, against a plain replica of
the same primary in the same run.

    PYTHONPATH=. .venv/bin/python -m bench.archive_lag [--rate 1000] [--seconds 60] [--database mariadb|...] [--write]

A primary, a replica of it (GTID replication) and a SeaweedFS on loopback. The archiver (`BinlogArchiver` with the
settings ``whm-ha binlog-archive`` uses) runs in a process of its own and prints each report's lag. Writers send
single-row INSERTs at ``--rate`` per second on a fixed schedule (open loop: a write that falls behind does not
delay the ones after it; the rate achieved is reported). The replica's lag is measured the way the archiver
measures its own (`archive_lag`: the age of the oldest reading of the primary's executed GTIDs that the replica
does not hold yet; readings every `ArchiverSettings.observations` seconds), so the two figures compare. Samples
of the first second of writes are left out. Needs hack/build-seaweedfs. ``--write`` appends to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
from tests.backups.archiver_process import primary_of, store_of
from tests.backups.test_backups import REPL_PASSWORD, REPL_USER, member
from tests.fixtures.object_store import ObjectStore

from bench.report import publish
from whm_ha.backup.archive import Observation, archive_lag, lines_of
from whm_ha.backup.binlog_stream import ArchiveReport, ArchiverSettings, BinlogArchiver
from whm_ha.backup.dump import Member, open_session
from whm_ha.db.local_server import FLAVOURS, Flavour, LocalServer, init_template
from whm_ha.mysql import actions
from whm_ha.mysql.dialect import Source

DATABASES = {"mariadb": "mariadb-10.11", "mariadb-11.8": "mariadb-11.8", "mysql": "mysql-9.7"}
GOAL = 2.0
"""The archive's p99 lag at 1,000 writes/s, seconds (issue #30)."""
WRITERS = 16


def archiver_main(config: str) -> None:
    """The archiver of ``config`` (JSON: flavour, host, port, endpoint, spool), one JSON line per report on
    stdout: wall time, lag, state."""
    settings = json.loads(config)
    primary, store = primary_of(settings), store_of(settings)

    def report(r: ArchiveReport) -> None:
        print(json.dumps({"t": time.time(), "lag": r.lag_seconds, "state": r.state}), flush=True)

    BinlogArchiver(store, lambda: primary, ArchiverSettings(spool=Path(settings["spool"])), report).serve(
        threading.Event()
    )


@dataclass
class Paced:
    """Writers sending one INSERT each at ``start + k / rate`` (k = 0, 1, ...) until ``stop``."""

    server: LocalServer
    rate: float
    start: float = 0.0
    done: int = 0
    late: list[float] = field(default_factory=list)
    """Seconds each write was acknowledged after its slot (includes any wait for a writer)."""
    errors: list[str] = field(default_factory=list)
    _slots: itertools.count[int] = field(default_factory=itertools.count)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self) -> None:
        self.start = time.monotonic() + 0.5
        for k in range(WRITERS):
            self._threads.append(threading.Thread(target=self._write, name=f"writer-{k}", daemon=True))
            self._threads[-1].start()

    def _write(self) -> None:
        with self.server.connect() as conn, conn.cursor() as cur:
            conn.autocommit(True)
            while not self._stop.is_set():
                with self._lock:
                    k = next(self._slots)
                slot = self.start + k / self.rate
                if (wait := slot - time.monotonic()) > 0:
                    self._stop.wait(wait)
                try:
                    cur.execute("INSERT INTO app.writes (id, payload) VALUES (%s, REPEAT('x', 100))", (k,))
                except pymysql.Error as exc:
                    self.errors.append(str(exc))
                    continue
                with self._lock:
                    self.done += 1
                    self.late.append(time.monotonic() - slot)

    def end(self) -> float:
        """Stop; the seconds the writes ran."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return time.monotonic() - self.start


def replica_lags(primary: Member, replica: Member, every: float, stop: threading.Event) -> list[tuple[float, float]]:
    """(wall time, lag) of the replica every 0.1 s until ``stop``: `archive_lag` of readings of the primary's
    executed GTIDs taken every ``every`` seconds against the replica's."""
    samples: list[tuple[float, float]] = []
    observations: list[Observation] = []
    observed = 0.0
    with open_session(primary) as p, open_session(replica) as r:
        while not stop.is_set():
            if time.monotonic() - observed >= every:
                observed = time.monotonic()
                observations.append(Observation(time.time(), lines_of(p.executed())))
            lag, held = archive_lag(observations, lines_of(r.executed()), time.time())
            del observations[: max(0, held - 1)]
            samples.append((time.time(), lag))
            stop.wait(0.1)
    return samples


def start_archiver(config: dict[str, object]) -> tuple[subprocess.Popen[str], list[dict[str, float | str]]]:
    """The archiver's process, with the reports it prints as they come; once it streams with no lag."""
    archiver = subprocess.Popen(
        [sys.executable, "-m", "bench.archive_lag", "--archiver", json.dumps(config)], stdout=subprocess.PIPE, text=True
    )
    reports: list[dict[str, float | str]] = []
    threading.Thread(
        target=lambda: reports.extend(json.loads(line) for line in archiver.stdout or []), daemon=True
    ).start()
    deadline = time.monotonic() + 60
    while not any(r["state"] == "Streaming" and r["lag"] == 0 for r in reports[-5:]):
        if time.monotonic() > deadline or archiver.poll() is not None:
            archiver.kill()
            archiver.wait()
            raise RuntimeError(f"the archiver did not start streaming: {reports[-3:]}")
        time.sleep(0.2)
    return archiver, reports


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], ordered[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--database", choices=sorted(DATABASES), default="mariadb")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--archiver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.archiver:
        archiver_main(args.archiver)
        return
    flavour = FLAVOURS[DATABASES[args.database]]
    load_before = os.getloadavg()
    measured = measure(flavour, args.rate, args.seconds)
    load = tuple(max(a, b) for a, b in zip(load_before, os.getloadavg(), strict=True))
    report(measured, flavour, args.rate, load, write=args.write)


@dataclass
class Measured:
    reports: list[dict[str, float | str]]
    replica: list[tuple[float, float]]
    writers: Paced
    began: float
    ended: float
    ran: float


def measure(flavour: Flavour, rate: float, seconds: float) -> Measured:
    """Writes at ``rate`` for ``seconds`` on a primary with a replica and the archiver."""
    weed = Path(
        subprocess.run(
            ["bash", "hack/build-seaweedfs", "--print-bin"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    with tempfile.TemporaryDirectory(prefix="whm-ha-bench-archive-") as tmp:
        work = Path(tmp)
        template = init_template(work / "template", flavour=flavour)
        servers = [LocalServer.from_template(template, work / f"s{i}", i, flavour=flavour) for i in (1, 2)]
        store = ObjectStore(weed, work / "seaweedfs")
        archiver: subprocess.Popen[str] | None = None
        try:
            for server in servers:
                server.start()
            store.start()
            primary, replica = member("primary", servers[0]), member("replica", servers[1])
            with open_session(primary) as p, open_session(replica) as r:
                actions.ensure_replication_user(p, REPL_USER, REPL_PASSWORD)
                actions.ensure_replica(r, Source(servers[0].host, servers[0].port, REPL_USER, REPL_PASSWORD))
            with servers[0].connect() as conn, conn.cursor() as cur:
                cur.execute("CREATE DATABASE app")
                cur.execute("CREATE TABLE app.writes (id BIGINT PRIMARY KEY, payload VARCHAR(200))")
            config = {
                "flavour": flavour.name,
                "host": servers[0].host,
                "port": servers[0].port,
                "endpoint": store.endpoint,
                "spool": str(work / "spool"),
            }
            archiver, reports = start_archiver(config)
            stop = threading.Event()
            replica_samples: list[tuple[float, float]] = []
            watcher = threading.Thread(
                target=lambda: replica_samples.extend(
                    replica_lags(primary, replica, ArchiverSettings.observations, stop)
                ),
                daemon=True,
            )
            watcher.start()
            writers = Paced(servers[0], rate)
            writers.begin()
            began = time.time() + 0.5
            time.sleep(seconds + 0.5)
            ran = writers.end()
            ended = time.time()
            time.sleep(3)
            stop.set()
            watcher.join(10)
        finally:
            if archiver is not None:
                archiver.terminate()
                archiver.wait(10)
            store.kill()
            for server in servers:
                server.stop()
    return Measured(reports, replica_samples, writers, began, ended, ran)


def report(measured: Measured, flavour: Flavour, asked: float, load: tuple[float, ...], *, write: bool) -> None:
    began, ended, writers, ran, reports = (
        measured.began,
        measured.ended,
        measured.writers,
        measured.ran,
        measured.reports,
    )

    def window(samples: list[tuple[float, float]]) -> list[float]:
        return [lag for at, lag in samples if began + 1 <= at <= ended]

    archive = quantiles(window([(float(r["t"]), float(r["lag"])) for r in reports]))
    plain = quantiles(window(measured.replica))
    rate = writers.done / ran
    late = quantiles(writers.late)
    states = sorted({str(r["state"]) for r in reports if began + 1 <= float(r["t"]) <= ended})

    def figures(q: tuple[float, float, float]) -> str:
        return f"p50 {q[0]:.2f} s, p99 {q[1]:.2f} s, max {q[2]:.2f} s"

    ratio = archive[1] / plain[1] if plain[1] else float("inf")
    rows = [
        f"| binlog archive lag to SeaweedFS, {rate:.0f} writes/s for {ran:.0f} s (asked {asked:.0f}) "
        f"| {figures(archive)}; states {', '.join(states)} | replica of the same primary: {figures(plain)}; "
        f"ratio of the p99s (archive / replica) {ratio:.2f} | p99 <= {GOAL:g} s |",
    ]
    after = [
        "",
        f"Writes: {writers.done} acknowledged, {len(writers.errors)} failed; acknowledged after their slot: "
        f"p50 {late[0] * 1000:.1f} ms, p99 {late[1] * 1000:.1f} ms, max {late[2] * 1000:.0f} ms "
        f"({WRITERS} connections). Lag readings every {ArchiverSettings.observations:g} s; segments "
        f"every {ArchiverSettings.interval:g} s while writes come (the archiver's defaults). "
        f"Load average up to {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores.",
    ]
    publish(f"Binary log archive lag, {flavour.name}", rows, write=write, after=after)


if __name__ == "__main__":
    main()
