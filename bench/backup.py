"""Benchmark of a logical backup and its restore, each against the bare tool in the same run, on the same dataset.

    PYTHONPATH=. .venv/bin/python -m bench.backup [--size-mb 1024] [--runs 3] [--database mariadb|...] [--write]

Each run: the dump tool writing to /dev/null (before and after: the reference is their mean), `take_backup` (dump,
zstd, upload) to a fresh SeaweedFS on loopback and to a directory; then `restore_backup` from SeaweedFS into an
empty server against the flavour's client loading the same dump, uncompressed, from a local file (same options:
``--binary-mode``, no binary logging). Figures are the median of the runs with their spread (min-max); beside the
wall-clock ratios, the CPU seconds of every process taking part (this process and its children, the server, the
store), which other load on a shared box moves far less.

The dataset is one table of 4 KiB rows, half random hex and half a repeated phrase (zstd level 1 makes it some 5.6
times smaller; dumped as hex it is about twice its size in the table). Needs hack/build-seaweedfs. ``--write``
appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.backups.test_backups import member
from tests.fixtures.object_store import ObjectStore

from bench.operator_failover import cpu_seconds
from bench.report import publish
from whm_ha.backup.dump import Member, client_command, take_backup
from whm_ha.backup.manifest import BackupManifest
from whm_ha.backup.recovery import make_empty
from whm_ha.backup.restore import restore_backup
from whm_ha.backup.storage import FilesystemStore
from whm_ha.db.local_server import FLAVOURS, LocalServer, init_template

DATABASES = {"mariadb": "mariadb-10.11", "mariadb-11.8": "mariadb-11.8", "mysql": "mysql-9.7"}
ROW_BYTES = 4096
GOAL = 0.8
"""The backup's rate against the dump tool writing to /dev/null (issue #30)."""


def fill(server: LocalServer, size_mb: int) -> int:
    """The table ``app.data`` of ``size_mb`` MB of rows; their count."""
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    words = (b"whm-ha backup benchmark row " * (ROW_BYTES // 56 + 1))[: ROW_BYTES // 2]
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
        cur.execute("CREATE TABLE app.data (id INT PRIMARY KEY, payload LONGBLOB)")
        batch = 1000
        for first in range(0, rows, batch):
            values = [
                (i, os.urandom(ROW_BYTES // 4).hex().encode() + words) for i in range(first, min(rows, first + batch))
            ]
            cur.executemany("INSERT INTO app.data VALUES (%s, %s)", values)
    return rows


@dataclass
class Timing:
    """Wall seconds of one step and the CPU seconds of each process taking part."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu.values())


def _own_cpu() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


@contextmanager
def timed(processes: dict[str, int]) -> Iterator[Timing]:
    """The wall time of the block and the CPU it cost this process with its waited-for children (the dump tool,
    the client) and each of ``processes`` (name: pid)."""
    timing = Timing()
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    own = _own_cpu()
    start = time.monotonic()
    yield timing
    timing.seconds = time.monotonic() - start
    timing.cpu = {"whm-ha and tools": _own_cpu() - own}
    timing.cpu |= {name: cpu_seconds(pid) - before[name] for name, pid in processes.items()}


def dump_command(member: Member, run: Callable[[list[str]], None]) -> None:
    with client_command(member, member.dialect.dump_program) as command:
        run([*command, *member.dialect.dump_options(), "--databases", "app"])


def load_plain(member: Member, dump: Path) -> None:
    """The flavour's client loading ``dump`` as `restore_backup` loads a backup."""
    with client_command(member, member.dialect.client_program) as command, dump.open("rb") as data:
        subprocess.run([*command, "--binary-mode", "--init-command=SET sql_log_bin = 0"], stdin=data, check=True)


@dataclass
class Run:
    null: Timing
    s3: Timing
    fs: Timing
    restore: Timing
    plain: Timing
    manifest: BackupManifest

    @property
    def s3_ratio(self) -> float:
        return self.null.seconds / self.s3.seconds

    @property
    def fs_ratio(self) -> float:
        return self.null.seconds / self.fs.seconds

    @property
    def restore_ratio(self) -> float:
        return self.plain.seconds / self.restore.seconds


def one_run(work: Path, weed: Path, source: Member, target: Member, *, pids: dict[str, int], n: int) -> Run:
    """Backups against the dump to /dev/null, then the restore against the plain load; ``target`` left empty."""
    store_server = ObjectStore(weed, work / f"seaweedfs-{n}")
    store_server.start()
    try:
        assert store_server.process is not None
        with_store = pids | {"seaweedfs": store_server.process.pid}
        with timed(pids) as null_before:
            dump_command(source, lambda cmd: subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True))
        with timed(with_store) as s3_timing:
            manifest = take_backup(store_server.store(), f"bench-{n}", source, databases=["app"])
        with timed(pids) as fs_timing:
            take_backup(FilesystemStore(work / f"fs-{n}"), f"bench-{n}", source, databases=["app"])
        with timed(pids) as null_after:
            dump_command(source, lambda cmd: subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True))
        with timed(with_store) as restore_timing:
            restore_backup(store_server.store(), manifest, target)
    finally:
        store_server.kill()
    make_empty(target, manifest)
    plain = work / "plain.sql"
    if not plain.exists():
        with plain.open("wb") as out:
            dump_command(source, lambda cmd: subprocess.run(cmd, stdout=out, check=True))
    with timed(pids) as plain_timing:
        load_plain(target, plain)
    make_empty(target, manifest)
    null = Timing(
        (null_before.seconds + null_after.seconds) / 2,
        {k: (null_before.cpu[k] + null_after.cpu[k]) / 2 for k in null_before.cpu},
    )
    return Run(null, s3_timing, fs_timing, restore_timing, plain_timing, manifest)


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """The median with the range in brackets."""
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def cpu_line(name: str, timings: list[Timing]) -> str:
    parts = {k: statistics.median(t.cpu.get(k, 0.0) for t in timings) for k in timings[0].cpu}
    detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    return f"{statistics.median(t.cpu_total for t in timings):.1f} CPU-s ({detail}) {name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", choices=sorted(DATABASES), default="mariadb")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    flavour = FLAVOURS[DATABASES[args.database]]
    weed = Path(
        subprocess.run(
            ["bash", "hack/build-seaweedfs", "--print-bin"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="whm-ha-bench-backup-") as tmp:
        work = Path(tmp)
        template = init_template(work / "template", flavour=flavour)
        servers = [LocalServer.from_template(template, work / f"s{i}", i, flavour=flavour) for i in (1, 2)]
        try:
            for server in servers:
                server.start()
            source, target = member("m0", servers[0]), member("m1", servers[1])
            rows = fill(servers[0], args.size_mb)
            assert servers[0].process is not None and servers[1].process is not None
            pids = {"source server": servers[0].process.pid, "target server": servers[1].process.pid}
            runs = []
            for n in range(args.runs):
                runs.append(one_run(work, weed, source, target, pids=pids, n=n))
                print(f"run {n + 1}: backup ratio {runs[-1].s3_ratio:.2f}, restore ratio {runs[-1].restore_ratio:.2f}")
        finally:
            for server in servers:
                server.stop()
    load = tuple(max(a, b) for a, b in zip(load, os.getloadavg(), strict=True))
    manifest = runs[0].manifest
    mb = manifest.uncompressed_size / 1e6
    table = [
        f"| backup to SeaweedFS (S3), {args.size_mb} MB table, {mb:.0f} MB dump -> {manifest.size / 1e6:.0f} MB zstd "
        f"| {spread([r.s3.seconds for r in runs], ' s', 1)}, "
        f"{spread([mb / r.s3.seconds for r in runs], ' MB/s', 0)}, ratio {spread([r.s3_ratio for r in runs])} "
        f"| dump to /dev/null {spread([r.null.seconds for r in runs], ' s', 1)} | ratio >= {GOAL} |",
        f"| backup to a directory | {spread([r.fs.seconds for r in runs], ' s', 1)}, "
        f"ratio {spread([r.fs_ratio for r in runs])} | the same | ratio >= {GOAL} |",
        f"| restore from SeaweedFS into an empty server | {spread([r.restore.seconds for r in runs], ' s', 1)}, "
        f"{spread([mb / r.restore.seconds for r in runs], ' MB/s', 0)}, "
        f"{spread([rows / r.restore.seconds for r in runs], ' rows/s', 0)}, "
        f"ratio {spread([r.restore_ratio for r in runs])} "
        f"| `{source.dialect.client_program}` loading the plain dump "
        f"from a file: {spread([r.plain.seconds for r in runs], ' s', 1)}, "
        f"{spread([mb / r.plain.seconds for r in runs], ' MB/s', 0)} | - |",
    ]
    after = [
        "",
        f"{len(runs)} runs, median (min-max); load average up to {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} cores. CPU seconds per step (median):",
        "",
        *(
            f"- {cpu_line(name, timings)}"
            for name, timings in (
                ("dump to /dev/null", [r.null for r in runs]),
                ("backup to SeaweedFS", [r.s3 for r in runs]),
                ("backup to a directory", [r.fs for r in runs]),
                ("restore from SeaweedFS", [r.restore for r in runs]),
                ("plain load from a file", [r.plain for r in runs]),
            )
        ),
    ]
    publish(f"Logical backup, {flavour.name}", table, write=args.write, after=after)


if __name__ == "__main__":
    main()
